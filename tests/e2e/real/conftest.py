"""A real vLLM CPU server shared by the tests in this package and stopped after them (an idle vLLM still holds
CPU, and the tests after it include deadline-sensitive fault tests). Skipped without a vLLM venv, unless required."""

from __future__ import annotations

import os

import pytest

from tests.support import vllm_server as vs


@pytest.fixture(scope="package")
def vllm_server():
    """The running server (``.base_url``, ``.root``, ``.model``, ``.log_path``, ``.timings``), stopped at the end."""
    if os.environ.get("CSR_VLLM_URL"):
        yield vs.attach(os.environ["CSR_VLLM_URL"])
        return
    python = vs.require_vllm_python()
    server = vs.start(python)
    print(f"\nvLLM server {server.base_url} ready: {server.timings} (log {server.log_path})")
    yield server
    server.stop()


@pytest.fixture(scope="package")
def vllm(vllm_server):
    """Alias used by the first real-vLLM tests."""
    return vllm_server
