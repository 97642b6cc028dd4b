"""The rail's manifest: what NeMo Guardrails' catalog needs to know about it, in NeMo's own types.

NeMo's newer engine (IORails) runs only rails it finds in a :class:`~nemoguardrails.manifests.RailCatalog`; 0.24.1
discovers the built-in ``nemoguardrails/library/**/rail.py`` modules only, so today this manifest is consumed by
tests (``RailCatalog`` built from the built-ins plus this record) and by whoever assembles a catalog by hand. It
names the importable actions, the flows and their files, the input, output and retrieval surfaces with the
context each action reads, the configuration key and the privacy facts: user and bot text and retrieved chunks go
to the guard endpoint.

The tool rails (``csr check tool calls`` under ``rails.tool_output``, ``csr check tool results`` under
``rails.tool_input``) are listed as flows and actions but have no surface: 0.24.1's ``RailDirection`` has only
INPUT, OUTPUT and RETRIEVAL, so a surface for a tool call or a tool result cannot be expressed (the catalog's
``tool_input``/``tool_output`` *categories* exist, a direction for them does not). IORails runs its own built-in
tool validators only (docs/agents.md).
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
    TransformTarget,
)

from nemo_csr_rail.settings import DEFAULT_MODEL_TYPE, SECTION

CSR_CHECK_INPUT = ActionRef(name="csr_check_input", target="nemo_csr_rail.rail.actions:csr_check_input")
CSR_CHECK_OUTPUT = ActionRef(name="csr_check_output", target="nemo_csr_rail.rail.actions:csr_check_output")
CSR_CHECK_TOOL_CALLS = ActionRef(name="csr_check_tool_calls",
                                 target="nemo_csr_rail.rail.actions:csr_check_tool_calls")
CSR_CHECK_TOOL_RESULTS = ActionRef(name="csr_check_tool_results",
                                   target="nemo_csr_rail.rail.actions:csr_check_tool_results")
CSR_CHECK_RETRIEVAL = ActionRef(name="csr_check_retrieval", target="nemo_csr_rail.rail.actions:csr_check_retrieval")
INPUT_FLOW = "csr check input"
OUTPUT_FLOW = "csr check output"
TOOL_CALLS_FLOW = "csr check tool calls"
TOOL_RESULTS_FLOW = "csr check tool results"
RETRIEVAL_FLOW = "csr check retrieval"

RAIL = RailManifest(
    name="nemo_csr_rail",
    metadata=RailMetadata(
        display_name="Nemotron Content Safety Reasoning",
        description="Judges user prompts and bot answers against natural-language policies with "
                    "Nemotron-Content-Safety-Reasoning-4B on vLLM; a block carries the model's one-sentence reason.",
        categories=("input", "output", "retrieval", "tool_input", "tool_output"),
        capabilities=("allow", "block", "classify", "content_safety", "moderate", "topic_control", "transform"),
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
        flows=RailFlows(files=("flows.co", "flows.v1.co"),
                        flow_names=(INPUT_FLOW, OUTPUT_FLOW, TOOL_CALLS_FLOW, TOOL_RESULTS_FLOW, RETRIEVAL_FLOW)),
        actions=RailActions(refs=(CSR_CHECK_INPUT, CSR_CHECK_OUTPUT, CSR_CHECK_TOOL_CALLS, CSR_CHECK_TOOL_RESULTS,
                                  CSR_CHECK_RETRIEVAL)),
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
            # Colang 1.0 only (flows.co says why there is no 2.x flow); each chunk is judged on its own and the
            # harmful ones are dropped from relevant_chunks (a transform, never a block).
            RailSurface(
                name=RETRIEVAL_FLOW,
                direction=RailDirection.RETRIEVAL,
                action=CSR_CHECK_RETRIEVAL,
                bindings=(
                    Binding.surface_param("policy", "policy", required=False),
                    Binding.context("text", "relevant_chunks"),
                ),
                transform_target=TransformTarget.RELEVANT_CHUNKS,
            ),
            # No tool surfaces: RailDirection has no tool_call/tool_result direction in 0.24.1 (module docstring).
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
        privacy=RailPrivacy(sends_user_text=True, sends_bot_text=True, sends_retrieved_chunks=True,
                            remote_services=("the guard model's vLLM endpoint (models[].parameters.base_url)",)),
    ),
)

__all__ = ["CSR_CHECK_INPUT", "CSR_CHECK_OUTPUT", "CSR_CHECK_RETRIEVAL", "CSR_CHECK_TOOL_CALLS",
           "CSR_CHECK_TOOL_RESULTS", "RAIL"]
