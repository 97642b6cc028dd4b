"""The plain Python API: classify a turn against a policy, no NeMo Guardrails required.

``CsrClient`` is the pipeline policy → prompt → decode plan → engine → verdict; the rails reuse exactly this object,
so an application calling it directly gets the same prompts, parser, error handling and cache as the rails. The
plans (:mod:`nemo_csr_rail.plans`) build the requests and read the answers; the client only budgets, caches and
accounts for them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from nemo_csr_rail import agent, plans
from nemo_csr_rail.cache import TTLCache
from nemo_csr_rail.completion import Completion, Engine, total
from nemo_csr_rail.conversation import Turn, as_turns, fit_history
from nemo_csr_rail.errors import CsrError
from nemo_csr_rail.options import DEFAULT_BASE_URL, DEFAULT_MODEL, DecodeOptions, HttpOptions, split_overrides
from nemo_csr_rail.plans import escalate, split_output
from nemo_csr_rail.policy import Direction, Policy
from nemo_csr_rail.prompt import GuardPrompt
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
    #: reasoning: escalate — what the screen found and whether the reasoned check ran; None otherwise
    escalation: escalate.Escalation | None = None


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
        decode: DecodeOptions | None = None,
        http: HttpOptions | None = None,
        cache: TTLCache[Verdict] | None = None,
        engine: Engine | None = None,
        verify: bool | str = True,
        history_max_chars: int | None = DEFAULT_HISTORY_MAX_CHARS,
        **options: Any,
    ) -> None:
        """``decode`` and ``http`` carry the settings (:mod:`nemo_csr_rail.options`); single options may be given
        as keywords instead (``timeout_s=2``, ``split_output=False``), overriding the objects' values."""
        decode_overrides, http_overrides = split_overrides(options)
        self.decode = replace(decode or DecodeOptions(), **decode_overrides)
        self.http = replace(http or HttpOptions(), **http_overrides)
        if engine is None:
            from nemo_csr_rail.engines.http import VllmHttpEngine

            urls = [base_url] if isinstance(base_url, str) else list(base_url)
            engine = VllmHttpEngine(urls, model, api_key=api_key, verify=verify, options=self.http,
                                    top_logprobs=self.decode.top_logprobs)
        self.engine = engine
        self.timeout_s = self.http.timeout_s
        self.cache = cache
        self.history_max_chars = history_max_chars

    @classmethod
    def from_settings(cls, settings: PluginSettings, engine: Engine, *, cache: TTLCache[Verdict] | None = None,
                      timeout_s: float | None = None) -> CsrClient:
        """A client that prompts and decodes exactly as a config's ``custom_data.nemo_csr_rail`` says."""
        http = settings.http_options()
        return cls(engine=engine, decode=settings.decode_options(),
                   http=replace(http, timeout_s=timeout_s) if timeout_s else http, cache=cache,
                   history_max_chars=settings.long_input.max_chars)

    async def __aenter__(self) -> CsrClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.engine.aclose()

    def build_prompt(self, policy: Policy, direction: Direction, user_message: str, bot_message: str | None,
                     reasoning: bool | None = None, history: Sequence[Turn] = ()) -> GuardPrompt:
        return plans.build(policy, direction, user_message, bot_message, reasoning=reasoning, decode=self.decode,
                           history=history)

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
        turns = plan.turns if plan is not None else ()
        escalating = reasoning is None and policy.escalates(direction)
        gp = self.build_prompt(policy, direction, user_message, bot_message, False if escalating else reasoning,
                               history=turns)
        sent = None if plan is None else plan.sent
        dropped = None if plan is None else plan.dropped
        key = None
        if self.cache is not None:
            key = hashlib.sha256(
                f"{getattr(self.engine, 'model', '')}\x00{gp.direction.value}\x00{gp.regex}\x00{gp.prefill}\x00"
                f"{escalating and policy.escalate_at}\x00{gp.text}".encode(
                    "utf-8", "surrogatepass")
            ).hexdigest()
            hit = self.cache.get(key)
            if hit is not None:
                return CheckResult(hit, (time.perf_counter() - start) * 1000, cached=True, calls=0,
                                   history_sent=sent, history_dropped=dropped)
        budget = self.timeout_s if timeout_s is None else timeout_s
        # Every engine ends its own calls by their deadline (it knows what ran out: a hung replica, a full queue,
        # a busy model), so no second timer runs here.
        record = None
        if escalating:
            reasoned = self.build_prompt(policy, direction, user_message, bot_message, True, history=turns)
            verdict, screened, decided, calls, record = await escalate.run(
                self._run, gp, reasoned, budget, escalate_at=policy.escalate_at, decode_plan=_plan)
            completions = screened + decided
            deciding = decided or screened
        else:
            verdict, completions, calls = await self._run(gp, budget)
            deciding = completions
        verdict.harm(direction)  # the field this direction needs must be present
        if key is not None and self.cache is not None:
            self.cache.put(key, verdict)
        return CheckResult(verdict, (time.perf_counter() - start) * 1000,
                           prompt_tokens=total(c.prompt_tokens for c in completions),
                           completion_tokens=total(c.completion_tokens for c in completions),
                           cached_tokens=total(c.cached_tokens for c in completions),
                           endpoint=completions[-1].endpoint, calls=calls, history_sent=sent,
                           history_dropped=dropped, decode_plan=_plan(deciding), escalation=record)

    async def _run(self, gp: GuardPrompt, budget: float) -> tuple[Verdict, list[Completion], int]:
        """One plan's requests: the split output plan's two, or the single request of the others."""
        if gp.split_output:
            return await split_output.run(self.engine, gp, budget, logprobs=self.decode.logprobs)
        completion = await self.engine.complete(gp, timeout_s=budget)
        return plans.read(gp, completion), [completion], 1


    # ------------------------------------------------------------------------------------------- agent checks
    async def check_tool_call(self, policy: Policy | str, user_message: str | None, name: str, arguments: Any, *,
                              reasoning: bool | None = None, timeout_s: float | None = None) -> CheckResult:
        """Judge a tool call the model wants to make, as its response to ``user_message`` (None: there was none).

        ``arguments``: a JSON string (OpenAI), a mapping (LangChain) or None; rendered as
        ``Tool call: NAME\nArguments: {JSON, sorted keys}`` (docs/agents.md). Harmful when
        ``result.verdict.is_harmful(Direction.TOOL_CALL)`` (it reads ``Response harm``)."""
        user, bot = agent.judged_turn(Direction.TOOL_CALL, user_message, agent.render_tool_call(name, arguments))
        return await self.check(_policy(policy), Direction.TOOL_CALL, user, bot, reasoning=reasoning,
                                timeout_s=timeout_s)

    async def check_tool_result(self, policy: Policy | str, user_message: str | None, name: str | None,
                                content: Any, *, reasoning: bool | None = None,
                                timeout_s: float | None = None) -> CheckResult:
        """Judge what a tool returned before the model reads it, as content entering the conversation
        (``Tool result from NAME:\n…``, decided on ``Prompt harm``). ``user_message`` is not part of the prompt
        (it was checked by the input rail); it is accepted so every agent check has the same shape."""
        del user_message
        user, bot = agent.judged_turn(Direction.TOOL_RESULT, None, agent.render_tool_result(name, content))
        return await self.check(_policy(policy), Direction.TOOL_RESULT, user, bot, reasoning=reasoning,
                                timeout_s=timeout_s)

    async def check_document(self, policy: Policy | str, user_message: str | None, document: Any, *,
                             reasoning: bool | None = None, timeout_s: float | None = None) -> CheckResult:
        """Judge one retrieved document (chunk) before it reaches a prompt (``Retrieved document:\n…``, decided on
        ``Prompt harm``); ``user_message`` as in :meth:`check_tool_result`."""
        del user_message
        user, bot = agent.judged_turn(Direction.RETRIEVAL, None, agent.render_document(document))
        return await self.check(_policy(policy), Direction.RETRIEVAL, user, bot, reasoning=reasoning,
                                timeout_s=timeout_s)


def _policy(policy: Policy | str) -> Policy:
    return Policy.custom("custom", policy) if isinstance(policy, str) else policy


def _plan(completions: list[Completion]) -> str:
    plans = {c.decode_plan for c in completions}
    return plans.pop() if len(plans) == 1 else "mixed"



__all__ = ["CheckResult", "CsrClient", "CsrError", "Policy", "Verdict"]
