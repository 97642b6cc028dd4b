"""Several guard endpoints (``parameters.base_urls``): spread, failover, circuit breaker, half-open probe, recovery.

These test the mechanics under ``replica_routing: round_robin`` (every check one replica further), which makes the
spread countable; policy affinity, the default, is tested in tests/integration/test_replica_affinity.py."""

from __future__ import annotations

import asyncio
import contextlib
import time

from nemo_csr_rail.completion import Attempt
from nemo_csr_rail.policy import Direction
from tests.support.runtime import runtime
from tests.support.standin import Fault, StandIn, error_body

BREAKER = {"threshold": 3, "cooldown_s": 0.5}


def _engine(rt):
    (client,) = rt.clients.values()
    return client.engine


async def test_load_is_spread_across_healthy_replicas() -> None:
    with StandIn() as a, StandIn() as b:
        rt = runtime([a.url, b.url], replica_routing="round_robin")
        outs = await asyncio.gather(*(rt.check("fast", Direction.INPUT, f"order {i}") for i in range(40)))
        assert all(not o.metadata["failed"] for o in outs)
        assert len(a.chat_requests()) == len(b.chat_requests()) == 20


class _Attempts:
    """An engine instrument that keeps every attempt: when a timing assertion fails, the message says what happened."""

    def __init__(self) -> None:
        self.seen: list[Attempt] = []

    def request_headers(self) -> None:
        return None

    def attempt(self, attempt: Attempt) -> None:
        self.seen.append(attempt)

    def to(self, url: str) -> list[tuple[str, float, str, str]]:
        return [(a.status, round(a.seconds, 3), a.breaker_before, a.breaker_after) for a in self.seen
                if a.replica == url]


async def test_breaker_opens_probes_half_open_and_closes() -> None:
    with StandIn() as a, StandIn() as b:
        # timeout_s leaves the 0.3 s probe room on a stalled CI host (the check's budget is split between replicas)
        rt = runtime([a.url, b.url], replica_routing="round_robin", breaker=BREAKER, timeout_s=5.0)
        attempts = _engine(rt).instrument = _Attempts()
        b.inject(*[Fault(kind="status", status=503, body=error_body(503, "down"))] * 20)
        for i in range(12):
            out = await rt.check("fast", Direction.INPUT, f"q{i}")
            assert out.metadata["failed"] is False, out.metadata
        # Open after 3 consecutive failures: no more traffic to b while open.
        assert len(b.chat_requests()) == BREAKER["threshold"]
        assert _engine(rt).breaker_states()[b.url] == "open"
        assert [s for s, *_ in attempts.to(b.url)] == ["503"] * BREAKER["threshold"]

        # Half-open after the cooldown: exactly one probe in flight, everything else keeps going to a.
        b.faults.clear()
        b.inject(Fault(kind="delay", delay_s=0.3))
        await asyncio.sleep(BREAKER["cooldown_s"] + 0.05)
        assert _engine(rt).breaker_states()[b.url] == "half_open"
        outs = await asyncio.gather(*(rt.check("fast", Direction.INPUT, f"p{i}") for i in range(20)))
        assert all(not o.metadata["failed"] for o in outs)
        assert len(b.chat_requests()) == BREAKER["threshold"] + 1
        assert _engine(rt).breaker_states()[b.url] == "closed", attempts.to(b.url)

        # Closed again: b takes its share.
        before = len(b.chat_requests())
        for i in range(10):
            await rt.check("fast", Direction.INPUT, f"r{i}")
        assert len(b.chat_requests()) - before == 5


async def test_failed_probe_reopens_the_breaker() -> None:
    with StandIn() as a, StandIn() as b:
        rt = runtime([a.url, b.url], replica_routing="round_robin", breaker=BREAKER)
        b.inject(*[Fault(kind="status", status=502)] * 50)
        for i in range(8):
            await rt.check("fast", Direction.INPUT, f"q{i}")
        await asyncio.sleep(BREAKER["cooldown_s"] + 0.05)
        for i in range(8):
            assert (await rt.check("fast", Direction.INPUT, f"s{i}")).metadata["failed"] is False
        assert len(b.chat_requests()) == BREAKER["threshold"] + 1  # one failed probe, then open again
        assert _engine(rt).breaker_states()[b.url] == "open"


async def test_replica_killed_mid_run_then_restarted_on_the_same_port() -> None:
    a = StandIn(latency_s=0.01).start()
    b = StandIn(latency_s=0.01).start()
    port_b = b.port
    try:
        rt = runtime([a.url, b.url], replica_routing="round_robin", breaker=BREAKER, timeout_s=5.0)
        sem = asyncio.Semaphore(64)

        async def one(i: int):
            async with sem:
                return await rt.check("fast", Direction.INPUT, f"message {i}")

        tasks = [asyncio.create_task(one(i)) for i in range(600)]
        while len(b.chat_requests()) < 60:  # b is serving: kill it with checks in flight
            await asyncio.sleep(0.005)
        await asyncio.to_thread(b.stop)
        outs = await asyncio.gather(*tasks)
        failed = [o.metadata for o in outs if o.metadata["failed"]]
        assert not failed, failed[:3]
        assert all(o.metadata["decision"] == "allow" for o in outs)
        assert _engine(rt).breaker_states()[b.url] in ("open", "half_open")
        served_a = len(a.chat_requests())

        # Dead replica: checks keep succeeding on a (and the dead one costs no timeouts).
        t0 = time.monotonic()
        for i in range(20):
            assert (await rt.check("fast", Direction.INPUT, f"after {i}")).metadata["failed"] is False
        assert time.monotonic() - t0 < 2.0
        assert len(a.chat_requests()) - served_a >= 20

        # Restart b on the same port: after the cooldown it is probed and gets traffic again.
        b2 = StandIn(port=port_b).start()
        try:
            await asyncio.sleep(BREAKER["cooldown_s"] + 0.05)
            for i in range(20):
                assert (await rt.check("fast", Direction.INPUT, f"back {i}")).metadata["failed"] is False
            assert len(b2.chat_requests()) >= 9
            assert _engine(rt).breaker_states()[b.url] == "closed"
        finally:
            b2.stop()
    finally:
        a.stop()
        b.stop()


async def test_all_replicas_down_is_a_labelled_failure() -> None:
    with StandIn() as a, StandIn() as b:
        urls = [a.url, b.url]
    rt = runtime(urls, replica_routing="round_robin", timeout_s=1.0)
    out = await rt.check("fast", Direction.INPUT, "hello")
    assert out.is_blocked and out.metadata["error_kind"] == "guard_unavailable"


# ------------------------------------------------------------------ replicas that hang instead of failing fast
def _blackhole() -> tuple[list, str]:
    """A listener whose accept queue is full: new connection attempts hang (as to a host that drops packets)."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    held = [srv]
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        held.append(s)
    time.sleep(0.2)
    return held, f"http://127.0.0.1:{port}/v1"


async def test_a_hung_replica_leaves_time_for_the_healthy_one_and_its_breaker_opens() -> None:
    """One replica accepts and never answers. Each attempt gets a share of the deadline while other replicas are
    left to try, so no check fails, and the timeouts count against the hung replica until its breaker opens."""
    with StandIn() as good, StandIn() as hung:
        hung.inject(*[Fault(kind="hang")] * 100)
        # 2 s: the hung replica's share (about 1 s) still leaves the healthy one a margin on a stalled CI host
        rt = runtime([good.url, hung.url], replica_routing="round_robin", timeout_s=2.0, breaker=BREAKER)
        for i in range(10):
            t0 = time.monotonic()
            out = await rt.check("fast", Direction.INPUT, f"order {i}")
            assert out.metadata["failed"] is False, out.metadata
            assert time.monotonic() - t0 < 2.0 + 0.6
        assert len(hung.chat_requests()) == BREAKER["threshold"], "open breaker: no more requests to it"
        assert _engine(rt).breaker_states()[hung.url] == "open"
        await rt.aclose()


async def test_a_replica_that_drops_connection_attempts_fails_over_too() -> None:
    held, dead = _blackhole()
    try:
        with StandIn() as good:
            rt = runtime([good.url, dead], replica_routing="round_robin", timeout_s=2.0, breaker=BREAKER)
            outs = [await rt.check("fast", Direction.INPUT, f"order {i}") for i in range(8)]
            assert [o.metadata["failed"] for o in outs] == [False] * 8, [o.metadata for o in outs]
            assert _engine(rt).breaker_states()[dead] == "open"
            await rt.aclose()
    finally:
        for s in held:
            s.close()


async def test_retry_after_from_one_replica_is_honoured_after_another_fails() -> None:
    """A answers 429 with Retry-After: 0.6 s, B is down: the next round waits the 0.6 s, whichever failed last."""
    import socket

    from nemo_csr_rail import CsrClient, Policy
    from nemo_csr_rail.engines.http import VllmHttpEngine
    from tests.support.standin import GUARD_MODEL

    s0 = socket.socket()
    s0.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s0.getsockname()[1]}/v1"
    s0.close()
    with StandIn() as a:
        a.inject(Fault(kind="status", status=429, headers={"Retry-After": "0.6"}, body=error_body(429, "slow down")))
        engine = VllmHttpEngine([a.url, dead], GUARD_MODEL, breaker_threshold=99, replica_routing="round_robin")
        engine.replicas._next = 0  # a first, then the dead one
        t0 = time.monotonic()
        prompt = CsrClient(a.url).build_prompt(Policy.custom("p", "x"), Direction.INPUT, "hi", None, False)
        await engine.complete(prompt, timeout_s=3.0)
        assert time.monotonic() - t0 >= 0.6 - 0.05
        assert len(a.chat_requests()) == 2
        await engine.aclose()
