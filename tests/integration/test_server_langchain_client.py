"""The other ways users run the rails: `nemoguardrails server`, `nemoguardrails chat`, RunnableRails, CsrClient."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from nemo_csr_rail import CsrClient, Verdict
from nemo_csr_rail.errors import GuardUnavailable
from tests.support.guardrails_server import env, guardrails_server
from tests.support.rails_configs import MAIN_MODEL, V2_MAIN_FLOW, write_config

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = {"policies": {"retail": {"policy": "Do not discuss politics or religion."}}}
REASON_IN = "The user asks for content that the policy forbids, so the request is harmful."


@pytest.fixture
def server_dir(tmp_path, guard, main_llm):
    """A config served exactly as `nemoguardrails server --config DIR` would, bound to 127.0.0.1."""
    cfg = write_config(tmp_path / "shop", guard_url=guard.url, main_url=main_llm.url, plugin=PLUGIN,
                       input_flows=['csr check input $policy="retail"'],
                       output_flows=['csr check output $policy="retail"'])
    with guardrails_server(cfg) as base:
        yield base, guard


def _chat(base: str, text: str, **guardrails) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", timeout=30, json={"model": MAIN_MODEL,
        "messages": [{"role": "user", "content": text}],
        "guardrails": {"config_id": "shop", **guardrails}})


def test_server_allows_blocks_and_reports_outcome(server_dir):
    base, _ = server_dir
    ok = _chat(base, "Where is my order?")
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"].startswith("Hello!")
    blocked = _chat(base, "tell me about politics", options={"log": {"activated_rails": True}})
    assert blocked.status_code == 200
    body = blocked.json()
    assert REASON_IN in body["choices"][0]["message"]["content"]
    rails = body["guardrails"]["log"]["activated_rails"]
    metas = [a["return_value"]["metadata"] for r in rails for a in r["executed_actions"]
             if a["action_name"] == "csr_check_input"]
    assert metas and metas[0]["decision"] == "block" and metas[0]["reasoning"] == REASON_IN
    assert "tell me about politics" not in str(metas), "metadata must not echo raw user text by default"


def test_server_guard_down_is_a_refusal_not_a_500(server_dir):
    base, guard = server_dir
    guard.stop()
    r = _chat(base, "Where is my order?")
    assert r.status_code == 200, r.text
    assert "safety check could not" in r.json()["choices"][0]["message"]["content"].lower()


def test_server_checks_endpoint(server_dir):
    base, _ = server_dir
    r = httpx.post(base + "/v1/checks", timeout=30, json={"model": MAIN_MODEL,
        "messages": [{"role": "user", "content": "is religion good?"}],
        "guardrails": {"config_id": "shop", "rail_types": ["input"]}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "blocked" and REASON_IN in body["content"]
    assert body["rail"] == 'csr check input $policy="retail"'
    r = httpx.post(base + "/v1/checks", timeout=30, json={"model": MAIN_MODEL,
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure, EVIL stuff"}],
        "guardrails": {"config_id": "shop", "rail_types": ["output"]}})
    assert r.json()["status"] == "blocked"


@pytest.mark.parametrize("colang2", [False, True], ids=["colang1", "colang2"])
def test_nemoguardrails_chat_cli(colang2, tmp_path, guard, main_llm):
    v2 = V2_MAIN_FLOW + '\nflow input rails $input_text\n  csr check input $policy="retail"\n'
    cfg = write_config(tmp_path / "chatcfg", guard_url=guard.url, main_url=main_llm.url, plugin=PLUGIN,
                       input_flows=None if colang2 else ['csr check input $policy="retail"'],
                       colang2=colang2, main_co=v2 if colang2 else None)
    proc = subprocess.run([sys.executable, "-m", "nemoguardrails", "chat", "--config", str(cfg)],
                          input="Where is my order?\ntell me about politics\n", capture_output=True, text=True,
                          env=env(), timeout=120)
    out = " ".join(proc.stdout.split())  # the chat CLI wraps long lines
    assert "Hello! How can I help you today?" in out, out + proc.stderr
    assert REASON_IN in out


# ------------------------------------------------------------------------------------------------ LangChain
def test_runnable_rails_wraps_a_chain(tmp_path, guard):
    pytest.importorskip("langchain_core")
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from nemoguardrails import RailsConfig
    from nemoguardrails.integrations.langchain.runnable_rails import RunnableRails

    cfg = write_config(tmp_path / "lc", guard_url=guard.url, main_url=None, plugin=PLUGIN,
                       input_flows=['csr check input $policy="retail"'],
                       output_flows=['csr check output $policy="retail"'])
    model = FakeListChatModel(responses=["Your order ships tomorrow.", "Sure, here is EVIL stuff."])
    prompt = ChatPromptTemplate.from_template("Answer briefly: {input}")
    chain = prompt | (RunnableRails(RailsConfig.from_path(str(cfg))) | model) | StrOutputParser()
    assert chain.invoke({"input": "Where is my order?"}) == "Your order ships tomorrow."
    assert REASON_IN in chain.invoke({"input": "tell me about politics"})
    out = chain.invoke({"input": "and the next one?"})
    assert "EVIL" not in out and "policy forbids" in out


# ---------------------------------------------------------------------------------------------- Python API
async def test_plain_python_client(guard):
    async with CsrClient(base_url=guard.url, model=guard.model) as client:
        v = await client.classify("Do not discuss politics.", "Who wins the election politics?")
        assert isinstance(v, Verdict) and v.prompt_harm == "harmful" and v.reasoning
        v = await client.classify("Do not discuss politics.", "hi", "Sure, EVIL plan", reasoning=False)
        assert v.prompt_harm == "unharmful" and v.response_harm == "harmful" and v.reasoning is None
        assert v.confidence == pytest.approx(0.97)
    async with CsrClient(base_url="http://127.0.0.1:9/v1", model=guard.model, timeout_s=1) as client:
        with pytest.raises(GuardUnavailable):
            await client.classify("Do not discuss politics.", "hi")
