"""Gives the controller's integration tests the same fakes as its unit tests
(``tests/unit/_controller_fakes.py``), loaded by path: the test dirs are not packages."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "_controller_fakes"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        _NAME, Path(__file__).resolve().parents[1] / "unit" / f"{_NAME}.py")
    assert _spec is not None and _spec.loader is not None
    sys.modules[_NAME] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_NAME])
fakes = sys.modules[_NAME]
