"""Streaming output rails through a real ``nemoguardrails server`` process, asked with the OpenAI Python SDK.

The main model is the scripted stand-in streaming its answer token by token (vLLM's SSE chunks, the real Gemma 3
tokenizer's pieces); the guard is the stand-in (harmful iff a marker word such as "EVIL" is in the judged text),
answering every request after ``GUARD_LATENCY_S`` and recording when each request arrived and which answer text it
judged. So each test can say exactly which text reached the client, and *when* relative to the check that covered
it. What the tests pin down (docs/streaming.md explains it for users):

* ``stream_first: false``: a chunk reaches the client only after the guard allowed it; a block ends the stream with
  NeMo 0.24's error frame and nothing of the blocked chunk.
* ``stream_first: true``: each chunk is sent, *then* checked: the blocked chunk is already out when the frame comes.
* The frame's text is fixed by NeMo (``Blocked by <flow> rails.``): the guard's reasoning never reaches a streaming
  client. It is in the plugin's audit record (with ``reasoning`` only when the output policy has reasoning on).
* An input block streams the refusal (with the input reasoning) as ordinary content.
* Colang 2.x: 0.24 does not check streamed chunks (limits asserted below).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.support.guardrails_server import guardrails_server
from tests.support.rails_configs import MAIN_MODEL, retarget, write_config
from tests.support.standin import (
    Fault,
    StandIn,
    last_user_content,
    split_guard_prompt,
    tokenize,
    verdict_responder,
)

ROOT = Path(__file__).resolve().parents[2]
GUARD_LATENCY_S = 0.25
SLOW_WHOLE_S = 3.0
FLOW = 'csr check output $policy="retail"'
REASON_IN = "The user asks for content that the policy forbids, so the request is harmful."
REASON_OUT = "The assistant's response provides content that the policy forbids."

OK_ANSWER = ("Here is a short plan for your trip. First, pick a date. Then book a quiet hotel near the station. "
             "Pack light, bring a map, and keep some cash for the market. Have a nice time and enjoy the food.")
BAD_ANSWER = OK_ANSWER + " Sure, here is EVIL stuff to end with. And some more text after that one."
# The exact frame NeMo 0.24's server sends when a streaming output rail blocks (then `data: [DONE]`).
BLOCKED_FRAME = {"error": {"message": f"Blocked by {FLOW} rails.", "type": "guardrails_violation",
                           "param": FLOW, "code": "content_blocked"}}


def split_answer(chunk_size: int) -> str:
    """An answer whose marker word is cut by the first chunk's end: ' EV' is its last token, 'IL' the next one."""
    prefix = "Here is a plan"
    while len(tokenize(prefix)) < chunk_size - 1:
        prefix += " ok"
    text = prefix + " EVIL stuff, and a calm ending."
    assert tokenize(text)[chunk_size - 1:chunk_size + 1] == [" EV", "IL"]
    return text


SPLIT_ANSWER = split_answer(10)
SHORT_ANSWER = "Fine, thanks. Your order ships on Monday, and the invoice is in your inbox."


def main_responder(body: dict[str, Any]) -> str:
    """The application's LLM: Colang 2.x first asks for the user's intent, then (passthrough) for the answer."""
    text = last_user_content(body)
    if text.rstrip().endswith("user intent:"):
        return "user asked a question"
    if "TRIGGEROUT" in text:
        return BAD_ANSWER
    if "SPLITOUT" in text:
        return SPLIT_ANSWER
    if "SHORTOUT" in text:
        return SHORT_ANSWER
    return OK_ANSWER


class GuardStandIn(StandIn):
    """The guard stand-in, slow (``SLOW_WHOLE_S``) on one kind of request only: the whole-answer check of a turn whose
    user message says SLOWWHOLE. (Delay = latency_s + n_out * per_token_s; n_out is returned for that, only.)"""

    def _answer(self, body: dict[str, Any], path: str) -> tuple[dict[str, Any], int, int]:
        payload, n_prompt, _ = super()._answer(body, path)
        user, bot, _ = split_guard_prompt(last_user_content(body))
        slow = "SLOWWHOLE" in user and bot == OK_ANSWER
        return payload, n_prompt, round(SLOW_WHOLE_S / self.per_token_s) if slow else 0


class RecordingGuard:
    """The verdict stand-in's decisions, plus (arrival time, judged answer text) of every output-check request."""

    def __init__(self) -> None:
        self.judged: list[tuple[float, str]] = []
        #: the user message of each entry of ``judged``: a whole-answer check NeMo runs after an earlier test's
        #: stream ended can arrive during the next test, so a test asserting an absence filters by its own turn
        self.users: list[str] = []
        self._lock = threading.Lock()
        self._decide = verdict_responder()

    def __call__(self, body: dict[str, Any]) -> str:
        user, bot, _ = split_guard_prompt(last_user_content(body))
        if bot is not None:
            with self._lock:
                self.judged.append((time.monotonic(), bot))
                self.users.append(user)
        return self._decide(body)

    def clear(self) -> None:
        with self._lock:
            self.judged.clear()
            self.users.clear()

    def judged_for(self, user: str) -> list[str]:
        """The answer texts judged in output checks of the turn whose user message is ``user``."""
        with self._lock:
            return [bot for (_, bot), u in zip(self.judged, self.users, strict=True) if u == user]

    def checks(self, answer: str) -> list[tuple[float, int, int, str]]:
        """The chunk checks of ``answer`` in order: (time the verdict was sent, start, end in the answer, text).

        A check's requests (split_output sends two) are one check; the verdict leaves when the last one is
        answered. NeMo's whole-answer check (text == answer) is left out: it is not a chunk check."""
        with self._lock:
            judged = list(self.judged)
        latest: dict[str, float] = {}
        for t, text in judged:
            if text != answer:
                latest[text] = max(t, latest.get(text, 0.0))
        out = []
        for text, t in latest.items():
            at = answer.find(text)
            assert at >= 0, f"a check judged text that is not part of the answer: {text!r}"
            out.append((t + GUARD_LATENCY_S, at, at + len(text), text))
        return sorted(out)

    def saw_whole(self, answer: str, timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if any(text == answer for _, text in self.judged):
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


# --------------------------------------------------------------------------------------------------- fixtures
# judged_messages off: these tests count the guard's requests of each streamed turn, and the per-message cache of
# whole-conversation coverage would answer a repeated answer's whole-answer check from memory (docs/coverage.md)
PLUGIN = {"judged_messages": {"enabled": False}, "policies": {"retail": {"policy": "Do not discuss politics.",
                                  "reasoning": {"input": True, "output": False}}}}


def streaming(chunk_size: int = 10, context_size: int = 3, stream_first: bool = False, **output: Any) -> dict:
    return {"rails": {"output": {"streaming": {"enabled": True, "chunk_size": chunk_size, "context_size": context_size,
                                               "stream_first": stream_first}, **output}}}


V2_MAIN = """\
import core
import guardrails
import llm
import passthrough
import nemo_csr_rail

flow main
  activate llm continuation

flow input rails $input_text
  csr check input $policy="retail"
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server process serving every config below by folder name (``guardrails.config_id``)."""
    tmp = tmp_path_factory.mktemp("streaming")
    root = tmp / "configs"
    recorder = RecordingGuard()
    with GuardStandIn(responder=recorder, latency_s=GUARD_LATENCY_S, per_token_s=0.001) as guard, \
            StandIn(model=MAIN_MODEL, responder=main_responder, max_model_len=1_000_000) as main:
        common = {"guard_url": guard.url, "main_url": main.url, "input_flows": ['csr check input $policy="retail"'],
                  "output_flows": [FLOW]}
        audit = {"audit_log": str(tmp / "audit.jsonl"), "audit_include_text": True}
        write_config(root / "first_false", plugin={**PLUGIN, "telemetry": audit}, extra=streaming(), **common)
        write_config(root / "first_true", plugin=PLUGIN, extra=streaming(stream_first=True), **common)
        write_config(root / "parallel", plugin=PLUGIN, extra=streaming(parallel=True), **common)
        write_config(root / "output_only", guard_url=guard.url, main_url=main.url, output_flows=[FLOW],
                     plugin={**PLUGIN, "max_retries": 0, "telemetry": audit}, extra=streaming())
        write_config(root / "no_context", plugin=PLUGIN, extra=streaming(context_size=0), **common)
        reasoning_on = {"policies": {"retail": {"policy": "Do not discuss politics.", "reasoning": True}},
                        "telemetry": {"audit_log": str(tmp / "audit_reasoning.jsonl")}}
        write_config(root / "reasoning_on", plugin=reasoning_on, extra=streaming(), **common)
        write_config(root / "exceptions", plugin=PLUGIN, extra={**streaming(), "enable_rails_exceptions": True},
                     **common)
        write_config(root / "colang2", guard_url=guard.url, main_url=main.url, plugin=PLUGIN, colang2=True,
                     main_co=V2_MAIN + f"\nflow output rails $output_text\n  {FLOW}\n", extra=streaming())
        write_config(root / "colang2_yaml", guard_url=guard.url, main_url=main.url, plugin=PLUGIN, colang2=True,
                     main_co=V2_MAIN, output_flows=[FLOW], extra=streaming())
        retarget(ROOT / "example_configs" / "streaming_chat", root / "example", guard_url=guard.url,
                 main_url=main.url)
        with guardrails_server(root, log_path=tmp / "server.log") as base:
            yield {"base": base, "guard": recorder, "tmp": tmp, "standin": guard}


@pytest.fixture
def srv(served):
    served["guard"].clear()
    yield served
    served["standin"].faults.clear()


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="not-needed", max_retries=0, timeout=60)


def stream(base: str, config_id: str, text: str) -> tuple[list[tuple[float, str]], openai.APIError | None]:
    """(arrival time, content) of every chunk the SDK yields, and the APIError that ended the stream, if any."""
    got: list[tuple[float, str]] = []
    try:
        for chunk in client(base).chat.completions.create(
                model=MAIN_MODEL, messages=[{"role": "user", "content": text}], stream=True,
                extra_body={"guardrails": {"config_id": config_id}}):
            assert len(chunk.choices) == 1 and chunk.object == "chat.completion.chunk"
            got.append((time.monotonic(), chunk.choices[0].delta.content or ""))
    except openai.APIError as exc:
        return got, exc
    return got, None


def raw_stream(base: str, config_id: str, text: str, **guardrails: Any) -> tuple[list[str], httpx.Headers]:
    """The SSE ``data:`` lines exactly as the server sent them, and the response headers."""
    body = {"model": MAIN_MODEL, "stream": True, "messages": [{"role": "user", "content": text}],
            "guardrails": {"config_id": config_id, **guardrails}}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return [line for line in r.iter_lines() if line], r.headers


def text_of(got: list[tuple[float, str]]) -> str:
    return "".join(c for _, c in got)


def assert_nothing_unchecked(got: list[tuple[float, str]], checks: list[tuple[float, int, int, str]]) -> None:
    """Every character the client holds was inside a chunk check whose *allow* verdict had left the guard before
    the character arrived."""
    received = 0
    for arrived, content in got:
        received += len(content)
        covered = max((end for sent, _, end, text in checks if sent <= arrived and "EVIL" not in text), default=0)
        assert received <= covered, f"{received} characters out at {arrived:.3f}, only {covered} checked by then"


# ------------------------------------------------------------------------------------------ (a) allowed answers
@pytest.mark.parametrize("config_id", ["first_false", "first_true", "parallel", "example"])
def test_an_allowed_answer_streams_in_many_chunks_and_equals_the_unstreamed_one(srv, config_id):
    got, error = stream(srv["base"], config_id, "Where is my order?")
    assert error is None
    assert text_of(got) == OK_ANSWER
    # NeMo forwards the main model's deltas one by one (a chunk check releases them, it does not merge them)
    assert [c for _, c in got] == tokenize(OK_ANSWER)
    whole = client(srv["base"]).chat.completions.create(
        model=MAIN_MODEL, messages=[{"role": "user", "content": "Where is my order?"}],
        extra_body={"guardrails": {"config_id": config_id}})
    assert whole.choices[0].message.content == OK_ANSWER


def test_stream_first_false_releases_each_chunk_after_its_check(srv):
    got, error = stream(srv["base"], "first_false", "Where is my order?")
    assert error is None
    checks = srv["guard"].checks(OK_ANSWER)
    # chunk_size 10, context_size 3: the first check judges 10 tokens, every later one 7 new + the 3 before them
    toks = tokenize(OK_ANSWER)
    expected, pos = ["".join(toks[:10])], 10
    while pos < len(toks):
        expected.append("".join(toks[pos - 3:pos + 7]))
        pos += 7
    assert [text for *_, text in checks] == expected
    assert_nothing_unchecked(got, checks)
    assert srv["guard"].saw_whole(OK_ANSWER), "NeMo also checks the whole answer once (its output-rail flow)"


def test_the_end_of_the_stream_waits_for_nemos_whole_answer_check(srv):
    """After the last chunk, 0.24's stream ends only when the generation task has ended, and that task runs the
    1.0 output-rail flow on the whole answer: one more check, whose verdict the client never sees, but waits for."""
    t0 = time.monotonic()
    got, error = stream(srv["base"], "first_false", "Where is my order? SLOWWHOLE")
    end = time.monotonic()
    assert error is None and text_of(got) == OK_ANSWER
    checks = srv["guard"].checks(OK_ANSWER)
    last_token = got[-1][0]
    assert last_token - t0 < SLOW_WHOLE_S  # every chunk was checked and sent meanwhile ...
    assert last_token >= checks[-1][0]
    assert end - t0 >= SLOW_WHOLE_S  # ... but the stream ended only after the slow whole-answer check
    assert srv["guard"].saw_whole(OK_ANSWER, timeout_s=0)


# ---------------------------------------------------------------------------------- (b) stream_first: false
@pytest.mark.parametrize("config_id", ["first_false", "parallel"])
def test_stream_first_false_a_harmful_answer_lets_no_unchecked_text_out(srv, config_id):
    got, error = stream(srv["base"], config_id, "TRIGGEROUT please")
    # exactly the chunks the guard allowed, up to the chunk before the one holding the marker word
    assert text_of(got) == OK_ANSWER + " Sure, here is"
    checks = srv["guard"].checks(BAD_ANSWER)
    blocked = [c for c in checks if "EVIL" in c[3]]
    assert [c[3] for c in blocked] == [", here is EVIL stuff to end with."]  # the stream stops at the first block
    assert checks[-1] == blocked[0]
    assert len(text_of(got)) == checks[-2][2] < blocked[0][2]
    assert_nothing_unchecked(got, checks)
    # the SDK raises openai.APIError (not an HTTP status error: the response was already 200)
    assert type(error) is openai.APIError
    assert error.message == f"Blocked by {FLOW} rails."
    assert (error.code, error.type, error.param) == ("content_blocked", "guardrails_violation", FLOW)
    assert error.body == BLOCKED_FRAME["error"]
    # the guard's reasoning is nowhere in what the client got
    assert "forbids" not in json.dumps(error.body)


@pytest.mark.parametrize("options", [{}, {"options": {"log": {"activated_rails": True}}}], ids=["plain", "log"])
def test_the_blocked_stream_on_the_wire(srv, options):
    lines, headers = raw_stream(srv["base"], "first_false", "TRIGGEROUT please", **options)
    assert lines[-2:] == [f"data: {json.dumps(BLOCKED_FRAME)}", "data: [DONE]"]
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-2]]
    assert all(c["object"] == "chat.completion.chunk" and c["choices"][0]["finish_reason"] is None for c in chunks)
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == OK_ANSWER + " Sure, here is"
    assert not any(c["choices"][0]["finish_reason"] == "stop" for c in chunks)  # no normal end: the frame ends it
    # nothing else carries the rail's outcome: no log on a stream (even when asked for), no extra header
    assert all(set(c) == {"id", "object", "created", "model", "choices"} for c in chunks)
    assert set(headers) == {"date", "server", "content-type", "transfer-encoding"}


# ----------------------------------------------------------------------------------- (c) stream_first: true
def test_stream_first_true_sends_the_blocked_chunk_before_its_check(srv):
    got, error = stream(srv["base"], "first_true", "TRIGGEROUT please")
    checks = srv["guard"].checks(BAD_ANSWER)
    blocked = [c for c in checks if "EVIL" in c[3]]
    assert [c[3] for c in blocked] == [", here is EVIL stuff to end with."] and checks[-1] == blocked[0]
    # everything up to the end of the blocked chunk, marker word included; nothing after it
    assert text_of(got) == OK_ANSWER + " Sure, here is EVIL stuff to end with."
    assert len(text_of(got)) == blocked[0][2]
    # ... and the blocked chunk's tokens were all out before the guard's verdict on them
    verdict_sent, start, _, _ = blocked[0]
    received, new_tokens = 0, []
    for arrived, content in got:
        if received >= start + len(", here is"):  # the 3 context tokens had been sent with the chunk before
            new_tokens.append(content)
            assert arrived < verdict_sent
        received += len(content)
    assert "".join(new_tokens) == " EVIL stuff to end with." and "EV" in new_tokens[0]
    assert error is not None and error.body == BLOCKED_FRAME["error"]


# ----------------------------------------------------------------------------------------- context_size
def test_a_word_cut_by_a_chunk_boundary_is_judged_whole_but_its_first_half_is_out(srv):
    got, error = stream(srv["base"], "first_false", "SPLITOUT please")
    # ' EV' ends the first chunk (allowed, sent), 'IL' starts the next, whose check also judges the 3 tokens
    # before it: it sees ' EVIL' and blocks
    assert text_of(got) == SPLIT_ANSWER[:SPLIT_ANSWER.index("IL")]
    assert error is not None and error.code == "content_blocked"
    toks = tokenize(SPLIT_ANSWER)
    assert [text for *_, text in srv["guard"].checks(SPLIT_ANSWER)] == ["".join(toks[:10]), "".join(toks[7:17])]


def test_context_size_zero_checks_every_token(srv):
    """NeMo 0.24's rolling buffer keeps ``buffer[-context_size:]`` after each chunk, and ``buffer[-0:]`` is the
    whole buffer: with context_size 0 it never empties, so after the first chunk every token triggers a check of
    the last chunk_size tokens, and the end of the stream one more of the whole answer."""
    got, error = stream(srv["base"], "no_context", "SHORTOUT please")
    assert error is None and text_of(got) == SHORT_ANSWER
    toks = tokenize(SHORT_ANSWER)
    windows = ["".join(toks[i - 9:i + 1]) for i in range(9, len(toks))]
    assert len(windows) == len(toks) - 9 == 9
    assert [text for *_, text in srv["guard"].checks(SHORT_ANSWER)] == windows
    assert srv["guard"].saw_whole(SHORT_ANSWER)


# ------------------------------------------------------------------------------------- where the reason is
def _audited(path: Path, after: int, match: Any, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The records after the first ``after`` lines that ``match`` (the server's writer thread appends them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        recs = [json.loads(line) for line in path.read_text().splitlines()[after:]] if path.exists() else []
        found = [r for r in recs if match(r)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_the_block_reason_is_in_the_audit_record_not_in_the_stream(srv):
    audit = srv["tmp"] / "audit.jsonl"
    before = _lines(audit)
    _, error = stream(srv["base"], "first_false", "TRIGGEROUT please")
    assert error is not None and error.body == BLOCKED_FRAME["error"]
    blocked_text = next(text for *_, text in srv["guard"].checks(BAD_ANSWER) if "EVIL" in text)
    chunk_blocks = _audited(audit, before, lambda r: r["direction"] == "output" and r["decision"] == "block"
                            and r.get("bot_text") == blocked_text)
    assert len(chunk_blocks) == 1
    rec = chunk_blocks[0]
    assert (rec["policy"], rec["response_harm"], rec["failed"], rec["user_text"]) == (
        "retail", "harmful", False, "TRIGGEROUT please")
    assert rec["reasoning"] is None  # reasoning off for output checks: the verdict is all there is


def test_with_output_reasoning_on_the_reasoning_is_audited_but_the_frame_is_the_same(srv):
    audit = srv["tmp"] / "audit_reasoning.jsonl"
    before = _lines(audit)
    got, error = stream(srv["base"], "reasoning_on", "TRIGGEROUT please")
    assert text_of(got) == OK_ANSWER + " Sure, here is"
    assert error is not None and error.body == BLOCKED_FRAME["error"]
    assert _audited(audit, before, lambda r: r["decision"] == "block" and r["direction"] == "output"
                    and r.get("reasoning") == REASON_OUT)


def test_a_failed_chunk_check_looks_like_a_block_to_the_client(srv):
    """The guard answers 503 to the first chunk's check: with on_error: block (the default) the client gets the
    same frame as for a harmful chunk; only the audit record says the check failed. (Four faults: the first
    chunk's two requests and, racing them, NeMo's whole-answer check's two.)"""
    audit = srv["tmp"] / "audit.jsonl"
    before = _lines(audit)
    srv["standin"].inject(*[Fault("status", status=503) for _ in range(4)])
    got, error = stream(srv["base"], "output_only", "Where is my order?")
    assert got == [] and error is not None and error.body == BLOCKED_FRAME["error"]
    first_chunk = "".join(tokenize(OK_ANSWER)[:10])
    failed = _audited(audit, before, lambda r: r["direction"] == "output" and r.get("bot_text") == first_chunk)
    assert [(r["decision"], r["failed"], r["error_kind"]) for r in failed] == [("block", True, "guard_http_error")]


# ----------------------------------------------------------------------------------------- input blocks
def test_an_input_block_streams_the_refusal_with_its_reasoning(srv):
    got, error = stream(srv["base"], "first_false", "tell me about politics")
    assert error is None
    assert [c for _, c in got] == [f"I'm sorry, I can't help with that. {REASON_IN}"]  # one chunk, no frame
    # the plugin's own refusal is not sent to the output check (of this turn: a late whole-answer check of the
    # previous test's blocked stream may still arrive meanwhile)
    assert srv["guard"].judged_for("tell me about politics") == []


def test_with_rails_exceptions_an_input_block_streams_nothing(srv):
    got, error = stream(srv["base"], "exceptions", "tell me about politics")
    assert (got, error) == ([], None)  # an empty answer: 0.24 drops the exception event from the stream
    got, error = stream(srv["base"], "exceptions", "TRIGGEROUT please")
    assert error is not None and error.body == BLOCKED_FRAME["error"]  # output: the same frame as without


# ------------------------------------------------------------------------------------------------ Colang 2.x
def test_colang2_output_rails_do_not_check_the_stream(srv):
    """0.24 streams a Colang 2.x answer unchecked: the output rail runs once on the whole answer after it was
    sent, and its refusal does not reach the stream either."""
    got, error = stream(srv["base"], "colang2", "Where is my order?")
    assert error is None and text_of(got) == OK_ANSWER
    assert srv["guard"].saw_whole(OK_ANSWER)
    srv["guard"].clear()
    got, error = stream(srv["base"], "colang2", "TRIGGEROUT please")
    assert error is None and text_of(got) == BAD_ANSWER  # the marker word reached the client
    assert srv["guard"].checks(BAD_ANSWER) == [] and srv["guard"].saw_whole(BAD_ANSWER)


def test_colang2_with_output_flows_in_config_yml_fails_the_streaming_request(srv):
    """rails.output.flows with Colang 2.x: 0.24 looks for a 1.0 flow to run per chunk, finds none and raises
    before the first chunk (ValueError: No action found for flow_id), so the server answers 500."""
    got, error = stream(srv["base"], "colang2_yaml", "Where is my order?")
    assert got == [] and isinstance(error, openai.InternalServerError) and error.status_code == 500
    assert error.body == {"message": "Internal server error", "type": "server_error", "param": None, "code": None}


def test_the_streaming_example_is_what_the_docs_say(srv):
    cfg = yaml.safe_load((ROOT / "example_configs" / "streaming_chat" / "config.yml").read_text())
    st = cfg["rails"]["output"]["streaming"]
    assert st["enabled"] is True and st["stream_first"] is False and st["chunk_size"] > st["context_size"] > 0
    assert cfg["custom_data"]["nemo_csr_rail"]["policies"]["retail"]["reasoning"] == {"input": True,
                                                                                      "output": "escalate"}
    assert "colang_version" not in cfg and "streaming" not in cfg
    got, error = stream(srv["base"], "example", "TRIGGEROUT please")
    assert error is not None and error.code == "content_blocked" and "EVIL" not in text_of(got)
    assert error.param == 'csr check output $policy="retail"'

