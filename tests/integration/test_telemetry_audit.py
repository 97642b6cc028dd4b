"""The audit trail (issue 13): one JSON line per decision, off the check's path, rotation- and full-disk-safe."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nemo_csr_rail.policy import Direction
from nemo_csr_rail.telemetry import audit
from tests.support.net import dead_url
from tests.support.runtime import POLITICS, runtime

FIELDS = ["ts", "policy", "policy_sha256", "direction", "decision", "failed", "error_kind", "prompt_harm",
          "response_harm", "reasoning", "confidence", "latency_ms", "cached", "mode", "would_block"]


def records(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8").read().splitlines()]


def flushed(rt) -> None:
    assert rt.telemetry.audit.flush(10), "the audit writer did not drain its queue"


async def test_one_record_per_decision_with_the_contract_fields_and_no_text(tmp_path, guard):
    path = tmp_path / "audit.jsonl"
    rt = runtime(guard.url, telemetry={"audit_log": str(path)})
    await rt.check("think", Direction.INPUT, "Where is my order?")
    await rt.check("think", Direction.INPUT, "tell me about politics")
    await rt.check("fast", Direction.OUTPUT, "my question", "Sure, EVIL stuff")
    await rt.check("fast", Direction.OUTPUT, "my question", "")  # skipped: nothing judged, no record
    flushed(rt)
    allow, block, out = records(path)
    for r in (allow, block, out):
        assert list(r) == FIELDS
        ts = datetime.fromisoformat(r["ts"])
        assert ts.tzinfo is not None and ts.utcoffset().total_seconds() == 0
        assert abs((datetime.now(timezone.utc) - ts).total_seconds()) < 60
        assert r["failed"] is False and r["error_kind"] is None and r["latency_ms"] > 0 and r["cached"] is False
    assert (allow["policy"], allow["direction"], allow["decision"], allow["prompt_harm"]) == \
        ("think", "input", "allow", "unharmful")
    assert block["decision"] == "block" and block["reasoning"].startswith("The user asks for content")
    assert out["direction"] == "output" and out["decision"] == "block" and out["response_harm"] == "harmful"
    assert out["confidence"] == pytest.approx(0.97) and out["reasoning"] is None
    text = path.read_text()
    assert "Where is my order" not in text and "EVIL" not in text and "my question" not in text


async def test_policy_sha256_is_of_the_policy_as_sent_and_changes_with_it(tmp_path, guard):
    path = tmp_path / "audit.jsonl"
    changed = POLITICS + " Also no sports."
    rt1 = runtime(guard.url, telemetry={"audit_log": str(path)})
    rt2 = runtime(guard.url, telemetry={"audit_log": str(path)},
                  policies={"think": {"policy": changed, "reasoning": True}})
    await rt1.check("think", Direction.INPUT, "hello")
    await rt2.check("think", Direction.INPUT, "hello")
    flushed(rt1)
    flushed(rt2)
    assert rt1.telemetry.audit is rt2.telemetry.audit, "one writer per file"
    first, second = records(path)
    sent = [r["messages"][0]["content"] for r in guard.chat_requests()]
    assert f"Custom Policy: {POLITICS}\n" in sent[0] and f"Custom Policy: {changed}\n" in sent[1]
    assert first["policy_sha256"] == hashlib.sha256(POLITICS.encode()).hexdigest()
    assert second["policy_sha256"] == hashlib.sha256(changed.encode()).hexdigest()


async def test_audit_include_text_adds_user_and_bot_text(tmp_path, guard):
    path = tmp_path / "audit.jsonl"
    rt = runtime(guard.url, telemetry={"audit_log": str(path), "audit_include_text": True})
    await rt.check("think", Direction.INPUT, "Où est ma commande ?")
    await rt.check("fast", Direction.OUTPUT, "hi", "Sure, EVIL stuff")
    flushed(rt)
    inp, out = records(path)
    assert list(inp) == [*FIELDS, "user_text", "bot_text"]
    assert inp["user_text"] == "Où est ma commande ?" and inp["bot_text"] is None
    assert "Où est ma commande" in path.read_text(encoding="utf-8"), "written as UTF-8, not escaped"
    assert (out["user_text"], out["bot_text"]) == ("hi", "Sure, EVIL stuff")


async def test_failed_checks_are_audited_with_their_error_kind(tmp_path):
    path = tmp_path / "audit.jsonl"
    rt = runtime(dead_url(), max_retries=0, telemetry={"audit_log": str(path)},
                 policies={"b": {"policy": POLITICS}, "a": {"policy": POLITICS, "on_error": "allow"}})
    await rt.check("b", Direction.INPUT, "hello")
    await rt.check("a", Direction.INPUT, "hello")
    flushed(rt)
    b, a = records(path)
    assert (b["decision"], b["failed"], b["error_kind"]) == ("block", True, "guard_unavailable")
    assert (a["decision"], a["failed"], a["error_kind"]) == ("allow", True, "guard_unavailable")
    assert b["prompt_harm"] is None and b["reasoning"] is None


async def test_a_full_disk_never_fails_a_check_and_is_counted_and_logged_once(guard, caplog):
    rt = runtime(guard.url, telemetry={"audit_log": "/dev/full"})  # every write fails with ENOSPC
    writer = rt.telemetry.audit
    before = writer.write_errors
    with caplog.at_level(logging.ERROR, logger="nemo_csr_rail"):
        for _ in range(3):
            assert (await rt.check("think", Direction.INPUT, "tell me about politics")).metadata["decision"] == "block"
            flushed(rt)  # one batch per check: three failing writes
    assert writer.write_errors - before == 3
    errors = [r for r in caplog.records if "cannot append to the audit log" in r.getMessage()]
    assert len(errors) == 1 and "No space left on device" in errors[0].getMessage()
    from nemo_csr_rail.telemetry.metrics import REGISTRY

    assert REGISTRY.get_sample_value("csr_audit_errors_total",
                                     {"file": "/dev/full", "reason": "write_error"}) == writer.write_errors


async def test_an_unwritable_path_is_counted_and_writing_resumes_when_it_is_fixed(tmp_path, guard, caplog):
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "audit.jsonl"
    rt = runtime(guard.url, telemetry={"audit_log": str(path)})
    logs.rmdir()  # the directory disappears after load: open() fails with ENOENT
    with caplog.at_level(logging.WARNING, logger="nemo_csr_rail"):
        assert (await rt.check("think", Direction.INPUT, "hello")).metadata["decision"] == "allow"
        flushed(rt)
        assert rt.telemetry.audit.write_errors == 1
        logs.mkdir()
        await rt.check("think", Direction.INPUT, "hello again")
        flushed(rt)
    assert len(records(path)) == 1 and rt.telemetry.audit.written == 1
    assert "is writable again" in caplog.text


async def test_a_writer_stuck_in_io_does_not_delay_checks(tmp_path, guard):
    """A FIFO with no reader: the writer thread blocks in open() for as long as nobody reads; checks go on."""
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    rt = runtime(guard.url, telemetry={"audit_log": str(fifo)})
    for i in range(5):
        out = await rt.check("think", Direction.INPUT, f"message {i}")
        assert out.metadata["decision"] == "allow"
    assert not rt.telemetry.audit.flush(0.2), "the writer is stuck, as intended"
    got: list[bytes] = []

    def read_all() -> None:
        with open(fifo, "rb") as f:
            got.append(f.read())

    reader = threading.Thread(target=read_all)
    reader.start()  # unblock the writer: everything queued meanwhile arrives
    assert rt.telemetry.audit.flush(10)
    rt.telemetry.audit.close()
    reader.join(10)
    lines = got[0].decode().splitlines()
    assert len(lines) == 5 and all(json.loads(x)["decision"] == "allow" for x in lines)


async def test_external_rotation_next_record_lands_in_a_new_file(tmp_path, guard):
    path = tmp_path / "audit.jsonl"
    rt = runtime(guard.url, telemetry={"audit_log": str(path)})
    await rt.check("think", Direction.INPUT, "first")
    flushed(rt)
    os.rename(path, tmp_path / "audit.jsonl.1")  # what logrotate does (without copytruncate)
    await rt.check("think", Direction.INPUT, "politics second")
    flushed(rt)
    assert [r["decision"] for r in records(tmp_path / "audit.jsonl.1")] == ["allow"]
    assert [r["decision"] for r in records(path)] == ["block"]
    os.remove(path)  # removed outright: recreated too
    await rt.check("think", Direction.INPUT, "third")
    flushed(rt)
    assert [r["decision"] for r in records(path)] == ["allow"]
    assert oct(os.stat(path).st_mode & 0o777) == oct(audit.FILE_MODE & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


async def test_a_writer_far_behind_drops_and_counts_instead_of_growing(tmp_path, guard, monkeypatch):
    monkeypatch.setattr(audit, "MAX_QUEUED", 0)
    path = tmp_path / "audit.jsonl"
    rt = runtime(guard.url, telemetry={"audit_log": str(path)})
    assert (await rt.check("think", Direction.INPUT, "hello")).metadata["decision"] == "allow"
    assert rt.telemetry.audit.dropped == 1


@given(texts=st.lists(st.text(alphabet=st.characters(exclude_categories=()), max_size=200), min_size=1, max_size=8))
@example(texts=["lone \ud800 surrogate", "line\nbreak \x00 nul \"quote\" 🙂"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_text_gives_one_valid_json_line_per_record(tmp_path_factory, texts):
    """Newlines, NULs, quotes, non-BMP characters and lone surrogates: one parseable line per record, text intact."""
    path = tmp_path_factory.mktemp("fuzz") / "audit.jsonl"
    writer = audit.AuditWriter(str(path))
    for i, t in enumerate(texts):
        writer.submit({"ts": 1.0 + i, "user_text": t, "bot_text": t[::-1]})
    assert writer.flush(10)
    writer.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(texts) + 1
    got = [json.loads(line) for line in lines[:-1]]
    assert [g["user_text"] for g in got] == texts and [g["bot_text"] for g in got] == [t[::-1] for t in texts]
    assert got[0]["ts"] == "1970-01-01T00:00:01.000000+00:00"
    assert writer.written == len(texts) and writer.write_errors == 0
