"""Prometheus metrics per check (issue 13): real checks against the vLLM-shaped stand-in, scraped over a socket."""

from __future__ import annotations

import logging
import re
import sys

import httpx
import pytest

from nemo_csr_rail.errors import ConfigError
from nemo_csr_rail.policy import Direction
from nemo_csr_rail.settings import parse_plugin_settings
from tests.support.net import dead_url, free_port
from tests.support.runtime import POLITICS, runtime
from tests.support.standin import Fault
from tests.support.telemetry_helpers import metrics_endpoint, sample, scrape, value  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("metrics_endpoint")


def policies(prefix: str, **extra: object) -> dict[str, object]:
    """Policy names unique to one test: the registry is process-wide, so series of other tests never mix in."""
    return {f"{prefix}_think": {"policy": POLITICS, "reasoning": True, **extra},
            f"{prefix}_fast": {"policy": POLITICS, "reasoning": False, **extra}}


# ------------------------------------------------------------------------------------------------------ config
def test_telemetry_keys_validate(tmp_path):
    s = parse_plugin_settings({"policies": {"p": {"policy": POLITICS}}, "telemetry": {
        "prometheus_port": 9464, "audit_log": str(tmp_path / "audit.jsonl"), "audit_include_text": True}})
    assert s.telemetry is not None and s.telemetry.prometheus_host == "127.0.0.1"
    assert s.telemetry.prometheus_port == 9464 and s.telemetry.audit_include_text is True
    assert parse_plugin_settings({"policies": {"p": {"policy": POLITICS}}}).telemetry is None


@pytest.mark.parametrize(("section", "key", "message"), [
    ({"prometheus_prot": 9464}, "telemetry.prometheus_prot", "unknown key"),
    ({"prometheus_port": 0}, "telemetry.prometheus_port", "greater than or equal to 1"),
    ({"prometheus_port": 70000}, "telemetry.prometheus_port", "less than or equal to 65535"),
    ({"audit_log": "/nonexistent-dir-csr/audit.jsonl"}, "telemetry.audit_log", "does not exist"),
    ({"audit_log": "/tmp"}, "telemetry.audit_log", "not a directory"),
])
def test_bad_telemetry_section_names_the_key(section, key, message):
    with pytest.raises(ConfigError) as exc:
        parse_plugin_settings({"policies": {"p": {"policy": POLITICS}}, "telemetry": section})
    assert exc.value.key == key and message in exc.value.message


@pytest.mark.parametrize("missing", ["prometheus_client", "opentelemetry"])
def test_without_the_extra_a_telemetry_section_fails_at_load_naming_it(missing, monkeypatch):
    monkeypatch.setitem(sys.modules, missing, None)  # what `import` sees when the package is not installed
    with pytest.raises(ConfigError) as exc:
        parse_plugin_settings({"policies": {"p": {"policy": POLITICS}}, "telemetry": {"prometheus_port": 9464}})
    assert exc.value.key == "telemetry"
    assert "pip install '.[telemetry]' in a clone" in exc.value.message and missing in exc.value.message


async def test_without_the_extra_and_without_the_section_the_plugin_runs_as_before(monkeypatch, guard):
    for name in ("prometheus_client", "opentelemetry"):
        monkeypatch.setitem(sys.modules, name, None)
    rt = runtime(guard.url)
    assert rt.telemetry is None
    out = await rt.check("think", Direction.INPUT, "tell me about politics")
    assert out.metadata["decision"] == "block"
    assert "traceparent" not in guard.headers_seen[-1]


# ---------------------------------------------------------------------------------------------- per check
async def test_each_outcome_is_counted_once_per_check_and_scraped(tmp_path, guard):
    port = free_port()
    rt = runtime(guard.url, telemetry={"prometheus_port": port}, policies=policies("oc"))
    ok_before = value("csr_guard_requests_total", replica=guard.url, status="200")
    assert rt.telemetry.metrics_endpoint == f"127.0.0.1:{port}"
    await rt.check("oc_think", Direction.INPUT, "Where is my order?")
    await rt.check("oc_think", Direction.INPUT, "tell me about politics")
    await rt.check("oc_fast", Direction.OUTPUT, "hi", "Sure, EVIL stuff")  # split: two requests, one check
    text = scrape(port)
    assert sample(text, "csr_checks_total", policy="oc_think", direction="input", outcome="allowed") == 1
    assert sample(text, "csr_checks_total", policy="oc_think", direction="input", outcome="blocked") == 1
    assert sample(text, "csr_checks_total", policy="oc_fast", direction="output", outcome="blocked") == 1
    assert sample(text, "csr_check_duration_seconds_count", policy="oc_think", direction="input") == 2
    assert sample(text, "csr_check_duration_seconds_count", policy="oc_fast", direction="output") == 1
    assert sample(text, "csr_guard_requests_total", replica=guard.url, status="200") - ok_before == 4
    assert len(guard.requests) == 4
    assert sample(text, "csr_guard_tokens_total", policy="oc_fast", direction="output", type="prompt") > 0
    assert sample(text, "csr_guard_tokens_total", policy="oc_fast", direction="output", type="completion") == 2
    assert sample(text, "csr_checks_in_flight", direction="input") == 0
    assert sample(text, "csr_guard_breaker_state", replica=guard.url) == 0


async def test_failed_checks_count_as_error_blocked_or_error_allowed_with_their_kind(guard):
    port = free_port()
    plugin_policies = {"eb": {"policy": POLITICS}, "ea": {"policy": POLITICS, "on_error": "allow"}}
    rt = runtime(dead_url(), telemetry={"prometheus_port": port}, policies=plugin_policies, max_retries=0)
    blocked = await rt.check("eb", Direction.INPUT, "hello")
    allowed = await rt.check("ea", Direction.INPUT, "hello")
    assert blocked.metadata["failed"] and blocked.metadata["decision"] == "block"
    assert allowed.metadata["failed"] and allowed.metadata["decision"] == "allow"
    text = scrape(port)
    assert sample(text, "csr_checks_total", policy="eb", direction="input", outcome="error_blocked") == 1
    assert sample(text, "csr_checks_total", policy="ea", direction="input", outcome="error_allowed") == 1
    assert sample(text, "csr_checks_total", policy="ea", direction="input", outcome="allowed") == 0
    for p in ("eb", "ea"):
        assert sample(text, "csr_check_errors_total", policy=p, direction="input", kind="guard_unavailable") == 1
        assert sample(text, "csr_check_duration_seconds_count", policy=p, direction="input") == 1


async def test_unparseable_verdict_is_an_error_of_its_kind(guard):
    port = free_port()
    rt = runtime(guard.url, telemetry={"prometheus_port": port}, policies={"vp": {"policy": POLITICS}})
    guard.inject(Fault(kind="text", text="Prompt harm: maybe"))
    out = await rt.check("vp", Direction.INPUT, "hello")
    assert out.metadata["error_kind"] == "verdict_parse_error"
    text = scrape(port)
    assert sample(text, "csr_check_errors_total", policy="vp", direction="input", kind="verdict_parse_error") == 1
    assert sample(text, "csr_checks_total", policy="vp", direction="input", outcome="error_blocked") == 1


async def test_retries_failover_and_breaker_are_reported_per_replica(guard):
    port = free_port()
    dead = dead_url()
    rt = runtime([dead, guard.url], telemetry={"prometheus_port": port}, policies={"rp": {"policy": POLITICS}},
                 breaker={"threshold": 1, "cooldown_s": 60}, replica_routing="round_robin")  # the dead one first
    series = {"dead_unreachable": ("csr_guard_requests_total", {"replica": dead, "status": "unreachable"}),
              "dead_opened": ("csr_guard_breaker_opened_total", {"replica": dead}),
              "live_503": ("csr_guard_requests_total", {"replica": guard.url, "status": "503"}),
              "live_200": ("csr_guard_requests_total", {"replica": guard.url, "status": "200"}),
              "live_retries": ("csr_guard_retries_total", {"replica": guard.url})}
    before = {k: value(n, **lb) for k, (n, lb) in series.items()}
    for _ in range(2):
        out = await rt.check("rp", Direction.INPUT, "hello")
        assert out.metadata["decision"] == "allow" and not out.metadata["failed"]
    guard.inject(Fault(kind="status", status=503))
    assert not (await rt.check("rp", Direction.INPUT, "hello")).metadata["failed"]  # 503, then a retry answers
    text = scrape(port)
    assert sample(text, "csr_checks_total", policy="rp", direction="input", outcome="allowed") == 3
    added = {k: sample(text, n, **lb) - before[k] for k, (n, lb) in series.items()}
    # one request to the dead replica opens its breaker; then it is skipped. The live one answered a failover
    # (after the dead one), a 503 and its retry: two retries.
    assert added == {"dead_unreachable": 1, "dead_opened": 1, "live_503": 1, "live_200": 3, "live_retries": 2}
    assert sample(text, "csr_guard_breaker_state", replica=dead) == 2
    assert sample(text, "csr_guard_breaker_state", replica=guard.url) == 0


async def test_cache_hits_are_checks_too(guard):
    port = free_port()
    rt = runtime(guard.url, telemetry={"prometheus_port": port}, policies={"ch": {"policy": POLITICS}},
                 cache={"enabled": True})
    for _ in range(3):
        await rt.check("ch", Direction.INPUT, "Where is my order?")
    text = scrape(port)
    assert sample(text, "csr_checks_total", policy="ch", direction="input", outcome="allowed") == 3
    assert sample(text, "csr_check_cache_hits_total", policy="ch", direction="input") == 2
    assert len(guard.chat_requests()) == 1


async def test_skipped_checks_are_not_decisions(guard):
    port = free_port()
    rt = runtime(guard.url, telemetry={"prometheus_port": port}, policies={"sk": {"policy": POLITICS}})
    await rt.check("sk", Direction.OUTPUT, "hi", "   ")
    text = scrape(port)
    assert sample(text, "csr_checks_skipped_total", policy="sk", direction="output", reason="empty_message") == 1
    assert sample(text, "csr_checks_total", policy="sk", direction="output", outcome="allowed") is None
    assert guard.requests == []


def test_every_skip_reason_is_named_where_an_operator_reads_the_metric():
    """The ``reason`` label's values are :class:`SkipReason`'s; its HELP text and docs/operations.md list them by
    hand, so a new member that neither names leaves an operator with a label value explained nowhere."""
    from pathlib import Path

    from nemo_csr_rail.decision import SkipReason
    from nemo_csr_rail.telemetry.metrics import CHECKS_SKIPPED

    row = next(line for line in (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
               .splitlines() if line.startswith("| `csr_checks_skipped_total`"))
    for reason in SkipReason:
        assert re.search(rf"\b{reason.value}\b", CHECKS_SKIPPED._documentation), f"{reason.value} missing from HELP"
        assert f"`{reason.value}`" in row, f"{reason.value} missing from docs/operations.md"


# ------------------------------------------------------------------------------------- one process, many configs
async def test_several_configs_share_one_endpoint_and_a_second_port_is_refused_with_a_warning(guard, caplog):
    port, other = free_port(), free_port()
    a = runtime(guard.url, telemetry={"prometheus_port": port}, policies={"cfg_a": {"policy": POLITICS}})
    b = runtime(guard.url, telemetry={"prometheus_port": port}, policies={"cfg_b": {"policy": POLITICS}})
    with caplog.at_level(logging.WARNING, logger="nemo_csr_rail"):
        c = runtime(guard.url, telemetry={"prometheus_port": other}, policies={"cfg_c": {"policy": POLITICS}})
    assert a is not b is not c
    assert f"already serves /metrics on 127.0.0.1:{port}" in caplog.text and str(other) in caplog.text
    assert c.telemetry.metrics_endpoint == f"127.0.0.1:{port}"
    for rt, name in ((a, "cfg_a"), (b, "cfg_b"), (c, "cfg_c")):
        await rt.check(name, Direction.INPUT, "hello")
    text = scrape(port)
    for name in ("cfg_a", "cfg_b", "cfg_c"):
        assert sample(text, "csr_checks_total", policy=name, direction="input", outcome="allowed") == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{other}/metrics", timeout=2)


def test_a_taken_port_does_not_stop_the_guard(guard, caplog):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="nemo_csr_rail"):
            rt = runtime(guard.url, telemetry={"prometheus_port": port}, policies={"tp": {"policy": POLITICS}})
    assert rt.telemetry.metrics_endpoint.startswith("not served")
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in caplog.text


# ----------------------------------------------------------------------------------------- dashboard, alerts
def test_every_metric_the_dashboard_and_alerts_read_exists():
    import json
    import re
    from pathlib import Path

    import yaml

    from nemo_csr_rail.telemetry import metrics

    root = Path(__file__).resolve().parents[2]
    known = metrics.metric_names()
    dashboard = json.loads((root / "deploy/grafana/nemo-csr-rail.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules_cm = next(d for d in yaml.safe_load_all((root / "deploy/kubernetes/prometheus.yaml").read_text())
                    if d["metadata"]["name"] == "csr-alert-rules")
    rules = yaml.safe_load(rules_cm["data"]["csr-alerts.yml"])
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\bcsr_[a-z_]+", e)}
    assert used, "the dashboard reads no csr_ metric"
    assert used <= known, used - known
    for required in ("csr_checks_total", "csr_check_duration_seconds_bucket", "csr_check_errors_total",
                     "csr_guard_breaker_state"):
        assert required in used
    for rule in ('outcome="error_allowed"', "histogram_quantile(0.95", "csr_guard_breaker_state"):
        assert any(rule in e for e in exprs), rule


async def test_in_flight_counts_a_running_check_and_a_timeout_is_an_error_of_its_kind(guard):
    import asyncio

    port = free_port()
    rt = runtime(guard.url, telemetry={"prometheus_port": port}, policies={"inf": {"policy": POLITICS}},
                 max_retries=0, timeout_s=1.0)
    guard.inject(Fault(kind="hang"))  # the guard accepts the request and never answers: the check waits
    timeouts = value("csr_guard_requests_total", replica=guard.url, status="timeout")
    task = asyncio.ensure_future(rt.check("inf", Direction.OUTPUT, "hi", "Sure."))
    while not guard.requests:
        await asyncio.sleep(0.01)
    text = await asyncio.to_thread(scrape, port)
    assert sample(text, "csr_checks_in_flight", direction="output") == 1
    out = await task
    assert out.metadata["error_kind"] == "guard_timeout"
    text = await asyncio.to_thread(scrape, port)
    assert sample(text, "csr_checks_in_flight", direction="output") == 0
    assert sample(text, "csr_check_errors_total", policy="inf", direction="output", kind="guard_timeout") == 1
    assert sample(text, "csr_guard_requests_total", replica=guard.url, status="timeout") - timeouts == 1


async def test_a_long_input_checked_in_windows_is_one_check(guard):
    port = free_port()
    rt = runtime(guard.url, telemetry={"prometheus_port": port}, policies={"li": {"policy": POLITICS}},
                 long_input={"max_chars": 256, "window_chars": 128})
    ok_before = value("csr_guard_requests_total", replica=guard.url, status="200")
    out = await rt.check("li", Direction.INPUT, "Where is my order? " * 40)
    windows = out.metadata["long_input"]["windows"]
    assert windows > 1 and out.metadata["decision"] == "allow"
    text = scrape(port)
    assert sample(text, "csr_checks_total", policy="li", direction="input", outcome="allowed") == 1
    assert sample(text, "csr_check_duration_seconds_count", policy="li", direction="input") == 1
    assert sample(text, "csr_guard_requests_total", replica=guard.url, status="200") - ok_before == windows
