"""The check runtime: one per loaded config, shared by every check of that config (NeMo rails, LangChain guards).

It holds the compiled policies and one :class:`CsrClient` per guard model, so the per-check path is: look up the
policy, build the prompt, call the engine, parse, decide. It never raises: every failure becomes a deliberate
decision chosen by ``on_error``. :meth:`CheckRuntime.decide` answers the core's
:class:`~nemo_csr_rail.decision.Decision` (what telemetry records); the NeMo adapter's
:class:`~nemo_csr_rail.rail.runtime.RailRuntime` adds ``check``, which hands NeMo its ``RailOutcome``.

The config is read duck-typed (``custom_data``, ``models``, ``rails``, ``config_path``): a NeMo ``RailsConfig`` or
the namespace the LangChain integration builds from the config directory, so nothing here imports NeMo.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, TypeVar, overload

from nemo_csr_rail.cache import SharedTTLCache, TTLCache
from nemo_csr_rail.client import CsrClient
from nemo_csr_rail.completion import Engine
from nemo_csr_rail.conversation import Turn
from nemo_csr_rail.decision import Decision, SkipReason, on_error_for
from nemo_csr_rail.directions import TOPIC_ONLY
from nemo_csr_rail.engines.factory import build_engine
from nemo_csr_rail.errors import ConfigError, CsrError, InputTooLong
from nemo_csr_rail.long_input import scrub
from nemo_csr_rail.long_items import judge_long_item
from nemo_csr_rail.policy import Direction, Policy, compile_policies, implicit_policy
from nemo_csr_rail.settings import ResolvedSettings, resolve
from nemo_csr_rail.verdict import Verdict

log = logging.getLogger("nemo_csr_rail")


def _cache_settings(resolved: ResolvedSettings, rails_config: Any) -> tuple[bool, int, float]:
    cache = resolved.plugin.cache
    enabled, maxsize = cache.enabled, cache.maxsize
    for m in getattr(rails_config, "models", None) or []:
        mc = getattr(m, "cache", None)
        if getattr(m, "type", None) == resolved.plugin.model and mc is not None and getattr(mc, "enabled", False):
            enabled, maxsize = True, int(getattr(mc, "maxsize", maxsize) or maxsize)
    return enabled, maxsize, cache.ttl_s


class CheckRuntime:
    """A config's policies, guard clients, cache and telemetry; :meth:`decide` judges one text."""

    def __init__(self, resolved: ResolvedSettings, rails_config: Any = None, engines: dict[str, Engine] | None = None):
        self.settings = resolved.plugin
        self.policies: dict[str, Policy] = compile_policies(resolved.plugin)
        enabled, maxsize, ttl = _cache_settings(resolved, rails_config)
        self.cache: TTLCache[Verdict] | None = TTLCache(maxsize, ttl) if enabled else None
        self.clients: dict[str, CsrClient] = {}
        s = resolved.plugin
        for model_type in {p.model_type for p in self.policies.values()}:
            engine = (engines or {}).get(model_type) or self._engine(resolved, model_type)
            self.clients[model_type] = CsrClient.from_settings(s, engine, cache=self.cache)
        self.telemetry = _telemetry(resolved, self.policies, [c.engine for c in self.clients.values()])
        self._refusals: deque[str] = deque(maxlen=256)
        self._refusal_blob: str | None = ""  # the refusals joined by NUL, rebuilt lazily after a block
        # every refusal issued, whole, for as long as a judged message is remembered (coverage: a refused exchange
        # sent back in the history); sized like the judged_messages cache
        spec = resolved.plugin.judged_messages
        self._issued: SharedTTLCache[bool] = SharedTTLCache(spec.maxsize, spec.ttl_s)

    @staticmethod
    def _engine(resolved: ResolvedSettings, model_type: str) -> Engine:
        s = resolved.plugin
        if s.engine == "embedded" and model_type == s.model:
            return build_engine(resolved, model_type)  # the loaded weights are cached by the embedded engine
        # One HTTP engine (one connection pool and concurrency bound per event loop) per endpoint per process, shared
        # by every config and policy that points at it.
        ep = resolved.endpoints[model_type]
        key = (ep.base_urls, ep.model, ep.api_key, repr(ep.verify), s.max_retries, s.max_concurrency,
               s.breaker.threshold, s.breaker.cooldown_s, s.http_transport)
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = build_engine(resolved, model_type)
        return engine

    def policy(self, name: str | None) -> Policy:
        """Resolve a flow's ``$policy``; a missing or unsubstituted one means the only (or 'default') policy."""
        if name:
            name = name.strip().strip('"').strip("'")
        if not name or name.startswith("$"):
            implicit = implicit_policy(self.policies)
            if implicit is None:
                raise ConfigError("policies", "the flow names no $policy and there is no single or 'default' policy")
            return self.policies[implicit]
        try:
            return self.policies[name]
        except KeyError:
            raise ConfigError(f"policies.{name}", f"unknown policy; defined: {', '.join(sorted(self.policies))}") from None

    def policy_label(self, policy_name: str | None) -> str:
        """The name a check with this ``$policy`` reports (the implicit policy's when none is named)."""
        try:
            return self.policy(policy_name).name
        except ConfigError:
            return policy_name or "?"

    def refusal_template(self, policy_name: str | None, direction: Direction) -> str:
        try:
            return self.policy(policy_name).refusal(direction)
        except ConfigError:
            return self.settings.error_refusal

    def _monitors(self, label: str, direction: Direction) -> bool:
        """Whether the named policy runs in monitor mode in this direction (its failures never block either)."""
        policy = self.policies.get(label)
        return policy is not None and policy.monitors(direction)

    def wants_history(self, policy_name: str | None) -> bool:
        """Whether a check with this policy sends conversation history (a topic policy), so callers only collect
        it when it is used. An unknown policy answers False: :meth:`check` reports it."""
        try:
            policy = self.policy(policy_name)
        except ConfigError:
            return False
        return policy.kind == "topic" and policy.history_turns > 0

    def _is_own_refusal(self, bot_message: str) -> bool:
        """Whether the bot message is (a streamed chunk of) a refusal this runtime issued.

        A substring match, because streaming output rails see chunks. One search in a NUL-joined blob of the
        remembered refusals keeps it a single C-level scan on every output check, however many are remembered;
        the NUL keeps a match from spanning two refusals.
        """
        text = bot_message.strip()
        if not text or "\0" in text:
            return False
        if self._refusal_blob is None:
            self._refusal_blob = "\0".join(self._refusals)
        return text in self._refusal_blob

    def remember_refusal(self, refusal: str | None) -> None:
        """Remember a refusal this runtime issued: the output rail skips it (:meth:`_is_own_refusal`) and whole-history
        coverage recognises the refused exchange when a client sends it back (:meth:`issued_refusal`)."""
        if not refusal:
            return
        self._refusals.append(refusal)
        self._refusal_blob = None
        self._issued.put(" ".join(refusal.split()), True)

    def issued_refusal(self, text: str) -> bool:
        """Whether ``text`` is, whole, a refusal this runtime issued (whitespace collapsed). A refusal a client wrote
        itself — the policy's template with reasoning of its own — is not one: it cannot excuse the message before it."""
        return bool(text) and self._issued.get(" ".join(text.split())) is not None

    async def decide(self, policy_name: str | None, direction: Direction, user_message: str | None,
                     bot_message: str | None = None, history: Sequence[Turn] | None = None) -> Decision:
        """Decide one turn; with ``telemetry`` configured, the decision is also measured, traced and audited.
        ``history``: the conversation before the user message (oldest first), sent by topic policies only."""
        decide = self._decide if history is None else functools.partial(self._decide, history=history)
        if self.telemetry is not None:
            return await self.telemetry.observe(decide, policy_name, direction, user_message, bot_message)
        return await decide(policy_name, direction, user_message, bot_message)

    def record_skip(self, decision: Decision) -> None:
        """Count a skip decided outside :meth:`decide` (an agent rail call with nothing to check) in
        ``csr_checks_skipped_total``, as :meth:`decide` counts its own."""
        if self.telemetry is not None and decision.skip is not None:
            self.telemetry.record_skip(decision)

    async def _decide(self, policy_name: str | None, direction: Direction, user_message: str | None,
                      bot_message: str | None = None, history: Sequence[Turn] | None = None) -> Decision:
        start = time.perf_counter()
        label = policy_name or "?"
        try:
            policy = self.policy(policy_name)
            label = policy.name
            if policy.kind == "topic" and direction is not Direction.INPUT:
                # the config check catches flows that name it; this catches a $policy chosen at run time
                raise ConfigError(f"policies.{policy.name}", f"{TOPIC_ONLY} and cannot check {direction.spec.what}")
            user = user_message if isinstance(user_message, str) else ("" if user_message is None else str(user_message))
            # agent items are judged as the card's prompt or response side (docs/agents.md)
            if direction.judged_as is Direction.OUTPUT:
                bot = bot_message if isinstance(bot_message, str) else ("" if bot_message is None else str(bot_message))
                if not bot.strip():
                    return Decision.skipped(policy.name, direction, SkipReason.EMPTY_MESSAGE)
                if direction is Direction.OUTPUT and self._is_own_refusal(bot):
                    return Decision.skipped(policy.name, direction, SkipReason.OWN_REFUSAL)
            else:
                bot = None
                if not user.strip():
                    return Decision.skipped(policy.name, direction, SkipReason.EMPTY_MESSAGE)
            if self.settings.log_user_text and log.isEnabledFor(logging.DEBUG):
                log.debug("csr %s policy=%s user=%r bot=%r", direction.value, policy.name, user[:2000],
                          None if bot is None else bot[:2000])
            li = self.settings.long_input
            deadline = time.monotonic() + self.settings.timeout_s
            if len(user) + len(bot or "") > li.max_chars:
                out = await self._long_input(policy, direction, user, bot, "max_chars", deadline, history)
            else:
                try:
                    result = await self.clients[policy.model_type].check(policy, direction, user, bot,
                                                                         history=history)
                    out = Decision.from_result(policy, direction, result)
                except InputTooLong:
                    out = await self._long_input(policy, direction, user, bot, "server_context", deadline, history)
        except CsrError as exc:
            scrubbed = scrub(exc.message, user_message, bot_message, *(t.text for t in history or ()))
            if scrubbed != exc.message:  # user text stays out of INFO+ logs and metadata, whatever the settings
                if self.settings.log_user_text:
                    log.debug("csr %s policy=%s unscrubbed error: %s", direction.value, label, exc.message)
                exc.message = scrubbed
            # Too long to check is never allowed through: padding a message must not switch the guard off.
            on_error = on_error_for(exc, self.policies[label].on_error if label in self.policies
                                    else self.settings.on_error)
            out = Decision.from_error(label, direction, exc, on_error=on_error,
                                      latency_ms=(time.perf_counter() - start) * 1000,
                                      error_refusal=self.settings.error_refusal, monitor=self._monitors(label, direction))
            (log.warning if not out.blocked else log.error)(
                "csr %s policy=%s check failed (%s), on_error=%s: %s", direction.value, label, exc.kind, on_error,
                exc.message)
        except Exception as exc:  # a bug must still end in a deliberate, fail-closed decision
            log.exception("csr %s policy=%s internal error", direction.value, label)
            err = CsrError(f"internal error: {type(exc).__name__}: {exc}")  # kind: internal_error
            out = Decision.from_error(label, direction, err, on_error="block",
                                      latency_ms=(time.perf_counter() - start) * 1000,
                                      error_refusal=self.settings.error_refusal, monitor=self._monitors(label, direction))
        if out.blocked:
            self.remember_refusal(out.refusal or "")
        log.info("csr %s policy=%s decision=%s%s latency_ms=%s", direction.value, label, out.outcome.value,
                 " (check failed: " + str(out.error) + ")" if out.failed else "",
                 None if out.cost is None else round(out.cost.latency_ms, 2))
        return out

    async def _long_input(self, policy: Policy, direction: Direction, user: str, bot: str | None, trigger: str,
                          deadline: float, history: Sequence[Turn] | None = None) -> Decision:
        """Apply ``long_input`` to an item too long for one check (:func:`~nemo_csr_rail.long_items.judge_long_item`)."""
        return await judge_long_item(self.clients[policy.model_type], policy, direction, user, bot,
                                     settings=self.settings.long_input, trigger=trigger, deadline=deadline,
                                     timeout_s=self.settings.timeout_s, history=history)

    async def aclose(self) -> None:
        for c in self.clients.values():
            await c.aclose()


def _telemetry(resolved: ResolvedSettings, policies: dict[str, Policy], engines: list[Engine]) -> Any:
    """The config's telemetry (imported only when configured: its packages are an optional extra)."""
    if resolved.plugin.telemetry is None:
        return None
    from nemo_csr_rail.telemetry.facade import CheckTelemetry

    telemetry = CheckTelemetry(resolved.plugin.telemetry, policies)
    for engine in engines:
        telemetry.watch(engine)
    return telemetry


_ENGINES: dict[tuple[Any, ...], Engine] = {}
_BY_FINGERPRINT: dict[tuple[type, str], CheckRuntime] = {}
_BY_ID: dict[tuple[type, int], tuple[Any, CheckRuntime]] = {}
R = TypeVar("R", bound=CheckRuntime)


@overload
def runtime_for(rails_config: Any) -> CheckRuntime: ...
@overload
def runtime_for(rails_config: Any, kind: type[R]) -> R: ...
def runtime_for(rails_config: Any, kind: type[CheckRuntime] = CheckRuntime) -> CheckRuntime:
    """The runtime of a config, built (and validated) once; configs with equal settings share one.

    ``kind``: the runtime class (the NeMo adapter asks for its :class:`~nemo_csr_rail.rail.runtime.RailRuntime`);
    each class has its own registry, while the HTTP engines (connection pools) are shared by endpoint."""
    hit = _BY_ID.get((kind, id(rails_config)))
    if hit is not None and hit[0] is rails_config:
        return hit[1]
    resolved = resolve(rails_config)
    rt = _BY_FINGERPRINT.get((kind, resolved.fingerprint))
    if rt is None:
        rt = kind(resolved, rails_config)
        _BY_FINGERPRINT[(kind, resolved.fingerprint)] = rt
    if len(_BY_ID) > 256:
        _BY_ID.clear()
    _BY_ID[(kind, id(rails_config))] = (rails_config, rt)
    return rt


def reset_runtimes() -> None:
    """Forget every runtime (tests, hot reload). Pooled connections are dropped with them."""
    _BY_FINGERPRINT.clear()
    _BY_ID.clear()
    _ENGINES.clear()


__all__ = ["CheckRuntime", "reset_runtimes", "runtime_for"]
