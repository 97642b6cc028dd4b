"""Every fault ends in a deliberate, labelled decision within the deadline — never in an exception or a fake verdict.

Each case runs against a real socket server on 127.0.0.1 (the vLLM-shaped stand-in) that injects the fault, and
checks: the error kind named in metadata and logs, how many attempts the server saw (retryable faults are retried,
others are not), the elapsed time against ``timeout_s``, and the rail's decision for ``on_error`` block and allow.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import pytest

from nemo_csr_rail import CsrClient
from nemo_csr_rail.engines.deadline import MAX_RESERVE_SHARE
from nemo_csr_rail.errors import (
    ConfigError,
    GuardHTTPError,
    GuardProtocolError,
    GuardTimeout,
    GuardUnavailable,
    InputTooLong,
    VerdictParseError,
)
from nemo_csr_rail.policy import Direction, Policy
from nemo_csr_rail.rail import reset_runtimes
from tests.support.net import free_port
from tests.support.runtime import POLITICS, runtime
from tests.support.standin import Fault, StandIn, error_body

TIMEOUT = 2.0
SLACK = 0.6  # scheduling + connection teardown; every bound below is timeout_s + SLACK
#: a request that hangs ends at the deadline, or up to MAX_RESERVE_SHARE of it earlier when the event loop lags (the
#: engine then gives up early so as to end in time: engines/deadline.py)
HANG_ENDS_AFTER = TIMEOUT * (1 - MAX_RESERVE_SHARE) - 0.1


@dataclass
class Case:
    faults: list[Fault]
    kind: str | None  # None: the check succeeds (the fault was retried away)
    attempts: int
    policy: str = "think"
    min_elapsed: float = 0.0
    extra: dict = field(default_factory=dict)


def _503() -> Fault:
    return Fault(kind="status", status=503, body=error_body(503, "overloaded"))


CASES: dict[str, Case] = {
    # --- retryable: retried with backoff, then on_error decides
    "hang_read_timeout": Case([Fault(kind="hang")], "guard_timeout", 1, min_elapsed=HANG_ENDS_AFTER),
    "trickle_past_deadline": Case([Fault(kind="trickle", delay_s=0.05)], "guard_timeout", 1,
                                  min_elapsed=HANG_ENDS_AFTER),
    "trickle_within_deadline": Case([Fault(kind="trickle", delay_s=0.0005)], None, 1),
    "reset_mid_body_once": Case([Fault(kind="reset")], None, 2),
    "reset_mid_body_always": Case([Fault(kind="reset")] * 3, "guard_unavailable", 3),
    "close_without_answer_once": Case([Fault(kind="close")], None, 2),
    "http_500_once": Case([Fault(kind="status", status=500)], None, 2),
    "http_502_once": Case([Fault(kind="status", status=502)], None, 2),
    "http_503_always": Case([_503(), _503(), _503()], "guard_http_error", 3),
    "http_429_retry_after": Case([Fault(kind="status", status=429, headers={"Retry-After": "0.5"},
                                        body=error_body(429, "rate limited"))], None, 2, min_elapsed=0.5),
    "http_429_retry_after_past_deadline": Case(
        [Fault(kind="status", status=429, headers={"Retry-After": "30"}, body=error_body(429, "rate limited"))],
        "guard_http_error", 1),
    # --- not retryable: one attempt, then on_error decides
    "http_400_bad_request": Case([Fault(kind="status", status=400, body=error_body(400, "bad logits_processors"))],
                                 "guard_http_error", 1),
    "http_401_bad_key": Case([Fault(kind="status", status=401, body={"error": "Unauthorized"})],
                             "guard_http_error", 1),
    "http_403_forbidden": Case([Fault(kind="status", status=403, body={"error": "Forbidden"})],
                               "guard_http_error", 1),
    "invalid_json": Case([Fault(kind="raw", body=b'{"choices": [ {"message": ')], "guard_protocol_error", 1),
    "empty_choices": Case([Fault(kind="raw", body={"id": "x", "object": "chat.completion", "choices": []})],
                          "guard_protocol_error", 1),
    "not_a_completion": Case([Fault(kind="raw", body=["a", "list"])], "guard_protocol_error", 1),
    "truncated_think": Case([Fault(kind="text", text="<think>\nThe user asks about", finish_reason="length")],
                            "verdict_parse_error", 1),
    "length_after_think_no_verdict": Case(
        [Fault(kind="text", text="<think>\nFine.\n</think>\n\nPrompt", finish_reason="length")],
        "verdict_parse_error", 1),
    "verdict_missing": Case([Fault(kind="text", text="<think>\nFine.\n</think>\n\n")], "verdict_parse_error", 1),
    "conflicting_verdicts": Case([Fault(kind="text", text="Prompt harm: harmful\nPrompt harm: unharmful")],
                                 "verdict_parse_error", 1),
    "conflicting_after_prefill": Case([Fault(kind="text", text=" unharmful\nPrompt harm: harmful")],
                                      "verdict_parse_error", 1, policy="fast"),
    "unknown_verdict_word": Case([Fault(kind="text", text="Prompt harm: maybe")], "verdict_parse_error", 1),
}


@pytest.mark.parametrize("on_error", ["block", "allow"])
@pytest.mark.parametrize("name", list(CASES))
async def test_fault_matrix(name: str, on_error: str, guard: StandIn, caplog) -> None:
    case = CASES[name]
    rt = runtime(guard.url, timeout_s=TIMEOUT, on_error=on_error)
    guard.inject(*case.faults)
    caplog.set_level(logging.INFO, logger="nemo_csr_rail")
    t0 = time.monotonic()
    out = await rt.check(case.policy, Direction.INPUT, "Where is my order?")
    elapsed = time.monotonic() - t0
    meta = out.metadata
    assert elapsed <= TIMEOUT + SLACK, f"{name}: {elapsed:.2f}s"
    assert elapsed >= case.min_elapsed - 0.05, f"{name}: {elapsed:.2f}s"
    assert len(guard.chat_requests()) == case.attempts, f"{name}: server saw {len(guard.chat_requests())}"
    if case.kind is None:
        assert meta["failed"] is False and meta["decision"] == "allow" and meta["prompt_harm"] == "unharmful"
        return
    # A fault is never a policy verdict: no harm field, failed=True, and the kind named.
    assert meta["failed"] is True and meta["error_kind"] == case.kind, meta
    assert "prompt_harm" not in meta and "response_harm" not in meta
    assert meta["on_error"] == on_error and meta["decision"] == on_error
    assert out.is_blocked is (on_error == "block")
    if on_error == "block":
        assert out.failed is True  # RailOutcome.failure: the engine's fail-closed envelope
        assert case.kind in out.reason
    else:
        assert meta["failed_open"] is True
    logged = [r for r in caplog.records if r.name == "nemo_csr_rail" and r.levelno >= logging.WARNING]
    assert any(case.kind in r.getMessage() for r in logged), [r.getMessage() for r in logged]


async def test_connection_refused_is_retried_then_unavailable() -> None:
    rt = runtime(f"http://127.0.0.1:{free_port()}/v1", timeout_s=TIMEOUT)
    t0 = time.monotonic()
    out = await rt.check("think", Direction.INPUT, "hello")
    assert time.monotonic() - t0 <= TIMEOUT + SLACK
    assert out.is_blocked and out.metadata["error_kind"] == "guard_unavailable"
    assert "unreachable" in out.metadata["error"]


async def test_dns_failure_is_unavailable() -> None:
    rt = runtime("http://no-such-guard-host.invalid:8000/v1", timeout_s=TIMEOUT, on_error="allow")
    t0 = time.monotonic()
    out = await rt.check("think", Direction.INPUT, "hello")
    assert time.monotonic() - t0 <= TIMEOUT + SLACK
    assert not out.is_blocked and out.metadata["error_kind"] == "guard_unavailable"
    assert out.metadata["failed_open"] is True


async def test_wrong_model_name_is_404_not_retried(guard: StandIn) -> None:
    rt = runtime(guard.url, model="nvidia/not-the-served-name", timeout_s=TIMEOUT)
    out = await rt.check("think", Direction.INPUT, "hello")
    assert out.metadata["error_kind"] == "guard_http_error" and "404" in out.metadata["error"]
    assert "served-model-name" in out.metadata["error"]  # the hint says what to compare
    assert len(guard.chat_requests()) == 1


async def test_real_bad_api_key_is_401_not_retried(monkeypatch) -> None:
    monkeypatch.setenv("CSR_TEST_KEY", "wrong-key")
    with StandIn(api_key="right-key") as server:
        rt = runtime(server.url, params={"api_key_env_var": "CSR_TEST_KEY"}, timeout_s=TIMEOUT)
        out = await rt.check("think", Direction.INPUT, "hello")
        assert out.metadata["error_kind"] == "guard_http_error" and "401" in out.metadata["error"]
        assert "api_key_env_var" in out.metadata["error"]


def test_bad_url_fails_at_load_naming_the_key(guard: StandIn) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        runtime("ftp://127.0.0.1:1/v1")
    with pytest.raises(ConfigError, match="base_url"):
        runtime("http://127.0.0.1:notaport/v1")


# --- the Python API raises the plugin's own errors, nothing else ---------------------------------------------------
@pytest.mark.parametrize(
    ("faults", "exc"),
    [
        ([Fault(kind="status", status=401, body={"error": "Unauthorized"})], GuardHTTPError),
        ([Fault(kind="raw", body=b"not json")], GuardProtocolError),
        ([Fault(kind="text", text="<think>\ncut", finish_reason="length")], VerdictParseError),
        ([Fault(kind="hang")], GuardTimeout),
        ([Fault(kind="reset")] * 3, GuardUnavailable),
    ],
)
async def test_client_raises_typed_errors(guard: StandIn, faults, exc) -> None:
    guard.inject(*faults)
    async with CsrClient(guard.url, timeout_s=1.0, max_retries=2) as client:
        t0 = time.monotonic()
        with pytest.raises(exc):
            await client.classify(Policy.custom("p", POLITICS, reasoning=True), "hello")
        assert time.monotonic() - t0 <= 1.0 + SLACK


async def test_truncation_is_named_as_such(guard: StandIn) -> None:
    guard.inject(Fault(kind="text", text="<think>\nThe user", finish_reason="length"))
    async with CsrClient(guard.url, timeout_s=1.0) as client:
        with pytest.raises(VerdictParseError, match="truncated at max_tokens"):
            await client.classify(Policy.custom("p", POLITICS, reasoning=True), "hello")


async def test_client_invalid_scheme_is_config_error() -> None:
    async with CsrClient("ftp://127.0.0.1:9/v1", timeout_s=1.0) as client:
        with pytest.raises(ConfigError):
            await client.classify("x", "hello")


async def test_context_400_from_server_is_input_too_long(guard: StandIn) -> None:
    async with CsrClient(guard.url, timeout_s=2.0) as client:
        with pytest.raises(InputTooLong):
            await client.classify("x", "word " * 4000)
    assert len(guard.chat_requests()) == 1


async def test_backoff_is_jittered(guard: StandIn, monkeypatch) -> None:
    """Retry delays differ between checks (no thundering herd after a shared outage)."""
    import nemo_csr_rail.engines.http as http

    delays: list[float] = []
    real_sleep = http.asyncio.sleep

    async def spy(d: float) -> None:
        delays.append(d)
        await real_sleep(0)

    monkeypatch.setattr(http.asyncio, "sleep", spy)
    async with CsrClient(guard.url, timeout_s=2.0, max_retries=2) as client:
        for _ in range(6):
            guard.inject(Fault(kind="status", status=503))
            await client.classify("x", "hello")
    assert len(delays) == 6 and len(set(delays)) > 1 and all(0.0 < d <= 1.5 for d in delays)


# --- end to end through NeMo Guardrails: on_error decides the reply ------------------------------------------------
@pytest.mark.parametrize("on_error", ["block", "allow"])
async def test_fault_end_to_end_reply(on_error: str, tmp_path, guard: StandIn, main_llm) -> None:
    from tests.support.e2e_helpers import ask, rails_for
    from tests.support.rails_configs import write_config

    cfg = write_config(tmp_path / "cfg", guard_url=guard.url, main_url=main_llm.url,
                       plugin={"timeout_s": 1.0, "on_error": on_error, "policies": {"retail": {"policy": POLITICS}}},
                       input_flows=['csr check input $policy="retail"'])
    rails = rails_for(cfg)
    guard.inject(Fault(kind="status", status=401, body={"error": "Unauthorized"}))
    reply, outcomes = await ask(rails, "Where is my order?")
    (o,) = outcomes
    assert o["metadata"]["error_kind"] == "guard_http_error" and o["metadata"]["failed"] is True
    if on_error == "block":
        assert reply == "I'm sorry, I can't respond right now: the safety check could not run."
    else:
        assert reply == "Hello! How can I help you today?"
    reset_runtimes()


# ---------------------------------------------------------------- the engine keeps the deadline on its own
def _engine_and_prompt(url: str, **kw):
    from nemo_csr_rail.engines.http import VllmHttpEngine
    from tests.support.standin import GUARD_MODEL

    prompt = CsrClient(url).build_prompt(Policy.custom("p", POLITICS), Direction.INPUT, "hi", None, False)
    return VllmHttpEngine([url], GUARD_MODEL, **kw), prompt


async def test_engine_deadline_bounds_a_trickled_answer(guard: StandIn) -> None:
    """httpx's read timeout is per read; a server that keeps sending a little never trips it. The engine's own
    deadline covers the whole response, so VllmHttpEngine used directly ends on time too."""
    guard.inject(Fault(kind="trickle", delay_s=0.05))
    engine, prompt = _engine_and_prompt(guard.url)
    t0 = time.monotonic()
    with pytest.raises(GuardTimeout):
        await engine.complete(prompt, timeout_s=0.5)
    assert time.monotonic() - t0 <= 0.5 + SLACK
    await engine.aclose()


async def test_waiting_for_a_request_slot_counts_against_the_deadline(guard: StandIn) -> None:
    import asyncio

    guard.inject(Fault(kind="delay", delay_s=1.5))
    engine, prompt = _engine_and_prompt(guard.url, max_concurrency=1)
    slow = asyncio.ensure_future(engine.complete(prompt, timeout_s=3.0))
    await asyncio.sleep(0.1)  # the only slot is taken
    t0 = time.monotonic()
    with pytest.raises(GuardTimeout, match="max_concurrency"):
        await engine.complete(prompt, timeout_s=0.3)
    assert time.monotonic() - t0 <= 0.3 + SLACK
    await slow
    await engine.aclose()


def test_a_new_event_loop_per_call_does_not_keep_old_connections(guard: StandIn) -> None:
    """Sync callers (NeMo's generate(), scripts) run each check in a fresh loop: the pools of ended loops are let
    go, so connections and descriptors do not pile up, and aclose() works from yet another loop."""
    import asyncio
    import gc
    import os

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    client = CsrClient(guard.url, timeout_s=2.0)
    asyncio.run(client.classify(POLITICS, "warm up", reasoning=False))
    gc.collect()
    before = fds()
    for i in range(40):
        asyncio.run(client.classify(POLITICS, f"question {i}", reasoning=False))
    gc.collect()
    deadline = time.monotonic() + 5
    while len(guard._writers) > 5 and time.monotonic() < deadline:
        time.sleep(0.05)  # the stand-in (another thread) sees the closed connections
    assert len(client.engine._per_loop) <= 1
    # Before, every loop kept its pool: +2 descriptors and one server-side connection per call (80 and 40 here).
    assert fds() - before < 20
    assert len(guard._writers) <= 5, "connections of ended loops must be closed"
    asyncio.run(client.aclose())
    assert not client.engine._per_loop


def test_scrub_catches_checked_text_quoted_escaped() -> None:
    from nemo_csr_rail.long_input import scrub

    secret = "my card is 4111 1111 1111 1111\nexp 12/29 cvv 123 — «merci»"
    for quoted in (secret, repr(secret), __import__("json").dumps(secret), __import__("json").dumps(secret)[1:-1]):
        assert "4111" not in scrub(f"400 Bad Request: cannot process {quoted} here", secret)
    assert scrub("400 Bad Request: invalid parameter", secret) == "400 Bad Request: invalid parameter"
