"""Replicas, their circuit breakers and the retry loop: which replica gets the next attempt, and when to give up.

One flat loop per call: each round tries every replica whose breaker lets it (all of them when every breaker is
open: a guard must still try rather than fail every check for ``cooldown_s``), each attempt getting a share of the
time left so a replica that hangs leaves the others time to answer; between rounds a jittered backoff that honours
the longest ``Retry-After`` of the round, always inside the caller's deadline. Only faults another attempt can fix
are retried (unreachable, timeout, 408/429/5xx); TLS failures and other HTTP errors are final. Transport-agnostic:
the engine passes ``send(base_url, budget)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from nemo_csr_rail.engines.base import Attempt, Completion, Instrument
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


@dataclass
class Replica:
    """One base URL and its circuit breaker: closed → open (after ``threshold`` consecutive failures) → half-open
    (after ``cooldown_s``: exactly one probe request at a time) → closed on the probe's success, open again on failure.
    """

    base_url: str
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False

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


class ReplicaSet:
    """The replicas of one endpoint, tried in round-robin order (one further on each call)."""

    def __init__(self, base_urls: Sequence[str], *, max_retries: int, breaker_threshold: int,
                 breaker_cooldown_s: float) -> None:
        if not base_urls:
            raise ValueError("at least one base_url is required")
        self.replicas = [Replica(u.rstrip("/")) for u in base_urls]
        self.max_retries = max_retries
        self.threshold = breaker_threshold
        self.cooldown_s = breaker_cooldown_s
        self._next = 0

    @property
    def base_urls(self) -> tuple[str, ...]:
        return tuple(r.base_url for r in self.replicas)

    def order(self) -> list[Replica]:
        n = len(self.replicas)
        start = self._next % n
        self._next += 1
        return self.replicas[start:] + self.replicas[:start]

    def breaker_states(self) -> dict[str, str]:
        now = time.monotonic()
        return {r.base_url: r.state(now) for r in self.replicas}

    async def run(self, send: Send, *, deadline: float, timeout_s: float,
                  instrument: Instrument | None = None) -> Completion:
        """``send`` to one replica after another until one answers, the retries are spent or the deadline passes;
        raises the last failure (or ``GuardTimeout``)."""
        call = _Call(self, send, deadline, timeout_s, instrument)
        attempt = 0
        while True:
            now = time.monotonic()
            order = self.order()
            ready = [r for r in order if not (r.state(now) == "open" or (r.state(now) == "half_open" and r.probing))]
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
            if time.monotonic() + delay >= deadline:
                assert call.last is not None
                raise call.last
            await asyncio.sleep(delay)


class _Call:
    """The state of one :meth:`ReplicaSet.run`: the last failure, the round's longest Retry-After, requests sent."""

    def __init__(self, replicas: ReplicaSet, send: Send, deadline: float, timeout_s: float,
                 instrument: Instrument | None) -> None:
        self.replicas, self.send, self.deadline, self.timeout_s = replicas, send, deadline, timeout_s
        self.instrument = instrument
        self.last: CsrError | None = None
        self.retry_after = 0.0
        self.sent = 0

    async def observed(self, replica: Replica, share: int) -> Completion:
        """:meth:`attempt`, reported to the instrument (if any) once the breaker has recorded the result."""
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
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise GuardTimeout(f"guard check exceeded {self.timeout_s:g}s"
                               + (f" (last error: {self.last.message})" if self.last else ""))
        budget = remaining / share
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
        replica.record(True, threshold=threshold, cooldown_s=cooldown)
        return result


__all__ = ["Replica", "ReplicaSet", "attempt_status"]
