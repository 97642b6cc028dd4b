"""Replicas, their circuit breakers and the retry loop: which replica gets the next attempt, and when to give up.

One flat loop per call: each round tries every replica whose breaker lets it (all of them when every breaker is
open: a guard must still try rather than fail every check for ``cooldown_s``), each attempt getting a share of the
time left so a replica that hangs leaves the others time to answer; between rounds a jittered backoff that honours
the longest ``Retry-After`` of the round, always inside the caller's deadline. Only faults another attempt can fix
are retried (unreachable, timeout, 408/429/5xx); TLS failures and other HTTP errors are final. Transport-agnostic:
the engine passes ``send(base_url, budget)``.

Which replica a call tries first (``replica_routing``):

* ``affinity`` (default): rendezvous (highest-random-weight) hashing of the request's ``affinity`` key — a digest of
  the policy, :attr:`nemo_csr_rail.policy.Policy.affinity` — over the replicas' URLs. Every check of one policy goes
  to the same replica, whose prefix cache then holds that policy's hundreds of tokens once instead of every replica
  holding every policy. The ranking is the failover order: when the first replica's breaker is open the policy's
  checks go to its second, and back once the first recovers; adding or removing a replica moves only the policies
  that ranked it first. The hash is keyed on the URL text (blake2b, not Python's salted ``hash``), so every process
  with the same ``base_urls`` agrees on it. A bounded-load rule keeps one hot policy from queueing on its replica
  while another idles: :func:`balance`.
* ``round_robin``: one replica further on each call, whatever the request (every replica caches every policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from nemo_csr_rail.completion import Attempt, Completion, Instrument
from nemo_csr_rail.engines.deadline import MIN_START_S
from nemo_csr_rail.errors import (
    ConfigError,
    CsrError,
    GuardHTTPError,
    GuardProtocolError,
    GuardTimeout,
    GuardTLSError,
    GuardUnavailable,
    InputTooLong,
)

Send = Callable[[str, float], Awaitable[Completion]]
Routing = Literal["affinity", "round_robin"]
ROUTINGS: tuple[str, ...] = ("affinity", "round_robin")

#: Bounded load for ``affinity``: a check leaves its policy's replica for the next one in its ranking only when the
#: preferred replica has more than ``BALANCE_ABS`` requests in flight beyond the least loaded *and* more than
#: ``BALANCE_REL`` times as many. vllm-router's ``cache_aware`` uses the same pair (64 / 1.5). Why these: a replica
#: batches what it is sent (vLLM's continuous batching), and a cached check prefills only its conversation (~50-100
#: tokens against the policy's hundreds), so 64 extra cached requests are about one scheduler step of prefill
#: (64 x ~100 tokens against a step budget of 2-8K batched tokens) — cheaper than the uncached prefills a spill
#: costs the other replica. The relative margin keeps the rule from firing when both replicas are busy (256 vs 190 in
#: flight is no imbalance worth losing the cache for) and lets a hot policy take at most ~60% of two replicas' load
#: under saturation. Counts are this process's own requests (the plugin sees no one else's): several processes
#: sharing replicas each balance their own share, and low concurrency (the common case) never triggers the rule.
BALANCE_ABS = 64
BALANCE_REL = 1.5
#: rankings remembered (one per policy digest; a config has a handful of policies, this bounds a dynamic caller)
RANKING_CACHE_SIZE = 1024


@dataclass
class Replica:
    """One base URL and its circuit breaker: closed → open (after ``threshold`` consecutive failures) → half-open
    (after ``cooldown_s``: exactly one probe request at a time) → closed on the probe's success, open again on failure.
    """

    base_url: str
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False
    #: requests this process has in flight to this replica (the bounded-load rule reads it)
    inflight: int = 0

    def state(self, now: float) -> str:
        if self.open_until == 0.0:
            return "closed"
        return "open" if now < self.open_until else "half_open"

    def record(self, ok: bool, *, threshold: int, cooldown_s: float) -> None:
        if ok:
            self.failures, self.open_until = 0, 0.0
            return
        self.failures += 1
        if self.failures >= threshold or self.open_until:
            self.open_until = time.monotonic() + cooldown_s


def attempt_status(exc: BaseException | None) -> str:
    """How one request ended, for :class:`Attempt`: the HTTP status, or the failure that left none."""
    if isinstance(exc, GuardHTTPError):
        return str(exc.status)
    for kind, status in ((InputTooLong, "400"), (GuardTLSError, "tls_error"), (GuardTimeout, "timeout"),
                         (GuardUnavailable, "unreachable"), (GuardProtocolError, "protocol_error"),
                         (ConfigError, "config_error")):
        if isinstance(exc, kind):
            return status
    return "error"


class _Retry(Exception):
    """Internal: this replica failed in a way another attempt may fix."""


def rendezvous_rank(key: str, base_urls: Sequence[str]) -> tuple[int, ...]:
    """Indices of ``base_urls`` by descending highest-random-weight score of ``key``: a stable permutation that only
    depends on the key and each URL's own text (so adding or removing one URL moves only the keys ranking it first)."""
    def score(url: str) -> bytes:
        return hashlib.blake2b(f"{key}\x00{url}".encode("utf-8", "surrogatepass"), digest_size=8).digest()

    return tuple(sorted(range(len(base_urls)), key=lambda i: (score(base_urls[i]), -i), reverse=True))


def balance(ranked: Sequence[Replica], *, abs_margin: int = BALANCE_ABS,
            rel_margin: float = BALANCE_REL) -> list[Replica]:
    """The bounded-load rule: ``ranked`` with the first replica that is not overloaded moved to the front, where
    overloaded means more than ``abs_margin`` requests in flight beyond the least loaded of ``ranked`` *and* more than
    ``rel_margin`` times as many. The rest keep their rank order (the spill goes to the policy's own second choice,
    whose cache then warms for it)."""
    if len(ranked) < 2:
        return list(ranked)
    least = min(r.inflight for r in ranked)
    for i, r in enumerate(ranked):
        if not (r.inflight - least > abs_margin and r.inflight > rel_margin * least):
            return [r, *ranked[:i], *ranked[i + 1:]] if i else list(ranked)
    return list(ranked)  # unreachable: the least loaded is never overloaded


class ReplicaSet:
    """The replicas of one endpoint, in the order ``routing`` gives each call (module docstring)."""

    def __init__(self, base_urls: Sequence[str], *, max_retries: int, breaker_threshold: int,
                 breaker_cooldown_s: float, routing: Routing = "affinity") -> None:
        if not base_urls:
            raise ValueError("at least one base_url is required")
        if routing not in ROUTINGS:
            raise ValueError(f"replica_routing must be one of {', '.join(ROUTINGS)}, not {routing!r}")
        self.replicas = [Replica(u.rstrip("/")) for u in base_urls]
        self.max_retries = max_retries
        self.threshold = breaker_threshold
        self.cooldown_s = breaker_cooldown_s
        self.routing: Routing = routing
        self._next = 0
        self._rankings: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    @property
    def base_urls(self) -> tuple[str, ...]:
        return tuple(r.base_url for r in self.replicas)

    def ranking(self, key: str) -> tuple[int, ...]:
        """The replicas' indices in ``key``'s rendezvous order, cached per key (least recently used dropped)."""
        cached = self._rankings.get(key)
        if cached is not None:
            self._rankings.move_to_end(key)
            return cached
        ranked = rendezvous_rank(key, self.base_urls)
        self._rankings[key] = ranked
        if len(self._rankings) > RANKING_CACHE_SIZE:
            self._rankings.popitem(last=False)
        return ranked

    def order(self, key: str = "") -> list[Replica]:
        """Every replica, in the order this call tries them: ``key``'s ranking under ``affinity`` (a request without
        a key, or ``round_robin``, rotates one further per call)."""
        n = len(self.replicas)
        if self.routing == "affinity" and key and n > 1:
            return [self.replicas[i] for i in self.ranking(key)]
        start = self._next % n
        self._next += 1
        return self.replicas[start:] + self.replicas[:start]

    def breaker_states(self) -> dict[str, str]:
        now = time.monotonic()
        return {r.base_url: r.state(now) for r in self.replicas}

    async def run(self, send: Send, *, deadline: float | Callable[[], float], timeout_s: float,
                  instrument: Instrument | None = None, key: str = "") -> Completion:
        """``send`` to one replica after another until one answers, the retries are spent or the deadline passes;
        raises the last failure (or ``GuardTimeout``). ``deadline``: a ``time.monotonic()`` value, or a function
        giving it (re-read before every attempt: the engine's give-up time moves with the event loop's lag).
        ``key``: the request's affinity key (``affinity`` routing)."""
        call = _Call(self, send, deadline, timeout_s, instrument)
        attempt = 0
        while True:
            now = time.monotonic()
            order = self.order(key)
            ready = [r for r in order if not (r.state(now) == "open" or (r.state(now) == "half_open" and r.probing))]
            if self.routing == "affinity" and key:
                ready = balance(ready)
            candidates = ready or order  # every breaker open: try anyway
            call.retry_after = 0.0
            for i, replica in enumerate(candidates):
                probe = bool(ready) and replica.state(time.monotonic()) == "half_open"
                if probe:
                    if replica.probing:
                        continue  # another check took the probe meanwhile
                    replica.probing = True
                try:
                    return await call.observed(replica, len(candidates) - i)
                except _Retry:
                    continue
                finally:
                    if probe:
                        replica.probing = False
            attempt += 1
            if attempt > self.max_retries:
                assert call.last is not None
                raise call.last
            delay = max(min(0.05 * (2 ** attempt), 1.0) * random.uniform(0.5, 1.5), call.retry_after)
            if time.monotonic() + delay + MIN_START_S >= call.give_up():
                assert call.last is not None
                raise call.last
            await asyncio.sleep(delay)


class _Call:
    """The state of one :meth:`ReplicaSet.run`: the last failure, the round's longest Retry-After, requests sent."""

    def __init__(self, replicas: ReplicaSet, send: Send, deadline: float | Callable[[], float], timeout_s: float,
                 instrument: Instrument | None) -> None:
        self.replicas, self.send, self.deadline, self.timeout_s = replicas, send, deadline, timeout_s
        self.instrument = instrument
        self.last: CsrError | None = None
        self.retry_after = 0.0
        self.sent = 0

    def give_up(self) -> float:
        return self.deadline() if callable(self.deadline) else self.deadline

    def time_left(self) -> float:
        """Seconds to the deadline; when fewer than ``MIN_START_S``, what cannot end in time is not started
        (engines/deadline.py) and no request is reported for it. The check then fails with the error that made it
        retry, if one did (a guard answering 503 on every replica is a guard error, whether the time ran out before
        the retry or at it: a stalled host must not turn one into the other), else with ``GuardTimeout``."""
        remaining = self.give_up() - time.monotonic()
        if remaining < MIN_START_S:
            if self.last is not None and not isinstance(self.last, GuardTimeout):
                raise self.last
            raise GuardTimeout(f"guard check exceeded {self.timeout_s:g}s"
                               + (f": not started, {remaining * 1000:.0f} ms were left" if remaining > 0 else "")
                               + (f" (last error: {self.last.message})" if self.last else ""))
        return remaining

    async def observed(self, replica: Replica, share: int) -> Completion:
        """:meth:`attempt`, reported to the instrument (if any) once the breaker has recorded the result."""
        self.time_left()
        instrument = self.instrument
        if instrument is None:
            return await self.attempt(replica, share)
        retry, self.sent = self.sent > 0, self.sent + 1
        before, status, t0 = replica.state(time.monotonic()), "cancelled", time.perf_counter()
        try:
            result = await self.attempt(replica, share)
            status = "200"
            return result
        except _Retry:
            status = attempt_status(self.last)
            raise
        except CsrError as exc:
            status = attempt_status(exc)
            raise
        finally:
            with contextlib.suppress(Exception):
                instrument.attempt(Attempt(replica.base_url, status, time.perf_counter() - t0, retry, before,
                                           replica.state(time.monotonic())))

    async def attempt(self, replica: Replica, share: int) -> Completion:
        """One request to ``replica``, with 1/``share`` of the time left: when other replicas are still to be tried
        this round, a replica that hangs (or drops connection attempts) must leave them time to answer."""
        threshold, cooldown = self.replicas.threshold, self.replicas.cooldown_s
        remaining = self.time_left()
        budget = remaining / share
        replica.inflight += 1
        try:
            result = await self.send(replica.base_url, budget)
        except (GuardUnavailable, GuardHTTPError, GuardTimeout) as exc:
            self.last = exc
            if isinstance(exc, GuardTLSError) or (isinstance(exc, GuardHTTPError) and not exc.retryable):
                raise  # the server is up and answered; no retry can change this
            replica.record(False, threshold=threshold, cooldown_s=cooldown)
            self.retry_after = max(self.retry_after, getattr(exc, "retry_after", None) or 0.0)
            if isinstance(exc, GuardTimeout) and share == 1:
                raise  # the whole remaining budget was spent on this attempt
            raise _Retry() from None
        except CsrError:
            replica.record(True, threshold=threshold, cooldown_s=cooldown)  # it answered: it is alive
            raise
        finally:
            replica.inflight -= 1
        replica.record(True, threshold=threshold, cooldown_s=cooldown)
        return result


__all__ = ["BALANCE_ABS", "BALANCE_REL", "ROUTINGS", "Replica", "ReplicaSet", "Routing", "attempt_status", "balance",
           "rendezvous_rank"]
