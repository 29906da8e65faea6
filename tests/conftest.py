"""Make `python -m pytest tests` from the repository root test the installed build.

`python -m` puts the current folder first on sys.path, so the source folder `jdrl_ext/` (which has
no compiled `_C` unless built in place) would hide the installed package. Where the source folder
has no `_C` and an installed `jdrl_ext` exists elsewhere, the repository root is taken off sys.path
before any test imports jdrl_ext; where neither exists, the run stops with one line saying what to do.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _is_root(entry: str) -> bool:
    try:
        return Path(entry or os.getcwd()).resolve() == ROOT
    except OSError:
        return False


def pytest_configure(config: pytest.Config) -> None:
    """Runs before any test module is imported."""
    if any((ROOT / "jdrl_ext").glob("_C.*")):
        return  # built in place: the source folder is a working package
    others = [entry for entry in sys.path if not _is_root(entry)]
    if importlib.machinery.PathFinder.find_spec("jdrl_ext", others) is None:
        pytest.exit(
            "jdrl_ext is neither installed nor built in place: run `pip install --no-build-isolation \".[test]\"` "
            "(README, Install) or `python setup.py build_ext --inplace`",
            returncode=4,
        )
    sys.path[:] = others

