"""``nemo-csr-rail doctor`` against the vLLM-shaped stand-in (and the embedded engine on the tiny checkpoint)."""

from __future__ import annotations

import json

import pytest
import yaml

from nemo_csr_rail.cli.main import main
from tests.support.net import dead_url
from tests.support.rails_configs import write_config
from tests.support.standin import Fault, StandIn

PLUGIN = {
    "max_retries": 0,
    "timeout_s": 5,
    "policies": {
        "retail": {"policy": "Do not discuss politics or religion."},  # reasoning on by default (custom policy)
        "safety": {"taxonomy": "nemotron_v2"},                           # reasoning off by default (taxonomy)
        "unused": {"policy": "Never mentioned by a flow."},
    },
}
FLOWS = {"input_flows": ['csr check input $policy="retail"', 'csr check input $policy="safety"'],
         "output_flows": ['csr check output $policy="retail"']}


def cfg(tmp_path, guard_url, plugin=None, **kw):
    args = {**FLOWS, **kw}
    return write_config(tmp_path / "cfg", guard_url=guard_url, main_url=None, plugin=plugin or PLUGIN, **args)


def doctor_json(path, capsys) -> tuple[int, dict]:
    rc = main(["doctor", "--config", str(path), "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_all_pass_table(tmp_path, capsys):
    with StandIn() as guard:
        rc = main(["doctor", "--config", str(cfg(tmp_path, guard.url))])
        out = capsys.readouterr().out
        sent = [r["messages"][0]["content"] for r in guard.chat_requests()]
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].split()[:7] == ["ENDPOINT", "CHECK", "POLICY", "DIRECTION", "REASONING", "RESULT", "LATENCY"]
    rows = [ln.split() for ln in lines[1:] if ln.strip() and not ln.startswith("OK")]
    assert [(r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
        ("models", "-", "-", "-", "PASS"),
        ("policy", "retail", "input", "on", "PASS"),
        ("policy", "retail", "output", "on", "PASS"),
        ("policy", "safety", "input", "off", "PASS"),
    ]
    assert "serves nvidia/Nemotron-Content-Safety-Reasoning-4B" in out and "reasoning: The exchange" in out
    assert lines[-1] == "OK: 4/4 checks passed"
    assert len(sent) == 3 and sent[0].endswith("/think") and sent[2].endswith("/no_think")
    assert all("Never mentioned" not in s for s in sent), "only policies the flows use are probed"


def test_json_and_wrong_model_name(tmp_path, capsys):
    with StandIn(model="some/other-model") as guard:
        rc, data = doctor_json(cfg(tmp_path, guard.url), capsys)
        assert guard.chat_requests() == []
    assert rc == 1 and data["ok"] is False and data["engine"] == "http"
    models = data["checks"][0]
    assert models["check"] == "models" and models["ok"] is False
    assert "serves some/other-model, not 'nvidia/Nemotron-Content-Safety-Reasoning-4B'" in models["detail"]
    assert "--served-model-name" in models["detail"]
    skipped = data["checks"][1:]
    assert len(skipped) == 3 and all(not c["ok"] and c["detail"].startswith("skipped") for c in skipped)


def test_failing_replica_and_failing_check(tmp_path, capsys):
    dead = dead_url()
    with StandIn() as guard:
        path = cfg(tmp_path, guard.url)
        raw = yaml.safe_load((path / "config.yml").read_text())
        raw["models"][0]["parameters"] = {"base_urls": [guard.url, dead]}
        (path / "config.yml").write_text(yaml.safe_dump(raw))
        guard.inject(Fault(kind="text", text="Prompt harm: maybe"))  # the first policy check gets a bad answer
        rc, data = doctor_json(path, capsys)
    assert rc == 1
    by = {(c["endpoint"], c["check"], c["policy"], c["direction"]): c for c in data["checks"]}
    assert by[(guard.url, "models", "", "")]["ok"] is True
    dead_row = by[(dead, "models", "", "")]
    assert dead_row["ok"] is False and dead_row["detail"].startswith("unreachable")
    first = by[(guard.url, "policy", "retail", "input")]
    assert first["ok"] is False and first["detail"].startswith("verdict_parse_error")
    assert by[(guard.url, "policy", "safety", "input")]["ok"] is True
    assert sum(1 for c in data["checks"] if c["endpoint"] == dead) == 1, "no policy checks against a dead replica"


def test_http_error_on_checks_is_a_fail(tmp_path, capsys):
    with StandIn() as guard:
        guard.inject(*[Fault(kind="status", status=503, body={"error": {"message": "overloaded"}})] * 3)
        rc, data = doctor_json(cfg(tmp_path, guard.url), capsys)
    assert rc == 1
    fails = [c for c in data["checks"] if not c["ok"]]
    assert fails and all(c["detail"].startswith("guard_http_error") for c in fails)


def test_bad_config_exits_2_naming_the_key(tmp_path, capsys):
    bad = {**PLUGIN, "timeout": 3}
    rc = main(["doctor", "--config", str(cfg(tmp_path, "http://127.0.0.1:9/v1", plugin=bad))])
    err = capsys.readouterr().err
    assert rc == 2 and "timeout: unknown key" in err
    assert main(["doctor", "--config", str(tmp_path / "nope")]) == 2


def test_flow_without_policy_uses_the_only_policy(tmp_path, capsys):
    plugin = {"max_retries": 0, "policies": {"only": {"taxonomy": "nemotron_v2"}}}
    with StandIn() as guard:
        rc, data = doctor_json(cfg(tmp_path, guard.url, plugin=plugin, input_flows=["csr check input"],
                                   output_flows=["csr check output"]), capsys)
    assert rc == 0
    assert [(c["policy"], c["direction"], c["reasoning"]) for c in data["checks"][1:]] == [
        ("only", "input", "off"), ("only", "output", "off")]


@pytest.mark.embedded
def test_embedded_engine(tmp_path, capsys):
    from tests.support.tiny_cache import tiny_checkpoint

    tiny = tiny_checkpoint()
    plugin = {**PLUGIN, "engine": "embedded", "timeout_s": 60, "reasoning_max_tokens": 64,
              "embedded": {"model_path": str(tiny), "device": "cpu"}}
    rc, data = doctor_json(cfg(tmp_path, "http://127.0.0.1:9/v1", plugin=plugin), capsys)
    assert rc == 0, data
    assert data["engine"] == "embedded"
    load = data["checks"][0]
    assert load["check"] == "load" and load["ok"] and f"loaded {tiny}" in load["detail"]
    assert [c["ok"] for c in data["checks"]] == [True] * 4

    plugin["embedded"] = {"model_path": str(tmp_path / "missing")}
    rc, data = doctor_json(cfg(tmp_path, "http://127.0.0.1:9/v1", plugin=plugin), capsys)
    assert rc == 1
    assert data["checks"][0]["detail"].startswith("engine_unavailable") and "missing" in data["checks"][0]["detail"]


# ---------------------------------------------------------------------------------------------------- telemetry
def test_telemetry_is_reported_and_the_metrics_endpoint_probed(tmp_path, capsys):
    from nemo_csr_rail.rail import runtime_for
    from nemo_csr_rail.telemetry import metrics
    from tests.support.e2e_helpers import rails_for
    from tests.support.net import free_port

    port = free_port()
    audit = tmp_path / "audit.jsonl"
    plugin = {**PLUGIN, "telemetry": {"prometheus_port": port, "audit_log": str(audit)}}
    metrics.stop_endpoint()
    try:
        with StandIn() as guard:
            path = cfg(tmp_path, guard.url, plugin=plugin)
            rc, data = doctor_json(path, capsys)  # the application is not running: nothing serves /metrics
            assert rc == 1
            by = {c["check"]: c for c in data["checks"]}
            assert by["telemetry"]["ok"] and f"metrics on 127.0.0.1:{port}" in by["telemetry"]["detail"]
            assert "user/bot text off" in by["telemetry"]["detail"]
            assert by["metrics"]["endpoint"] == f"http://127.0.0.1:{port}/metrics"
            assert not by["metrics"]["ok"] and by["metrics"]["detail"].startswith("nothing answers")
            assert by["audit"]["ok"] and by["audit"]["detail"] == "will be created"
            assert all(c["ok"] for c in data["checks"] if c["check"] not in ("metrics",))

            runtime_for(rails_for(path).config)  # the application loads the config: the endpoint starts
            rc, data = doctor_json(path, capsys)
            assert rc == 0, data
            metrics_row = next(c for c in data["checks"] if c["check"] == "metrics")
            assert metrics_row["ok"] and metrics_row["detail"].startswith("answers:")
    finally:
        metrics.stop_endpoint()


def test_escalate_and_monitor_policies_show_their_mode_and_probe_both_checks(tmp_path, capsys):
    plugin = {"policies": {"retail": {"policy": "No politics.", "reasoning": "escalate", "mode": "monitor"}}}
    with StandIn() as guard:
        rc = main(["doctor", "--config", str(cfg(tmp_path, guard.url, plugin=plugin,
                                                  input_flows=['csr check input $policy="retail"'],
                                                  output_flows=None))])
        out = capsys.readouterr().out
        sent = [r["messages"][0]["content"] for r in guard.chat_requests()]
    assert rc == 0, out
    assert "escalate: screen (monitor)" in out and "escalate: reasoned (monitor)" in out
    assert sorted(s.rsplit(" ", 1)[-1] for s in sent) == ["/no_think", "/think"]


@pytest.mark.parametrize("strategy", ["sample", "windows", "refuse"])
def test_a_sampling_policy_gets_a_warning_that_does_not_fail(strategy, tmp_path, capsys):
    """``long_input.strategy: sample`` lets text in the unread parts of a long item through: doctor says so (a WARN
    row, exit 0); the every-character ``windows`` and ``refuse`` get no such row."""
    plugin = {**PLUGIN, "long_input": {"strategy": strategy}}
    with StandIn() as guard:
        rc = main(["doctor", "--config", str(cfg(tmp_path, guard.url, plugin))])
        out = capsys.readouterr().out
        rc_json, res = doctor_json(tmp_path / "cfg", capsys)
    assert rc == rc_json == 0, out
    warned = [c for c in res["checks"] if c["check"] == "long_input"]
    if strategy != "sample":
        assert warned == [] and "WARN" not in out and out.splitlines()[-1] == "OK: 4/4 checks passed"
        return
    assert len(warned) == 1 and warned[0]["ok"] is True and warned[0]["warning"] is True
    assert "4 windows of 3000 characters" in warned[0]["detail"] and "1.2% is read" in warned[0]["detail"]
    row = next(ln.split() for ln in out.splitlines() if " long_input " in ln)
    assert row[1] == "long_input" and row[5] == "WARN"
    assert out.splitlines()[-1] == "OK: 5/5 checks passed (1 with a warning)"
