"""Shared fixtures for every tier (tests/unit, tests/integration, tests/tooling, tests/e2e; docs/testing.md).

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
    _drop_nemo_client_pools()


def _drop_nemo_client_pools() -> None:
    """NeMo Guardrails 0.24.1 pools its main-model HTTP clients process-wide, keyed by base URL. A later test's
    stand-in that gets a port an earlier one had would reuse a client whose connections belong to the earlier test's
    closed event loop ("Stale event loop"). Forget them (their sockets close when collected)."""
    try:
        from nemoguardrails.llm.frameworks import registry
    except ImportError:  # pragma: no cover - a NeMo without frameworks
        return
    for framework in getattr(registry, "_frameworks", {}).values():
        clients = getattr(framework, "_clients", None)
        if isinstance(clients, dict):
            clients.clear()


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


def pytest_collection_modifyitems(items):
    """A ``shared_data`` test gets the folder from ``shared_root``, so a missing folder is never a silent pass."""
    for item in items:
        if item.get_closest_marker("shared_data") and "shared_root" not in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid} is marked shared_data but does not use the shared_root fixture")


@pytest.fixture
def shared_root(request) -> Path:
    """The workplace's shared reference folder (``../shared``, or ``$CSR_SHARED_DIR``; tests/support/shared.py).

    Only for tests marked ``@pytest.mark.shared_data`` (anything else fails). Without the folder the test is
    skipped with a reason naming ``CSR_SHARED_DIR``, or fails when ``CSR_REQUIRE_SHARED=1`` (tools/test.sh, CI)."""
    from tests.support.shared import missing, shared_dir

    if request.node.get_closest_marker("shared_data") is None:
        pytest.fail(f"{request.node.nodeid} uses shared_root without @pytest.mark.shared_data", pytrace=False)
    root = shared_dir()
    if root is None:
        env = os.environ.get("CSR_SHARED_DIR")
        missing(f"CSR_SHARED_DIR={env} is not a directory" if env
                else "the shared reference folder (../shared next to the checkout, or /work/shared) is not present")
    return root
