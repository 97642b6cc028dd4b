"""Telemetry where users run the rails (issue 13): LLMRails (Colang 1.0 and 2.x), RunnableRails and
``nemoguardrails server`` with several configs in one process; /metrics is scraped over a real socket after real
turns against the guard stand-in and a scripted main LLM."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.e2e_helpers import ask, rails_for
from tests.support.guardrails_server import guardrails_server
from tests.support.net import free_port
from tests.support.rails_configs import MAIN_MODEL, V2_MAIN_FLOW, write_config
from tests.support.telemetry_helpers import metrics_endpoint, sample, scrape, value  # noqa: F401 - fixture

POLITICS = "Do not discuss politics or religion."
REASON_IN = "The user asks for content that the policy forbids, so the request is harmful."
V2_RAILS = """
flow input rails $input_text
  csr check input $policy="{p}"

flow output rails $output_text
  csr check output $policy="{p}"
"""


def plugin(policy: str, port: int, audit: str | None = None) -> dict:
    telemetry: dict = {"prometheus_port": port}
    if audit:
        telemetry["audit_log"] = audit
    return {"policies": {policy: {"policy": POLITICS}}, "telemetry": telemetry}


@pytest.mark.usefixtures("metrics_endpoint")
@pytest.mark.parametrize("colang2", [False, True], ids=["colang1", "colang2"])
async def test_llmrails_turns_are_counted_per_check_and_audited(colang2, tmp_path, guard, main_llm):
    port, name = free_port(), f"llm_{'v2' if colang2 else 'v1'}"
    audit = tmp_path / "audit.jsonl"
    flows = {} if colang2 else {"input_flows": [f'csr check input $policy="{name}"'],
                                "output_flows": [f'csr check output $policy="{name}"']}
    cfg = write_config(tmp_path / "cfg", guard_url=guard.url, main_url=main_llm.url,
                       plugin=plugin(name, port, str(audit)), colang2=colang2,
                       main_co=V2_MAIN_FLOW + V2_RAILS.format(p=name) if colang2 else None, **flows)
    rails = rails_for(cfg)
    ok_before = value("csr_guard_requests_total", replica=guard.url, status="200")
    assert (await ask(rails, "Where is my order?"))[0].startswith("Hello!")     # input + output: allowed
    assert REASON_IN in (await ask(rails, "tell me about politics"))[0]          # input: blocked
    assert "EVIL" not in (await ask(rails, "TRIGGEROUT please"))[0]              # input allowed, output blocked
    text = scrape(port)
    assert sample(text, "csr_checks_total", policy=name, direction="input", outcome="allowed") == 2
    assert sample(text, "csr_checks_total", policy=name, direction="input", outcome="blocked") == 1
    assert sample(text, "csr_checks_total", policy=name, direction="output", outcome="allowed") == 1
    assert sample(text, "csr_checks_total", policy=name, direction="output", outcome="blocked") == 1
    assert sample(text, "csr_guard_requests_total", replica=guard.url, status="200") - ok_before == \
        len(guard.chat_requests())
    from nemo_csr_rail.rail import runtime_for

    assert runtime_for(rails.config).telemetry.audit.flush(10)
    records = [json.loads(x) for x in audit.read_text().splitlines()]
    got = [r for r in records if "coverage" not in r]  # one line per guard check; the rail calls' summaries apart
    assert [(r["direction"], r["decision"]) for r in got] == [
        ("input", "allow"), ("output", "allow"), ("input", "block"), ("input", "allow"), ("output", "block")]
    summaries = [(r["direction"], r["decision"], r["coverage"]["judged"]) for r in records if "coverage" in r]
    # Colang 2.x also runs the output rail on the input refusal: the plugin's own refusal, skipped (judged 0)
    refusal = [("output", "allow", 0)] if colang2 else []
    assert summaries == [("input", "allow", 1), ("output", "allow", 1), ("input", "block", 1), *refusal,
                         ("input", "allow", 1), ("output", "block", 1)], "each rail call judged its turn's message"


@pytest.mark.usefixtures("metrics_endpoint")
def test_runnable_rails_checks_are_counted(tmp_path, guard):
    pytest.importorskip("langchain_core")
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from nemoguardrails import RailsConfig
    from nemoguardrails.integrations.langchain.runnable_rails import RunnableRails

    port = free_port()
    cfg = write_config(tmp_path / "lc", guard_url=guard.url, main_url=None, plugin=plugin("lc", port),
                       input_flows=['csr check input $policy="lc"'], output_flows=['csr check output $policy="lc"'])
    model = FakeListChatModel(responses=["Your order ships tomorrow.", "Sure, here is EVIL stuff."])
    chain = (ChatPromptTemplate.from_template("Answer briefly: {input}")
             | (RunnableRails(RailsConfig.from_path(str(cfg))) | model) | StrOutputParser())
    assert chain.invoke({"input": "Where is my order?"}) == "Your order ships tomorrow."
    assert REASON_IN in chain.invoke({"input": "tell me about politics"})
    assert "EVIL" not in chain.invoke({"input": "and the next one?"})
    text = scrape(port)
    assert sample(text, "csr_checks_total", policy="lc", direction="input", outcome="allowed") == 2
    assert sample(text, "csr_checks_total", policy="lc", direction="input", outcome="blocked") == 1
    assert sample(text, "csr_checks_total", policy="lc", direction="output", outcome="allowed") == 1
    assert sample(text, "csr_checks_total", policy="lc", direction="output", outcome="blocked") == 1


def test_guardrails_server_several_configs_one_endpoint(tmp_path, guard, main_llm):
    """Three configs in one `nemoguardrails server`: two ask for the same port, one for another. One endpoint
    serves all three; the other port is never bound; both audit into one file."""
    port, other = free_port(), free_port()
    root = tmp_path / "configs"
    audit = tmp_path / "audit.jsonl"
    for name, p in (("shop", port), ("bank", port), ("misc", other)):
        write_config(root / name, guard_url=guard.url, main_url=main_llm.url,
                     plugin=plugin(f"srv_{name}", p, str(audit)),
                     input_flows=[f'csr check input $policy="srv_{name}"'])
    with guardrails_server(root) as base:
        def chat(config_id: str, text: str) -> str:
            r = httpx.post(base + "/v1/chat/completions", timeout=30, json={
                "model": MAIN_MODEL, "messages": [{"role": "user", "content": text}],
                "guardrails": {"config_id": config_id}})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["message"]["content"]

        assert chat("shop", "Where is my order?").startswith("Hello!")
        assert REASON_IN in chat("bank", "tell me about politics")
        assert chat("misc", "hi there").startswith("Hello!")
        text = scrape(port)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{other}/metrics", timeout=2)
    assert sample(text, "csr_checks_total", policy="srv_shop", direction="input", outcome="allowed") == 1
    assert sample(text, "csr_checks_total", policy="srv_bank", direction="input", outcome="blocked") == 1
    assert sample(text, "csr_checks_total", policy="srv_misc", direction="input", outcome="allowed") == 1
    assert sample(text, "csr_check_duration_seconds_count", policy="srv_bank", direction="input") == 1
    # the server process has exited: its atexit hook wrote what was queued
    got = [json.loads(x) for x in audit.read_text().splitlines()]
    got = [r for r in got if "coverage" not in r]  # the checks; each rail call's coverage summary apart
    assert sorted((r["policy"], r["decision"]) for r in got) == [
        ("srv_bank", "block"), ("srv_misc", "allow"), ("srv_shop", "allow")]


def test_overhead_benchmark_runs(tmp_path):
    """benchmarks/telemetry_overhead.py cannot rot: a tiny run (structure only; nothing here is timed)."""
    import subprocess
    import sys

    from tests.support.guardrails_server import ROOT, env

    proc = subprocess.run([sys.executable, "-m", "benchmarks.telemetry_overhead", "--checks", "40", "--rounds", "2"],
                          capture_output=True, text=True, env=env(), cwd=str(ROOT), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "audit records written: 480" in out  # (200 warm-up + 40 measured) x 2 variants, each audited
    assert "OTel API without SDK" in out and "OTel SDK recording every span" in out
