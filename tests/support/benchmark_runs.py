"""Run a benchmark script end to end the way its users do (``python -m benchmarks.<name> …``), for the smoke tests
that keep the benchmarks from rotting between measurement runs: on the stand-in only (``CSR_VLLM_PYTHON`` unset,
so no real vLLM section starts), this checkout first on the path, in ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(tmp_path: Path, name: str, *args: str, timeout: float = 600) -> tuple[str, dict[str, Any]]:
    """``python -m benchmarks.<name> *args --json …``: asserts it exits 0 without a traceback; returns what it
    printed and the results it wrote."""
    env = {k: v for k, v in os.environ.items() if k != "CSR_VLLM_PYTHON"}
    env.update(PYTHONPATH=str(ROOT), COLANGPATH=str(ROOT))
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args, "--json", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stdout, json.loads(out.read_text())


__all__ = ["ROOT", "run_benchmark"]
