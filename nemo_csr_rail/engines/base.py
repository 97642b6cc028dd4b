"""What every engine returns, and the protocol it implements.

An engine turns a :class:`~nemo_csr_rail.prompt.GuardPrompt` into a :class:`Completion` or raises one of the
errors in :mod:`nemo_csr_rail.errors`. It neither parses verdicts nor decides anything: that keeps the HTTP and the
embedded paths behaviourally identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    extra: dict[str, Any] = field(default_factory=dict)
    #: how the answer was decoded: "grammar" (structured output + stop strings) or "one_token" (the first token of
    #: a verdict, chosen among exactly two: :mod:`nemo_csr_rail.engines.token_floor`)
    decode_plan: str = "grammar"
    #: one_token plan: the raw logprob of each verdict's first token that the server reported (word -> logprob)
    verdict_logprobs: dict[str, float] | None = None


@runtime_checkable
class Engine(Protocol):
    name: str

    async def complete(self, prompt: GuardPrompt, *, timeout_s: float) -> Completion:
        """The model's answer, or a :class:`~nemo_csr_rail.errors.CsrError`; ends within ``timeout_s`` (raising
        ``GuardTimeout``) whatever it waits on: callers set no timer of their own."""
        ...

    async def aclose(self) -> None: ...
