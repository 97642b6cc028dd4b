"""``eval`` on multi-turn datasets: JSONL rows with a ``messages`` list, judged by a topic policy with their history.

Runs the shipped dialogue set (``tests/data/topic_dialogues.jsonl``) through ``nemo-csr-rail eval`` against the
stand-in, whose scripted 'model' calls the *last* message off topic iff it names a marker word; the report's
numbers are checked against an independent computation of that rule over the labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_csr_rail.cli.main import main
from nemo_csr_rail.conversation import Turn
from nemo_csr_rail.eval import datasets
from tests.support.eval_helpers import f1_of, write_jsonl
from tests.support.rails_configs import retarget
from tests.support.standin import StandIn, looks_harmful, verdict_responder
from tests.support.topic_prompt import OFF_TOPIC_MARKERS as OFF_TOPIC
from tests.support.topic_prompt import split_topic_prompt

ROOT = Path(__file__).resolve().parents[2]
DIALOGUES = ROOT / "tests" / "data" / "topic_dialogues.jsonl"


def test_dialogue_set_loads_as_multi_turn_rows():
    ds = datasets.load(DIALOGUES)
    assert ds.format == "jsonl" and len(ds.rows) == 32
    assert ds.label_counts() == {"prompt": {"harmful": 15, "unharmful": 17}}
    multi = [r for r in ds.rows if r.history]
    assert len(multi) == 13 and any("multi-turn" in n for n in ds.notes)
    t06 = next(r for r in ds.rows if r.id == "t06")
    assert t06.prompt == "And the other one?" and t06.history[0] == Turn("user", "I have two printers, an Epson and a Canon.")
    assert [t.role for t in t06.history] == ["user", "bot", "user", "bot"]


def test_eval_reports_f1_on_the_dialogue_set(tmp_path):
    ds = datasets.load(DIALOGUES)
    with StandIn(responder=verdict_responder(OFF_TOPIC)) as guard:
        cfg = retarget(ROOT / "example_configs" / "support_bot", tmp_path / "cfg", guard_url=guard.url,
                       main_url="http://127.0.0.1:9/v1")
        assert main(["eval", "--no-progress", "--no-plots", "--config", str(cfg), "--policy", "support",
                     "--dataset", str(DIALOGUES), "--out", str(tmp_path / "out")]) == 0
        judged = [split_topic_prompt(r["messages"][0]["content"]) for r in guard.chat_requests()]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    got = report["directions"]["prompt"]
    want = f1_of((r.prompt_label, looks_harmful(r.prompt, OFF_TOPIC)) for r in ds.rows)
    for k in ("tp", "fp", "tn", "fn", "precision", "recall", "f1", "accuracy"):
        assert got[k] == pytest.approx(want[k]), k
    assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (6, 3, 14, 9)  # docs/evaluation.md quotes these
    assert report["settings"]["policy_kind"] == "topic" and report["settings"]["reasoning_mode"]["prompt"] is True
    # every row's history reached the guard, one line per message, and the rows record how much was sent
    by_current = {p.current: p for p in judged}
    for row in ds.rows:
        assert by_current[row.prompt].history == [(t.role, t.text) for t in row.history][-6:]
    recs = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "rows.jsonl").read_text().splitlines())}
    assert recs["t06"]["history_messages"] == 4 and recs["t01"]["history_messages"] == 0
    assert all(r["history_dropped"] == 0 for r in recs.values())


@pytest.mark.parametrize("line,msg", [
    ({"messages": [], "prompt_label": "harmful"}, "non-empty list"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "prompt_label": "harmful"}, "last message must be the user's"),
    ({"messages": [{"role": "system", "content": "a"}], "prompt_label": "harmful"}, "must be"),
    ({"messages": [{"role": "user", "content": 3}], "prompt_label": "harmful"}, "content must be a string"),
    ({"messages": [{"role": "user", "content": "a"}], "prompt": "a", "prompt_label": "harmful"}, "takes no 'prompt'"),
    ({"messages": [{"role": "user", "content": "a"}], "response": "b", "response_label": "harmful"}, "takes no"),
    ({"messages": [{"role": "user", "content": "  "}], "prompt_label": "harmful"}, "empty"),
    ({"messages": [{"role": "user", "content": "a"}]}, "no label"),
])
def test_messages_rows_are_strict(tmp_path, line, msg):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "ok", "prompt_label": "harmful"}, line])
    with pytest.raises(datasets.DatasetError, match=msg):
        datasets.load(path)


def test_check_command_refuses_a_response_for_a_topic_policy(capsys):
    argv = ["check", "--config", str(ROOT / "example_configs" / "support_bot"), "--policy", "support",
            "--base-url", "http://127.0.0.1:9/v1", "--response", "an answer", "hi"]
    assert main(argv) == 2
    assert "topic policy" in capsys.readouterr().err
