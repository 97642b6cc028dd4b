"""Shared fixtures.

``COLANGPATH`` points at the checkout so ``import_paths: [nemo_csr_rail]`` resolves even when the package is
installed in editable mode (NeMo Guardrails reads it once, at import).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("COLANGPATH", str(ROOT))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from nemo_csr_rail.rail import reset_runtimes  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_runtimes():
    """Each test gets its own runtimes: no pooled client or cache survives across event loops or servers."""
    reset_runtimes()
    yield
    reset_runtimes()


@pytest.fixture
def guard():
    """A vLLM-shaped stand-in for the guard model; harmful iff a marker word ('EVIL', 'politics', …) appears."""
    from tests.support.standin import StandIn

    with StandIn() as server:
        yield server


@pytest.fixture
def main_llm():
    """A stand-in for the application's own LLM (answers 'EVIL stuff' when the user writes EVILOUT)."""
    from tests.support.standin import main_llm as make

    with make() as server:
        yield server
