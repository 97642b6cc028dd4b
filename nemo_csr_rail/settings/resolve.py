"""Everything the plugin needs from a RailsConfig, validated together: the one entry point that loads a config.

The schema checks the plugin section alone, the endpoints module one ``models:`` entry, the flows module what the
Colang flows call. Only here are they joined: each guard model the policies use must have an entry, each policy a
flow names must exist, a topic policy (input only) must not reach an output check. The result carries a fingerprint
so that configs that resolve the same share one runtime.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nemo_csr_rail.directions import TOPIC_ONLY_CLAUSE, checks_other_than_input, topic_not_for
from nemo_csr_rail.errors import ConfigError
from nemo_csr_rail.options import DEFAULT_BASE_URL, DEFAULT_MODEL
from nemo_csr_rail.settings.endpoints import Endpoint, _endpoint_from_model, _model_entries
from nemo_csr_rail.settings.flows import FLOW_OF_DIRECTION, referenced_policies, uses_unnamed_output_check
from nemo_csr_rail.settings.schema import SECTION, PluginSettings, parse_plugin_settings


@dataclass(frozen=True)
class ResolvedSettings:
    """Plugin settings joined with the ``models:`` entries they reference."""

    plugin: PluginSettings
    endpoints: Mapping[str, Endpoint]
    fingerprint: str


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
                f"(add: - type: {model_type}, engine: vllm_openai, model: {DEFAULT_MODEL}, "
                f"parameters: {{base_url: {DEFAULT_BASE_URL}}})",
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
                f"{TOPIC_ONLY_CLAUSE}; flow '{flow} $policy=\"{name}\"' cannot use it (check {topic_not_for()} "
                "with a 'policy' or 'taxonomy' policy)",
            )
    implicit = plugin.implicit_policy()
    if implicit is not None and plugin.policies[implicit].topic is not None and uses_unnamed_output_check(rails_config):
        raise ConfigError(
            f"policies.{implicit}",
            f"{TOPIC_ONLY_CLAUSE}; a 'csr check output' (or {checks_other_than_input()}) flow that names no $policy "
            "would use it (name a 'policy' or 'taxonomy' policy there)",
        )
    # verify counts: configs differing only in an endpoint's TLS (parameters.verify_tls / ca_bundle) must not share
    blob = json.dumps(
        [plugin.model_dump(mode="json"), {k: repr(v) + str(v.api_key) + repr(v.verify) for k, v in endpoints.items()}],
        sort_keys=True,
    )
    return ResolvedSettings(plugin=plugin, endpoints=endpoints, fingerprint=hashlib.sha256(blob.encode()).hexdigest())
