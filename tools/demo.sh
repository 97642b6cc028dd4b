#!/usr/bin/env bash
# Installs the package with the embedded engine into .venv and runs the guarded-conversation demo.
#   ./tools/demo.sh                       # real weights from the HF cache (downloaded where Hugging Face is reachable)
#   ./tools/demo.sh --model /path/to/weights
#   ./tools/demo.sh --engine http --base-url http://127.0.0.1:8000/v1
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CSR_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/pip" install -q -U pip
"$VENV/bin/pip" install -q "${CSR_TORCH_SPEC:-torch==2.13.0}"
"$VENV/bin/pip" install -q -e ".[embedded]"
exec "$VENV/bin/nemo-csr-rail" demo "$@"
