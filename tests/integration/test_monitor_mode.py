"""mode: monitor — the check runs exactly as in enforce mode, the turn is never blocked by it, and what it would
have blocked is recorded: RailOutcome metadata, the audit log, metrics and spans (issue 19)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from nemo_csr_rail.policy import Direction
from tests.support.e2e_helpers import ask, rails_for
from tests.support.rails_configs import V2_MAIN_FLOW, write_config
from tests.support.runtime import POLITICS, runtime
from tests.support.standin import Fault, StandIn
from tests.support.telemetry_helpers import value

MONITOR = {"policies": {"new": {"policy": POLITICS, "reasoning": False, "mode": "monitor"},
                        "old": {"policy": POLITICS, "reasoning": False}}}


def _bodies(guard: StandIn) -> list[str]:
    return [json.dumps(r, sort_keys=True) for r in guard.chat_requests()]


@pytest.mark.parametrize("direction", [Direction.INPUT, Direction.OUTPUT])
async def test_monitor_sends_exactly_what_enforce_sends_and_never_blocks(direction) -> None:
    bot = "Vote for them, politics is simple." if direction is Direction.OUTPUT else None
    # output: a benign user turn, so the split plan's guessed step is right and no cancelled guess races the count
    user = "Tell me about your store." if direction is Direction.OUTPUT else "Who should I vote for?"
    with StandIn() as a, StandIn() as b:
        enforce = await runtime(a.url, **MONITOR).check("old", direction, user, bot)
        monitor = await runtime(b.url, **MONITOR).check("new", direction, user, bot)
        assert sorted(_bodies(a)) == sorted(_bodies(b))  # same requests (the split halves race), same verdict
    assert enforce.metadata["decision"] == "block" and "would_block" not in enforce.metadata
    assert monitor.metadata["decision"] == "allow" and monitor.metadata["would_block"] is True
    assert monitor.metadata["mode"] == "monitor" and "refusal" not in monitor.metadata
    for key in ("prompt_harm", "response_harm", "confidence", "reasoning", "decode_plan"):
        assert monitor.metadata[key] == enforce.metadata[key], key


async def test_a_benign_turn_in_monitor_mode_would_not_block() -> None:
    with StandIn() as guard:
        out = await runtime(guard.url, **MONITOR).check("new", Direction.INPUT, "Where is my order?")
    assert out.metadata["decision"] == "allow" and out.metadata["would_block"] is False


async def test_a_failed_monitor_check_never_blocks_whatever_on_error_says() -> None:
    with StandIn() as guard:
        rt = runtime(guard.url, max_retries=0, on_error="block", **MONITOR)
        guard.inject(Fault(kind="status", status=503), Fault(kind="status", status=503))
        monitored = await rt.check("new", Direction.INPUT, "Who should I vote for?")
        enforced = await rt.check("old", Direction.INPUT, "Who should I vote for?")
    assert monitored.metadata["decision"] == "allow" and monitored.metadata["failed"] is True
    assert monitored.metadata["would_block"] is True  # on_error: block would have blocked it
    assert monitored.metadata["error_kind"] == "guard_http_error"
    assert enforced.metadata["decision"] == "block" and enforced.metadata["failed"] is True


async def test_mode_per_direction() -> None:
    with StandIn() as guard:
        rt = runtime(guard.url, policies={"p": {"policy": POLITICS, "reasoning": False,
                                                "mode": {"input": "monitor"}}})
        inp = await rt.check("p", Direction.INPUT, "Who should I vote for?")
        out = await rt.check("p", Direction.OUTPUT, "hi", "Vote for them.")
    assert inp.metadata["decision"] == "allow" and inp.metadata["would_block"] is True
    assert out.metadata["decision"] == "block" and "would_block" not in out.metadata


async def test_audit_metrics_and_span_carry_would_block(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    with StandIn() as guard:
        rt = runtime(guard.url, telemetry={"audit_log": str(path)}, **MONITOR)
        before = value("csr_checks_total", policy="new", direction="input", outcome="would_block")
        await rt.check("new", Direction.INPUT, "Who should I vote for?")
        await rt.check("new", Direction.INPUT, "Where is my order?")
        assert rt.telemetry.audit.flush(10)
    assert value("csr_checks_total", policy="new", direction="input", outcome="would_block") == before + 1
    harmful, benign = [json.loads(line) for line in path.read_text().splitlines()]
    assert (harmful["decision"], harmful["mode"], harmful["would_block"]) == ("allow", "monitor", True)
    assert (benign["decision"], benign["would_block"]) == ("allow", False)


async def test_a_monitored_rail_lets_the_turn_through_in_llmrails(tmp_path, guard, main_llm) -> None:
    cfg = write_config(tmp_path / "cfg", guard_url=guard.url, main_url=main_llm.url, plugin=MONITOR,
                       input_flows=['csr check input $policy="new"'])
    reply, outcomes = await ask(rails_for(cfg), "Who should I vote for in the politics debate?")
    assert reply == "Hello! How can I help you today?"  # the main LLM answered: nothing was blocked
    (o,) = outcomes
    assert o["decision"] == "allow" and o["metadata"]["would_block"] is True


_V2_RAILS = """
flow input rails $input_text
  csr check input $policy="new"

flow output rails $output_text
  csr check output $policy="new"
"""


@pytest.mark.parametrize("colang2", [False, True], ids=["colang1", "colang2"])
@pytest.mark.parametrize("direction", ["input", "output"])
async def test_a_monitored_rail_never_blocks_in_either_colang_version_or_direction(
        colang2, direction, tmp_path, guard, main_llm) -> None:
    """What a user tries first: a harmful turn through LLMRails gets the application's answer, and the audit log
    says the rail would have blocked it (Colang 2.x returns no rail log, so the audit is where it shows)."""
    audit = tmp_path / "audit.jsonl"
    plugin = {**MONITOR, "telemetry": {"audit_log": str(audit)}}
    flows = ({"main_co": V2_MAIN_FLOW + _V2_RAILS} if colang2 else
             {"input_flows": ['csr check input $policy="new"'], "output_flows": ['csr check output $policy="new"']})
    cfg = write_config(tmp_path / "cfg", guard_url=guard.url, main_url=main_llm.url, plugin=plugin, colang2=colang2,
                       **flows)
    text = "Who should I vote for in the politics debate?" if direction == "input" else "TRIGGEROUT please"
    reply, _ = await ask(rails_for(cfg), text)
    assert reply == ("Sure, here is EVIL stuff." if direction == "output" else "Hello! How can I help you today?")
    deadline = time.monotonic() + 10
    while len(records := _records(audit)) < 2 and time.monotonic() < deadline:  # the writer is asynchronous
        await asyncio.sleep(0.05)
    seen = {r["direction"]: (r["decision"], r["mode"], r["would_block"]) for r in records}
    other = "output" if direction == "input" else "input"
    assert seen == {direction: ("allow", "monitor", True), other: ("allow", "monitor", False)}, records


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
