#!/usr/bin/env bash
# Installs vllm-router 0.1.17 (the router of deploy/kubernetes/guard-router.yaml) into its own venv, once; prints its
# python. tests/tooling/test_deploy_router.py runs the router's own argument parser on the manifest's args with it,
# and benchmarks/routing.py starts its `vllm-router`. A 24 MB abi3 wheel (Rust core, Python launcher), no torch.
# Venv: $CSR_VLLM_ROUTER_VENV (default ~/.cache/nemo-csr-rail/router-venv); reused when complete (marker file).
set -euo pipefail
V=${CSR_VLLM_ROUTER_VENV:-$HOME/.cache/nemo-csr-rail/router-venv}
SPEC=vllm-router==0.1.17
. "$(dirname "$0")/venv.sh"
venv_begin CSR_VLLM_ROUTER_VENV "$V" "$SPEC"
"$V/bin/pip" install -q "$SPEC" >&2
"$V/bin/python" -c "from vllm_router.launch_router import parse_router_args; parse_router_args([])" >&2
venv_end "vllm-router venv"
