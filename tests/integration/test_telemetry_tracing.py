"""OpenTelemetry (issue 13): a ``csr.check`` span per check, joined to the caller's trace, and W3C ``traceparent``
on the guard request, checked on what the stand-in received. Spans are read with the SDK's in-memory exporter."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from nemo_csr_rail.policy import Direction
from tests.support.guardrails_server import env
from tests.support.net import dead_url
from tests.support.runtime import POLITICS, runtime
from tests.support.standin import Fault

pytest.importorskip("opentelemetry.sdk")


@pytest.fixture(scope="module")
def provider():
    """The application's SDK (set once per process, as an application would)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        trace.set_tracer_provider(current)
    return current


@pytest.fixture
def spans(provider):
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    exporter.clear()
    exporter.shutdown()  # the processor stays registered but exports nothing any more


def traceparent(headers: dict[str, str]) -> tuple[str, str]:
    version, trace_id, parent_id, flags = headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1, "sampled"
    return trace_id, parent_id


def check_spans(exporter) -> list:
    return [s for s in exporter.get_finished_spans() if s.name == "csr.check"]


async def test_span_is_a_child_of_the_callers_span_and_the_guard_request_carries_its_context(spans, guard):
    from opentelemetry import trace

    rt = runtime(guard.url, telemetry={})
    with trace.get_tracer("app").start_as_current_span("app.turn") as app:
        out = await rt.check("think", Direction.INPUT, "tell me about politics")
    (span,) = check_spans(spans)
    assert span.parent.span_id == app.get_span_context().span_id
    assert span.context.trace_id == app.get_span_context().trace_id
    a = span.attributes
    assert (a["csr.policy"], a["csr.direction"], a["csr.decision"], a["csr.failed"]) == \
        ("think", "input", "block", False)
    assert a["csr.cached"] is False and a["csr.replica"] == guard.url and a["csr.guard_requests"] == 1
    assert "csr.error_kind" not in a
    (event,) = span.events
    assert event.name == "gen_ai.evaluation.result"
    assert dict(event.attributes) == {"gen_ai.evaluation.name": "think", "gen_ai.evaluation.score.label": "harmful"}
    assert out.metadata["reasoning"] not in str(span.to_json()), "reasoning only with text capture on"
    trace_id, parent_id = traceparent(guard.headers_seen[-1])
    assert trace_id == f"{span.context.trace_id:032x}" and parent_id == f"{span.context.span_id:016x}"


async def test_split_output_check_is_one_span_and_both_requests_carry_it(spans, guard):
    rt = runtime(guard.url, telemetry={})
    await rt.check("fast", Direction.OUTPUT, "hi", "Sure, EVIL stuff")
    (span,) = check_spans(spans)
    assert span.parent is None  # no caller span: a root of its own trace
    assert span.attributes["csr.guard_requests"] == 2 and span.attributes["csr.confidence"] == pytest.approx(0.97)
    ids = {traceparent(h) for h in guard.headers_seen}
    assert ids == {(f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}")}
    (event,) = span.events
    assert event.attributes["gen_ai.evaluation.score.label"] == "harmful"
    assert event.attributes["gen_ai.evaluation.score.value"] == pytest.approx(0.97)


async def test_retries_are_on_the_span(spans, guard):
    rt = runtime(guard.url, telemetry={})
    guard.inject(Fault(kind="status", status=503))
    await rt.check("think", Direction.INPUT, "hello")
    (span,) = check_spans(spans)
    assert span.attributes["csr.retries"] == 1 and span.attributes["csr.guard_requests"] == 2
    assert len({traceparent(h) for h in guard.headers_seen}) == 1


async def test_a_failed_check_is_an_error_span_with_its_kind(spans):
    from opentelemetry.trace import StatusCode

    rt = runtime(dead_url(), max_retries=0, telemetry={},
                 policies={"p": {"policy": POLITICS, "on_error": "allow"}})
    await rt.check("p", Direction.INPUT, "hello")
    (span,) = check_spans(spans)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["csr.failed"] is True and span.attributes["csr.error_kind"] == "guard_unavailable"
    assert span.attributes["csr.decision"] == "allow"
    (event,) = span.events
    assert event.attributes["error.type"] == "guard_unavailable"
    assert "gen_ai.evaluation.score.label" not in event.attributes


@pytest.mark.parametrize("how", ["audit_include_text", "genai_env"])
async def test_explanation_only_with_text_capture(how, spans, guard, monkeypatch):
    if how == "genai_env":
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
        rt = runtime(guard.url, telemetry={})
    else:
        rt = runtime(guard.url, telemetry={"audit_include_text": True})
    out = await rt.check("think", Direction.INPUT, "tell me about politics")
    (span,) = check_spans(spans)
    assert span.events[0].attributes["gen_ai.evaluation.explanation"] == out.metadata["reasoning"]


def test_without_an_sdk_nothing_is_recorded_and_no_traceparent_is_sent(tmp_path):
    """A fresh interpreter with the API only (as an application without an SDK): spans are no-ops."""
    code = textwrap.dedent("""
        import asyncio
        from opentelemetry import trace
        from nemo_csr_rail.policy import Direction
        from nemo_csr_rail.telemetry import tracing
        from tests.support.runtime import runtime
        from tests.support.standin import StandIn

        with StandIn() as guard:
            rt = runtime(guard.url, telemetry={})
            span, token = tracing.start_check_span("input", "think")
            assert not span.is_recording() and token is None
            tracing.end_check_span(span, token)
            out = asyncio.run(rt.check("think", Direction.INPUT, "politics"))
            assert out.metadata["decision"] == "block"
            assert "traceparent" not in guard.headers_seen[-1], guard.headers_seen[-1]
            print("OK", type(trace.get_tracer_provider()).__name__)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=120,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK ProxyTracerProvider"


@pytest.mark.parametrize("colang2", [False, True], ids=["colang1", "colang2"])
async def test_llmrails_checks_join_the_applications_trace(colang2, spans, tmp_path, guard, main_llm):
    from opentelemetry import trace

    from tests.support.e2e_helpers import ask, rails_for
    from tests.support.rails_configs import V2_MAIN_FLOW, write_config

    plugin = {"policies": {"retail": {"policy": POLITICS}}, "telemetry": {}}
    v2 = V2_MAIN_FLOW + '\nflow input rails $input_text\n  csr check input $policy="retail"\n'
    cfg = write_config(tmp_path / "cfg", guard_url=guard.url, main_url=main_llm.url, plugin=plugin, colang2=colang2,
                       input_flows=None if colang2 else ['csr check input $policy="retail"'],
                       main_co=v2 if colang2 else None)
    rails = rails_for(cfg)
    with trace.get_tracer("app").start_as_current_span("app.request") as app:
        await ask(rails, "tell me about politics")
    (span,) = check_spans(spans)
    assert span.parent.span_id == app.get_span_context().span_id
    assert span.attributes["csr.decision"] == "block"
    assert traceparent(guard.headers_seen[-1])[0] == f"{app.get_span_context().trace_id:032x}"


async def test_a_monitor_mode_check_carries_would_block_on_its_span(spans, guard):
    rt = runtime(guard.url, telemetry={}, policies={"p": {"policy": POLITICS, "mode": "monitor"}})
    out = await rt.check("p", Direction.INPUT, "Who should I vote for?")
    assert out.metadata["decision"] == "allow"
    (span,) = check_spans(spans)
    assert span.attributes["csr.decision"] == "allow" and span.attributes["csr.mode"] == "monitor"
    assert span.attributes["csr.would_block"] is True
