"""The plugin's settings: ``custom_data.nemo_csr_rail`` validated and joined with the guard models it points at.

A package rather than one module because four different jobs used to share one file: the schema of the section
(:mod:`.schema`), the guard endpoints read from ``models:`` with their keys and TLS (:mod:`.endpoints`), the policy
calls found in the Colang flows (:mod:`.flows`) and the join of the three (:mod:`.resolve`). Every name the old
module offered is importable from here unchanged; defaults live in :mod:`nemo_csr_rail.options`.
"""

from __future__ import annotations

from nemo_csr_rail.options import (
    DEFAULT_ERROR_REFUSAL,
    DEFAULT_HISTORY_TURNS,
    DEFAULT_INPUT_REFUSAL,
    DEFAULT_MODEL_TYPE,
    DEFAULT_OUTPUT_REFUSAL,
    DecodeOptions,
    HttpOptions,
)
from nemo_csr_rail.settings.endpoints import Endpoint
from nemo_csr_rail.settings.flows import (
    BARE_OUTPUT_RE,
    FLOW_DIRECTIONS,
    FLOW_OF_DIRECTION,
    FLOW_POLICY_RE,
    referenced_policies,
    uses_unnamed_output_check,
)
from nemo_csr_rail.settings.probe import missing_packages
from nemo_csr_rail.settings.resolve import ResolvedSettings, resolve
from nemo_csr_rail.settings.schema import (
    POLICY_KINDS,
    REFUSAL_FIELDS,
    SECTION,
    TELEMETRY_EXTRA_MODULES,
    BreakerSettings,
    CacheSettings,
    CategorySpec,
    DirectionalMode,
    DirectionalReasoning,
    EmbeddedSettings,
    JudgedMessagesSettings,
    LongInputSettings,
    OnError,
    PluginSettings,
    PolicySettings,
    TelemetrySettings,
    TlsSettings,
    check_template,
    implicit_policy,
    parse_plugin_settings,
)

__all__ = [
    "BARE_OUTPUT_RE",
    "DEFAULT_ERROR_REFUSAL",
    "DEFAULT_HISTORY_TURNS",
    "DEFAULT_INPUT_REFUSAL",
    "DEFAULT_MODEL_TYPE",
    "DEFAULT_OUTPUT_REFUSAL",
    "FLOW_DIRECTIONS",
    "FLOW_OF_DIRECTION",
    "FLOW_POLICY_RE",
    "POLICY_KINDS",
    "REFUSAL_FIELDS",
    "SECTION",
    "TELEMETRY_EXTRA_MODULES",
    "BreakerSettings",
    "CacheSettings",
    "CategorySpec",
    "DecodeOptions",
    "DirectionalMode",
    "DirectionalReasoning",
    "EmbeddedSettings",
    "Endpoint",
    "HttpOptions",
    "JudgedMessagesSettings",
    "LongInputSettings",
    "OnError",
    "PluginSettings",
    "PolicySettings",
    "ResolvedSettings",
    "TelemetrySettings",
    "TlsSettings",
    "check_template",
    "implicit_policy",
    "missing_packages",
    "parse_plugin_settings",
    "referenced_policies",
    "resolve",
    "uses_unnamed_output_check",
]
