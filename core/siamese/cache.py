"""On-disk cache of trunk outputs, so that training epochs never run the frozen trunk again.

Layout: ``ROOT/<layer>-<key>/`` contains float16 ``.npy`` shards and ``index.json``, which
maps the SHA-256 of each aligned crop's pixels to its shard and row. The key is a hash
of the base model id, the trunk layer and the cache format, so a different network or
cut point never reads stale outputs. The crop hash covers everything drawn on the crop,
so each synthetic-mask variant (and so each mask seed) has its own entry.

Shards and the index are written to a temporary file and renamed into place, and a
shard is always complete before the index names it. An interrupted run therefore
leaves at worst an unlisted shard, which the next write ignores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# Bump when what an entry stores changes meaning (for example the preprocessing).
CACHE_FORMAT = 1
INDEX_FILE_NAME = "index.json"


def crop_sha256(crop: np.ndarray) -> str:
    """Return the hex SHA-256 of an aligned crop's shape and uint8 pixels."""
    digest = hashlib.sha256(f"{crop.shape}|{crop.dtype}|".encode())
    digest.update(np.ascontiguousarray(crop).tobytes())
    return digest.hexdigest()


def cache_key(model_id: str, layer: str) -> str:
    """Return the 16-hex-digit key of a (base model, trunk layer) pair."""
    return hashlib.sha256(f"{model_id}|{layer}|format {CACHE_FORMAT}".encode()).hexdigest()[:16]


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        write(temporary)
        with temporary.open("rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class TrunkCache:
    """Trunk outputs of aligned crops for one base model and trunk layer.

    Args:
        root: folder that contains the caches of every (model, layer) pair, created on write.
        model_id: the base network's id, for example ``facenet-casia-20180408``.
        layer: the last trunk stage the outputs come from.
    """

    def __init__(self, root: Path, *, model_id: str, layer: str) -> None:
        self.model_id = model_id
        self.layer = layer
        self.key = cache_key(model_id, layer)
        self.folder = root / f"{layer}-{self.key}"
        self._entries: dict[str, tuple[str, int]] = {}
        self._shards: dict[str, np.ndarray] = {}
        self._read_index()

    def _read_index(self) -> None:
        path = self.folder / INDEX_FILE_NAME
        if not path.is_file():
            return
        index = json.loads(path.read_text())
        if index.get("model_id") != self.model_id or index.get("layer") != self.layer:
            raise ValueError(
                f"trunk cache {self.folder} belongs to {index.get('model_id')!r} {index.get('layer')!r}, "
                f"not {self.model_id!r} {self.layer!r}; delete the folder"
            )
        self._entries = {sha: (shard, row) for sha, (shard, row) in index["entries"].items()}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, crop_sha: object) -> bool:
        return crop_sha in self._entries

    def _shard(self, name: str) -> np.ndarray:
        if name not in self._shards:
            self._shards[name] = np.load(self.folder / name, mmap_mode="r")
        return self._shards[name]

    def get(self, crop_sha: str) -> np.ndarray | None:
        """Return the cached trunk output of one crop, or None when it is not cached."""
        entry = self._entries.get(crop_sha)
        if entry is None:
            return None
        shard, row = entry
        return np.array(self._shard(shard)[row])

    def stack(self, crop_shas: Sequence[str]) -> np.ndarray:
        """Return the outputs of ``crop_shas`` as one (N, C, H, W) float16 array, in that order.

        Raises:
            KeyError: a crop is not cached.
        """
        missing = [sha for sha in crop_shas if sha not in self._entries]
        if missing:
            raise KeyError(f"{len(missing)} crops are not in the trunk cache {self.folder}, e.g. {missing[0]}")
        if not crop_shas:
            return np.zeros((0,), dtype=np.float16)
        return np.stack([self._shard(self._entries[sha][0])[self._entries[sha][1]] for sha in crop_shas])

    def put(self, outputs: Mapping[str, np.ndarray]) -> None:
        """Store trunk outputs by crop SHA-256 as one new shard, then rewrite the index.

        Crops already in the cache are skipped.
        """
        new = {sha: output for sha, output in outputs.items() if sha not in self._entries}
        if not new:
            return
        stacked = np.stack([np.asarray(output, dtype=np.float16) for output in new.values()])
        shard = f"shard-{self._next_shard_number():06d}.npy"

        def save_shard(path: Path) -> None:
            with path.open("wb") as stream:
                np.save(stream, stacked)

        write_atomically(self.folder / shard, save_shard)
        self._entries.update({sha: (shard, row) for row, sha in enumerate(new)})
        self._write_index()
        logger.debug("stored %d trunk outputs in %s", len(new), self.folder / shard)

    def _next_shard_number(self) -> int:
        # Unlisted shards from an interrupted run are overwritten, which is safe because no index names them.
        numbers = [int(shard[len("shard-") : -len(".npy")]) for shard, _ in self._entries.values()]
        return max(numbers, default=-1) + 1

    def _write_index(self) -> None:
        index = {
            "format": CACHE_FORMAT,
            "model_id": self.model_id,
            "layer": self.layer,
            "entries": {sha: [shard, row] for sha, (shard, row) in self._entries.items()},
        }
        write_atomically(self.folder / INDEX_FILE_NAME, lambda path: path.write_text(json.dumps(index)))
