"""The user's entry points (jobs/*.py are scripts, not modules), loaded by file for in-process tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def job(name: str):
    """jobs/<name>.py as a module: `job("train").main([...])` runs it as a user would, in this process."""
    spec = importlib.util.spec_from_file_location(f"{name}_job", JOBS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
