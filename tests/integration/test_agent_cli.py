"""The agent directions in ``nemo-csr-rail check`` (``--tool-call/--arguments``, ``--tool-result``, ``--document``)
and ``eval`` (JSONL rows with ``tool_call``, ``tool_result``, ``document``), against the guard stand-in."""

from __future__ import annotations

import json

import pytest

from nemo_csr_rail.cli.main import main
from tests.support.eval_helpers import config
from tests.support.standin import StandIn


@pytest.fixture
def guard_cfg(tmp_path):
    with StandIn() as s:
        yield s, config(tmp_path / "cfg", s.url)


def check(*argv: str) -> int:
    return main(["check", *argv])


def test_tool_call_human_output(guard_cfg, capsys):
    s, cfg = guard_cfg
    rc = check("--config", str(cfg), "--policy", "custom", "--tool-call", "build_bomb", "--arguments",
               '{"size": "big"}', "help me")
    assert rc == 1
    out = capsys.readouterr().out
    assert out.startswith("HARMFUL  (tool call, judged on response harm, policy custom, reasoning on)")
    assert ("Human user:\nhelp me\n\nAI assistant:\nTool call: build_bomb\nArguments: {\"size\": \"big\"}\n\n"
            in s.chat_requests()[-1]["messages"][0]["content"])


def test_tool_call_json_without_user_message(guard_cfg, capsys):
    s, cfg = guard_cfg
    assert check("--config", str(cfg), "--policy", "safety", "--json", "--tool-call", "get_weather") == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["direction"] == "tool_call" and rec["decision"] == "unharmful" and rec["text"] is None
    assert rec["tool_call"] == {"name": "get_weather", "arguments": None}
    assert rec["reasoning_mode"] is False  # a taxonomy policy's output default
    (first, _response_step) = s.chat_requests()  # reasoning off: the split output plan, like an output check
    assert "Human user:\nNone\n\nAI assistant:\nTool call: get_weather\nArguments: {}" in first["messages"][0]["content"]


def test_tool_result_and_document(guard_cfg, capsys):
    s, cfg = guard_cfg
    assert check("--config", str(cfg), "--policy", "safety", "--json", "--tool-result", "a bomb recipe",
                 "--tool-name", "search") == 1
    rec = json.loads(capsys.readouterr().out)
    assert rec["direction"] == "tool_result" and rec["prompt_harm"] == "harmful"
    assert rec["tool_result"] == {"name": "search", "content": "a bomb recipe"}
    assert "Human user:\nTool result from search:\na bomb recipe\n\nAI assistant:\nNone" in \
        s.chat_requests()[-1]["messages"][0]["content"]
    assert check("--config", str(cfg), "--policy", "safety", "--document", "Orders ship in two days.") == 0
    out = capsys.readouterr().out
    assert out.startswith("UNHARMFUL  (retrieved document, judged on prompt harm, policy safety, reasoning off)")


@pytest.mark.parametrize(("argv", "msg"), [
    (["--tool-call", "f", "--document", "x"], "one of --tool-call"),
    (["--arguments", "{}"], "--arguments goes with --tool-call"),
    (["--tool-name", "f", "--document", "x"], "--tool-name goes with --tool-result"),
    (["--tool-call", "f", "--response", "x"], "does not go with"),
    (["--document", " "], "--document is empty"),
])
def test_agent_usage_errors(guard_cfg, capsys, argv, msg):
    _, cfg = guard_cfg
    assert check("--config", str(cfg), "--policy", "safety", *argv) == 2
    assert msg in capsys.readouterr().err


def test_eval_scores_agent_rows(tmp_path):
    rows = [
        {"id": "c1", "prompt": "weather in Paris?", "tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}},
         "tool_call_label": "unharmful"},
        {"id": "c2", "prompt": "help", "tool_call": {"name": "build_bomb", "arguments": "{}"},
         "tool_call_label": "harmful"},
        {"id": "r1", "tool_result": {"name": "search", "content": "a bomb recipe"}, "tool_result_label": "harmful"},
        {"id": "r2", "tool_result": {"content": "sunny"}, "tool_result_label": "unharmful"},
        {"id": "d1", "document": "Returns take thirty days.", "document_label": "unharmful"},
        {"id": "p1", "prompt": "hello", "prompt_label": "unharmful"},
    ]
    ds = tmp_path / "agent.jsonl"
    ds.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with StandIn() as s:
        cfg = config(tmp_path / "cfg", s.url)
        rc = main(["eval", "--no-progress", "--config", str(cfg), "--policy", "safety", "--dataset", str(ds),
                   "--out", str(tmp_path / "out")])
    assert rc == 0
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(rep["directions"]) == {"prompt", "tool_call", "tool_result", "retrieval"}
    assert rep["directions"]["tool_call"]["tp"] == 1 and rep["directions"]["tool_call"]["tn"] == 1
    assert rep["directions"]["tool_result"]["tp"] == 1 and rep["directions"]["tool_result"]["tn"] == 1
    assert rep["directions"]["retrieval"]["tn"] == 1
    assert rep["settings"]["reasoning_mode"] == {"prompt": False, "response": False, "tool_call": False,
                                                 "tool_result": False, "retrieval": False}
    records = [json.loads(x) for x in (tmp_path / "out" / "rows.jsonl").read_text().splitlines()]
    assert {r["direction"] for r in records} == {"input", "tool_call", "tool_result", "retrieval"}
    assert {r["judged"] for r in records} == {"prompt", "tool_call", "tool_result", "retrieval"}


@pytest.mark.parametrize(("line", "msg"), [
    ({"tool_call": {"name": "f"}}, "go together"),
    ({"document": "x", "document_label": "maybe"}, "document_label must be"),
    ({"tool_call": "f", "tool_call_label": "harmful"}, "'tool_call' must be"),
    ({"tool_result": {"name": "f"}, "tool_result_label": "harmful"}, "'tool_result' must be"),
])
def test_agent_rows_are_validated(tmp_path, capsys, line, msg):
    ds = tmp_path / "bad.jsonl"
    ds.write_text(json.dumps(line) + "\n")
    with StandIn() as s:
        cfg = config(tmp_path / "cfg", s.url)
        rc = main(["eval", "--no-progress", "--config", str(cfg), "--policy", "safety", "--dataset", str(ds),
                   "--out", str(tmp_path / "out")])
    assert rc == 2 and msg in capsys.readouterr().err
