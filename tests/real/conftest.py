"""A real vLLM CPU server for the whole session (skipped when no vLLM venv is available, unless required)."""

from __future__ import annotations

import os

import pytest

from tests.support import vllm_server


@pytest.fixture(scope="session")
def vllm():
    python = vllm_server.vllm_python()
    if python is None:
        if os.environ.get("CSR_REQUIRE_VLLM") == "1":
            pytest.fail("CSR_REQUIRE_VLLM=1 but no vLLM venv: set CSR_VLLM_PYTHON (see .ci/install_vllm.sh)")
        pytest.skip("no vLLM CPU venv (set CSR_VLLM_PYTHON; .ci/install_vllm.sh makes one)")
    server = vllm_server.start(python)
    yield server
    server.stop()
