"""The plugin's Prometheus metrics and the one ``/metrics`` endpoint per process.

Metrics live in ``prometheus_client``'s default registry, so an application that already exposes its own
``/metrics`` (for example with ``prometheus_client.make_asgi_app()``) publishes the guard's series without a second
port; ``prometheus_port`` starts a standalone endpoint for everyone else. The registry is process-wide on purpose:
``nemoguardrails server`` loads several configs into one process, and they must not fight over one port. The first
config that asks for an endpoint starts it; a later config asking for another host or port gets a warning and its
series are served on the first one (``policy`` is the label that tells configs apart). Names and labels are a public
contract (issue 13, docs/operations.md); add metrics, never rename them.

Cost on the check's path: ``prometheus_client`` takes a lock per increment and per observation (about a microsecond
each, a dozen per check). So a check only appends one tuple to a deque (atomic, lock-free), and the updates are
applied in batches off the path: by a daemon thread once a second and by every scrape before it reads (the
:class:`_Pending` collector is registered before the metrics, so a scrape never sees a stale value).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nemo_csr_rail.directions import DIRECTIONS

log = logging.getLogger("nemo_csr_rail")

#: records waiting to be applied: (series, outcome, seconds, error labels or None, cached, (prompt, completion,
#: cached tokens)) per check, (counters of the replica, requests counter, seconds, retry, opened) per request
_checks: deque[tuple[Any, ...]] = deque()
_requests: deque[tuple[Any, ...]] = deque()
MAX_PENDING = 50_000  # applied on the check's path beyond this (the drain thread is not keeping up)
DRAIN_INTERVAL_S = 1.0
_drainer_pid = -1
_drainer_lock = threading.Lock()


def record_check(series: PolicySeries, outcome: str, seconds: float, error: tuple[str, str, str] | None,
                 cached: bool, tokens: tuple[Any, Any, Any]) -> None:
    """Queue one check's metrics (called once per check; O(1), no lock)."""
    _checks.append((series, outcome, seconds, error, cached, tokens))
    if _drainer_pid != os.getpid():
        _start_drainer()
    if len(_checks) > MAX_PENDING:
        drain()


def record_request(per_replica: tuple[Any, Any, Any], requests: Any, seconds: float, retry: bool,
                   opened: bool) -> None:
    _requests.append((per_replica, requests, seconds, retry, opened))
    if len(_requests) > MAX_PENDING:
        drain()


def drain() -> None:
    """Apply every queued record (any thread; each record is popped, so applied, exactly once)."""
    pop = _checks.popleft
    while True:
        try:
            series, outcome, seconds, error, cached, tokens = pop()
        except IndexError:
            break
        series.outcome[outcome].inc()
        series.duration.observe(seconds)
        if error is not None:
            CHECK_ERRORS.labels(*error).inc()
        if cached:
            series.cache_hits.inc()
        for kind, n in zip(("prompt", "completion", "cached"), tokens, strict=True):
            if n:
                series.tokens[kind].inc(n)
    pop = _requests.popleft
    while True:
        try:
            (duration, retries, opened_total), requests, seconds, retry, opened = pop()
        except IndexError:
            break
        requests.inc()
        duration.observe(seconds)
        if retry:
            retries.inc()
        if opened:
            opened_total.inc()


def _start_drainer() -> None:
    global _drainer_pid
    with _drainer_lock:
        if _drainer_pid == os.getpid():
            return
        _drainer_pid = os.getpid()  # after a fork the parent's thread is gone: start one here

        def run() -> None:
            while True:
                time.sleep(DRAIN_INTERVAL_S)
                try:
                    drain()
                except Exception:  # a metrics bug must not kill the thread (nor reach a check)
                    log.exception("telemetry: applying metrics failed")

        threading.Thread(target=run, name="csr-metrics", daemon=True).start()


class _Pending(Collector):
    """Applies the queued records; registered before the metrics, so every collect sees them applied."""

    def collect(self) -> Iterator[Any]:
        drain()
        return iter(())


REGISTRY.register(_Pending())

# A check is one to two model requests: milliseconds on a GPU when cached, up to timeout_s (default 5 s).
CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
OUTCOMES = ("allowed", "blocked", "would_block", "error_blocked", "error_allowed")
BREAKER_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}

CHECKS = Counter("csr_checks_total", "Guard checks by decision: allowed, blocked (the policy said harmful), "
                 "would_block (mode: monitor, judged harmful, not blocked), "
                 "error_blocked / error_allowed (the check failed and on_error decided)",
                 ["policy", "direction", "outcome"])
CHECK_DURATION = Histogram("csr_check_duration_seconds", "Wall time of each guard check, failed ones included",
                           ["policy", "direction"], buckets=CHECK_BUCKETS)
CHECK_ERRORS = Counter("csr_check_errors_total", "Failed guard checks by error_kind (the metadata's)",
                       ["policy", "direction", "kind"])
CHECKS_SKIPPED = Counter("csr_checks_skipped_total", "Checks not sent to the guard: nothing to judge "
                         "(empty_message), the plugin's own refusal (own_refusal), an agent rail call with nothing "
                         "of its kind (no_tool_calls, no_tool_messages, no_retrieved_chunks) or already checked "
                         "this turn (checked_this_turn)",
                         ["policy", "direction", "reason"])
#: per direction, checks (started, finished): ``next()`` on an ``itertools.count`` is atomic and lock-free, and the
#: scrape reads in-flight as their difference, instead of a gauge taking its lock twice per check
IN_FLIGHT = {d: (itertools.count(1), itertools.count(1))
             for d in (spec.metric_label for spec in DIRECTIONS)}
CACHE_HITS = Counter("csr_check_cache_hits_total", "Checks answered from the verdict cache (no model call)",
                     ["policy", "direction"])
MESSAGES_JUDGED = Counter("csr_messages_judged_total", "Items of a request judged by whole-conversation coverage "
                          "(messages and tool calls; docs/coverage.md), by where the verdict came from: guard (a "
                          "guard request in this call) or cache (the judged_messages cache, or an identical item of "
                          "the same request)", ["policy", "direction", "source"])
TOKENS = Counter("csr_guard_tokens_total", "Guard model tokens by type: prompt, completion, cached (prompt "
                 "tokens vLLM's prefix cache served)", ["policy", "direction", "type"])
GUARD_REQUESTS = Counter("csr_guard_requests_total", "HTTP requests to each guard replica by status: the HTTP "
                         "code, or timeout / unreachable / tls_error / protocol_error / cancelled",
                         ["replica", "status"])
GUARD_RETRIES = Counter("csr_guard_retries_total", "Requests that repeated a failed one within the same check "
                        "(a retry or a failover), by the replica that received them", ["replica"])
GUARD_REQUEST_DURATION = Histogram("csr_guard_request_duration_seconds", "Wall time of each guard HTTP request",
                                   ["replica"], buckets=CHECK_BUCKETS)
BREAKER_OPENED = Counter("csr_guard_breaker_opened_total", "Times a replica's circuit breaker opened", ["replica"])


@dataclass
class PolicySeries:
    """The labelled children of one (policy, direction), looked up once: ``labels()`` costs more than ``inc()``."""

    outcome: dict[str, Any]
    duration: Any
    cache_hits: Any
    tokens: dict[str, Any]

    @classmethod
    def of(cls, policy: str, direction: str) -> PolicySeries:
        return cls(outcome={o: CHECKS.labels(policy, direction, o) for o in OUTCOMES},
                   duration=CHECK_DURATION.labels(policy, direction),
                   cache_hits=CACHE_HITS.labels(policy, direction),
                   tokens={t: TOKENS.labels(policy, direction, t) for t in ("prompt", "completion", "cached")})


class _ScrapeTimeCollector(Collector):
    """Values read when Prometheus scrapes: breaker states (they change with time alone, cooldown → half-open) and
    the audit writers' counters (kept as plain ints so the audit module needs no Prometheus)."""

    def __init__(self) -> None:
        self.engines: weakref.WeakSet[Any] = weakref.WeakSet()
        self.audit_writers: weakref.WeakSet[Any] = weakref.WeakSet()

    def collect(self) -> Iterator[Any]:
        in_flight = GaugeMetricFamily("csr_checks_in_flight", "Guard checks running now", labels=["direction"])
        for direction, (started, finished) in IN_FLIGHT.items():
            # count's repr shows its next value without advancing it: started - finished checks are running
            in_flight.add_metric([direction], _peek(started) - _peek(finished))
        yield in_flight
        state = GaugeMetricFamily("csr_guard_breaker_state", "Circuit breaker of each guard replica: 0 closed, "
                                  "1 half-open (one probe allowed), 2 open (skipped until the cooldown ends)",
                                  labels=["replica"])
        seen: set[str] = set()
        for engine in list(self.engines):
            for replica, s in engine.breaker_states().items():
                if replica not in seen:
                    seen.add(replica)
                    state.add_metric([replica], BREAKER_VALUES.get(s, 2.0))
        yield state
        written = CounterMetricFamily("csr_audit_records", "Audit records appended to each audit file",
                                      labels=["file"])
        lost = CounterMetricFamily("csr_audit_errors", "Audit records lost: write_error (disk full, file not "
                                   "writable) or queue_full (the writer fell behind)", labels=["file", "reason"])
        for w in list(self.audit_writers):
            written.add_metric([w.path], w.written)
            lost.add_metric([w.path, "write_error"], w.write_errors)
            lost.add_metric([w.path, "queue_full"], w.dropped)
        yield written
        yield lost


def _peek(counter: itertools.count) -> int:
    return int(repr(counter)[len("count("):-1])


SCRAPE_TIME = _ScrapeTimeCollector()
REGISTRY.register(SCRAPE_TIME)

_endpoint_lock = threading.Lock()
_endpoint: tuple[str, int] | None = None
_server: Any = None


def serve(host: str, port: int) -> str:
    """Start the process's ``/metrics`` endpoint if none runs; returns where metrics are served (or why not).

    Never raises: a port taken by another program must not stop the guard from guarding. It is logged as an error
    (the series are still collected, and ``doctor`` shows the endpoint does not answer).
    """
    global _endpoint, _server
    with _endpoint_lock:
        if _endpoint is not None:
            if _endpoint != (host, port):
                log.warning("telemetry: this process already serves /metrics on %s:%d; the request for %s:%d is "
                            "ignored (one endpoint per process, shared by every config)", *_endpoint, host, port)
            return f"{_endpoint[0]}:{_endpoint[1]}"
        try:
            _server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
        except OSError as exc:
            log.error("telemetry: cannot serve /metrics on %s:%d: %s (the guard keeps running; metrics are not "
                      "exported from this process)", host, port, exc)
            return f"not served: {exc}"
        _endpoint = (host, port)
        log.info("telemetry: serving Prometheus metrics on http://%s:%d/metrics", host, port)
        return f"{host}:{port}"


def endpoint() -> tuple[str, int] | None:
    """(host, port) of this process's ``/metrics`` endpoint, if one was started."""
    return _endpoint


def stop_endpoint() -> None:
    """Stop the endpoint (tests, or an application that hot-reloads with another port)."""
    global _endpoint, _server
    with _endpoint_lock:
        if _server is not None:
            _server.shutdown()
            _server.server_close()
        _endpoint, _server = None, None


def metric_names() -> set[str]:
    """Every series name the registry can expose (``_total``, ``_bucket`` … included): dashboards are tested
    against this."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
        suffixes: Iterable[str] = {"counter": ("_total", "_created"),
                                   "histogram": ("_bucket", "_sum", "_count", "_created")}.get(family.type, ())
        names.update(family.name + s for s in suffixes)
    return names
