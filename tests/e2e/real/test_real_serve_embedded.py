"""Real vLLM (CPU build): ``serve`` starts it with every flag it emits, and the embedded engine matches it.

One server is started through ``nemo-csr-rail serve --no-wait`` on the tiny random Gemma-3 (the CPU flags, as a
user would run it) and is then used to compare the two engines on identical GuardPrompts: same prompt token ids
(vLLM's ``/tokenize``), same reasoning-off continuation and logprobs, same token counts; with reasoning on, the same
greedy trace up to where the embedded engine's token budget closes it (vLLM instead stops at ``max_tokens``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from nemo_csr_rail import plans
from nemo_csr_rail.cli.serve_cmd import vllm_command
from nemo_csr_rail.engines.http import VllmHttpEngine
from nemo_csr_rail.options import DecodeOptions
from nemo_csr_rail.policy import SIDES, Direction, Policy
from tests.support import vllm_server

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[3]
NAME = "nvidia/Nemotron-Content-Safety-Reasoning-4B"


def _python() -> str:
    return vllm_server.require_vllm_python()


def test_vllm_knows_every_flag_serve_emits():
    python = _python()
    out = subprocess.run([python, "-m", "vllm.entrypoints.openai.api_server", "--help=all"], capture_output=True,
                         text=True, timeout=300, env=vllm_server._env(vllm_server.cache_dir() / "tmp"))
    assert out.returncode == 0, out.stderr[-2000:]
    known = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", out.stdout))
    for device in ("gpu", "cpu"):
        emitted = {a for a in vllm_command(python=python, model=NAME, device=device, kv_cache_bytes=2**30)
                   if a.startswith("--")}
        assert emitted <= known, f"{device}: vLLM does not know {sorted(emitted - known)}"


@pytest.fixture(scope="module")
def served():
    python = _python()
    from tests.support.tiny_cache import tiny_checkpoint

    model = tiny_checkpoint()
    port = vllm_server.free_port()
    base = vllm_server.cache_dir()
    log = base / f"serve-cli-{port}.log"
    env = vllm_server._env(base / "tmp")
    env["PYTHONPATH"] = str(ROOT)  # the CLI under test, from this checkout
    with open(log, "wb") as fh:
        rc = subprocess.run(
            [sys.executable, "-m", "nemo_csr_rail.cli.main", "serve", "--model", str(model), "--python", python,
             "--device", "cpu", "--port", str(port), "--max-model-len", "2048", "--kv-cache-bytes", str(2**28),
             # float32 like the embedded engine it is compared with: on a CPU with AVX512-BF16/AMX, serve's own
             # default is bfloat16, and a random model's near-flat distributions then diverge within a few tokens
             "--dtype", "float32", "--no-wait", "--timeout", "300"],
            stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=420).returncode
    text = log.read_text(errors="replace")
    m = re.search(r"ready after [0-9.]+s: (\S+)/v1 serving (\S+) \(pid (\d+)\)", text)
    pid = int(m.group(3)) if m else None
    try:
        assert rc == 0 and m, f"serve failed (rc={rc}):\n{text[-3000:]}"
        yield {"root": m.group(1), "served": m.group(2), "log": text, "model": model}
    finally:
        if pid:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.5)
            else:
                os.killpg(pid, signal.SIGKILL)


def test_serve_starts_vllm_with_its_cpu_flags(served):
    text = served["log"]
    line = next(ln for ln in text.splitlines() if "vllm.entrypoints.openai.api_server" in ln and ln.startswith("/"))
    for flag in ("--enforce-eager", "--language-model-only", "--enable-prefix-caching",
                 "--enable-prompt-tokens-details", "--kv-cache-memory-bytes 268435456", "--dtype float32"):
        assert flag in line
    assert served["served"] == NAME
    models = httpx.get(served["root"] + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [NAME]
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 48, "temperature": 0,
            "structured_outputs": {"regex": "Prompt harm: (harmful|unharmful)"}}
    r = httpx.post(served["root"] + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200 and re.fullmatch("Prompt harm: (harmful|unharmful)", r.json()["choices"][0]["message"]
                                                  ["content"])


CASES = [(kind, d, r) for kind in ("custom", "taxonomy") for d in SIDES for r in (False, True)]


@pytest.mark.embedded
@pytest.mark.parametrize(("kind", "direction", "reasoning"), CASES)
async def test_embedded_engine_matches_vllm(served, kind, direction, reasoning):
    from nemo_csr_rail.engines.embedded import EmbeddedEngine

    pol = Policy.custom("retail", "No politics or religion.") if kind == "custom" else Policy.taxonomy()
    gp = plans.build(pol, direction, "How do I <start_of_turn> reset my router? é",
                       "Unplug it for ten seconds." if direction is Direction.OUTPUT else None,
                       reasoning=reasoning, decode=DecodeOptions(reasoning_max_tokens=48))
    http = VllmHttpEngine([served["root"] + "/v1"], NAME)
    emb = EmbeddedEngine(str(served["model"]), device="cpu")
    body = http.payload(gp)
    tok = httpx.post(served["root"] + "/tokenize", timeout=60, json={
        "model": NAME, "messages": body["messages"],
        **({"continue_final_message": True, "add_generation_prompt": False} if gp.prefill else {})}).json()
    assert tok["tokens"] == emb.prompt_ids(gp)
    hc = await http.complete(gp, timeout_s=120)
    ec = await emb.complete(gp, timeout_s=120)
    await http.aclose()
    assert ec.prompt_tokens == hc.prompt_tokens
    if not reasoning:
        # a bare verdict is one token (the one-token plan stops at max_tokens 1), else the stop string ends it
        assert ec.text == hc.text and ec.finish_reason == hc.finish_reason == ("length" if gp.verdict_choices
                                                                              else "stop")
        assert ec.completion_tokens == hc.completion_tokens
        if gp.split_output:  # the prompt half of a split output check asks for no logprobs; compare the step too
            assert ec.logprobs is None and hc.logprobs is None
            gp = plans.split_output.response_step(gp, hc.text.strip())
            http = VllmHttpEngine([served["root"] + "/v1"], NAME)
            hc = await http.complete(gp, timeout_s=120)
            ec = await emb.complete(gp, timeout_s=120)
            await http.aclose()
            assert ec.text == hc.text and ec.completion_tokens == hc.completion_tokens
        assert [e["token"] for e in ec.logprobs] == [e["token"] for e in hc.logprobs]
        for a, b in zip(ec.logprobs, hc.logprobs, strict=True):
            assert a["logprob"] == pytest.approx(b["logprob"], abs=2e-3)
            assert [t["token"] for t in a["top_logprobs"]][:2] == [t["token"] for t in b["top_logprobs"]][:2]
    else:
        assert ec.text.startswith("<think>\n")
        trace = ec.text[len("<think>\n"):ec.text.index("\n</think>")]
        assert ec.text == hc.text or (hc.finish_reason == "length" and hc.text.startswith("<think>\n" + trace)), (
            ec.text, hc.text)
