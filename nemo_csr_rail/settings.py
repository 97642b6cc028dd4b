"""Schema of ``custom_data.nemo_csr_rail`` and the guard endpoint it points at.

NeMo Guardrails 0.24 silently drops unknown ``rails.config`` keys, so the plugin keeps its settings in
``custom_data`` and validates them itself, strictly (``extra="forbid"``): a typo must fail when the config loads,
naming the key, instead of quietly turning a rail off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nemo_csr_rail.errors import ConfigError
from nemo_csr_rail.taxonomy import TAXONOMIES

SECTION = "nemo_csr_rail"
DEFAULT_MODEL_TYPE = "nemotron_csr"
DEFAULT_INPUT_REFUSAL = "I'm sorry, I can't help with that. {reasoning}"
DEFAULT_OUTPUT_REFUSAL = "I'm sorry, I can't share that answer. {reasoning}"
DEFAULT_ERROR_REFUSAL = "I'm sorry, I can't respond right now: the safety check could not run."
#: agent rails (docs/agents.md): a blocked tool call, a blocked tool result
DEFAULT_TOOL_CALL_REFUSAL = "I'm sorry, I can't run that action. {reasoning}"
DEFAULT_TOOL_RESULT_REFUSAL = "I'm sorry, I can't use what the tool returned. {reasoning}"
REFUSAL_FIELDS = frozenset({"reasoning", "policy"})
#: earlier messages a topic policy sends by default (a user or a bot message counts one)
DEFAULT_HISTORY_TURNS = 6
POLICY_KINDS = ("policy", "taxonomy", "categories", "topic")
#: the plugin's flows, by the direction each checks (the agent flows: docs/agents.md)
FLOW_DIRECTIONS = {"input": "input", "output": "output", "tool calls": "tool_call", "tool results": "tool_result",
                   "retrieval": "retrieval"}
FLOW_OF_DIRECTION = {d: f"csr check {f}" for f, d in FLOW_DIRECTIONS.items()}
FLOW_POLICY_RE = re.compile(r'csr check (input|output|tool calls|tool results|retrieval)\s+\$policy\s*=\s*"?([^"\s)]+)"?')
#: a call of a check other than the input check that names no policy (not a flow definition)
BARE_OUTPUT_RE = re.compile(r'(?m)^(?!\s*(?:define\s+)?flow\b)[^\n#]*\bcsr check (?:output|tool calls|tool results|retrieval)\b'
                            r'(?![ \t]+\$policy)')

OnError = Literal["block", "allow"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategorySpec(_Strict):
    """One harm category; ``description`` becomes the indented line under it, as in the card's S23 example."""

    name: str = Field(min_length=1)
    description: str | None = None


class DirectionalReasoning(_Strict):
    input: bool | None = None
    output: bool | None = None
    #: agent rails (docs/agents.md); unset: a tool call follows ``output``, a tool result and a retrieved chunk
    #: follow ``input`` (the side of the card each is judged as)
    tool_call: bool | None = None
    tool_result: bool | None = None
    retrieval: bool | None = None


class PolicySettings(_Strict):
    policy: str | None = None
    taxonomy: str | None = None
    categories: list[str | CategorySpec] | None = None
    extra_categories: list[str | CategorySpec] | None = None
    #: layout C: the system instruction that bounds the conversation (a topic-following policy, input rails only)
    topic: str | None = None
    #: topic policies: how many earlier messages go into "Conversation history:" (default DEFAULT_HISTORY_TURNS)
    history_turns: int | None = Field(default=None, ge=0)
    reasoning: bool | DirectionalReasoning | None = None
    refusal: str | None = None
    on_error: OnError | None = None
    threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    model: str | None = None

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
    maxsize: int = Field(default=4096, ge=1)
    ttl_s: float = Field(default=3600.0, gt=0)


class LongInputSettings(_Strict):
    """What to do with a conversation too long for the guard model's context (see docs/reliability.md).

    ``windows``: check overlapping windows of ``window_chars`` (all of the text when ``max_windows`` windows cover
    it, else head, tail and evenly spaced middle samples) and block if any window is harmful. ``refuse``: block
    with the reason ``input_too_long``. Either applies when the text exceeds ``max_chars`` and when the server
    rejects a request for its context length.

    Defaults sized on the real Gemma 3 tokenizer: ``max_chars`` random letters/digits/symbols (~0.78 tokens a
    character, the densest ordinary text), in the largest layout with the reasoning budget, fit the 4096-token
    context ``serve`` gives on CPU and NVIDIA's tutorial uses; so does every window (tests/test_real_tokenizer.py).
    """

    strategy: Literal["windows", "refuse"] = "windows"
    max_chars: int = Field(default=4000, ge=256)
    window_chars: int = Field(default=3000, ge=128)
    max_windows: int = Field(default=4, ge=2, le=64)

    @model_validator(mode="after")
    def _window_fits(self) -> LongInputSettings:
        if self.window_chars > self.max_chars:
            raise ValueError("window_chars must not exceed max_chars")
        return self


class TlsSettings(_Strict):
    """TLS for https guard URLs: verification is on unless explicitly turned off."""

    verify: bool = True
    ca_bundle: str | None = None

    @field_validator("ca_bundle")
    @classmethod
    def _bundle_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(os.path.expanduser(value)).is_file():
            raise ValueError(f"CA bundle {value!r} is not a readable file")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TlsSettings:
        if self.ca_bundle is not None and not self.verify:
            raise ValueError("ca_bundle is set but verify is false; drop one of them")
        return self


class BreakerSettings(_Strict):
    """Per-replica circuit breaker: open after ``threshold`` consecutive failures, probe again after ``cooldown_s``."""

    threshold: int = Field(default=3, ge=1)
    cooldown_s: float = Field(default=2.0, gt=0)


class EmbeddedSettings(_Strict):
    model_path: str | None = None
    device: str = "auto"
    dtype: str = "auto"


TELEMETRY_EXTRA_MODULES = ("prometheus_client", "opentelemetry", "opentelemetry.trace")


class TelemetrySettings(_Strict):
    """Metrics, audit trail and traces (docs/operations.md). Needs ``pip install nemo-csr-rail[telemetry]``.

    The section exists to be switched on explicitly: without it the plugin imports none of the telemetry packages and
    behaves exactly as before. The extra is checked here, at load time, so a missing package is a ConfigError that
    names the extra rather than an ImportError on the first user turn.
    """

    #: serve Prometheus ``/metrics`` on this port (one endpoint per process, shared by every config); absent: none
    prometheus_port: int | None = Field(default=None, ge=1, le=65535)
    prometheus_host: str = "127.0.0.1"
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
        import importlib.util

        missing = []
        for module in TELEMETRY_EXTRA_MODULES:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found and module.split(".")[0] not in missing:
                missing.append(module.split(".")[0])
        if missing:
            raise ValueError(f"needs the 'telemetry' extra: pip install 'nemo-csr-rail[telemetry]' "
                             f"(missing: {', '.join(missing)})")
        return self


class PluginSettings(_Strict):
    """The whole plugin section. Defaults are the ones we recommend in production."""

    model: str = DEFAULT_MODEL_TYPE
    engine: Literal["http", "embedded"] = "http"
    embedded: EmbeddedSettings = EmbeddedSettings()
    on_error: OnError = "block"
    timeout_s: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    structured_output: bool = True
    assistant_prefill: bool = True
    logprobs: bool = True
    reasoning_max_tokens: int = Field(default=384, ge=16)
    #: reasoning-off output checks: decode the prompt verdict and a prefilled response step in parallel (verified,
    #: same decision) instead of the whole two-line answer; False = one request decoding both lines
    split_output: bool = True
    max_concurrency: int = Field(default=256, ge=1)
    #: the HTTP engine's sockets: "buffered" reads every connection into one reusable buffer (flat memory, less CPU;
    #: engines/transport.py); "httpx" is httpx's default backend, kept as a fallback
    http_transport: Literal["buffered", "httpx"] = "buffered"
    refusal: str | None = None
    error_refusal: str = DEFAULT_ERROR_REFUSAL
    cache: CacheSettings = CacheSettings()
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


@dataclass(frozen=True)
class Endpoint:
    """Where one guard model is served. ``api_key`` is resolved from the environment, never logged."""

    model_type: str
    model: str
    base_urls: tuple[str, ...]
    api_key: str | None = None
    verify: bool | str = True

    def __repr__(self) -> str:
        return f"Endpoint(model_type={self.model_type!r}, model={self.model!r}, base_urls={self.base_urls!r})"


@dataclass(frozen=True)
class ResolvedSettings:
    """Plugin settings joined with the ``models:`` entries they reference."""

    plugin: PluginSettings
    endpoints: Mapping[str, Endpoint]
    fingerprint: str


def _loc(err: Mapping[str, Any]) -> str:
    parts = [str(p) for p in err.get("loc", ()) if not str(p).startswith(("function-", "union["))]
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


def _model_entries(models: Iterable[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in models or ():
        out.setdefault(getattr(m, "type", None) or m.get("type"), m)
    return out


def _check_url(model_type: str, url: Any) -> str:
    from urllib.parse import urlsplit

    text = str(url).strip().rstrip("/")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ConfigError("", f"models[type={model_type}]: parameters.base_url {text!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("", f"models[type={model_type}]: parameters.base_url {text!r} must be an http(s) URL "
                              "with a host, e.g. http://127.0.0.1:8000/v1")
    return text


def _endpoint_from_model(model_type: str, entry: Any, tls: TlsSettings | None = None) -> Endpoint:
    get = (lambda k: getattr(entry, k, None)) if not isinstance(entry, Mapping) else entry.get
    params = dict(get("parameters") or {})
    urls = params.get("base_urls") or params.get("base_url")
    if isinstance(urls, str):
        urls = [urls]
    if not urls:
        raise ConfigError("", f"models[type={model_type}]: parameters.base_url is required (the vLLM server's /v1 URL)")
    env_var = get("api_key_env_var") or params.get("api_key_env_var")
    api_key = os.environ.get(env_var) if env_var else params.get("api_key")
    if env_var and api_key is None:
        raise ConfigError("", f"models[type={model_type}]: api_key_env_var {env_var!r} is not set in the environment")
    if not env_var and api_key:
        logging.getLogger("nemo_csr_rail").warning(
            "models[type=%s]: parameters.api_key is written in the config; prefer api_key_env_var "
            "(the key itself is never logged)", model_type)
    tls = tls or TlsSettings()
    verify: bool | str = params.get("ca_bundle") or params.get("verify_tls", tls.ca_bundle or tls.verify)
    if isinstance(verify, str) and not Path(os.path.expanduser(verify)).is_file():
        raise ConfigError("", f"models[type={model_type}]: CA bundle {verify!r} is not a readable file")
    return Endpoint(
        model_type=model_type,
        model=str(get("model") or ""),
        base_urls=tuple(_check_url(model_type, u) for u in urls),
        api_key=api_key,
        verify=verify,
    )


def referenced_policies(rails_config: Any) -> set[tuple[str, str]]:
    """(direction, policy) pairs named by flows in config.yml rails lists and in the config's own .co files; the
    direction is a :class:`~nemo_csr_rail.policy.Direction` value (``tool_call`` for ``csr check tool calls``)."""
    return {(FLOW_DIRECTIONS[m.group(1)], m.group(2)) for t in _flow_texts(rails_config)
            for m in FLOW_POLICY_RE.finditer(t)}


def uses_unnamed_output_check(rails_config: Any) -> bool:
    """Whether a flow calls a check other than ``csr check input`` (output, tool calls, tool results, retrieval)
    without a ``$policy`` (it then uses the implicit policy)."""
    return any(BARE_OUTPUT_RE.search(t) for t in _flow_texts(rails_config))


def _flow_texts(rails_config: Any) -> list[str]:
    texts: list[str] = []
    rails = getattr(rails_config, "rails", None)
    for direction in ("input", "output", "tool_output", "tool_input", "retrieval"):
        section = getattr(rails, direction, None) if rails is not None else None
        texts.extend(getattr(section, "flows", None) or [])
    config_path = getattr(rails_config, "config_path", None)
    if config_path:
        for path in str(config_path).split(","):
            root = Path(path)
            if root.is_dir():
                texts.extend(p.read_text(errors="replace") for p in sorted(root.rglob("*.co")))
    return texts


def resolve(rails_config: Any) -> ResolvedSettings:
    """Validate everything the plugin needs from a RailsConfig; raise ConfigError naming the key otherwise."""
    custom = getattr(rails_config, "custom_data", None) or {}
    plugin = parse_plugin_settings(custom.get(SECTION))
    models = _model_entries(getattr(rails_config, "models", []) or [])
    endpoints: dict[str, Endpoint] = {}
    wanted = {plugin.model} | {p.model for p in plugin.policies.values() if p.model}
    for model_type in sorted(wanted):
        if model_type not in models:
            if plugin.engine == "embedded" and model_type == plugin.model:
                continue
            key = "model" if model_type == plugin.model else "policies.*.model"
            raise ConfigError(
                key,
                f"no guard model of type {model_type!r} in config.yml 'models:' "
                f"(add: - type: {model_type}, engine: vllm_openai, model: nvidia/Nemotron-Content-Safety-Reasoning-4B, "
                "parameters: {base_url: http://127.0.0.1:8000/v1})",
            )
        endpoints[model_type] = _endpoint_from_model(model_type, models[model_type], plugin.tls)
    if plugin.engine == "embedded" and not plugin.embedded.model_path and plugin.model not in models:
        raise ConfigError("embedded.model_path", "engine 'embedded' needs embedded.model_path or a guard model entry")
    for direction, name in sorted(referenced_policies(rails_config)):
        if name.startswith("$"):
            continue
        flow = FLOW_OF_DIRECTION[direction]
        if name not in plugin.policies:
            raise ConfigError(
                f"policies.{name}",
                f"flow '{flow} $policy=\"{name}\"' names an unknown policy; "
                f"defined: {', '.join(sorted(plugin.policies))}",
            )
        if direction != "input" and plugin.policies[name].topic is not None:
            raise ConfigError(
                f"policies.{name}",
                f"is a topic policy, which judges user messages only; flow '{flow} $policy=\"{name}\"' "
                "cannot use it (check the bot's answers, tool calls, tool results and retrieved documents with a "
                "'policy' or 'taxonomy' policy)",
            )
    names = list(plugin.policies)
    implicit = names[0] if len(names) == 1 else ("default" if "default" in names else None)
    if implicit is not None and plugin.policies[implicit].topic is not None and uses_unnamed_output_check(rails_config):
        raise ConfigError(
            f"policies.{implicit}",
            "is a topic policy, which judges user messages only; a 'csr check output' (or tool calls, tool "
            "results, retrieval) flow that names no $policy would use it (name a 'policy' or 'taxonomy' policy there)",
        )
    blob = json.dumps(
        [plugin.model_dump(mode="json"), {k: repr(v) + str(v.api_key) for k, v in endpoints.items()}],
        sort_keys=True,
    )
    return ResolvedSettings(plugin=plugin, endpoints=endpoints, fingerprint=hashlib.sha256(blob.encode()).hexdigest())
