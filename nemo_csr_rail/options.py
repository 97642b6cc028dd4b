"""Every default of the plugin, written once.

The same numbers used to be typed in several places (the config schema, the plain client, the HTTP engine, the
prompt builder) and drifted apart silently when one copy changed. They live here instead, in a leaf module that
imports nothing from the package, so any layer can read them: the schema's ``Field`` defaults, the client's and
engines' keyword defaults, the tests.

``DecodeOptions`` and ``HttpOptions`` are frozen dataclasses: their class attributes are the defaults
(``HttpOptions.timeout_s``), an instance is one resolved choice (``PluginSettings.http_options()``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

#: where the plain client looks for the guard server when given no URL (``nemo-csr-rail serve``'s default)
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
#: the guard model's Hugging Face id, also the served model name ``serve`` gives it
DEFAULT_MODEL = "nvidia/Nemotron-Content-Safety-Reasoning-4B"
#: the ``models: - type:`` the plugin section points at unless it says otherwise
DEFAULT_MODEL_TYPE = "nemotron_csr"
DEFAULT_ENGINE: Literal["http", "embedded"] = "http"
DEFAULT_ON_ERROR: Literal["block", "allow"] = "block"

DEFAULT_INPUT_REFUSAL = "I'm sorry, I can't help with that. {reasoning}"
DEFAULT_OUTPUT_REFUSAL = "I'm sorry, I can't share that answer. {reasoning}"
DEFAULT_ERROR_REFUSAL = "I'm sorry, I can't respond right now: the safety check could not run."
#: agent rails (docs/agents.md): a blocked tool call, a blocked tool result
DEFAULT_TOOL_CALL_REFUSAL = "I'm sorry, I can't run that action. {reasoning}"
DEFAULT_TOOL_RESULT_REFUSAL = "I'm sorry, I can't use what the tool returned. {reasoning}"

#: reasoning: escalate — the screen's P(harmful) at or above which the reasoning-on check decides. At 0.5 the
#: screen escalates exactly the checks it would block by itself (its argmax): every block is re-judged with
#: reasoning and explained, every other turn costs one token. Lower it to also have reasoning look at borderline
#: turns the screen would allow (docs/escalation.md).
DEFAULT_ESCALATE_AT = 0.5

#: earlier messages a topic policy sends by default (a user or a bot message counts one)
DEFAULT_HISTORY_TURNS = 6

#: long_input (see LongInputSettings for why these sizes)
DEFAULT_LONG_INPUT_STRATEGY: Literal["windows", "sample", "refuse"] = "windows"
DEFAULT_LONG_INPUT_MAX_CHARS = 4000
DEFAULT_LONG_INPUT_WINDOW_CHARS = 3000
#: strategy: sample — windows sampled when max_windows is not set (strategy: windows has no window-count default)
DEFAULT_LONG_INPUT_MAX_WINDOWS = 4
#: strategy: windows — the longest item judged whole (docs/performance.md, "Long items")
DEFAULT_LONG_INPUT_MAX_JUDGED_CHARS = 1_048_576
#: windows of one item in flight at once (docs/performance.md, "Long items")
DEFAULT_LONG_INPUT_MAX_IN_FLIGHT = 16

#: verdict cache
DEFAULT_CACHE_MAXSIZE = 4096
DEFAULT_CACHE_TTL_S = 3600.0

#: whole-conversation coverage (docs/coverage.md): judge every message of the request ("all") or only the current
#: one ("last", the behaviour before coverage existed)
DEFAULT_COVERAGE: Literal["all", "last"] = "all"
#: the judged_messages cache: one verdict per (policy, direction, message, context), so a replayed history costs
#: only its new messages
DEFAULT_JUDGED_MESSAGES_MAXSIZE = 20000
DEFAULT_JUDGED_MESSAGES_TTL_S = 3600.0

#: telemetry: the Prometheus endpoint listens on loopback unless told otherwise
DEFAULT_PROMETHEUS_HOST = "127.0.0.1"


@dataclass(frozen=True)
class DecodeOptions:
    """How a check is prompted and decoded (docs/performance.md)."""

    structured_output: bool = True
    assistant_prefill: bool = True
    logprobs: bool = True
    reasoning_max_tokens: int = 384
    #: reasoning-off output checks: decode the prompt verdict and a prefilled response step in parallel
    split_output: bool = True
    #: alternatives asked per generated token when logprobs are on (the confidence reads the verdict's)
    top_logprobs: int = 5


@dataclass(frozen=True)
class HttpOptions:
    """How the HTTP engine talks to the guard server (docs/reliability.md)."""

    timeout_s: float = 5.0
    max_retries: int = 2
    max_concurrency: int = 256
    breaker_threshold: int = 3
    breaker_cooldown_s: float = 2.0
    transport: Literal["buffered", "httpx"] = "buffered"
    #: several base_urls: "affinity" sends a policy's checks to one replica, "round_robin" spreads every check
    #: (engines/replicas.py, docs/scaling.md)
    replica_routing: Literal["affinity", "round_robin"] = "affinity"


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments of the plain API (``CsrClient(url, timeout_s=2, split_output=False)``) sorted into the
    fields of :class:`DecodeOptions` and of :class:`HttpOptions`; an unknown name is a ``TypeError``, as for any
    misspelt keyword argument."""
    decode_names = {f.name for f in fields(DecodeOptions)}
    http_names = {f.name for f in fields(HttpOptions)}
    unknown = sorted(set(overrides) - decode_names - http_names)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}; decode options: {sorted(decode_names)}, "
                        f"HTTP options: {sorted(http_names)}")
    return ({k: v for k, v in overrides.items() if k in decode_names},
            {k: v for k, v in overrides.items() if k in http_names})


def install_hint(extra: str) -> str:
    """How to install an extra while the package is not on the package index (docs/configuration.md#installing):
    a hint naming only ``nemo-csr-rail[extra]`` fails with "no matching distribution"."""
    return (f"pip install '.[{extra}]' in a clone of nemo-csr-rail, or pip install --find-links DIR "
            f"'nemo-csr-rail[{extra}]' with a built wheel in DIR")

