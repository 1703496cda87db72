"""Load a script of eval/ (a benchmark or a report helper, not a package module) for a test."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

PROJECT = Path(__file__).resolve().parents[1]


def load_script(relpath: str) -> ModuleType:
    """The module at ``PROJECT / relpath`` (e.g. ``eval/bench/index_bench.py``), executed."""
    path = PROJECT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
