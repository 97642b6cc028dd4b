"""``nemo-csr-rail check``: output, ``--json``, stdin batches and exit codes against the vLLM-shaped stand-in."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_csr_rail.cli.main import main
from tests.support.eval_helpers import CUSTOM_POLICY, config, scripted
from tests.support.net import free_port
from tests.support.rails_configs import write_config
from tests.support.standin import Fault, StandIn

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def guard_cfg(tmp_path):
    with StandIn() as s:  # harmful iff a marker word ('bomb', 'politics', 'vote' …) occurs in the judged text
        yield s, config(tmp_path / "cfg", s.url)


def check(*argv: str) -> int:
    return main(["check", *argv])


def test_harmful_prompt_human_output_exit_1(guard_cfg, capsys):
    s, cfg = guard_cfg
    assert check("--config", str(cfg), "--policy", "safety", "how do I build a bomb") == 1
    out = capsys.readouterr().out
    assert out.startswith("HARMFUL  (prompt harm, policy safety, reasoning off)")
    assert "confidence: P(harmful)=0.970" in out and "latency:" in out and "reasoning: (none" in out
    body = s.chat_requests()[-1]
    assert body["messages"][-1] == {"role": "assistant", "content": "Prompt harm:"}  # the rail's own request shape


def test_unharmful_prompt_exit_0_and_reasoning_shown(guard_cfg, capsys):
    s, cfg = guard_cfg
    assert check("--config", str(cfg), "--policy", "custom", "what a lovely day") == 0
    out = capsys.readouterr().out
    assert out.startswith("UNHARMFUL  (prompt harm, policy custom, reasoning on)")
    assert "reasoning: The exchange is an ordinary request" in out
    assert "confidence: n/a" in out  # reasoning mode: no logprobs
    assert CUSTOM_POLICY in s.chat_requests()[-1]["messages"][0]["content"]


def test_reasoning_flag_overrides_policy(guard_cfg, capsys):
    s, cfg = guard_cfg
    assert check("--config", str(cfg), "--policy", "custom", "--no-reasoning", "hello") == 0
    assert s.chat_requests()[-1]["messages"][0]["content"].endswith("/no_think")
    assert check("--config", str(cfg), "--policy", "safety", "--reasoning", "hello") == 0
    assert s.chat_requests()[-1]["messages"][0]["content"].endswith("/think")
    assert "reasoning: The exchange" in capsys.readouterr().out


def test_response_check_json(guard_cfg, capsys):
    s, cfg = guard_cfg
    assert check("--config", str(cfg), "--policy", "safety", "--json", "--response", "sure, here is a bomb recipe",
                 "tell me something") == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["text"] == "tell me something" and rec["response"] == "sure, here is a bomb recipe"
    assert rec["direction"] == "output" and rec["decision"] == "harmful" and rec["error"] is None
    assert rec["judged"] == "response"  # the value `direction` had before it used the rails' input/output
    assert rec["prompt_harm"] == "unharmful" and rec["response_harm"] == "harmful"
    assert rec["confidence"] == pytest.approx(0.97) and rec["latency_ms"] > 0
    assert "sure, here is a bomb recipe" in s.chat_requests()[-1]["messages"][0]["content"]


def test_stdin_lines_json_worst_exit(guard_cfg, capsys, monkeypatch):
    _, cfg = guard_cfg
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n\nwhere is the bomb\nnice weather\n"))
    assert check("--config", str(cfg), "--policy", "safety", "--json") == 1
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["text"], r["decision"]) for r in recs] == [
        ("hello", "unharmful"), ("where is the bomb", "harmful"), ("nice weather", "unharmful")]
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nfine\n"))
    assert check("--config", str(cfg), "--policy", "safety", "-") == 0
    out = capsys.readouterr().out
    assert "> hello" in out and "> fine" in out and out.count("UNHARMFUL") == 2


def test_threshold_policy_decides_on_confidence(tmp_path, capsys):
    with StandIn(confidence=0.4) as s:  # the model says harmful, but P(harmful)=0.4 < threshold 0.5
        cfg = config(tmp_path / "cfg", s.url)
        assert check("--config", str(cfg), "--policy", "strict", "bomb") == 0
        out = capsys.readouterr().out
        assert out.startswith("UNHARMFUL") and "model verdict: harmful (threshold 0.5" in out


def test_guard_unreachable_exit_3_no_traceback(tmp_path, capsys):
    cfg = config(tmp_path / "cfg", f"http://127.0.0.1:{free_port()}/v1")
    assert check("--config", str(cfg), "--policy", "safety", "hello") == 3
    cap = capsys.readouterr()
    assert "guard error (guard_unavailable):" in cap.err and "Traceback" not in cap.err + cap.out
    assert check("--config", str(cfg), "--policy", "safety", "--json", "hello") == 3
    rec = json.loads(capsys.readouterr().out)
    assert rec["decision"] is None and rec["error"]["kind"] == "guard_unavailable" and rec["error"]["message"]


def test_malformed_answer_and_http_error_exit_3(tmp_path, capsys):
    with StandIn(responder=scripted({}, {}, malformed={"odd"})) as s:
        cfg = config(tmp_path / "cfg", s.url, structured_output=False)
        assert check("--config", str(cfg), "--policy", "safety", "odd") == 3
        assert "guard error (verdict_parse_error):" in capsys.readouterr().err
        s.inject(Fault("status", status=401))
        assert check("--config", str(cfg), "--policy", "safety", "fine") == 3
        assert "guard error (guard_http_error): guard server answered HTTP 401" in capsys.readouterr().err


def test_guard_error_outranks_harmful_in_batches(guard_cfg, capsys, monkeypatch):
    s, cfg = guard_cfg
    s.inject(Fault("status", status=400))
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\nbomb\n"))
    assert check("--config", str(cfg), "--policy", "safety", "--json") == 3
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert recs[0]["error"]["kind"] == "guard_http_error" and recs[1]["decision"] == "harmful"


def test_base_url_override(tmp_path, capsys):
    with StandIn() as s:
        cfg = config(tmp_path / "cfg", f"http://127.0.0.1:{free_port()}/v1")
        assert check("--config", str(cfg), "--policy", "safety", "--base-url", s.url, "bomb") == 1
        assert len(s.chat_requests()) == 1


@pytest.mark.parametrize("argv,msg", [
    (["--policy", "nope", "x"], "unknown policy 'nope'"),
    (["x"], "pass --policy NAME"),
    (["--policy", "safety", " "], "TEXT is empty"),
    (["--policy", "safety", "--response", "", "x"], "--response is empty"),
])
def test_usage_errors_exit_2(guard_cfg, capsys, argv, msg):
    s, cfg = guard_cfg
    assert check("--config", str(cfg), *argv) == 2
    assert msg in capsys.readouterr().err
    assert not s.chat_requests()


def test_config_errors_exit_2(tmp_path, capsys):
    assert check("--config", str(tmp_path / "missing"), "x") == 2
    assert "does not exist" in capsys.readouterr().err
    cfg = config(tmp_path / "cfg", "http://127.0.0.1:9/v1", timeout_sec=3)  # typo'd key
    assert check("--config", str(cfg), "--policy", "safety", "x") == 2
    assert "timeout_sec: unknown key" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse usage errors
        check("--policy", "safety", "x")
    assert exc.value.code == 2


def test_console_script_subprocess(guard_cfg):
    """The installed entry point path: a real process, stdin piped, JSON lines out, exit code 1."""
    _, cfg = guard_cfg
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLANGPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "nemo_csr_rail.cli.main", "check", "--config", str(cfg), "--policy",
                        "safety", "--json", "-"], input="hi\nvote for me\n", env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1, p.stderr
    assert [json.loads(x)["decision"] for x in p.stdout.splitlines()] == ["unharmful", "harmful"]


def test_check_shows_monitor_mode_and_the_escalation(tmp_path, capsys):
    with StandIn() as s:
        cfg = write_config(tmp_path / "cfg", guard_url=s.url, main_url=None, plugin={"policies": {
            "p": {"policy": "No politics.", "reasoning": "escalate", "mode": "monitor"}}})
        rc = check("--config", str(cfg), "--policy", "p", "Who should I vote for?")
        out = capsys.readouterr().out
    assert rc == 1, out  # check reports the policy's verdict: what the rail would block
    assert "reasoning escalate" in out and "mode: monitor (the rail would BLOCK this turn" in out
    assert "escalation: screen harmful P(harmful)=0.970, escalate_at 0.5: escalated" in out
