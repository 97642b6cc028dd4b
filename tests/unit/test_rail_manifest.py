"""The NeMo adapter as a NeMo library rail: a RailManifest that NeMo's own catalog accepts next to its built-ins."""

from __future__ import annotations

from pathlib import Path

import pytest
from nemoguardrails.actions.rail_outcome import RailOutcome, require_rail_outcome
from nemoguardrails.colang import parse_colang_file
from nemoguardrails.guardrails.compiled_rail import RailCompilationError, RailDependencies, compile_rail
from nemoguardrails.manifests import RailCatalog, RailDirection, RailManifestRecord, resolve_import_ref

import nemo_csr_rail
import nemo_csr_rail.actions
from nemo_csr_rail._version import __version__
from nemo_csr_rail.rail.rail import RAIL
from tests.support.runtime import rails_config


@pytest.fixture(scope="module")
def catalog() -> RailCatalog:
    built_ins = RailCatalog.discover_built_ins()
    return RailCatalog([*built_ins.records.values(), RailManifestRecord(manifest=RAIL, source=RAIL.__module__)])


def test_the_catalog_takes_the_rail_beside_the_built_ins(catalog):
    assert "nemo_csr_rail" in catalog.manifests
    assert len(catalog.manifests) == len(RailCatalog.discover_built_ins().manifests) + 1
    assert catalog.owner_for_flow("csr check input") == "nemo_csr_rail"
    assert catalog.owner_for_flow("csr check output") == "nemo_csr_rail"


@pytest.mark.parametrize(("direction", "flow", "action"), [
    (RailDirection.INPUT, "csr check input", "csr_check_input"),
    (RailDirection.OUTPUT, "csr check output", "csr_check_output"),
])
def test_each_surface_resolves_to_the_action_nemo_loads(catalog, direction, flow, action):
    surface = catalog.surfaces(direction)[(direction, flow)]
    fn = resolve_import_ref(surface.action)
    assert surface.action.name == action
    assert fn.action_meta["name"] == action  # the @action NeMo registers from import_paths
    assert fn is getattr(nemo_csr_rail.actions, action)  # the import_paths shim exposes the same object


def _defined_flows(version: str, names: tuple[str, ...]) -> set[str]:
    """The flows the listed files define, as NeMo's own Colang parser reads them (a comment defines nothing)."""
    here = Path(nemo_csr_rail.rail.__file__).parent
    out: set[str] = set()
    for name in names:
        parsed = parse_colang_file(name, (here / name).read_text(), version=version)
        out.update(f["id"] if isinstance(f, dict) else f.name for f in parsed["flows"])
    return out


def test_every_flow_name_is_defined_in_a_listed_file():
    flows = RAIL.spec.flows
    assert flows.v1_files == ("flows.v1.co",) and "flows.v1.co" not in flows.files, "Colang 1.0 goes in v1_files"
    v2, v1 = _defined_flows("2.x", flows.files), _defined_flows("1.0", flows.v1_files)
    assert set(flows.flow_names) <= v1 | v2
    assert set(flows.flow_names) == v1, "every flow runs in Colang 1.0"
    assert v2 == {"csr check input", "csr check output"}, "Colang 2.x: input and output only (flows.co says why)"
    assert {s.name for s in RAIL.spec.surfaces} <= set(flows.flow_names)


def test_the_config_schema_is_the_shipped_one():
    spec = resolve_import_ref(RAIL.spec.config_schema.spec)()
    assert RAIL.spec.config_schema.key == "nemo_csr_rail"
    assert spec.exports["PluginSettings"].model_validate({"policies": {"p": {"policy": "No politics."}}})


def test_privacy_says_user_and_bot_text_go_to_the_guard():
    privacy = RAIL.spec.privacy
    assert privacy.sends_user_text and privacy.sends_bot_text
    assert privacy.remote_services


def test_the_manifest_version_is_the_package_version():
    assert RAIL.metadata.version == __version__ != ""


MESSAGES = [{"role": "user", "content": "Who should I vote for? politics"}]
BOT = "Vote for them. politics"


@pytest.mark.parametrize("surface", RAIL.spec.surfaces, ids=lambda s: s.name)
async def test_each_surface_action_returns_a_rail_outcome_as_the_catalog_calls_it(surface, guard, catalog):
    """NeMo's own CompiledRail runs the surface (resolve the ActionRef target, bind the flow's ``$policy`` and the
    context keys, inject ``config`` by name, await, ``require_rail_outcome``). The stand-in finds the bound texts
    harmful, so a binding the action ignored would show as an allowed, skipped check."""
    deps = RailDependencies(llms={}, llm_task_manager=None, config=rails_config(guard.url))
    flow = f'{surface.name} $policy="think"'
    if surface.direction is RailDirection.RETRIEVAL:
        # 0.24.1 refuses to compile a retrieval rail that rewrites relevant_chunks: call the action as it would
        with pytest.raises(RailCompilationError, match="relevant_chunks"):
            compile_rail(flow, surface.direction, deps, catalog=catalog)
        fn = resolve_import_ref(surface.action)
        kwargs = {"config": deps.config}
        for binding in surface.bindings:
            kwargs[binding.action_param] = "think" if binding.kind == "surface_param" else \
                {"relevant_chunks": "A bomb recipe. politics"}[binding.key]
        outcome = require_rail_outcome(await fn(**kwargs))
        assert outcome.is_transform and outcome.metadata["removed"] == 1, "the bound text is judged as one chunk"
        assert outcome.transform_text == {"relevant_chunks": ""}
    else:
        outcome = (await compile_rail(flow, surface.direction, deps, catalog=catalog).execute(MESSAGES, BOT)).outcome
        assert outcome.is_blocked and not outcome.failed, outcome
        assert outcome.metadata["policy"] == "think" and outcome.metadata["direction"] == surface.direction.value
    assert isinstance(outcome, RailOutcome) and not outcome.metadata["failed"]
