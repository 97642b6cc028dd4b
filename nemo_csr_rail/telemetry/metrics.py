"""The plugin's Prometheus metrics and the one ``/metrics`` endpoint per process.

Metrics live in ``prometheus_client``'s default registry, so an application that already exposes its own
``/metrics`` (for example with ``prometheus_client.make_asgi_app()``) publishes the guard's series without a second
port; ``prometheus_port`` starts a standalone endpoint for everyone else. The registry is process-wide on purpose:
``nemoguardrails server`` loads several configs into one process, and they must not fight over one port. The first
config that asks for an endpoint starts it; a later config asking for another host or port gets a warning and its
series are served on the first one (``policy`` is the label that tells configs apart). Names and labels are a public
contract (issue 13, docs/operations.md); add metrics, never rename them.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("nemo_csr_rail")

# A check is one to two model requests: milliseconds on a GPU when cached, up to timeout_s (default 5 s).
CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
OUTCOMES = ("allowed", "blocked", "error_blocked", "error_allowed")
BREAKER_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}

CHECKS = Counter("csr_checks_total", "Guard checks by decision: allowed, blocked (the policy said harmful), "
                 "error_blocked / error_allowed (the check failed and on_error decided)",
                 ["policy", "direction", "outcome"])
CHECK_DURATION = Histogram("csr_check_duration_seconds", "Wall time of each guard check, failed ones included",
                           ["policy", "direction"], buckets=CHECK_BUCKETS)
CHECK_ERRORS = Counter("csr_check_errors_total", "Failed guard checks by error_kind (the metadata's)",
                       ["policy", "direction", "kind"])
CHECKS_SKIPPED = Counter("csr_checks_skipped_total", "Checks not sent to the guard: nothing to judge "
                         "(empty_message) or the plugin's own refusal (own_refusal)",
                         ["policy", "direction", "reason"])
CHECKS_IN_FLIGHT = Gauge("csr_checks_in_flight", "Guard checks running now", ["direction"])
CACHE_HITS = Counter("csr_check_cache_hits_total", "Checks answered from the verdict cache (no model call)",
                     ["policy", "direction"])
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
