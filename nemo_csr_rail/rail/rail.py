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

from nemo_csr_rail._version import __version__
from nemo_csr_rail.directions import DIRECTIONS, Direction, DirectionSpec
from nemo_csr_rail.settings import DEFAULT_MODEL_TYPE, SECTION


def _ref(spec: DirectionSpec) -> ActionRef:
    return ActionRef(name=spec.action, target=spec.action_target)


def _surface(spec: DirectionSpec) -> RailSurface:
    """A direction's surface: its flow, NeMo's direction, its action with the flow's ``$policy`` and the context each
    parameter reads; the retrieval surface rewrites ``relevant_chunks`` (harmful chunks dropped, never a block)."""
    assert spec.surface is not None
    return RailSurface(
        name=spec.flow,
        direction=RailDirection(spec.surface),
        action=_ref(spec),
        bindings=(Binding.surface_param("policy", "policy", required=False),
                  *(Binding.context(param, key, required=required) for param, key, required in spec.surface_context)),
        transform_target=TransformTarget.RELEVANT_CHUNKS if spec.direction is Direction.RETRIEVAL else None,
    )


CSR_CHECK_INPUT, CSR_CHECK_OUTPUT, CSR_CHECK_TOOL_CALLS, CSR_CHECK_TOOL_RESULTS, CSR_CHECK_RETRIEVAL = (
    _ref(Direction(d).spec) for d in ("input", "output", "tool_call", "tool_result", "retrieval"))
INPUT_FLOW, OUTPUT_FLOW, TOOL_CALLS_FLOW, TOOL_RESULTS_FLOW, RETRIEVAL_FLOW = (
    Direction(d).spec.flow for d in ("input", "output", "tool_call", "tool_result", "retrieval"))

RAIL = RailManifest(
    name="nemo_csr_rail",
    metadata=RailMetadata(
        display_name="Nemotron Content Safety Reasoning",
        description="Judges user prompts and bot answers against natural-language policies with "
                    "Nemotron-Content-Safety-Reasoning-4B on vLLM; a block carries the model's one-sentence reason.",
        # NeMo's categories are the config.yml rails sections: the ones the plugin's flows run under
        categories=tuple(sorted({spec.rails_section for spec in DIRECTIONS})),
        capabilities=("allow", "block", "classify", "content_safety", "moderate", "topic_control", "transform"),
        tags=("nemotron", "vllm", "custom-policy", "reasoning"),
        docs_url="https://pypi.org/project/nemo-csr-rail/",
        owner="nemo-csr-rail",
        version=__version__,
    ),
    spec=RailSpec(
        config_schema=RailConfigSchema(
            key=SECTION,
            spec=ConfigSpecRef(target="nemo_csr_rail.rail.rail_config:build_config_spec"),
            export_names=("PluginSettings",),
        ),
        # Colang 2.x defines the input and output flows (flows.co), Colang 1.0 every flow (flows.v1.co)
        flows=RailFlows(files=("flows.co",), v1_files=("flows.v1.co",),
                        flow_names=tuple(spec.flow for spec in DIRECTIONS)),
        actions=RailActions(refs=tuple(_ref(spec) for spec in DIRECTIONS)),
        # No tool surfaces: RailDirection has no tool_call/tool_result direction in 0.24.1 (module docstring); the
        # retrieval surface runs in Colang 1.0 only (flows.co says why there is no 2.x flow).
        surfaces=tuple(_surface(spec) for spec in DIRECTIONS if spec.surface is not None),
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
