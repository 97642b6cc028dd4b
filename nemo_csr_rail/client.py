"""The plain Python API: classify a turn against a policy, no NeMo Guardrails required.

``CsrClient`` is the pipeline policy → prompt → engine → verdict; the rails reuse exactly this object, so an
application calling it directly gets the same prompts, parser, error handling and cache as the rails.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from nemo_csr_rail import prompt as prompts
from nemo_csr_rail import verdict as verdicts
from nemo_csr_rail.cache import TTLCache
from nemo_csr_rail.conversation import Turn, as_turns, fit_history
from nemo_csr_rail.engines.base import Completion, Engine
from nemo_csr_rail.errors import CsrError, VerdictParseError
from nemo_csr_rail.options import DEFAULT_BASE_URL, DEFAULT_MODEL, DecodeOptions, HttpOptions
from nemo_csr_rail.policy import Direction, Policy
from nemo_csr_rail.settings import LongInputSettings
from nemo_csr_rail.verdict import Verdict

if TYPE_CHECKING:
    from nemo_csr_rail.settings import PluginSettings

#: topic policies: history + current message budget for a client made without settings (long_input's default)
DEFAULT_HISTORY_MAX_CHARS = LongInputSettings.model_fields["max_chars"].default


@dataclass(frozen=True)
class CheckResult:
    """A verdict plus what it cost; ``cached`` checks took no model call."""

    verdict: Verdict
    latency_ms: float
    cached: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    endpoint: str = ""
    #: model requests this check sent (2, or 3 after a wrong guess, for a split output check; 0 when cached);
    #: the token counts cover the completions used (the cancelled guess is not counted)
    calls: int = 1
    #: topic policies: earlier messages sent in "Conversation history:" and those left out (turn limit or budget);
    #: None for the layouts without history
    history_sent: int | None = None
    history_dropped: int | None = None
    #: "one_token" (every request decided from its first token), "grammar" (decoded under the grammar), "mixed";
    #: "" when cached
    decode_plan: str = ""


class CsrClient:
    """Async client for a Nemotron-Content-Safety-Reasoning-4B deployment.

    >>> async with CsrClient("http://127.0.0.1:8000/v1") as guard:          # doctest: +SKIP
    ...     v = await guard.classify("No talk about politics.", "Who should I vote for?")
    ...     v.prompt_harm, v.reasoning
    """

    def __init__(
        self,
        base_url: str | Sequence[str] = DEFAULT_BASE_URL,
        model: str = DEFAULT_MODEL,
        *,
        api_key: str | None = None,
        timeout_s: float = HttpOptions.timeout_s,
        max_retries: int = HttpOptions.max_retries,
        structured_output: bool = DecodeOptions.structured_output,
        assistant_prefill: bool = DecodeOptions.assistant_prefill,
        logprobs: bool = DecodeOptions.logprobs,
        reasoning_max_tokens: int = DecodeOptions.reasoning_max_tokens,
        max_concurrency: int = HttpOptions.max_concurrency,
        split_output: bool = DecodeOptions.split_output,
        cache: TTLCache[Verdict] | None = None,
        engine: Engine | None = None,
        verify: bool | str = True,
        history_max_chars: int | None = DEFAULT_HISTORY_MAX_CHARS,
    ) -> None:
        if engine is None:
            from nemo_csr_rail.engines.http import VllmHttpEngine

            urls = [base_url] if isinstance(base_url, str) else list(base_url)
            engine = VllmHttpEngine(urls, model, api_key=api_key, max_retries=max_retries,
                                    max_concurrency=max_concurrency, verify=verify)
        self.engine = engine
        self.timeout_s = timeout_s
        self.structured_output = structured_output
        self.assistant_prefill = assistant_prefill
        self.logprobs = logprobs
        self.reasoning_max_tokens = reasoning_max_tokens
        self.split_output = split_output
        self.cache = cache
        self.history_max_chars = history_max_chars

    @classmethod
    def from_settings(cls, settings: PluginSettings, engine: Engine, *, cache: TTLCache[Verdict] | None = None,
                      timeout_s: float | None = None) -> CsrClient:
        """A client that prompts and decodes exactly as a config's ``custom_data.nemo_csr_rail`` says."""
        return cls(engine=engine, timeout_s=timeout_s or settings.timeout_s,
                   structured_output=settings.structured_output, assistant_prefill=settings.assistant_prefill,
                   logprobs=settings.logprobs, reasoning_max_tokens=settings.reasoning_max_tokens,
                   split_output=settings.split_output, cache=cache,
                   history_max_chars=settings.long_input.max_chars)

    async def __aenter__(self) -> CsrClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.engine.aclose()

    def build_prompt(self, policy: Policy, direction: Direction, user_message: str, bot_message: str | None,
                     reasoning: bool | None = None, history: Sequence[Turn] = ()) -> prompts.GuardPrompt:
        return prompts.build(policy, direction, user_message, bot_message, reasoning=reasoning,
                             structured=self.structured_output, prefill=self.assistant_prefill,
                             logprobs=self.logprobs, reasoning_max_tokens=self.reasoning_max_tokens,
                             split_output=self.split_output, history=history)

    async def classify(self, policy: Policy | str, user_message: str, bot_message: str | None = None, *,
                       reasoning: bool | None = None,
                       history: Iterable[Turn | Mapping[str, Any]] | None = None) -> Verdict:
        """Judge a user message (and the bot's answer, if given) against a policy.

        ``policy`` is a :class:`Policy` or free policy text (card layout B). ``history``: the conversation before
        ``user_message`` (:class:`~nemo_csr_rail.conversation.Turn` objects or ``{"role", "content"}`` dicts,
        oldest first), used by topic policies (:meth:`Policy.topic`). Raises a
        :class:`~nemo_csr_rail.errors.CsrError` subclass if no verdict could be obtained.
        """
        if isinstance(policy, str):
            policy = Policy.custom("custom", policy)
        direction = Direction.INPUT if bot_message is None else Direction.OUTPUT
        return (await self.check(policy, direction, user_message, bot_message, reasoning=reasoning,
                                 history=history)).verdict

    async def check(self, policy: Policy, direction: Direction, user_message: str, bot_message: str | None, *,
                    reasoning: bool | None = None, timeout_s: float | None = None,
                    history: Iterable[Turn | Mapping[str, Any]] | None = None,
                    history_max_chars: int | None = None) -> CheckResult:
        """One check. For a topic policy, ``history`` is cut to its last ``history_turns`` messages and, oldest
        first, to ``history_max_chars`` together with ``user_message`` (default: the client's, which is
        ``long_input.max_chars`` for a client made from settings); the other layouts ignore it."""
        start = time.perf_counter()
        plan = None
        if policy.kind == "topic":
            budget_chars = self.history_max_chars if history_max_chars is None else history_max_chars
            plan = fit_history(as_turns(history), max_turns=policy.history_turns, max_chars=budget_chars,
                               current=user_message)
        gp = self.build_prompt(policy, direction, user_message, bot_message, reasoning,
                               history=plan.turns if plan is not None else ())
        sent = None if plan is None else plan.sent
        dropped = None if plan is None else plan.dropped
        key = None
        if self.cache is not None:
            key = hashlib.sha256(
                f"{getattr(self.engine, 'model', '')}\x00{gp.direction.value}\x00{gp.regex}\x00{gp.prefill}\x00{gp.text}".encode(
                    "utf-8", "surrogatepass")
            ).hexdigest()
            hit = self.cache.get(key)
            if hit is not None:
                return CheckResult(hit, (time.perf_counter() - start) * 1000, cached=True, calls=0,
                                   history_sent=sent, history_dropped=dropped)
        budget = self.timeout_s if timeout_s is None else timeout_s
        # Every engine ends its own calls by their deadline (it knows what ran out: a hung replica, a full queue,
        # a busy model), so no second timer runs here.
        if gp.split_output:
            verdict, completions, calls = await self._split(gp, budget)
        else:
            completion = await self.engine.complete(gp, timeout_s=budget)
            verdict, completions, calls = interpret(gp, completion), [completion], 1
        verdict.harm(direction)  # the field this direction needs must be present
        if key is not None and self.cache is not None:
            self.cache.put(key, verdict)
        return CheckResult(verdict, (time.perf_counter() - start) * 1000,
                           prompt_tokens=_total(c.prompt_tokens for c in completions),
                           completion_tokens=_total(c.completion_tokens for c in completions),
                           cached_tokens=_total(c.cached_tokens for c in completions),
                           endpoint=completions[-1].endpoint, calls=calls, history_sent=sent,
                           history_dropped=dropped, decode_plan=_plan(completions))

    async def _split(self, gp: prompts.GuardPrompt, budget: float) -> tuple[Verdict, list[Completion], int]:
        """Output check, reasoning off: the prompt verdict and the response step (guessing 'unharmful') in parallel.

        The response step is kept only if the model's own prompt verdict equals the guess; otherwise it is asked again
        with the right prefill (its prefix is cached by then). The decision is therefore exactly the one of the full
        ``Prompt harm: X\nResponse harm: Y`` generation, without decoding the forced ``\nResponse harm:`` tokens.
        """
        guess = "unharmful"
        deadline = time.monotonic() + budget
        first = asyncio.ensure_future(self.engine.complete(gp, timeout_s=budget))
        step = prompts.response_step(gp, guess, logprobs=self.logprobs)
        second = asyncio.ensure_future(self.engine.complete(step, timeout_s=budget))
        try:
            head = await first
            prompt_harm = interpret(gp, head).harm(Direction.INPUT)
            if prompt_harm != guess:
                second.cancel()
                step = prompts.response_step(gp, prompt_harm, logprobs=self.logprobs)
                second = asyncio.ensure_future(
                    self.engine.complete(step, timeout_s=max(0.001, deadline - time.monotonic())))
            tail = await second
        except BaseException:
            for t in (first, second):
                t.cancel()
            raise
        response = interpret(step, tail)
        raw = gp.prefill + head.text + prompts.RESPONSE_PREFILL + tail.text
        return replace(response, prompt_harm=prompt_harm, raw=raw), [head, tail], 2 if prompt_harm == guess else 3



def _plan(completions: list[Completion]) -> str:
    plans = {c.decode_plan for c in completions}
    return plans.pop() if len(plans) == 1 else "mixed"


def _total(values: object) -> int | None:
    known = [v for v in values if isinstance(v, int)]  # type: ignore[attr-defined]
    return sum(known) if known else None


def interpret(gp: prompts.GuardPrompt, completion: Completion) -> Verdict:
    """Completion → Verdict, with truncation reported as such rather than as a malformed answer."""
    try:
        verdict = verdicts.parse(gp.prefill + completion.text, reasoning_content=completion.reasoning_content)
    except VerdictParseError as exc:
        if completion.finish_reason == "length" and completion.decode_plan != "one_token":
            raise VerdictParseError(f"model output truncated at max_tokens={gp.max_tokens}: {exc.message}") from None
        raise
    if gp.want_logprobs and completion.decode_plan == "one_token":
        conf = verdicts.confidence_from_choices(completion.verdict_logprobs)
        if conf is not None:
            verdict = replace(verdict, confidence=round(conf, 6))
    elif gp.want_logprobs and completion.logprobs:
        value_first = gp.prefill.lower().endswith("response harm:" if gp.direction is Direction.OUTPUT
                                                  else "prompt harm:")
        conf = verdicts.confidence_from_logprobs(completion.text, completion.logprobs, gp.direction,
                                                 value_first=value_first)
        if conf is not None:
            verdict = replace(verdict, confidence=round(conf, 6))
    return verdict


__all__ = ["CheckResult", "CsrClient", "CsrError", "Policy", "Verdict"]
