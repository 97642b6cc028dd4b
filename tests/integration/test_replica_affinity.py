"""``replica_routing: affinity`` (the default) over several base_urls: each policy's checks go to one replica (its
prefix cache), failover follows the policy's ranking and comes back after recovery, and the bounded-load rule
spills a hot policy to its second replica. Mechanics of the breaker itself: tests/integration/test_replicas.py."""

from __future__ import annotations

import asyncio

import pytest

from nemo_csr_rail.engines.replicas import BALANCE_ABS, rendezvous_rank
from nemo_csr_rail.policy import Direction, Policy
from tests.support.runtime import POLITICS, runtime
from tests.support.standin import Fault, StandIn, error_body

BREAKER = {"threshold": 3, "cooldown_s": 0.5}


def _engine(rt):
    (client,) = rt.clients.values()
    return client.engine


def _policies(n: int) -> dict[str, dict]:
    return {f"p{i}": {"policy": f"Policy {i}: do not discuss topic number {i}.", "reasoning": False}
            for i in range(n)}


def _first_choice(text: str, urls: list[str]) -> str:
    """The replica the policy with this text ranks first (what the engine computes)."""
    key = Policy.custom("x", text, reasoning=False).affinity
    return urls[rendezvous_rank(key, [u.rstrip("/") for u in urls])[0]]


def _served_by(server: StandIn, text: str) -> int:
    return sum(text in r["messages"][0]["content"] for r in server.chat_requests())


async def test_the_default_is_affinity_and_one_policy_goes_to_one_replica() -> None:
    with StandIn() as a, StandIn() as b:
        rt = runtime([a.url, b.url])
        assert _engine(rt).replicas.routing == "affinity"
        outs = await asyncio.gather(*(rt.check("fast", Direction.INPUT, f"order {i}") for i in range(20)))
        assert all(not o.metadata["failed"] for o in outs)
        counts = sorted([len(a.chat_requests()), len(b.chat_requests())])
        assert counts == [0, 20]
        preferred = a if _first_choice(POLITICS, [a.url, b.url]) == a.url else b
        assert len(preferred.chat_requests()) == 20
        await rt.aclose()


async def test_split_output_checks_send_both_halves_to_the_policys_replica() -> None:
    with StandIn() as a, StandIn() as b:
        rt = runtime([a.url, b.url])
        for i in range(5):
            out = await rt.check("fast", Direction.OUTPUT, f"question {i}", f"answer {i}")
            assert out.metadata["failed"] is False, out.metadata
        assert sorted([len(a.chat_requests()), len(b.chat_requests())]) == [0, 10]  # 2 requests a check
        await rt.aclose()


async def test_many_policies_use_both_replicas_and_each_policy_sticks_to_its_own() -> None:
    with StandIn() as a, StandIn() as b:
        urls = [a.url, b.url]
        policies = _policies(24)
        first = {name: _first_choice(spec["policy"], urls) for name, spec in policies.items()}
        assert set(first.values()) == set(urls), "24 policies on one replica: 2**-23, re-run"
        rt = runtime(urls, policies=policies)
        await asyncio.gather(*(rt.check(name, Direction.INPUT, f"message {k}")
                               for name in policies for k in range(3)))
        for name, spec in policies.items():
            on_a, on_b = _served_by(a, spec["policy"]), _served_by(b, spec["policy"])
            assert (on_a, on_b) == ((3, 0) if first[name] == a.url else (0, 3)), name
        assert a.chat_requests() and b.chat_requests()
        await rt.aclose()


async def test_a_policys_checks_fail_over_to_its_second_replica_and_come_back_after_recovery() -> None:
    a = StandIn(latency_s=0.01).start()
    b = StandIn(latency_s=0.01).start()
    try:
        urls = [a.url, b.url]
        rt = runtime(urls, breaker=BREAKER, timeout_s=3.0)
        home = a if _first_choice(POLITICS, urls) == a.url else b
        other = b if home is a else a
        port = home.port
        for i in range(5):
            assert (await rt.check("fast", Direction.INPUT, f"before {i}")).metadata["failed"] is False
        assert len(home.chat_requests()) == 5 and not other.chat_requests()

        await asyncio.to_thread(home.stop)  # its replica dies: every check still decides, on the second replica
        for i in range(10):
            out = await rt.check("fast", Direction.INPUT, f"down {i}")
            assert out.metadata["failed"] is False, out.metadata
        assert len(other.chat_requests()) == 10
        assert _engine(rt).breaker_states()[home.url] == "open"

        back = StandIn(port=port).start()  # recovered on the same address
        try:
            await asyncio.sleep(BREAKER["cooldown_s"] + 0.05)
            for i in range(10):
                assert (await rt.check("fast", Direction.INPUT, f"back {i}")).metadata["failed"] is False
            assert len(back.chat_requests()) == 10, "the policy returns to its own replica"
            assert len(other.chat_requests()) == 10
            assert _engine(rt).breaker_states()[back.url] == "closed"
        finally:
            back.stop()
        await rt.aclose()
    finally:
        a.stop()
        b.stop()


async def test_a_hot_policy_spills_to_its_second_replica_only_beyond_the_load_margin() -> None:
    """Bounded load: with many checks of one policy in flight at once, the preferred replica takes them until it
    has more than BALANCE_ABS beyond the other (and BALANCE_REL times as many); then the other takes a share.
    Every check of a burst counts itself in flight before any answer is read (they all start in the same pass of
    the event loop), so the split is exact."""
    with StandIn() as a, StandIn() as b:
        urls = [a.url, b.url]
        home = a if _first_choice(POLITICS, urls) == a.url else b
        other = b if home is a else a
        rt = runtime(urls, timeout_s=20.0)

        async def burst(n: int, tag: str) -> tuple[int, int]:
            for s in (a, b):
                s.requests.clear()
            outs = await asyncio.gather(*(rt.check("fast", Direction.INPUT, f"{tag} {i}") for i in range(n)))
            assert all(not o.metadata["failed"] for o in outs)
            return len(home.chat_requests()), len(other.chat_requests())

        assert await burst(BALANCE_ABS // 2, "calm") == (BALANCE_ABS // 2, 0)  # inside the margin: no spill
        # beyond it: the first BALANCE_ABS + 1 stay home, then every other check spills (each spill narrows the gap
        # back to the margin)
        n = BALANCE_ABS + 35
        assert await burst(n, "hot") == (BALANCE_ABS + 1 + 17, 17)
        await rt.aclose()


async def test_round_robin_remains_available() -> None:
    with StandIn() as a, StandIn() as b:
        rt = runtime([a.url, b.url], replica_routing="round_robin")
        assert _engine(rt).replicas.routing == "round_robin"  # the setting reaches the engine (engines/factory.py)
        for i in range(10):
            await rt.check("fast", Direction.INPUT, f"order {i}")
        assert len(a.chat_requests()) == len(b.chat_requests()) == 5
        await rt.aclose()


async def test_an_unknown_routing_fails_at_load_naming_the_key() -> None:
    from nemo_csr_rail.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        runtime(["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"], replica_routing="least_loaded")
    assert "replica_routing" in str(info.value)


async def test_all_replicas_of_a_policy_down_is_a_labelled_failure() -> None:
    with StandIn() as a, StandIn() as b:
        a.inject(*[Fault(kind="status", status=503, body=error_body(503, "down"))] * 20)
        b.inject(*[Fault(kind="status", status=503, body=error_body(503, "down"))] * 20)
        rt = runtime([a.url, b.url], timeout_s=3.0, max_retries=1)
        out = await rt.check("fast", Direction.INPUT, "hello")
        assert out.is_blocked and out.metadata["error_kind"] == "guard_http_error"
        assert a.chat_requests() and b.chat_requests(), "the ranking is the failover order: both were tried"
        await rt.aclose()
