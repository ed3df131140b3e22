"""Suite-wide guard: never test extensions compiled from older sources (tools/native.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import native


def pytest_configure(config: pytest.Config) -> None:
    """Stop before collecting when the compiled hot path is not the current sources."""
    if not os.environ.get("SHOAL_TEST_PURE") and native.MANIFEST.exists():
        stale = native.problems()
        if stale:
            pytest.exit("the compiled hot path is stale (" + "; ".join(stale)
                        + "): run `make venv` (or `python tools/native.py --clean`)", 2)
