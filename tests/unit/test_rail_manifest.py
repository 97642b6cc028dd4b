"""The NeMo adapter as a NeMo library rail: a RailManifest that NeMo's own catalog accepts next to its built-ins."""

from __future__ import annotations

from pathlib import Path

import pytest
from nemoguardrails.manifests import RailCatalog, RailDirection, RailManifestRecord, resolve_import_ref

import nemo_csr_rail
import nemo_csr_rail.actions
from nemo_csr_rail.rail.rail import RAIL


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


def test_flows_and_config_schema_are_the_shipped_ones():
    here = Path(nemo_csr_rail.rail.__file__).parent
    for name in RAIL.spec.flows.files:
        text = (here / name).read_text()
        assert all(f in text for f in RAIL.spec.flows.flow_names), name
    spec = resolve_import_ref(RAIL.spec.config_schema.spec)()
    assert RAIL.spec.config_schema.key == "nemo_csr_rail"
    assert spec.exports["PluginSettings"].model_validate({"policies": {"p": {"policy": "No politics."}}})


def test_privacy_says_user_and_bot_text_go_to_the_guard():
    privacy = RAIL.spec.privacy
    assert privacy.sends_user_text and privacy.sends_bot_text
    assert privacy.remote_services
