"""Tests for the trunk-output cache: round trip, atomic writes, and keys per model and layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.siamese import cache as cache_module
from core.siamese.cache import TrunkCache, cache_key, crop_sha256

MODEL_ID = "facenet-casia-20180408"
SHAPE = (1792, 3, 3)


def outputs(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"{seed:02d}{index:062d}": rng.standard_normal(SHAPE).astype(np.float16) for index in range(count)}


def test_cache_round_trip(tmp_path: Path) -> None:
    stored = outputs(3)
    TrunkCache(tmp_path, model_id=MODEL_ID, layer="repeat_3").put(stored)

    reopened = TrunkCache(tmp_path, model_id=MODEL_ID, layer="repeat_3")
    assert len(reopened) == 3
    for sha, array in stored.items():
        np.testing.assert_array_equal(reopened.get(sha), array)
    order = list(reversed(stored))
    stacked = reopened.stack(order)
    assert stacked.dtype == np.float16
    assert stacked.shape == (3, *SHAPE)
    np.testing.assert_array_equal(stacked[0], stored[order[0]])


def test_cache_appends_shards(tmp_path: Path) -> None:
    cache = TrunkCache(tmp_path, model_id=MODEL_ID, layer="repeat_3")
    first, second = outputs(2, seed=1), outputs(2, seed=2)
    cache.put(first)
    cache.put(second)
    cache.put(first)  # already cached: no new shard

    reopened = TrunkCache(tmp_path, model_id=MODEL_ID, layer="repeat_3")
    assert len(reopened) == 4
    assert len(list(cache.folder.glob("shard-*.npy"))) == 2
    for sha, array in {**first, **second}.items():
        np.testing.assert_array_equal(reopened.get(sha), array)


def test_cache_missing_entry(tmp_path: Path) -> None:
    cache = TrunkCache(tmp_path, model_id=MODEL_ID, layer="repeat_3")
    assert cache.get("f" * 64) is None
    with pytest.raises(KeyError, match="not in the trunk cache"):
        cache.stack(["f" * 64])


def test_cache_failed_shard_write_keeps_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = TrunkCache(tmp_path, model_id=MODEL_ID, layer="repeat_3")
    kept = outputs(2, seed=1)
    cache.put(kept)
    index_before = (cache.folder / "index.json").read_text()

    def failing_save(stream: object, array: np.ndarray) -> None:
        stream.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        cache.put(outputs(2, seed=2))
    monkeypatch.undo()

    assert (cache.folder / "index.json").read_text() == index_before
    assert list(cache.folder.glob("*.tmp")) == []
    assert sorted(path.name for path in cache.folder.glob("shard-*.npy")) == ["shard-000000.npy"]
    reopened = TrunkCache(tmp_path, model_id=MODEL_ID, layer="repeat_3")
    assert len(reopened) == 2
    for sha, array in kept.items():
        np.testing.assert_array_equal(reopened.get(sha), array)


def test_cache_failed_index_write_keeps_old_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = TrunkCache(tmp_path, model_id=MODEL_ID, layer="repeat_3")
    cache.put(outputs(1, seed=1))

    original_dumps = json.dumps

    def failing_dumps(*args: object, **kwargs: object) -> str:
        raise OSError("interrupted")

    monkeypatch.setattr(cache_module.json, "dumps", failing_dumps)
    with pytest.raises(OSError, match="interrupted"):
        cache.put(outputs(1, seed=2))
    monkeypatch.setattr(cache_module.json, "dumps", original_dumps)

    reopened = TrunkCache(tmp_path, model_id=MODEL_ID, layer="repeat_3")
    assert len(reopened) == 1
    assert list(cache.folder.glob("*.tmp")) == []


def test_cache_key_changes_with_layer_and_model() -> None:
    assert cache_key(MODEL_ID, "repeat_3") != cache_key(MODEL_ID, "mixed_7a")
    assert cache_key(MODEL_ID, "repeat_3") != cache_key("other-model", "repeat_3")
    assert cache_key(MODEL_ID, "repeat_3") == cache_key(MODEL_ID, "repeat_3")


def test_cache_layers_do_not_share_entries(tmp_path: Path) -> None:
    stored = outputs(1)
    TrunkCache(tmp_path, model_id=MODEL_ID, layer="repeat_3").put(stored)

    other = TrunkCache(tmp_path, model_id=MODEL_ID, layer="mixed_7a")
    assert len(other) == 0
    assert other.get(next(iter(stored))) is None


def test_cache_rejects_foreign_index(tmp_path: Path) -> None:
    cache = TrunkCache(tmp_path, model_id=MODEL_ID, layer="repeat_3")
    cache.put(outputs(1))
    index = json.loads((cache.folder / "index.json").read_text())
    index["layer"] = "mixed_7a"
    (cache.folder / "index.json").write_text(json.dumps(index))

    with pytest.raises(ValueError, match="delete the folder"):
        TrunkCache(tmp_path, model_id=MODEL_ID, layer="repeat_3")


def test_crop_sha256_depends_on_pixels() -> None:
    crop = np.zeros((160, 160, 3), dtype=np.uint8)
    changed = crop.copy()
    changed[80, 80, 0] = 1
    assert crop_sha256(crop) == crop_sha256(crop.copy())
    assert crop_sha256(crop) != crop_sha256(changed)
