"""Environment for running the ``maskid`` CLI as a subprocess in tests."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def cli_environment(db: Path, cache_dir: Path) -> dict[str, str]:
    """Return this process's environment without MASKID_* settings, pointed at ``db`` and ``cache_dir``."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("MASKID_")}
    environment["MASKID_DB"] = str(db)
    environment["MASKID_CACHE_DIR"] = str(cache_dir)
    environment["MASKID_TORCH_THREADS"] = "1"
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return environment


@dataclass(frozen=True)
class CliRun:
    """Exit status and output of one ``maskid`` command."""

    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


MaskidRunner = Callable[..., CliRun]


def in_process_runner(
    db: Path, cache_dir: Path, workdir: Path, pipeline: Any, monkeypatch: Any, capsys: Any
) -> MaskidRunner:
    """Return a runner of ``cli.main.main(ARGS)`` in this process, against ``db``, with ``pipeline`` as the model.

    ``monkeypatch`` and ``capsys`` are pytest's fixtures; the environment loses its MASKID_*
    settings and the working folder becomes ``workdir`` for the test.
    """
    from cli.main import main
    from core.pipeline import FacePipeline

    for name in list(os.environ):
        if name.startswith("MASKID_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MASKID_DB", str(db))
    monkeypatch.setenv("MASKID_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(FacePipeline, "from_settings", classmethod(lambda cls, settings, **kwargs: pipeline))

    def run(*args: object) -> CliRun:
        capsys.readouterr()
        exit_code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return CliRun(exit_code, captured.out, captured.err)

    return run
