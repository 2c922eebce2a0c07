"""Template search that stays fast at a million templates.

Up to ``Settings.search_exact_max`` templates, :class:`~core.matching.TemplateIndex`
searches exactly with a float32 matrix product. Beyond that, :class:`AnnTemplateIndex`
keeps each template kind (original, synthetic) in a FAISS index whose vectors are
8-bit scalar-quantized (SQ8, 1 byte per dimension instead of 4): an inverted-file
index (``ivf``, the default) or an HNSW graph (``hnsw``). No float32 copy of the
templates is kept, so 1e6 templates of 512 dimensions take about 0.5 GB instead of 2 GB.

Chat scoping stays exact. FAISS returns candidate templates, the candidates that the
chat may not see or that were removed are dropped, and when fewer than ``k`` people
remain, every template visible in the chat is scored exhaustively instead.

The index of a large gallery is saved next to the database and reused at the next
start when its :class:`~core.storage.TemplateFingerprint` equals the database's, so a
restart does not read and re-index every template.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final

import faiss
import numpy as np

from core.matching import DEFAULT_SYNTHETIC_WEIGHT, Candidate, TemplateIndex, template_columns
from core.settings import Settings
from core.storage import SYNTHETIC, GalleryStore, TemplateFingerprint, TemplateMatrix
from core.storage.records import visible_in_chat

logger = logging.getLogger(__name__)

BACKENDS: Final = ("auto", "exact", "ivf", "hnsw")
ANN_BACKENDS: Final = ("ivf", "hnsw")

# A kind with fewer templates than this when the index is built gets an exhaustive
# fp16 index instead: IVF and SQ8 need that many vectors to train on, and a scan of
# so few vectors is fast anyway.
MIN_ANN_ROWS: Final = 1_000

# Templates fetched from FAISS per requested person. A person rarely has more templates
# than this among the top results; when fewer than k people remain, the search widens.
_FETCH_FACTOR: Final = 16
# Inverted lists scanned per query at least, and as a share of all lists. On clustered
# synthetic galleries of 1e5 and 1e6 templates (scripts/bench_search.py), this kept the
# top-1 person equal to exact search for at least 99 % of queries.
_MIN_NPROBE: Final = 32
_NPROBE_DIVISOR: Final = 16
# k-means settings for the IVF centroids: FAISS samples up to this many points per list
# (its default is 256), and runs 10 iterations instead of its default 25, which cuts the
# training time. The recall this gives is measured in docs/benchmarks.md.
_TRAIN_POINTS_PER_LIST: Final = 64
_KMEANS_ITERATIONS: Final = 10
# HNSW graph degree and search breadth.
_HNSW_NEIGHBORS: Final = 32
_HNSW_EF_SEARCH: Final = 128
# Rows decoded at once when every visible template is scored exhaustively.
_DECODE_BATCH: Final = 65_536
# Rows read from the database per batch while an index is built.
_BUILD_BATCH: Final = 65_536
# A saved index with more removed (dead) rows than this share is rebuilt at start.
_MAX_DEAD_SHARE: Final = 0.25

_FILE_MAGIC: Final = b"MASKID-SEARCH-INDEX\n"
_FILE_VERSION: Final = 1
_METADATA_COLUMNS: Final = ("template_ids", "person_ids", "synthetic", "chat_ids", "owner_ids", "alive")


def choose_backend(setting: str, template_count: int, exact_max: int) -> str:
    """Return the backend for a gallery of ``template_count`` templates: ``setting`` unless it is "auto".

    "auto" searches exactly up to ``exact_max`` templates and uses IVF beyond.
    """
    if setting not in BACKENDS:
        raise ValueError(f"search index must be one of {BACKENDS}, got {setting!r}")
    if setting != "auto":
        return setting
    return "exact" if template_count <= exact_max else "ivf"


class _KindIndex:
    """The FAISS index of one template kind and the index row of each FAISS id.

    FAISS assigns ids 0, 1, 2, ... in the order vectors are added, so ``rows[faiss_id]``
    is the row of that template in :class:`AnnTemplateIndex`.
    """

    def __init__(self, index: faiss.Index, rows: np.ndarray) -> None:
        if index.ntotal != len(rows):
            raise ValueError(f"the FAISS index has {index.ntotal} vectors but {len(rows)} rows are mapped")
        self.index = index
        self.rows = rows

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.rows = np.concatenate([self.rows, rows.astype(np.int64)])

    def search(self, probe: np.ndarray, count: int, locator: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return the scores and rows of up to ``count`` nearest templates, best first.

        Args:
            locator: where an IVF index looks: it scans the inverted lists nearest to
                ``locator`` and scores their templates against ``probe``. None uses ``probe``.
        """
        count = min(count, self.size)
        ivf = faiss.try_extract_index_ivf(self.index) if locator is not None else None
        if ivf is None:
            scores, ids = self.index.search(probe[np.newaxis], count)
        else:
            _, lists = ivf.quantizer.search(locator[np.newaxis], ivf.nprobe)
            # SQ8 codes hold residuals from the list centroids, so the scan adds the probe's
            # own similarity to each centroid: the probe's, not the locator's. FAISS pads
            # with list -1, which it skips, when there are fewer lists than nprobe.
            valid = lists[0] >= 0
            centroid_scores = np.zeros(lists.shape, dtype=np.float32)
            centroid_scores[0, valid] = ivf.quantizer.reconstruct_batch(lists[0, valid]) @ probe
            scores, ids = ivf.search_preassigned(probe[np.newaxis], count, lists, centroid_scores)
        found = ids[0] >= 0
        return scores[0][found], self.rows[ids[0][found]]

    def reconstruct(self, faiss_ids: np.ndarray) -> np.ndarray:
        """Return the decoded (quantized) vectors of ``faiss_ids`` as float32 rows."""
        if len(faiss_ids) == 0:
            return np.zeros((0, self.index.d), dtype=np.float32)
        return self.index.reconstruct_batch(np.ascontiguousarray(faiss_ids, dtype=np.int64))


def _new_faiss_index(backend: str, dim: int, expected_count: int, sample: np.ndarray) -> faiss.Index:
    """Create and train an empty FAISS index for about ``expected_count`` unit vectors.

    ``sample`` is a random subset of them to train the IVF centroids and SQ8 ranges on.
    """
    if expected_count < MIN_ANN_ROWS or len(sample) < MIN_ANN_ROWS:
        # fp16 needs no training and keeps scores within about 1e-3 of float32.
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)

    if backend == "ivf":
        lists = _ivf_list_count(expected_count)
        index = faiss.index_factory(dim, f"IVF{lists},SQ8", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = _KMEANS_ITERATIONS
        ivf.cp.max_points_per_centroid = _TRAIN_POINTS_PER_LIST
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        # The direct map lets reconstruct_batch decode any template, for exhaustive and fused search.
        ivf.make_direct_map()
        _tune(index)
        return index

    if backend == "hnsw":
        index = faiss.index_factory(dim, f"HNSW{_HNSW_NEIGHBORS},SQ8", faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        _tune(index)
        return index

    raise ValueError(f"approximate search index must be one of {ANN_BACKENDS}, got {backend!r}")


def _ivf_list_count(expected_count: int) -> int:
    """Return the number of IVF lists: about the square root of the template count, FAISS's usual choice.

    FAISS's k-means warns below 39 training points per list, which caps the count on small kinds.
    """
    return int(np.clip(min(round(np.sqrt(expected_count)), expected_count // 39), 1, 65_536))


def _tune(index: faiss.Index) -> None:
    """Set the search-time parameters; called on every new or loaded index, so saved files get the current ones."""
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = _HNSW_EF_SEARCH
        return
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = max(_MIN_NPROBE, ivf.nlist // _NPROBE_DIVISOR)


class AnnTemplateIndex(TemplateIndex):
    """Approximate cosine search over templates, grouped by person, with exact chat scoping.

    It returns results for :meth:`search` and :meth:`search_masked` like :class:`TemplateIndex`, but
    from SQ8-quantized vectors. A score differed from the exact cosine by at most 0.006 in
    scripts/bench_search.py, and a person whose templates FAISS does not reach may be
    missing from the top k.
    Removed templates stay in FAISS, marked dead and filtered out, until the next rebuild.

    Args:
        dim: descriptor length.
        backend: "ivf" or "hnsw".
        parts: for original (False) and synthetic (True) templates, the trained FAISS
            index with its rows; filled by :func:`build_ann_index` or :meth:`load`.
    """

    def __init__(self, dim: int, backend: str, parts: dict[bool, _KindIndex]) -> None:
        super().__init__(dim)
        if backend not in ANN_BACKENDS:
            raise ValueError(f"approximate search index must be one of {ANN_BACKENDS}, got {backend!r}")
        self.backend = backend
        self._parts = parts
        self._alive = np.zeros(0, dtype=bool)
        # Position of each row in its kind's FAISS index.
        self._faiss_ids = np.zeros(0, dtype=np.int64)
        # Rows sorted by person id, and those person ids, to find a person's rows by binary
        # search. Built at the first masked or rescored search and kept up to date by add().
        self._rows_by_person: np.ndarray | None = None
        self._sorted_person_ids: np.ndarray | None = None
        self.changed = False

    def __len__(self) -> int:
        return int(self._alive.sum())

    @property
    def person_count(self) -> int:
        return len(np.unique(self._person_ids[self._alive]))

    @property
    def dead_count(self) -> int:
        """Removed templates still stored in FAISS."""
        return len(self._alive) - len(self)

    def fingerprint(self) -> TemplateFingerprint:
        """Return the fingerprint of the live templates, without ``last_created_at``, which the index does not store."""
        live = self._template_ids[self._alive]
        if len(live) == 0:
            return TemplateFingerprint(count=0, max_id=0, id_sum=0)
        return TemplateFingerprint(count=len(live), max_id=int(live.max()), id_sum=int(live.sum()))

    def add(
        self,
        template_ids: np.ndarray | Sequence[int],
        person_ids: np.ndarray | Sequence[int],
        vectors: np.ndarray | Sequence[np.ndarray],
        *,
        synthetic: np.ndarray | Sequence[bool] | None = None,
        chat_ids: np.ndarray | Sequence[int] | None = None,
        owner_ids: np.ndarray | Sequence[int] | None = None,
    ) -> None:
        """Append templates to the metadata and to the FAISS index of their kind, as :meth:`TemplateIndex.add`."""
        vectors, columns = template_columns(
            self.dim, template_ids, person_ids, vectors, synthetic=synthetic, chat_ids=chat_ids, owner_ids=owner_ids
        )
        count = len(vectors)

        first_row = len(self._alive)
        rows = np.arange(first_row, first_row + count, dtype=np.int64)
        faiss_ids = np.zeros(count, dtype=np.int64)
        for kind in (False, True):
            selected = columns["synthetic"] == kind
            if not selected.any():
                continue
            part = self._parts[kind]
            faiss_ids[selected] = np.arange(part.size, part.size + int(selected.sum()))
            part.add(vectors[selected], rows[selected])

        self._template_ids = np.concatenate([self._template_ids, columns["template_ids"]])
        self._person_ids = np.concatenate([self._person_ids, columns["person_ids"]])
        self._synthetic = np.concatenate([self._synthetic, columns["synthetic"]])
        self._chat_ids = np.concatenate([self._chat_ids, columns["chat_ids"].astype(np.int64)])
        self._owner_ids = np.concatenate([self._owner_ids, columns["owner_ids"].astype(np.int64)])
        self._alive = np.concatenate([self._alive, np.ones(count, dtype=bool)])
        self._faiss_ids = np.concatenate([self._faiss_ids, faiss_ids])
        self._extend_person_order(first_row, columns["person_ids"])
        self.changed = True
        logger.debug("index: added %d templates, %d in total", count, len(self))

    def remove_person(self, person_id: int) -> int:
        """Mark every template of ``person_id`` dead; returns how many were marked."""
        selected = (self._person_ids == person_id) & self._alive
        removed = int(selected.sum())
        if removed:
            self._alive[selected] = False
            self.changed = True
            logger.debug("index: removed %d templates of person %d", removed, person_id)
        return removed

    def search(
        self,
        probe: np.ndarray,
        k: int = 3,
        *,
        chat_id: int | None = None,
        synthetic: bool = False,
        locator: np.ndarray | None = None,
    ) -> list[Candidate]:
        """Return up to ``k`` distinct people, best first, each scored by their closest template found.

        Arguments are those of :meth:`TemplateIndex.search`. The IVF backend picks the
        inverted lists to scan with ``locator``, the probe's whole descriptor, when given.
        A probe compared on one part of its descriptor (see :mod:`core.descriptors`) is
        zero elsewhere, so lists chosen by it alone miss templates the whole descriptor finds.
        """
        probe = self._check_query(probe, k)
        if locator is not None:
            locator = self._check_query(locator, k)
        part = self._parts[synthetic]
        if part.size == 0:
            return []

        fetch = k * _FETCH_FACTOR
        while True:
            scores, rows = part.search(probe, fetch, locator)
            keep = self._searchable(rows, chat_id)
            candidates = self._top_people(scores[keep], rows[keep], k, len(rows[keep]))
            if len(candidates) == k:
                return self._rescore(probe, candidates, chat_id, synthetic)
            # IVF returns only templates of the scanned lists, so a longer list from FAISS
            # may still miss people; past one retry, score every visible template.
            if fetch >= part.size or fetch > k * _FETCH_FACTOR:
                break
            fetch *= 8

        rows = part.rows[self._searchable(part.rows, chat_id)]
        scores = self._exact_scores(probe, rows)
        return self._top_people(scores, rows, k, len(rows))

    def search_masked(
        self,
        probe: np.ndarray,
        k: int = 3,
        *,
        chat_id: int | None = None,
        synthetic_weight: float = DEFAULT_SYNTHETIC_WEIGHT,
        locator: np.ndarray | None = None,
    ) -> list[Candidate]:
        """Rank people for a masked probe as :meth:`TemplateIndex.search_masked` does.

        The people closest in either kind are found through FAISS, and the fused score is
        then computed over every visible template of those people. When fewer than ``k``
        people are found, every visible person is scored.
        """
        probe = self._check_query(probe, k)
        if not 0.0 <= synthetic_weight <= 1.0:
            raise ValueError(f"synthetic_weight must be in [0, 1], got {synthetic_weight}")

        people: set[int] = set()
        for kind in (True, False):
            if self._parts[kind].size:
                people.update(
                    candidate.person_id
                    for candidate in self.search(probe, k, chat_id=chat_id, synthetic=kind, locator=locator)
                )
        if len(people) < k:
            rows = np.flatnonzero(self._searchable(np.arange(len(self._alive)), chat_id))
        else:
            rows = self._rows_of_people(np.fromiter(people, dtype=np.int64))
            rows = rows[self._searchable(rows, chat_id)]
        if len(rows) == 0:
            return []

        # The fusion rule itself is TemplateIndex's, applied to the decoded templates of these people.
        exact = TemplateIndex(self.dim)
        exact.add(
            self._template_ids[rows],
            self._person_ids[rows],
            self._decode(rows),
            synthetic=self._synthetic[rows],
            chat_ids=self._chat_ids[rows],
            owner_ids=self._owner_ids[rows],
        )
        return exact.search_masked(probe, k, synthetic_weight=synthetic_weight)

    def _check_query(self, probe: np.ndarray, k: int) -> np.ndarray:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        probe = np.asarray(probe, dtype=np.float32)
        if probe.shape != (self.dim,):
            raise ValueError(f"expected a ({self.dim},) probe, got shape {probe.shape}")
        return np.ascontiguousarray(probe)

    def _searchable(self, rows: np.ndarray, chat_id: int | None) -> np.ndarray:
        """Return which of ``rows`` are alive and, with a ``chat_id``, visible in that chat."""
        keep = self._alive[rows]
        if chat_id is not None:
            keep &= visible_in_chat(chat_id, self._chat_ids[rows], self._owner_ids[rows])
        return keep

    def _top_people(self, scores: np.ndarray, rows: np.ndarray, k: int, scan: int) -> list[Candidate]:
        """Return the first ``k`` distinct people among ``rows``, ranked by ``scores``."""
        order = np.argsort(-scores, kind="stable")[:scan]
        candidates: list[Candidate] = []
        seen: set[int] = set()
        for position in order:
            row = rows[position]
            person_id = int(self._person_ids[row])
            if person_id in seen:
                continue
            seen.add(person_id)
            candidates.append(Candidate(person_id, float(scores[position]), int(self._template_ids[row])))
            if len(candidates) == k:
                break
        return candidates

    def _exact_scores(self, probe: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Score ``rows`` against ``probe`` from their decoded vectors, a batch at a time."""
        scores = np.empty(len(rows), dtype=np.float32)
        for start in range(0, len(rows), _DECODE_BATCH):
            batch = rows[start : start + _DECODE_BATCH]
            scores[start : start + len(batch)] = self._decode(batch) @ probe
        return scores

    def _decode(self, rows: np.ndarray) -> np.ndarray:
        vectors = np.empty((len(rows), self.dim), dtype=np.float32)
        for kind in (False, True):
            selected = self._synthetic[rows] == kind
            if selected.any():
                vectors[selected] = self._parts[kind].reconstruct(self._faiss_ids[rows[selected]])
        return vectors

    def _rescore(
        self, probe: np.ndarray, candidates: list[Candidate], chat_id: int | None, synthetic: bool
    ) -> list[Candidate]:
        """Score each candidate by all of their searchable templates of the kind, and rank them again.

        FAISS may have missed a candidate's closest template (IVF scans only some lists), which
        would understate that person's score by a few hundredths.
        """
        rows = self._rows_of_people(np.array([candidate.person_id for candidate in candidates], dtype=np.int64))
        rows = rows[self._searchable(rows, chat_id) & (self._synthetic[rows] == synthetic)]
        return self._top_people(self._decode(rows) @ probe, rows, len(candidates), len(rows))

    def _rows_of_people(self, people: np.ndarray) -> np.ndarray:
        if self._rows_by_person is None or self._sorted_person_ids is None:
            self._rows_by_person = np.argsort(self._person_ids, kind="stable")
            self._sorted_person_ids = self._person_ids[self._rows_by_person]
        starts = np.searchsorted(self._sorted_person_ids, people, side="left")
        ends = np.searchsorted(self._sorted_person_ids, people, side="right")
        return np.concatenate([self._rows_by_person[start:end] for start, end in zip(starts, ends, strict=True)])

    def _extend_person_order(self, first_row: int, person_ids: np.ndarray) -> None:
        """Insert rows ``first_row``, ``first_row + 1``, ... into the person order, if it was built."""
        if self._rows_by_person is None or self._sorted_person_ids is None:
            return
        order = np.argsort(person_ids, kind="stable")
        positions = np.searchsorted(self._sorted_person_ids, person_ids[order], side="right")
        self._rows_by_person = np.insert(self._rows_by_person, positions, first_row + order)
        self._sorted_person_ids = np.insert(self._sorted_person_ids, positions, person_ids[order])

    # Saving and loading.

    def save(self, path: Path, fingerprint: TemplateFingerprint, model_id: str) -> None:
        """Write the index to ``path`` atomically: a temporary file in the same folder, then os.replace.

        ``fingerprint`` is the database's for ``model_id`` when these templates were read.
        """
        started = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        header = {
            "version": _FILE_VERSION,
            "model_id": model_id,
            "backend": self.backend,
            "dim": self.dim,
            "rows": len(self._alive),
            "fingerprint": [fingerprint.count, fingerprint.max_id, fingerprint.id_sum, fingerprint.last_created_at],
        }
        try:
            with temporary.open("wb") as file:
                _write_header(file, header)
                for name in _METADATA_COLUMNS:
                    np.save(file, getattr(self, f"_{name}"), allow_pickle=False)
                for kind in (False, True):
                    np.save(file, self._parts[kind].rows, allow_pickle=False)
                    faiss.write_index(self._parts[kind].index, faiss.PyCallbackIOWriter(file.write))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        self.changed = False
        logger.info(
            "search index: saved %d templates (%d dead) of model %s to %s in %.1f s",
            len(self),
            self.dead_count,
            model_id,
            path,
            time.monotonic() - started,
        )

    @classmethod
    def load(cls, path: Path, *, model_id: str, dim: int, backend: str) -> tuple[AnnTemplateIndex, TemplateFingerprint]:
        """Read an index saved by :meth:`save` and return it with the fingerprint it was saved with.

        Raises:
            ValueError: the file is not a maskid search index, or it was saved for another
                model, dimension or backend.
            OSError: the file cannot be read.
        """
        with path.open("rb") as file:
            header = _read_header(file)
            expected = {"version": _FILE_VERSION, "model_id": model_id, "dim": dim, "backend": backend}
            for key, value in expected.items():
                if header.get(key) != value:
                    raise ValueError(f"{path} has {key} {header.get(key)!r}, expected {value!r}")
            columns = {name: np.load(file, allow_pickle=False) for name in _METADATA_COLUMNS}
            parts = {}
            for kind in (False, True):
                rows = np.load(file, allow_pickle=False)
                faiss_index = faiss.read_index(faiss.PyCallbackIOReader(file.read))
                _tune(faiss_index)
                parts[kind] = _KindIndex(faiss_index, rows)

        index = cls(dim, backend, parts)
        row_count = header["rows"]
        for name, column in columns.items():
            if len(column) != row_count:
                raise ValueError(f"{path}: column {name} has {len(column)} rows, expected {row_count}")
            setattr(index, f"_{name}", column)
        if parts[False].size + parts[True].size != row_count:
            raise ValueError(
                f"{path}: the FAISS indexes hold {parts[False].size + parts[True].size} vectors, expected {row_count}"
            )
        index._faiss_ids = np.zeros(row_count, dtype=np.int64)
        for part in parts.values():
            index._faiss_ids[part.rows] = np.arange(part.size)
        count, max_id, id_sum, last_created_at = header["fingerprint"]
        return index, TemplateFingerprint(count=count, max_id=max_id, id_sum=id_sum, last_created_at=last_created_at)


def _write_header(file: BinaryIO, header: dict[str, Any]) -> None:
    encoded = json.dumps(header).encode()
    file.write(_FILE_MAGIC)
    file.write(len(encoded).to_bytes(4, "little"))
    file.write(encoded)


def _read_header(file: BinaryIO) -> dict[str, Any]:
    if file.read(len(_FILE_MAGIC)) != _FILE_MAGIC:
        raise ValueError(f"{file.name} is not a maskid search index")
    length = int.from_bytes(file.read(4), "little")
    return json.loads(file.read(length))


# Building and opening an index for a gallery store.


def index_path(folder: Path, model_id: str, backend: str) -> Path:
    """Return the file of the saved index of ``model_id`` and ``backend`` in ``folder``.

    Model ids contain characters such as "/" and "+", so the name is a readable part of
    the model id and a hash of all of it.
    """
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:60]
    digest = hashlib.sha256(model_id.encode()).hexdigest()[:12]
    return folder / f"{readable}-{digest}.{backend}.index"


def search_index_folder(settings: Settings, store: GalleryStore) -> Path:
    """Return the folder for saved search indexes: next to the database file, else in the cache folder."""
    database = getattr(store, "path", None)
    if isinstance(database, Path):
        return database.with_name(f"{database.name}.search-index")
    return settings.cache_dir / "search-index"


async def build_ann_index(
    store: GalleryStore, model_id: str, dim: int, backend: str, expected_count: int, *, seed: int = 0
) -> AnnTemplateIndex:
    """Build an approximate index of every template of ``model_id``, streaming from ``store``.

    The templates are read twice, one batch at a time: first for a random training
    sample of each kind, then to add them. The whole float32 gallery is never in memory.
    """
    started = time.monotonic()
    logger.info("search index: building %s index of about %d templates of model %s", backend, expected_count, model_id)
    rng = np.random.default_rng(seed)
    # A uniform random sample of each kind, at most this many vectors: each row gets a
    # random key, and the rows with the smallest keys so far are kept.
    sample_size = _TRAIN_POINTS_PER_LIST * _ivf_list_count(expected_count)
    samples = {kind: np.zeros((0, dim), dtype=np.float32) for kind in (False, True)}
    sample_keys = {kind: np.zeros(0) for kind in (False, True)}
    counts = {False: 0, True: 0}
    async for batch in store.iter_templates(model_id, batch_size=_BUILD_BATCH):
        for kind, vectors in _split_by_kind(batch):
            counts[kind] += len(vectors)
            keys = np.concatenate([sample_keys[kind], rng.random(len(vectors))])
            pool = np.concatenate([samples[kind], vectors])
            if len(keys) > sample_size:
                sampled = np.argpartition(keys, sample_size - 1)[:sample_size]
                keys, pool = keys[sampled], pool[sampled]
            sample_keys[kind], samples[kind] = keys, pool

    parts = {}
    for kind in (False, True):
        faiss_index = await asyncio.to_thread(_new_faiss_index, backend, dim, counts[kind], samples[kind])
        parts[kind] = _KindIndex(faiss_index, np.zeros(0, dtype=np.int64))
    del samples
    logger.info(
        "search index: trained on %d original and %d synthetic templates in %.1f s",
        counts[False],
        counts[True],
        time.monotonic() - started,
    )

    index = AnnTemplateIndex(dim, backend, parts)
    async for batch in store.iter_templates(model_id, batch_size=_BUILD_BATCH):
        await asyncio.to_thread(index.add_matrix, batch)
    logger.info(
        "search index: built %s index of %d templates of model %s in %.1f s",
        backend,
        len(index),
        model_id,
        time.monotonic() - started,
    )
    return index


def _split_by_kind(batch: TemplateMatrix) -> list[tuple[bool, np.ndarray]]:
    synthetic = batch.kinds == SYNTHETIC
    return [(False, batch.vectors[~synthetic]), (True, batch.vectors[synthetic])]


async def open_template_index(
    store: GalleryStore, model_id: str, dim: int, settings: Settings, *, folder: Path | None = None
) -> TemplateIndex:
    """Return the search index of ``model_id`` for an open ``store``, with the backend the settings choose.

    An exact index loads the templates as before. An approximate one is read from its
    saved file in ``folder`` (default :func:`search_index_folder`) when the file's
    fingerprint equals the database's and at most a quarter of its rows are dead.
    Otherwise it is built from the database and saved.
    """
    fingerprint = await store.template_fingerprint(model_id)
    backend = choose_backend(settings.search_index, fingerprint.count, settings.search_exact_max)
    logger.info("search index: %s search over %d templates of model %s", backend, fingerprint.count, model_id)
    if backend == "exact":
        index = TemplateIndex(dim)
        index.add_matrix(await store.load_templates(model_id))
        return index

    path = index_path(folder or search_index_folder(settings, store), model_id, backend)
    loaded = await asyncio.to_thread(_load_valid, path, model_id, dim, backend, fingerprint)
    if loaded is not None:
        return loaded

    index = await build_ann_index(store, model_id, dim, backend, fingerprint.count)
    await save_if_current(index, store, model_id, path)
    return index


def _load_valid(
    path: Path, model_id: str, dim: int, backend: str, fingerprint: TemplateFingerprint
) -> AnnTemplateIndex | None:
    """Return the index saved at ``path`` if it matches ``fingerprint``, else None (logging why)."""
    if not path.is_file():
        logger.info("search index: no saved index at %s", path)
        return None
    started = time.monotonic()
    logger.info("search index: loading %s", path)
    try:
        index, saved = AnnTemplateIndex.load(path, model_id=model_id, dim=dim, backend=backend)
    except (OSError, ValueError, RuntimeError, EOFError, KeyError) as exc:
        # RuntimeError is what FAISS raises for a truncated or corrupt index.
        logger.warning("search index: cannot use %s (%s); rebuilding it", path, exc)
        return None
    if saved != fingerprint:
        logger.info(
            "search index: %s was saved for %s, but the database has %s; rebuilding it", path, saved, fingerprint
        )
        return None
    if not index.fingerprint().same_ids(fingerprint):
        logger.warning("search index: the templates in %s do not match its own fingerprint; rebuilding it", path)
        return None
    if index.dead_count > _MAX_DEAD_SHARE * len(index._alive):
        logger.info(
            "search index: %s has %d removed templates of %d; rebuilding it", path, index.dead_count, len(index._alive)
        )
        return None
    logger.info("search index: loaded %d templates from %s in %.1f s", len(index), path, time.monotonic() - started)
    return index


async def save_if_current(index: TemplateIndex, store: GalleryStore, model_id: str, path: Path) -> bool:
    """Save an approximate ``index`` if it contains exactly the templates now in the database.

    Another process may have enrolled or removed templates since the index was built; then
    nothing is saved and the next start rebuilds. Returns whether the file was written.
    """
    if not isinstance(index, AnnTemplateIndex):
        return False
    fingerprint = await store.template_fingerprint(model_id)
    if not index.fingerprint().same_ids(fingerprint):
        logger.info(
            "search index: not saved, because the database has %s and the index %s", fingerprint, index.fingerprint()
        )
        return False
    await asyncio.to_thread(index.save, path, fingerprint, model_id)
    return True


__all__ = [
    "ANN_BACKENDS",
    "BACKENDS",
    "AnnTemplateIndex",
    "build_ann_index",
    "choose_backend",
    "index_path",
    "open_template_index",
    "save_if_current",
    "search_index_folder",
]
