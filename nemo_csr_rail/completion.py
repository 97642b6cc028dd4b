"""What a guard model answered, and the protocols of the engines that ask it: the types the plans and the engines share.

An engine turns a :class:`~nemo_csr_rail.prompt.GuardPrompt` into a :class:`Completion` or raises one of the
errors in :mod:`nemo_csr_rail.errors`. It neither parses verdicts nor decides anything: that keeps the HTTP and the
embedded paths behaviourally identical. The plans (:mod:`nemo_csr_rail.plans`) build the requests and read the
completions; the engines (:mod:`nemo_csr_rail.engines`) carry the one and return the other. Both import these types
from here, below both of them, so no import runs back up from the plans to the engines.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from nemo_csr_rail.prompt import GuardPrompt


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None = None
    reasoning_content: str | None = None
    logprobs: list[dict[str, Any]] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    endpoint: str = ""
    #: how the answer was decoded: "grammar" (structured output + stop strings) or "one_token" (the first token of
    #: a verdict, chosen among exactly two: :mod:`nemo_csr_rail.plans.one_token`)
    decode_plan: str = "grammar"
    #: one_token plan: the raw logprob of each verdict's first token that the server reported (word -> logprob)
    verdict_logprobs: dict[str, float] | None = None


@dataclass(frozen=True)
class Attempt:
    """One request an engine sent to one replica, as reported to an :class:`Instrument`.

    ``status`` is the HTTP status code as text (``"200"``, ``"503"``) or what went wrong before one came back
    (``timeout``, ``unreachable``, ``tls_error``, ``protocol_error``, ``config_error``, ``cancelled``). ``retry`` is
    true for every attempt of a call after its first (a retry on the same replica or a failover to another);
    ``breaker`` is the replica's circuit-breaker state before and after the attempt.
    """

    replica: str
    status: str
    seconds: float
    retry: bool
    breaker_before: str
    breaker_after: str


class Instrument(Protocol):
    """What an engine reports to telemetry, if one is attached; engines import no telemetry package themselves."""

    def request_headers(self) -> dict[str, str] | None:
        """Extra headers for the next guard request (W3C ``traceparent``), or None."""
        ...

    def attempt(self, attempt: Attempt) -> None:
        """Called once per request sent, after the replica's breaker recorded its result; must not raise."""
        ...


@runtime_checkable
class Engine(Protocol):
    name: str

    async def complete(self, prompt: GuardPrompt, *, timeout_s: float) -> Completion:
        """The model's answer, or a :class:`~nemo_csr_rail.errors.CsrError`; ends within ``timeout_s`` (raising
        ``GuardTimeout``) whatever it waits on: callers set no timer of their own."""
        ...

    async def aclose(self) -> None: ...


def total(values: Iterable[int | None]) -> int | None:
    """The sum of the known token counts of several completions; None when the server reported none."""
    known = [v for v in values if isinstance(v, int)]
    return sum(known) if known else None
