#!/usr/bin/env bash
# Installs vllm-router 0.1.17 (the router of deploy/kubernetes/guard-router.yaml) into its own venv, once; prints its
# python. tests/tooling/test_deploy_router.py runs the router's own argument parser on the manifest's args with it,
# and benchmarks/routing.py starts its `vllm-router`. A 24 MB abi3 wheel (Rust core, Python launcher), no torch.
# Venv: $CSR_VLLM_ROUTER_VENV (default ~/.cache/nemo-csr-rail/router-venv); reused when complete (marker file).
set -euo pipefail
V=${CSR_VLLM_ROUTER_VENV:-$HOME/.cache/nemo-csr-rail/router-venv}
SPEC=vllm-router==0.1.17
MARK="$V/.csr-complete"
if [ -f "$MARK" ] && [ "$(cat "$MARK")" = "$SPEC" ] && [ -x "$V/bin/python" ]; then
  echo "$V/bin/python"
  exit 0
fi
t0=$(date +%s)
if [ -e "$V" ]; then
  # an incomplete earlier attempt or another version: start over, but never delete something that is not a venv
  if [ -f "$V/pyvenv.cfg" ] || [ -z "$(ls -A "$V")" ]; then
    rm -rf "$V"
  else
    echo "CSR_VLLM_ROUTER_VENV=$V exists and is not a venv; refusing to overwrite it" >&2
    exit 2
  fi
fi
"${PYTHON:-python3}" -m venv "$V"
"$V/bin/pip" install -q -U pip >&2
"$V/bin/pip" install -q "$SPEC" >&2
"$V/bin/python" -c "from vllm_router.launch_router import parse_router_args; parse_router_args([])" >&2
echo "$SPEC" > "$MARK"
echo "vllm-router venv installed in $(( $(date +%s) - t0 )) s ($(du -sh "$V" | cut -f1))" >&2
echo "$V/bin/python"
