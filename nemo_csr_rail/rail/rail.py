"""The rail's manifest: what NeMo Guardrails' catalog needs to know about it, in NeMo's own types.

NeMo's newer engine (IORails) runs only rails it finds in a :class:`~nemoguardrails.manifests.RailCatalog`; 0.24.1
discovers the built-in ``nemoguardrails/library/**/rail.py`` modules only, so today this manifest is consumed by
tests (``RailCatalog`` built from the built-ins plus this record) and by whoever assembles a catalog by hand. It
names the importable actions, the flows and their files, the input and output surfaces with the context each
action reads, the configuration key and the privacy facts: user and bot text go to the guard endpoint.
"""

from __future__ import annotations

from nemoguardrails.manifests import (
    ActionRef,
    Binding,
    ConfigSpecRef,
    EnvVar,
    ModelRequirement,
    RailActions,
    RailConfigSchema,
    RailDirection,
    RailFlows,
    RailManifest,
    RailMetadata,
    RailPrivacy,
    RailRequirements,
    RailSpec,
    RailSurface,
    ServiceRequirement,
)

from nemo_csr_rail.settings import DEFAULT_MODEL_TYPE, SECTION

CSR_CHECK_INPUT = ActionRef(name="csr_check_input", target="nemo_csr_rail.rail.actions:csr_check_input")
CSR_CHECK_OUTPUT = ActionRef(name="csr_check_output", target="nemo_csr_rail.rail.actions:csr_check_output")
INPUT_FLOW = "csr check input"
OUTPUT_FLOW = "csr check output"

RAIL = RailManifest(
    name="nemo_csr_rail",
    metadata=RailMetadata(
        display_name="Nemotron Content Safety Reasoning",
        description="Judges user prompts and bot answers against natural-language policies with "
                    "Nemotron-Content-Safety-Reasoning-4B on vLLM; a block carries the model's one-sentence reason.",
        categories=("input", "output"),
        capabilities=("allow", "block", "classify", "content_safety", "moderate", "topic_control"),
        tags=("nemotron", "vllm", "custom-policy", "reasoning"),
        docs_url="https://pypi.org/project/nemo-csr-rail/",
        owner="nemo-csr-rail",
        version="0.1.0",
    ),
    spec=RailSpec(
        config_schema=RailConfigSchema(
            key=SECTION,
            spec=ConfigSpecRef(target="nemo_csr_rail.rail.rail_config:build_config_spec"),
            export_names=("PluginSettings",),
        ),
        flows=RailFlows(files=("flows.co", "flows.v1.co"), flow_names=(INPUT_FLOW, OUTPUT_FLOW)),
        actions=RailActions(refs=(CSR_CHECK_INPUT, CSR_CHECK_OUTPUT)),
        surfaces=(
            RailSurface(
                name=INPUT_FLOW,
                direction=RailDirection.INPUT,
                action=CSR_CHECK_INPUT,
                bindings=(
                    Binding.surface_param("policy", "policy", required=False),
                    Binding.context("user_message", "user_message"),
                ),
            ),
            RailSurface(
                name=OUTPUT_FLOW,
                direction=RailDirection.OUTPUT,
                action=CSR_CHECK_OUTPUT,
                bindings=(
                    Binding.surface_param("policy", "policy", required=False),
                    Binding.context("user_message", "user_message", required=False),
                    Binding.context("bot_message", "bot_message"),
                ),
            ),
        ),
        requirements=RailRequirements(
            models=(ModelRequirement(type=DEFAULT_MODEL_TYPE, required=False,
                                     description="the guard model entry (engine vllm_openai) unless engine: embedded"),),
            services=(ServiceRequirement(name="vllm", required=False,
                                         description="an OpenAI-compatible vLLM server with the guard model "
                                                     "(nemo-csr-rail serve)"),),
            env_vars=(EnvVar(name="api_key_env_var", required=False,
                             description="the variable named by models[].api_key_env_var, if the guard needs a key"),),
            extras=("telemetry", "embedded", "langchain", "server"),
        ),
        privacy=RailPrivacy(sends_user_text=True, sends_bot_text=True,
                            remote_services=("the guard model's vLLM endpoint (models[].parameters.base_url)",)),
    ),
)

__all__ = ["CSR_CHECK_INPUT", "CSR_CHECK_OUTPUT", "RAIL"]
