"""The ``csr.check`` span and the W3C trace context sent to the guard, through the OpenTelemetry API only.

The plugin installs no SDK and no exporter: without one in the application every call here is the API's no-op,
and with one the span joins whatever trace is current (a child of the application's or NeMo's span). The guard
request carries ``traceparent`` for the ``csr.check`` span, so a vLLM started with ``--otlp-traces-endpoint`` shows
the server side of the same check in the same trace.

Attribute names follow issue 13; the event follows OpenTelemetry's GenAI conventions (``gen_ai.evaluation.result``).
The reasoning goes into the event's ``gen_ai.evaluation.explanation`` only with text capture on, because it can
paraphrase the user.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from nemo_csr_rail._version import __version__
from nemo_csr_rail.decision import Decision

SPAN_NAME = "csr.check"
EVENT_NAME = "gen_ai.evaluation.result"

# A proxy: it follows whatever TracerProvider the application sets later, before or after this import.
_tracer = trace.get_tracer("nemo_csr_rail", __version__)


def start_check_span(direction: str, policy: str | None) -> tuple[Any, Any]:
    """Start a ``csr.check`` span and make it current; returns (span, token for :func:`end_check_span`).

    Written out rather than ``start_as_current_span``, whose generator-based context manager costs ~10x more. A span
    that does not record (no SDK, or not sampled) is not attached: its context is the caller's, already current.
    """
    span = _tracer.start_span(SPAN_NAME, kind=SpanKind.INTERNAL,
                              attributes={"csr.direction": direction, "csr.policy": policy or ""})
    token = context.attach(trace.set_span_in_context(span)) if span.is_recording() else None
    return span, token


def end_check_span(span: Any, token: Any) -> None:
    if token is not None:
        context.detach(token)
    span.end()


def finish_check_span(span: Any, decision: Decision, *, replica: str | None, requests: int, retries: int,
                      capture_text: bool) -> None:
    """Put the decision on the span (only when an SDK records it: building attributes is not free)."""
    if not span.is_recording():
        return
    failed = decision.failed
    verdict = decision.verdict
    confidence = None if verdict is None else verdict.confidence
    attrs: dict[str, Any] = {
        "csr.policy": decision.policy,
        "csr.decision": decision.outcome.value,
        "csr.failed": failed,
        "csr.cached": decision.cost is not None and decision.cost.cached,
        "csr.guard_requests": requests,
    }
    if decision.monitored:
        attrs["csr.mode"] = "monitor"
        attrs["csr.would_block"] = bool(decision.would_block)
    if retries:
        attrs["csr.retries"] = retries
    if replica:
        attrs["csr.replica"] = replica
    if confidence is not None:
        attrs["csr.confidence"] = float(confidence)
    if decision.skip is not None:
        attrs["csr.skipped"] = decision.skip.describe(decision.direction)  # the metadata's text, as it always was
    if decision.error is not None:
        attrs["csr.error_kind"] = decision.error.value
        span.set_status(Status(StatusCode.ERROR, decision.error.value))
    span.set_attributes(attrs)
    if decision.skip is not None:
        return
    event: dict[str, Any] = {"gen_ai.evaluation.name": decision.policy}
    if decision.error is not None:
        event["error.type"] = decision.error.value
    elif verdict is not None:
        harm = decision.model_label
        if harm is not None:
            event["gen_ai.evaluation.score.label"] = str(harm)
        if confidence is not None:
            event["gen_ai.evaluation.score.value"] = float(confidence)
        if capture_text and verdict.reasoning:
            event["gen_ai.evaluation.explanation"] = str(verdict.reasoning)
    span.add_event(EVENT_NAME, event)


def trace_headers() -> dict[str, str] | None:
    """``traceparent`` (and ``tracestate``/baggage) of the current context, or None when there is no trace to join
    (the common case without an SDK, checked first because it is cheap)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None
