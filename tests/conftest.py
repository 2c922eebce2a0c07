"""Shared fixtures: the datasets folder, settings that write only under tmp paths, a loaded pipeline."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from core.pipeline import FacePipeline
from core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def configured_datasets_dir() -> Path:
    """Return ``$MASKID_DATASETS`` (default ``../shared/datasets``), relative paths taken from the repo root."""
    datasets = Path(os.environ.get("MASKID_DATASETS", "../shared/datasets")).expanduser()
    return datasets if datasets.is_absolute() else (REPO_ROOT / datasets).resolve()


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The read-only face datasets; tests that need them skip when the folder is absent."""
    datasets = configured_datasets_dir()
    if not (datasets / "lfw").is_dir():
        pytest.skip(f"face datasets not found at {datasets}; set MASKID_DATASETS")
    return datasets


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted-weights cache for the whole session, outside the user's cache."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def settings(tmp_path: Path, model_cache_dir: Path) -> Settings:
    """Settings whose database lives under ``tmp_path`` and whose cache is the session's."""
    return Settings(
        db_path=tmp_path / "gallery.sqlite3", cache_dir=model_cache_dir, datasets_dir=configured_datasets_dir()
    )


@pytest.fixture(scope="session")
def pipeline(model_cache_dir: Path) -> FacePipeline:
    """The default pipeline, loaded once per test session."""
    return FacePipeline.from_settings(Settings(cache_dir=model_cache_dir))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run in-process model work on one PyTorch thread, and restore the count afterwards.

    One thread keeps the tests cheap on a busy CPU: on 2 cores at load average 8, one LFW
    photo took 0.15 s of CPU (time.process_time) on one thread and 0.5-0.9 s on two.
    Subprocesses get MASKID_TORCH_THREADS=1 for the same reason.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
