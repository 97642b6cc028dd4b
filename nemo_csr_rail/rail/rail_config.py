"""The rail's configuration schema in the shape NeMo's manifests ask for (``ConfigSpecRef`` → ``RailConfigSpec``).

NeMo Guardrails 0.24 builds the typed ``rails.config.<key>`` sections from its built-in manifests only and silently
drops any other key, so the plugin reads ``custom_data.nemo_csr_rail`` (validated strictly at load time by
:mod:`nemo_csr_rail.settings`). This spec exposes that same schema to a catalog, so the day NeMo accepts catalogued
third-party rails the section can move to ``rails.config.nemo_csr_rail`` without a second schema.
"""

from __future__ import annotations

from typing import Optional

from nemoguardrails.manifests.config_schema import RailConfigSpec, rail_field

from nemo_csr_rail.settings import SECTION, PluginSettings


def build_config_spec() -> RailConfigSpec:
    return RailConfigSpec(
        annotation=Optional[PluginSettings],  # noqa: UP045 - NeMo evaluates the annotation on Python 3.10 too
        field_info=rail_field(default=None, description=f"nemo-csr-rail policies and guard settings "
                                                        f"(today read from custom_data.{SECTION})."),
        exports={"PluginSettings": PluginSettings},
    )
