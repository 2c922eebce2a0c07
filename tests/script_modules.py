"""Import a file of ``scripts/`` as a module, for tests of its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "scripts"


def load_script(file_name: str) -> ModuleType:
    """Run ``scripts/FILE_NAME`` as a module named after the file and return it."""
    name = Path(file_name).stem
    # Python puts a script's folder first on sys.path when it runs it, so scripts import each other by name.
    if str(SCRIPTS_DIR) not in sys.path:
        sys.path.insert(0, str(SCRIPTS_DIR))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS_DIR / file_name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look up the module of a class with string annotations in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
