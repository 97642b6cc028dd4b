"""Schema of ``custom_data.nemo_csr_rail``: the pydantic models, and turning a validation error into a ConfigError.

NeMo Guardrails 0.24 silently drops unknown ``rails.config`` keys, so the plugin keeps its settings in
``custom_data`` and validates them itself, strictly (``extra="forbid"``): a typo must fail when the config loads,
naming the key, instead of quietly turning a rail off.

This module only checks the section itself (and the files it names). It reads no ``models:`` entry and no flow:
joining the section with the rest of the Guardrails config is :mod:`nemo_csr_rail.settings.resolve`'s job. Default
values come from :mod:`nemo_csr_rail.options`, where each is written once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nemo_csr_rail.errors import ConfigError
from nemo_csr_rail.options import (
    DEFAULT_CACHE_MAXSIZE,
    DEFAULT_CACHE_TTL_S,
    DEFAULT_COVERAGE,
    DEFAULT_ENGINE,
    DEFAULT_ERROR_REFUSAL,
    DEFAULT_JUDGED_MESSAGES_MAXSIZE,
    DEFAULT_JUDGED_MESSAGES_TTL_S,
    DEFAULT_LONG_INPUT_MAX_CHARS,
    DEFAULT_LONG_INPUT_MAX_IN_FLIGHT,
    DEFAULT_LONG_INPUT_MAX_JUDGED_CHARS,
    DEFAULT_LONG_INPUT_STRATEGY,
    DEFAULT_LONG_INPUT_WINDOW_CHARS,
    DEFAULT_MODEL_TYPE,
    DEFAULT_ON_ERROR,
    DEFAULT_PROMETHEUS_HOST,
    DecodeOptions,
    HttpOptions,
    install_hint,
)
from nemo_csr_rail.settings.probe import missing_packages
from nemo_csr_rail.taxonomy import TAXONOMIES

SECTION = "nemo_csr_rail"
REFUSAL_FIELDS = frozenset({"reasoning", "policy"})
POLICY_KINDS = ("policy", "taxonomy", "categories", "topic")

OnError = Literal["block", "allow"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategorySpec(_Strict):
    """One harm category; ``description`` becomes the indented line under it, as in the card's S23 example."""

    name: str = Field(min_length=1)
    description: str | None = None


#: per direction: reasoning on, off, or ``"escalate"`` (screen with reasoning off; reason only when it may be harmful)
Reasoning = bool | Literal["escalate"]


def uses_escalate(reasoning: Any) -> bool:
    """Whether a policy's ``reasoning`` setting escalates in some direction."""
    if isinstance(reasoning, DirectionalReasoning):
        return "escalate" in (reasoning.input, reasoning.output, reasoning.tool_call, reasoning.tool_result,
                              reasoning.retrieval)
    return reasoning == "escalate"


class DirectionalReasoning(_Strict):
    input: Reasoning | None = None
    output: Reasoning | None = None
    #: agent rails (docs/agents.md); unset: a tool call follows ``output``, a tool result and a retrieved chunk
    #: follow ``input`` (the side of the card each is judged as)
    tool_call: Reasoning | None = None
    tool_result: Reasoning | None = None
    retrieval: Reasoning | None = None


#: enforce: a harmful verdict blocks; monitor: the check runs exactly the same but never blocks (would_block)
Mode = Literal["enforce", "monitor"]


#: which messages of a request a check judges: every one the client supplied ("all"), or the current one ("last")
Coverage = Literal["all", "last"]


class DirectionalMode(_Strict):
    input: Mode | None = None
    output: Mode | None = None


class PolicySettings(_Strict):
    policy: str | None = None
    taxonomy: str | None = None
    categories: list[str | CategorySpec] | None = None
    extra_categories: list[str | CategorySpec] | None = None
    #: layout C: the system instruction that bounds the conversation (a topic-following policy, input rails only)
    topic: str | None = None
    #: topic policies: how many earlier messages go into "Conversation history:" (default DEFAULT_HISTORY_TURNS)
    history_turns: int | None = Field(default=None, ge=0)
    reasoning: Reasoning | DirectionalReasoning | None = None
    refusal: str | None = None
    on_error: OnError | None = None
    threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    #: reasoning: escalate — the screen's P(harmful) at or above which the reasoning-on check decides
    escalate_at: float | None = Field(default=None, gt=0.0, lt=1.0)
    #: enforce (default) or monitor: judge and record what would have been blocked, never block (roll-outs)
    mode: Mode | DirectionalMode = "enforce"
    model: str | None = None
    #: overrides the top-level ``coverage`` for this policy (docs/coverage.md)
    coverage: Coverage | None = None
    #: split attacks: the input check also judges the last N user turns together (0: off; docs/coverage.md)
    multi_turn: int = Field(default=0, ge=0)

    @field_validator("threshold")
    @classmethod
    def _threshold_is_for_reasoning_off(cls, value: float | None, info: Any) -> float | None:
        if value is not None and uses_escalate(info.data.get("reasoning")):
            raise ValueError("'threshold' decides reasoning-off checks from P(harmful); with reasoning: escalate the "
                             "reasoning-on check decides what the screen escalates: set 'escalate_at' instead")
        return value

    @field_validator("escalate_at")
    @classmethod
    def _escalate_at_needs_escalate(cls, value: float | None, info: Any) -> float | None:
        if value is not None and not uses_escalate(info.data.get("reasoning")):
            raise ValueError("'escalate_at' only applies with reasoning: escalate")
        return value

    @field_validator("taxonomy")
    @classmethod
    def _known_taxonomy(cls, value: str | None) -> str | None:
        if value is not None and value not in TAXONOMIES:
            raise ValueError(f"unknown taxonomy {value!r}; known: {', '.join(sorted(TAXONOMIES))}")
        return value

    @field_validator("policy", "topic")
    @classmethod
    def _non_blank_policy(cls, value: str | None, info: Any) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("policy text is empty" if info.field_name == "policy" else "topic instruction is empty")
        return value

    @field_validator("history_turns")
    @classmethod
    def _history_needs_topic(cls, value: int | None, info: Any) -> int | None:
        # a field validator (not the model one) so the error names policies.NAME.history_turns
        if value is not None and info.data.get("topic") is None:
            raise ValueError("'history_turns' only applies to a topic policy ('topic: ...'); the other layouts "
                             "have no conversation history")
        return value

    @field_validator("multi_turn")
    @classmethod
    def _multi_turn(cls, value: int, info: Any) -> int:
        # a field validator (declared after 'topic') so the error names policies.NAME.multi_turn
        if value and info.data.get("topic") is not None:
            raise ValueError("'multi_turn' does not apply to a topic policy: it already sends the conversation "
                             "history ('history_turns')")
        if value == 1:
            raise ValueError("'multi_turn: 1' judges one user turn, as without it: use 0 (off) or 2 or more")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> PolicySettings:
        kinds = [k for k in POLICY_KINDS if getattr(self, k) is not None]
        if not kinds:
            raise ValueError("a policy needs one of 'policy' (free text), 'taxonomy', 'categories' or 'topic' "
                             "(a topic-following system instruction)")
        if len(kinds) > 1:
            raise ValueError(f"a policy takes exactly one of 'policy', 'taxonomy', 'categories', 'topic'; got {kinds}")
        if self.extra_categories is not None and self.taxonomy is None:
            raise ValueError("'extra_categories' only extends a 'taxonomy'")
        if self.categories is not None and not self.categories:
            raise ValueError("'categories' is empty")
        if self.refusal is not None:
            check_template(self.refusal)
        return self


class CacheSettings(_Strict):
    enabled: bool = False
    maxsize: int = Field(default=DEFAULT_CACHE_MAXSIZE, ge=1)
    ttl_s: float = Field(default=DEFAULT_CACHE_TTL_S, gt=0)


class JudgedMessagesSettings(_Strict):
    """The cache of per-message verdicts that makes whole-conversation coverage cost only the new messages
    (docs/coverage.md). On by default; failures are never cached."""

    enabled: bool = True
    maxsize: int = Field(default=DEFAULT_JUDGED_MESSAGES_MAXSIZE, ge=1)
    ttl_s: float = Field(default=DEFAULT_JUDGED_MESSAGES_TTL_S, gt=0)


class LongInputSettings(_Strict):
    """What to do with an item too long for the guard model's context (docs/reliability.md, ``long_items.py``).

    Applies when the item exceeds ``max_chars`` and when the server rejects a request for its context length.
    ``windows`` (the default): judge every character, as overlapping windows of ``window_chars`` checked at most
    ``max_in_flight`` at a time, and block if any is harmful; an item over ``max_judged_chars`` characters, or one
    needing more than ``max_windows`` windows when that is set, is refused (``input_too_long``), never partly
    judged. ``sample`` (opt-in; ``doctor`` warns): at most ``max_windows`` (default 4) windows, head, tail and
    evenly spaced samples when they cannot cover the text. ``refuse``: block with the reason ``input_too_long``.

    ``max_chars``/``window_chars`` are sized on the real Gemma 3 tokenizer: ``max_chars`` random
    letters/digits/symbols (~0.78 tokens a character, the densest ordinary text), in the largest layout with the
    reasoning budget, fit the 4096-token context ``serve`` gives on CPU and NVIDIA's tutorial uses; so does every
    window (tests/unit/test_real_tokenizer.py). ``max_judged_chars`` and ``max_in_flight``: measured with
    ``benchmarks/long_items.py`` (docs/performance.md, "Long items").
    """

    strategy: Literal["windows", "sample", "refuse"] = DEFAULT_LONG_INPUT_STRATEGY
    max_chars: int = Field(default=DEFAULT_LONG_INPUT_MAX_CHARS, ge=256)
    window_chars: int = Field(default=DEFAULT_LONG_INPUT_WINDOW_CHARS, ge=128)
    #: ``windows``: refuse an item that needs more windows (unset: ``max_judged_chars`` alone bounds it);
    #: ``sample``: the number of windows sampled (unset: 4)
    max_windows: int | None = Field(default=None, ge=2)
    #: ``windows``: the longest item judged whole; longer ones are refused with ``input_too_long``
    max_judged_chars: int = Field(default=DEFAULT_LONG_INPUT_MAX_JUDGED_CHARS, ge=256)
    #: ``windows``/``sample``: the windows of one item sent to the guard at the same time
    max_in_flight: int = Field(default=DEFAULT_LONG_INPUT_MAX_IN_FLIGHT, ge=1)
    #: the deadline of an item judged in windows, from the start of its check (unset: ``timeout_s``, as for any
    #: check); an item whose windows do not all finish in time is refused with ``input_too_long``
    timeout_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _window_fits(self) -> LongInputSettings:
        if self.window_chars > self.max_chars:
            raise ValueError("window_chars must not exceed max_chars")
        if self.max_judged_chars < self.max_chars:
            raise ValueError("max_judged_chars must not be below max_chars (an item up to max_chars is judged in "
                             "one check)")
        return self


class TlsSettings(_Strict):
    """TLS for https guard URLs: verification is on unless explicitly turned off."""

    verify: bool = True
    ca_bundle: str | None = None

    @field_validator("ca_bundle")
    @classmethod
    def _bundle_exists(cls, value: str | None) -> str | None:
        """The bundle's path with ``~`` expanded (ssl opens it as given), once it is known to be a file."""
        if value is None:
            return None
        path = os.path.expanduser(value)
        if not Path(path).is_file():
            raise ValueError(f"CA bundle {value!r} is not a readable file")
        return path

    @model_validator(mode="after")
    def _consistent(self) -> TlsSettings:
        if self.ca_bundle is not None and not self.verify:
            raise ValueError("ca_bundle is set but verify is false; drop one of them")
        return self


class BreakerSettings(_Strict):
    """Per-replica circuit breaker: open after ``threshold`` consecutive failures, probe again after ``cooldown_s``."""

    threshold: int = Field(default=HttpOptions.breaker_threshold, ge=1)
    cooldown_s: float = Field(default=HttpOptions.breaker_cooldown_s, gt=0)


class EmbeddedSettings(_Strict):
    model_path: str | None = None
    device: str = "auto"
    dtype: str = "auto"


TELEMETRY_EXTRA_MODULES = ("prometheus_client", "opentelemetry", "opentelemetry.trace")


class TelemetrySettings(_Strict):
    """Metrics, audit trail and traces (docs/operations.md). Needs the ``telemetry`` extra.

    The section exists to be switched on explicitly: without it the plugin imports none of the telemetry packages and
    behaves exactly as before. The extra is checked here, at load time, so a missing package is a ConfigError that
    names the extra rather than an ImportError on the first user turn.
    """

    #: serve Prometheus ``/metrics`` on this port (one endpoint per process, shared by every config); absent: none
    prometheus_port: int | None = Field(default=None, ge=1, le=65535)
    prometheus_host: str = DEFAULT_PROMETHEUS_HOST
    #: append one JSON line per guard decision to this file (written by a background thread, rotation-safe)
    audit_log: str | None = None
    #: also put the user's and the bot's text into each audit record and the reasoning into the trace event
    audit_include_text: bool = False

    @field_validator("audit_log")
    @classmethod
    def _audit_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(os.path.expanduser(value))
        if not value.strip() or path.is_dir():
            raise ValueError(f"audit_log {value!r} must be a file path, not a directory")
        if not path.parent.is_dir():
            raise ValueError(f"audit_log {value!r}: directory {str(path.parent)!r} does not exist")
        return str(path)

    @model_validator(mode="after")
    def _extra_installed(self) -> TelemetrySettings:
        missing = missing_packages(TELEMETRY_EXTRA_MODULES)
        if missing:
            raise ValueError(f"needs the 'telemetry' extra: {install_hint('telemetry')} "
                             f"(missing: {', '.join(missing)})")
        return self


class PluginSettings(_Strict):
    """The whole plugin section. Defaults are the ones we recommend in production."""

    model: str = DEFAULT_MODEL_TYPE
    engine: Literal["http", "embedded"] = DEFAULT_ENGINE
    embedded: EmbeddedSettings = EmbeddedSettings()
    on_error: OnError = DEFAULT_ON_ERROR
    timeout_s: float = Field(default=HttpOptions.timeout_s, gt=0)
    max_retries: int = Field(default=HttpOptions.max_retries, ge=0, le=10)
    structured_output: bool = DecodeOptions.structured_output
    assistant_prefill: bool = DecodeOptions.assistant_prefill
    logprobs: bool = DecodeOptions.logprobs
    reasoning_max_tokens: int = Field(default=DecodeOptions.reasoning_max_tokens, ge=16)
    #: reasoning-off output checks: decode the prompt verdict and a prefilled response step in parallel (verified,
    #: same decision) instead of the whole two-line answer; False = one request decoding both lines
    split_output: bool = DecodeOptions.split_output
    max_concurrency: int = Field(default=HttpOptions.max_concurrency, ge=1)
    #: the HTTP engine's sockets: "buffered" reads every connection into one reusable buffer (flat memory, less CPU;
    #: engines/transport.py); "httpx" is httpx's default backend, kept as a fallback
    http_transport: Literal["buffered", "httpx"] = HttpOptions.transport
    #: several base_urls: "affinity" sends each policy's checks to one replica (rendezvous hashing on the policy,
    #: failover in its ranking, bounded load), so each replica's prefix cache holds its policies only;
    #: "round_robin" spreads every check over all of them (engines/replicas.py, docs/scaling.md)
    replica_routing: Literal["affinity", "round_robin"] = HttpOptions.replica_routing
    refusal: str | None = None
    error_refusal: str = DEFAULT_ERROR_REFUSAL
    cache: CacheSettings = CacheSettings()
    #: judge every message of the request ("all") or only the current one ("last"); per policy: policies.NAME.coverage
    coverage: Coverage = DEFAULT_COVERAGE
    judged_messages: JudgedMessagesSettings = JudgedMessagesSettings()
    log_user_text: bool = False
    long_input: LongInputSettings = LongInputSettings()
    tls: TlsSettings = TlsSettings()
    breaker: BreakerSettings = BreakerSettings()
    telemetry: TelemetrySettings | None = None
    policies: dict[str, PolicySettings] = Field(min_length=1)

    @field_validator("refusal")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            check_template(value)
        return value

    @field_validator("policies")
    @classmethod
    def _names(cls, value: dict[str, PolicySettings]) -> dict[str, PolicySettings]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"policy name {name!r} may only use letters, digits, '_', '-', '.'")
        return value

    def decode_options(self) -> DecodeOptions:
        """How this config prompts and decodes a check."""
        return DecodeOptions(structured_output=self.structured_output, assistant_prefill=self.assistant_prefill,
                             logprobs=self.logprobs, reasoning_max_tokens=self.reasoning_max_tokens,
                             split_output=self.split_output)

    def http_options(self) -> HttpOptions:
        """How this config's HTTP engine talks to the guard server."""
        return HttpOptions(timeout_s=self.timeout_s, max_retries=self.max_retries,
                           max_concurrency=self.max_concurrency, breaker_threshold=self.breaker.threshold,
                           breaker_cooldown_s=self.breaker.cooldown_s, transport=self.http_transport,
                           replica_routing=self.replica_routing)

    def implicit_policy(self) -> str | None:
        """The policy a flow that names none uses (:func:`implicit_policy`)."""
        return implicit_policy(self.policies)


def implicit_policy(names: Iterable[str]) -> str | None:
    """The policy used when none is named: the only one, else the one called 'default', else none.

    The one statement of the rule: config validation, the rails and the command line all call it."""
    names = list(names)
    if len(names) == 1:
        return names[0]
    return "default" if "default" in names else None


def check_template(template: str) -> None:
    """Reject refusal templates with placeholders we cannot fill, at load time rather than mid-conversation."""
    import string

    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"refusal template is malformed: {exc}") from exc
    unknown = fields - REFUSAL_FIELDS
    if unknown:
        raise ValueError(f"refusal template uses unknown placeholder(s) {sorted(unknown)}; allowed: {{reasoning}}, {{policy}}")


def _loc(err: Mapping[str, Any]) -> str:
    parts = [str(p) for p in err.get("loc", ()) if not str(p).startswith(("function-", "union[", "literal["))]
    cleaned: list[str] = []
    for p in parts:
        if p in {"str", "bool", "CategorySpec", "DirectionalReasoning"}:
            continue
        cleaned.append(p)
    return ".".join(cleaned)


def parse_plugin_settings(raw: Any) -> PluginSettings:
    """Validate the raw ``custom_data.nemo_csr_rail`` mapping, naming the first offending key on failure."""
    if raw is None:
        raise ConfigError("", f"custom_data.{SECTION} is missing: declare at least one policy under it")
    if not isinstance(raw, Mapping):
        raise ConfigError("", f"custom_data.{SECTION} must be a mapping, got {type(raw).__name__}")
    try:
        return PluginSettings.model_validate(dict(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        key = _loc(first)
        msg = first.get("msg", "invalid")
        if first.get("type") == "extra_forbidden":
            msg = "unknown key"
        msg = msg.removeprefix("Value error, ")
        raise ConfigError(key, msg) from None


