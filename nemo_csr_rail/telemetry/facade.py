"""What the runtime calls once per check, and the hook the HTTP engine reports its requests to.

:meth:`CheckTelemetry.observe` wraps one whole check: it makes the ``csr.check`` span current (so the guard
request's ``traceparent`` names it), runs the check, and then records the decision once — metrics, the audit record
and the span's attributes — from the core's :class:`~nemo_csr_rail.decision.Decision`, the single description of a
decision (its enums are the metric labels). Per check, not per HTTP attempt: retries, failovers, split output requests and long-input windows are
inside one check. The per-request view (replica, status, retries, breaker) comes from :data:`ENGINE_INSTRUMENT`,
which the HTTP engine calls per request; a context variable ties those requests to the check that sent them.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from nemo_csr_rail.completion import Attempt
from nemo_csr_rail.decision import Decision
from nemo_csr_rail.policy import Direction, Policy
from nemo_csr_rail.settings import TelemetrySettings
from nemo_csr_rail.telemetry import metrics, tracing
from nemo_csr_rail.telemetry.audit import AuditWriter, writer_for
from nemo_csr_rail.verdict import RECORD_KEYS as VERDICT_KEYS

#: OpenTelemetry's GenAI switch for message content; also turns on the trace event's explanation
GENAI_CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

Check = Callable[[str | None, Direction, Any, Any], Awaitable[Decision]]


class _Scope:
    """What the engine's requests tell about the check they belong to (filled by :class:`EngineInstrument`)."""

    __slots__ = ("replica", "requests", "retries")

    def __init__(self) -> None:
        self.replica: str | None = None
        self.requests = 0
        self.retries = 0


_scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("csr_check_scope", default=None)


class EngineInstrument:
    """Per-request metrics and trace headers for the HTTP engine; one per process (metrics are process-wide)."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str], Any] = {}
        self._per_replica: dict[str, tuple[Any, Any, Any]] = {}

    def request_headers(self) -> dict[str, str] | None:
        return tracing.trace_headers()

    def attempt(self, attempt: Attempt) -> None:
        key = (attempt.replica, attempt.status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = metrics.GUARD_REQUESTS.labels(*key)
        per = self._per_replica.get(attempt.replica)
        if per is None:
            r = attempt.replica
            per = self._per_replica[r] = (metrics.GUARD_REQUEST_DURATION.labels(r), metrics.GUARD_RETRIES.labels(r),
                                          metrics.BREAKER_OPENED.labels(r))
        metrics.record_request(per, counter, attempt.seconds, attempt.retry,
                               attempt.breaker_after == "open" and attempt.breaker_before != "open")
        scope = _scope.get()
        if scope is not None:
            scope.requests += 1
            scope.retries += attempt.retry
            scope.replica = attempt.replica


ENGINE_INSTRUMENT = EngineInstrument()
_NO_VERDICT: dict[str, Any] = dict.fromkeys(VERDICT_KEYS)  # a failed check's audit record


def policy_sha256(policy: Policy) -> str:
    """Digest of the policy block exactly as the prompt carries it, so any change to what the guard judges shows."""
    return hashlib.sha256(policy.body.encode("utf-8", "surrogatepass")).hexdigest()


class CheckTelemetry:
    """One config's telemetry: its settings, its policies' digests; the series and writers are process-wide."""

    def __init__(self, settings: TelemetrySettings, policies: Mapping[str, Policy]) -> None:
        self.settings = settings
        self.include_text = settings.audit_include_text
        self.capture_explanation = settings.audit_include_text or \
            os.environ.get(GENAI_CAPTURE_ENV, "").strip().lower() == "true"
        self.policy_sha256 = {name: policy_sha256(p) for name, p in policies.items()}
        self.audit: AuditWriter | None = writer_for(settings.audit_log) if settings.audit_log else None
        if self.audit is not None:
            metrics.SCRAPE_TIME.audit_writers.add(self.audit)
        self.metrics_endpoint = (metrics.serve(settings.prometheus_host, settings.prometheus_port)
                                 if settings.prometheus_port is not None else None)
        self._series: dict[tuple[str, str], metrics.PolicySeries] = {}
        self._in_flight = metrics.IN_FLIGHT

    def watch(self, engine: Any) -> None:
        """Report an engine's requests and breaker states (HTTP engines; the embedded one has neither)."""
        if hasattr(engine, "instrument"):
            engine.instrument = ENGINE_INSTRUMENT
        if callable(getattr(engine, "breaker_states", None)):
            metrics.SCRAPE_TIME.engines.add(engine)

    async def observe(self, check: Check, policy_name: str | None, direction: Direction, user_message: Any,
                      bot_message: Any) -> Decision:
        """Run ``check`` inside a ``csr.check`` span and record what it decided. The check itself never raises
        (the runtime turns every failure into a decision); a cancelled check is not a decision and records none."""
        d = direction.value
        scope = _Scope()
        token = _scope.set(scope)
        started, finished = self._in_flight[d]
        next(started)
        start = time.perf_counter()
        span, span_token = tracing.start_check_span(d, policy_name)
        try:
            out = await check(policy_name, direction, user_message, bot_message)
            elapsed = time.perf_counter() - start
            tracing.finish_check_span(span, out, replica=scope.replica, requests=scope.requests,
                                      retries=scope.retries, capture_text=self.capture_explanation)
        finally:
            tracing.end_check_span(span, span_token)
            next(finished)
            _scope.reset(token)
        self._record(out, policy_name, d, elapsed, user_message, bot_message)
        return out

    def record_coverage(self, decision: Decision) -> None:
        """Record one rail call of whole-conversation coverage (docs/coverage.md): ``csr_messages_judged_total`` by
        source, and one audit line with the decision's ``coverage`` facts. The checks it sent to the guard were
        recorded one by one as they ran; an item answered from the cache has no line of its own."""
        coverage = decision.coverage
        if coverage is None:
            return
        policy, direction = decision.policy, decision.direction.value
        if coverage.guard:
            metrics.MESSAGES_JUDGED.labels(policy, direction, "guard").inc(coverage.guard)
        if coverage.cached:
            metrics.MESSAGES_JUDGED.labels(policy, direction, "cache").inc(coverage.cached)
        if self.audit is None:
            return
        verdict, cost = decision.verdict, decision.cost
        self.audit.submit({
            "ts": time.time(),
            "policy": policy,
            "policy_sha256": self.policy_sha256.get(policy),
            "direction": direction,
            "decision": decision.outcome.value,
            "failed": decision.error is not None,
            "error_kind": None if decision.error is None else decision.error.value,
            **(verdict.to_record() if verdict is not None else _NO_VERDICT),
            "latency_ms": None if cost is None else round(cost.latency_ms, 2),
            "cached": cost is not None and cost.cached,
            "mode": "monitor" if decision.monitored else "enforce",
            "would_block": decision.would_block,
            "coverage": coverage.to_record(),  # a rail call's summary: the line that has this key
        })

    def record_skip(self, decision: Decision, policy: str | None = None) -> None:
        """Count a skipped check (``csr_checks_skipped_total``); a skip is no decision of the guard's: no audit."""
        assert decision.skip is not None
        metrics.CHECKS_SKIPPED.labels(policy or decision.policy or "?", decision.direction.value,
                                      decision.skip.value).inc()

    def _record(self, decision: Decision, policy_name: str | None, direction: str, elapsed: float,
                user_message: Any, bot_message: Any) -> None:
        policy = decision.policy or policy_name or "?"
        if decision.skip is not None:
            self.record_skip(decision, policy)
            return
        series = self._series.get((policy, direction))
        if series is None:
            series = self._series[(policy, direction)] = metrics.PolicySeries.of(policy, direction)
        error = decision.error
        blocked = decision.blocked
        verdict, cost = decision.verdict, decision.cost
        cached = cost is not None and cost.cached
        if error is None and decision.would_block:
            outcome = "would_block"  # mode: monitor — judged harmful, not blocked
        else:
            outcome = ("error_" if error is not None else "") + ("blocked" if blocked else "allowed")
        metrics.record_check(series, outcome,
                             elapsed, (policy, direction, error.value) if error is not None else None, cached,
                             (None, None, None) if cost is None else
                             (cost.prompt_tokens, cost.completion_tokens, cost.cached_tokens))
        if self.audit is None:
            return
        record: dict[str, Any] = {
            "ts": time.time(),  # formatted as UTC ISO-8601 by the writer thread, off the check's path
            "policy": policy,
            "policy_sha256": self.policy_sha256.get(policy),
            "direction": direction,
            "decision": decision.outcome.value,
            "failed": error is not None,
            "error_kind": None if error is None else error.value,
            **(verdict.to_record() if verdict is not None else _NO_VERDICT),
            "latency_ms": round(elapsed * 1000, 2),
            "cached": cached,
            "mode": "monitor" if decision.monitored else "enforce",
            "would_block": decision.would_block,  # mode: monitor — what enforce mode would have done
        }
        if self.include_text:
            record["user_text"] = None if user_message is None else str(user_message)
            record["bot_text"] = None if bot_message is None else str(bot_message)
        self.audit.submit(record)
