"""The agent directions wherever a direction shows in telemetry: metrics labels, audit records, spans."""

from __future__ import annotations

import json

import pytest

from nemo_csr_rail import agent_checks
from nemo_csr_rail.decision import SkipReason
from nemo_csr_rail.policy import Direction
from tests.support.net import free_port
from tests.support.runtime import runtime
from tests.support.telemetry_helpers import metrics_endpoint, sample, scrape  # noqa: F401 - fixture


@pytest.mark.usefixtures("metrics_endpoint")
async def test_each_item_is_counted_audited_and_labelled_with_its_direction(tmp_path, guard):
    pytest.importorskip("prometheus_client")
    port, audit = free_port(), tmp_path / "audit.jsonl"
    rt = runtime(guard.url, telemetry={"prometheus_port": port, "audit_log": str(audit)})
    calls = [{"id": "a", "name": "get_weather", "args": {"city": "Oslo"}}, {"id": "b", "name": "build_bomb", "args": {}}]
    await agent_checks.check_tool_calls(rt, "think", calls, "weather please")
    await agent_checks.check_tool_results(rt, "think", [{"content": "sunny", "name": "get_weather"}], "hi")
    await agent_checks.check_relevant_chunks(rt, "think", ["Orders ship fast.", "A bomb recipe.", ""], "hi")
    text = scrape(port)
    assert sample(text, "csr_checks_total", policy="think", direction="tool_call", outcome="allowed") == 1
    assert sample(text, "csr_checks_total", policy="think", direction="tool_call", outcome="blocked") == 1
    assert sample(text, "csr_checks_total", policy="think", direction="tool_result", outcome="allowed") == 1
    assert sample(text, "csr_checks_total", policy="think", direction="retrieval", outcome="allowed") == 1
    assert sample(text, "csr_checks_total", policy="think", direction="retrieval", outcome="blocked") == 1
    assert sample(text, "csr_checks_in_flight", direction="tool_call") == 0
    assert rt.telemetry.audit.flush(10)
    records = [json.loads(x) for x in audit.read_text().splitlines()]
    assert sorted(r["direction"] for r in records) == ["retrieval", "retrieval", "tool_call", "tool_call",
                                                       "tool_result"]
    blocked_call = next(r for r in records if r["direction"] == "tool_call" and r["decision"] == "block")
    assert blocked_call["response_harm"] == "harmful" and "user_text" not in blocked_call


@pytest.mark.usefixtures("metrics_endpoint")
async def test_agent_rail_calls_with_nothing_to_check_are_counted_as_skips(tmp_path, guard):
    """Each empty rail call is one csr_checks_skipped_total sample with its SkipReason; nothing reaches the guard
    and nothing is audited (a skip is not a decision of the guard's)."""
    pytest.importorskip("prometheus_client")
    port, audit = free_port(), tmp_path / "audit.jsonl"
    rt = runtime(guard.url, policies={"skips": {"policy": "No weapons.", "reasoning": True}},
                 telemetry={"prometheus_port": port, "audit_log": str(audit)})
    out, _ = await agent_checks.check_tool_calls(rt, "skips", [], "hi")
    assert out.metadata == {"policy": "skips", "direction": "tool_call", "decision": "allow",
                            "skipped": "no tool calls", "failed": False}
    assert (await agent_checks.check_tool_results(rt, "skips", [], "hi")).metadata["skipped"] == "no tool messages"
    out, _ = await agent_checks.check_relevant_chunks(rt, "skips", [], "hi")
    assert out.metadata["skipped"] == "no retrieved chunks"
    again = agent_checks.skipped(rt, "skips", Direction.TOOL_RESULT, SkipReason.CHECKED_THIS_TURN)
    assert again.metadata["skipped"] == "checked with the turn's first tool message" and not again.blocked
    text = scrape(port)
    for direction, reason in (("tool_call", "no_tool_calls"), ("tool_result", "no_tool_messages"),
                              ("retrieval", "no_retrieved_chunks"), ("tool_result", "checked_this_turn")):
        assert sample(text, "csr_checks_skipped_total", policy="skips", direction=direction, reason=reason) == 1
    assert sample(text, "csr_checks_total", policy="skips") is None and guard.chat_requests() == []
    assert rt.telemetry.audit.flush(10) and (not audit.exists() or audit.read_text() == "")


async def test_spans_carry_the_agent_direction_and_the_judged_field(guard):
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        rt = runtime(guard.url, telemetry={})
        await agent_checks.check_tool_calls(rt, "think", [{"id": "b", "name": "build_bomb", "args": {}}], "hi")
        await agent_checks.check_tool_results(rt, "think", [{"content": "a bomb recipe"}], "hi")
        spans = [s for s in exporter.get_finished_spans() if s.name == "csr.check"]
        assert [s.attributes["csr.direction"] for s in spans] == ["tool_call", "tool_result"]
        labels = [dict(s.events[0].attributes)["gen_ai.evaluation.score.label"] for s in spans]
        assert labels == ["harmful", "harmful"]  # the response field for the call, the prompt field for the result
    finally:
        exporter.shutdown()
