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
