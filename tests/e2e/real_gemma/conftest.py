"""A real vLLM CPU server serving Google's Gemma 3 270M (trained weights, real tokenizer), shared by this package.

``tests/e2e/real`` keeps the tiny random Gemma-3 (random verdicts exercise both decisions and the split plan's re-ask,
and its reasoning-on checks take ~1 s); this package runs the same kinds of real-engine checks on real weights
(docs/real-engine.md says which and why). The server starts after ``tests/e2e/real``'s has stopped (package-scoped
fixtures), so the two never hold the CPU together.

``--max-model-len`` is small (``real_gemma.TEST_MAX_MODEL_LEN``, 1536): it still holds the largest layout with the
reasoning budget, and it makes the server's own context-length 400 cheap to reach (``test_real_long_input.py``).
Skipped without a vLLM venv or without the conversion's packages; with ``CSR_REQUIRE_VLLM=1`` (CI) either is a
failure.
"""

from __future__ import annotations

import os
import time

import httpx
import pytest

from nemo_csr_rail import plans
from nemo_csr_rail.policy import SIDES, Direction, Policy
from tests.support import real_gemma
from tests.support import vllm_server as vs

START_TIMEOUT_S = 480.0


@pytest.fixture(scope="package")
def gemma_server():
    """The running server (``.base_url``, ``.root``, ``.model``, ``.model_path``, ``.log_path``), stopped at the end."""
    if os.environ.get("CSR_REAL_GEMMA_VLLM_URL"):  # development: a server somebody else started
        yield vs.attach(os.environ["CSR_REAL_GEMMA_VLLM_URL"])
        return
    python = vs.require_vllm_python()
    model = real_gemma.require_model()
    # 1 GB of float32 weights: 80-100 s to /health on a quiet 2-core host, past the default 240 s on a loaded one
    timeout = float(os.environ.get("CSR_VLLM_START_TIMEOUT") or START_TIMEOUT_S)
    server = vs.start(python, model_dir=model, max_model_len=real_gemma.TEST_MAX_MODEL_LEN, timeout_s=timeout)
    try:
        server.first_grammar_status = warm_reasoning_grammars(server)
    except Exception:
        server.stop()
        raise
    print(f"\nvLLM serving Gemma 3 270M at {server.base_url}: {server.timings} (log {server.log_path})")
    yield server
    server.stop()


def warm_reasoning_grammars(server, timeout_s: float = 300.0) -> dict[str, int]:
    """Send the first request of each reasoning-on grammar; the HTTP status each FIRST request got.

    Found here: xgrammar takes 10-40 s to compile the bounded trace line (``[^\\n<]{1,600}``) against the real
    262,144-piece vocabulary, and vLLM 0.32 answered HTTP 500 after its default 5 s regex-compile timeout. The test
    server, like ``nemo-csr-rail serve``, raises ``VLLM_REGEX_COMPILATION_TIMEOUT_S``;
    ``test_reasoning_grammars_compile_on_the_first_request`` asserts these first statuses are all 200. Should one
    not be, this still waits for the compile to land in xgrammar's cache, so the other tests are not disturbed.
    """
    t0 = time.monotonic()
    regexes = {plans.build(Policy.custom("p", "x"), d, "u", "b" if d is Direction.OUTPUT else None,
                            reasoning=True).regex for d in SIDES}
    first: dict[str, int] = {}
    for regex in sorted(regexes):
        body = {"model": server.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1,
                "temperature": 0, "structured_outputs": {"regex": regex}}
        while True:
            r = httpx.post(server.base_url + "/chat/completions", json=body, timeout=120)
            first.setdefault(regex, r.status_code)
            if r.status_code == 200:
                break
            if r.status_code != 500 or time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"reasoning grammar warm-up failed: HTTP {r.status_code} {r.text[:300]}\n"
                                   f"{server.log_tail()}")
            time.sleep(2)
    server.timings["reasoning_grammars_s"] = round(time.monotonic() - t0, 1)
    return first
