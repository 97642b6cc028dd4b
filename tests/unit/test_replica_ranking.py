"""Policy affinity's pieces, without a server: the rendezvous ranking (a stable permutation, hypothesis), the
bounded-load rule, the ranking cache, the policy digest, and that every request of a check carries it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_csr_rail.engines import replicas as rmod
from nemo_csr_rail.engines.replicas import (
    BALANCE_ABS,
    BALANCE_REL,
    Replica,
    ReplicaSet,
    balance,
    rendezvous_rank,
)
from nemo_csr_rail.options import DecodeOptions
from nemo_csr_rail.plans import build
from nemo_csr_rail.plans.split_output import response_step
from nemo_csr_rail.policy import Direction, Policy

URLS = st.lists(st.from_regex(r"https?://[a-z0-9.-]{1,20}:[0-9]{2,5}/v1", fullmatch=True), min_size=1, max_size=8,
                unique=True)
KEYS = st.text(min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(KEYS, URLS)
def test_the_ranking_is_a_permutation_and_stable(key: str, urls: list[str]) -> None:
    ranked = rendezvous_rank(key, urls)
    assert sorted(ranked) == list(range(len(urls)))
    assert rendezvous_rank(key, urls) == ranked  # the same key, the same order (no salted hash)
    assert rendezvous_rank(key, list(urls)) == ranked


@settings(max_examples=300, deadline=None)
@given(KEYS, URLS, st.randoms(use_true_random=False))
def test_the_ranking_depends_on_the_urls_not_their_order_and_a_removal_moves_only_its_keys(key, urls, rnd) -> None:
    order = [urls[i] for i in rendezvous_rank(key, urls)]
    shuffled = list(urls)
    rnd.shuffle(shuffled)
    assert [shuffled[i] for i in rendezvous_rank(key, shuffled)] == order
    if len(urls) > 1:
        gone = rnd.choice(urls)
        rest = [u for u in urls if u != gone]
        assert [rest[i] for i in rendezvous_rank(key, rest)] == [u for u in order if u != gone]


def test_keys_spread_over_the_replicas() -> None:
    urls = [f"http://guard-{i}:8000/v1" for i in range(4)]
    firsts = [rendezvous_rank(f"policy {k}", urls)[0] for k in range(2000)]
    for i in range(4):
        assert 400 < firsts.count(i) < 600  # ~500 each


def _replicas(*loads: int) -> list[Replica]:
    return [Replica(f"http://r{i}", inflight=n) for i, n in enumerate(loads)]


@pytest.mark.parametrize(("loads", "first"), [
    ((0, 0), 0),
    ((BALANCE_ABS, 0), 0),                 # at the absolute margin: stay
    ((BALANCE_ABS + 1, 0), 1),             # beyond both margins: the next in rank order
    ((200, 150), 0),                       # 50 apart but 200 < 1.5 x 150: both busy, stay
    ((300, 150), 1),                       # 150 apart and 2x: move
    ((BALANCE_ABS + 1, BALANCE_ABS + 1, 0), 2),
    ((BALANCE_ABS + 1, 30, 0), 1),         # the policy's own second choice, not the least loaded
])
def test_the_bounded_load_rule(loads: tuple[int, ...], first: int) -> None:
    ranked = _replicas(*loads)
    out = balance(ranked)
    assert out[0] is ranked[first]
    assert sorted(map(id, out)) == sorted(map(id, ranked))
    assert [r for r in out[1:]] == [r for r in ranked if r is not ranked[first]]  # the rest keep their rank order


def test_the_relative_margin_is_the_routers() -> None:
    assert (BALANCE_ABS, BALANCE_REL) == (64, 1.5)  # vllm-router cache_aware's defaults; why: engines/replicas.py


def test_rankings_are_cached_per_key_and_bounded(monkeypatch) -> None:
    monkeypatch.setattr(rmod, "RANKING_CACHE_SIZE", 3)
    rs = ReplicaSet(["http://a/v1", "http://b/v1", "http://c/v1"], max_retries=0, breaker_threshold=3,
                    breaker_cooldown_s=1.0)
    calls = []
    real = rmod.rendezvous_rank
    monkeypatch.setattr(rmod, "rendezvous_rank", lambda k, u: calls.append(k) or real(k, u))
    for key in ("p1", "p2", "p1", "p3", "p4", "p1"):
        assert [r.base_url for r in rs.order(key)] == [rs.base_urls[i] for i in real(key, rs.base_urls)]
    assert calls == ["p1", "p2", "p3", "p4"]  # p1 stayed (recently used); p2 was dropped
    rs.order("p2")
    assert calls[-1] == "p2"


def test_round_robin_and_keyless_requests_rotate() -> None:
    rs = ReplicaSet(["http://a/v1", "http://b/v1"], max_retries=0, breaker_threshold=3, breaker_cooldown_s=1.0,
                    routing="round_robin")
    assert [rs.order("p")[0].base_url for _ in range(4)] == ["http://a/v1", "http://b/v1"] * 2
    aff = ReplicaSet(["http://a/v1", "http://b/v1"], max_retries=0, breaker_threshold=3, breaker_cooldown_s=1.0)
    assert [aff.order("")[0].base_url for _ in range(2)] == ["http://a/v1", "http://b/v1"]
    assert len({aff.order("p")[0].base_url for _ in range(5)}) == 1
    with pytest.raises(ValueError, match="replica_routing"):
        ReplicaSet(["http://a/v1"], max_retries=0, breaker_threshold=3, breaker_cooldown_s=1.0,
                   routing="random")  # type: ignore[arg-type]


def test_the_policy_digest_covers_layout_and_text_only() -> None:
    a = Policy.custom("a", "No politics.", reasoning=False)
    assert a.affinity == Policy.custom("b", "No politics.", reasoning=True, on_error="allow").affinity
    assert a.affinity != Policy.custom("a", "No religion.").affinity
    assert a.affinity != Policy.topic("a", "No politics.").affinity  # another layout, another prefix
    assert len(a.affinity) == 16 and a.affinity == a.affinity


@pytest.mark.parametrize("policy", [Policy.custom("c", "No politics.", reasoning=False),
                                    Policy.custom("c", "No politics.", reasoning=True),
                                    Policy.taxonomy(), Policy.topic("t", "Only talk about printers.")])
@pytest.mark.parametrize("direction", list(Direction))
@pytest.mark.parametrize("prefill", [True, False])
def test_every_request_of_a_check_carries_the_policy_digest(policy, direction, prefill) -> None:
    if policy.kind == "topic" and direction is not Direction.INPUT:
        return
    bot = "Sure." if direction.judged_as is Direction.OUTPUT else None  # the agent directions: their judged side
    gp = build(policy, direction, "Hello", bot, decode=DecodeOptions(assistant_prefill=prefill))
    assert gp.affinity == policy.affinity
    if gp.split_output:
        for guess in ("unharmful", "harmful"):
            assert response_step(gp, guess).affinity == policy.affinity
