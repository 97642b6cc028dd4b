"""``nemo-csr-rail demo``: runs offline on the tiny checkpoint, and says exactly what is missing without weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from nemo_csr_rail.cli import demo_cmd
from nemo_csr_rail.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_packaged_demo_config_is_the_retail_example():
    assert not list((ROOT / "nemo_csr_rail").rglob("*.yml")), "NeMo would merge it into every importing config"
    assert (ROOT / "nemo_csr_rail" / "demo_configs" / "retail" / "config.yml.txt").read_text() == (
        ROOT / "example_configs" / "retail" / "config.yml").read_text()
    assert demo_cmd.default_config() == ROOT / "example_configs" / "retail"


def test_scripted_llm_answers_the_last_scripted_turn():
    llm = demo_cmd.ScriptedLLM()
    user0, ans0, _ = demo_cmd.TURNS[0]
    user2, ans2, _ = demo_cmd.TURNS[2]
    assert llm.reply(f"... User: {user0}\n...") == ans0
    assert llm.reply([{"role": "user", "content": user0}, {"role": "user", "content": user2}]) == ans2
    assert llm.reply("something else") == "How can I help you with your order today?"


def test_missing_weights_says_what_and_how(monkeypatch, tmp_path, capsys):
    pytest.importorskip("torch")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "the guard model weights are missing" in err
    assert str(tmp_path / "hub" / "models--nvidia--Nemotron-Content-Safety-Reasoning-4B") in err
    for fix in ("--model PATH", "huggingface-cli download nvidia/Nemotron-Content-Safety-Reasoning-4B",
                "--engine http --base-url URL"):
        assert fix in err
    assert main(["demo", "--model", str(tmp_path / "nope")]) == 1
    assert f"{tmp_path / 'nope'} (no such directory)" in capsys.readouterr().err


def test_missing_torch_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    assert main(["demo", "--model", "/x"]) == 1
    assert "pip install '.[embedded]' in a clone" in capsys.readouterr().err


@pytest.mark.embedded
def test_demo_on_the_tiny_checkpoint(capsys):
    from tests.support.tiny_cache import tiny_checkpoint

    tiny = tiny_checkpoint()
    assert main(["demo", "--model", str(tiny), "--device", "cpu", "--reasoning-max-tokens", "32"]) == 0
    out = capsys.readouterr().out
    assert "NOT THE REAL GUARD MODEL" in out and "ARBITRARY" in out
    assert "SCRIPTED STAND-IN" in out
    assert [ln.split(" (")[0] for ln in out.splitlines() if ln.startswith("--- turn")] == [
        "--- turn 1", "--- turn 2", "--- turn 3"]
    assert out.count("  [user] ") == 3 and out.count("  [bot]  ") == 3
    assert out.count("  [guard] ") >= 3  # every turn shows at least its input decision


@pytest.mark.embedded
@pytest.mark.parametrize(("threshold", "allowed"), [(1.0, True), (0.01, False)])
def test_demo_plumbing_with_forced_decisions(tmp_path, capsys, threshold, allowed):
    """Thresholds on P(harmful) force the decisions (random weights otherwise decide arbitrarily)."""
    from tests.support.tiny_cache import tiny_checkpoint

    tiny = tiny_checkpoint()
    cfg = tmp_path / "retail"
    shutil.copytree(ROOT / "example_configs" / "retail", cfg)
    raw = yaml.safe_load((cfg / "config.yml").read_text())
    for p in raw["custom_data"]["nemo_csr_rail"]["policies"].values():
        p["reasoning"], p["threshold"] = False, threshold
    (cfg / "config.yml").write_text(yaml.safe_dump(raw))
    assert main(["demo", "--config", str(cfg), "--model", str(tiny), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    turns = out.split("--- turn ")[1:]
    assert len(turns) == 3
    for (_, answer, _), text in zip(demo_cmd.TURNS, turns, strict=True):
        if allowed:
            assert text.count("-> ALLOW") == 3  # two parallel input rails and the output rail
            assert f"[bot]  {answer}" in text and f"[{demo_cmd.SCRIPTED_LABEL}] {answer}" in text
        else:
            assert "-> BLOCK" in text and "(not called: the input was blocked)" in text
            assert "[bot]  I'm sorry, I can't help with that." in text or "[bot]  Sorry, I can't help" in text


def test_packaged_config_copy_becomes_a_loadable_config(tmp_path):
    src = ROOT / "nemo_csr_rail" / "demo_configs" / "retail"
    demo_cmd._demo_config(src, tmp_path / "retail", engine="embedded", model_path="/w", base_url=None,
                          device="cpu", dtype="auto", timeout=None, reasoning_max_tokens=64)
    raw = yaml.safe_load((tmp_path / "retail" / "config.yml").read_text())
    assert not (tmp_path / "retail" / demo_cmd.PACKAGED).exists()
    assert [m["type"] for m in raw["models"]] == ["nemotron_csr"], "the scripted LLM replaces the main model"
    plugin = raw["custom_data"]["nemo_csr_rail"]
    assert plugin["engine"] == "embedded" and plugin["embedded"]["model_path"] == "/w"
    assert plugin["timeout_s"] == 600 and plugin["reasoning_max_tokens"] == 64


def test_demo_over_http_shows_allow_input_block_output_block(capsys):
    """Against the vLLM-shaped stand-in (harmful iff a marker word such as 'vote' occurs): all three outcomes."""
    from tests.support.standin import HARMFUL_MARKERS, StandIn, last_user_content, verdict_responder

    # As a real guard would judge: the retail policy forbids politics, the general safety taxonomy does not.
    # Otherwise both parallel input rails block turn 2 and which refusal wins (and which check gets cancelled
    # before it is recorded) is a race.
    by_policy = verdict_responder()
    by_taxonomy = verdict_responder(tuple(m for m in HARMFUL_MARKERS if m not in ("vote", "politic", "religio")))

    def responder(body):
        custom = "Custom Policy:" in last_user_content(body)
        return (by_policy if custom else by_taxonomy)(body)

    with StandIn(responder=responder) as guard:
        assert main(["demo", "--engine", "http", "--base-url", guard.url]) == 0
        n_checks = len(guard.chat_requests())
    out = capsys.readouterr().out
    t1, t2, t3 = out.split("--- turn ")[1:]
    assert "NOT THE REAL GUARD MODEL" not in out and "SCRIPTED STAND-IN" in out
    assert t1.count("-> ALLOW") == 3 and f"[bot]  {demo_cmd.TURNS[0][1]}" in t1
    assert "input  policy=retail   reasoning=escalate -> BLOCK" in t2 and "(not called: the input was blocked)" in t2
    assert "(screen: harmful P=0.970, escalated)" in t2
    assert "input  policy=retail   reasoning=escalate -> ALLOW" in t1 and "escalated" in t1 and "why:" not in t1
    assert "why: The user asks for content that the policy forbids" in t2
    assert "[bot]  Sorry, I can't help with that. The user asks for content" in t2, t2
    assert f"[{demo_cmd.SCRIPTED_LABEL}] {demo_cmd.TURNS[2][1]}" in t3
    assert "output policy=retail   reasoning=escalate -> BLOCK" in t3 and "[bot]  Sorry, I can't help with that." in t3
    assert n_checks >= 7


@pytest.mark.embedded
def test_quickstart_demo_script_installs_and_runs(tmp_path):
    """The README's first quickstart command, as typed (``./tools/demo.sh``), on the tiny checkpoint.

    It installs into the venv running these tests (already complete, so pip only confirms it) and runs the demo
    with the embedded engine, which must show all three turns and exit 0.
    """
    import os
    import subprocess
    import sys

    from tests.support.tiny_cache import tiny_checkpoint

    if sys.prefix == sys.base_prefix:
        pytest.skip("tools/demo.sh installs into a venv; these tests are not running in one")
    env = {**os.environ, "CSR_VENV": sys.prefix, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run([str(ROOT / "tools" / "demo.sh"), "--model", str(tiny_checkpoint()), "--device", "cpu"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("--- turn ") == 3 and proc.stdout.count("[bot]") == 3
    assert "NOT THE REAL GUARD MODEL" in proc.stdout, "a random-weight model must be labelled as such"
    assert "Traceback" not in proc.stdout + proc.stderr
