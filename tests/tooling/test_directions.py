"""Every place derived from the directions' table (nemo_csr_rail/directions.py) has every direction.

Adding a direction is its enum member and its row, then what no row can say (docs/architecture.md, "Adding a
direction"). This test fails while any derived place lacks the new direction: the manifest's flows, actions and
surfaces (where NeMo has a RailDirection for it), the Colang files, the flow-name parsing, ``register()``, the
decision's wording, the metric and ``eval`` labels.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from nemoguardrails.colang import parse_colang_file
from nemoguardrails.manifests import RailDirection, resolve_import_ref

import nemo_csr_rail
import nemo_csr_rail.actions
from nemo_csr_rail.decision import Cost, Decision, Outcome
from nemo_csr_rail.directions import DIRECTIONS, Direction, DirectionSpec
from nemo_csr_rail.eval.datasets import DIRECTION_OF
from nemo_csr_rail.eval.datasets import DIRECTIONS as EVAL_DIRECTIONS
from nemo_csr_rail.policy import Policy, compile_policies
from nemo_csr_rail.rail.rail import RAIL
from nemo_csr_rail.settings import parse_plugin_settings
from nemo_csr_rail.settings.flows import BARE_OUTPUT_RE, RAILS_SECTIONS, referenced_policies
from nemo_csr_rail.telemetry.metrics import IN_FLIGHT
from nemo_csr_rail.verdict import Verdict

RAIL_DIR = Path(nemo_csr_rail.__file__).parent / "rail"
ROWS = [pytest.param(spec, id=spec.direction.value) for spec in DIRECTIONS]


def _flow_bodies(name: str, version: str) -> dict[str, str]:
    """Each flow the file defines (NeMo's parser: comments define nothing), with its source text."""
    text = (RAIL_DIR / name).read_text()
    ids = [f["id"] if isinstance(f, dict) else f.name for f in parse_colang_file(name, text, version=version)["flows"]]
    head = r"^define flow (.+?)\s*$" if version == "1.0" else r"^flow (.+?)(?: \$\w+=.*)?\s*$"
    starts = [(m.group(1), m.start()) for m in re.finditer(head, text, re.M)]
    bodies = {n: text[s:(starts[i + 1][1] if i + 1 < len(starts) else len(text))] for i, (n, s) in enumerate(starts)}
    assert sorted(bodies) == sorted(ids), f"{name}: the parser and the headers disagree"
    return bodies


def test_one_row_per_direction():
    assert [s.direction for s in DIRECTIONS] == list(Direction), "every Direction member has its row, in order"
    for column in ("flow_words", "exception", "eval_label", "blocked", "noun"):
        values = [getattr(s, column) for s in DIRECTIONS]
        assert len(set(values)) == len(values), f"two rows share a {column}"
    assert all(s.judged_as in (Direction.INPUT, Direction.OUTPUT) for s in DIRECTIONS)
    assert all(s.direction.spec is s for s in DIRECTIONS)


@pytest.mark.parametrize("spec", ROWS)
def test_the_manifest_lists_its_flow_action_and_surface(spec: DirectionSpec):
    assert spec.flow in RAIL.spec.flows.flow_names
    assert spec.rails_section in RAIL.metadata.categories, "its rails section is one of the manifest's categories"
    (ref,) = [r for r in RAIL.spec.actions.refs if r.name == spec.action]
    assert ref.target == spec.action_target and resolve_import_ref(ref).action_meta["name"] == spec.action
    surfaces = [s for s in RAIL.spec.surfaces if s.name == spec.flow]
    if spec.surface is None:
        assert not surfaces
        assert spec.direction.value not in {d.value for d in RailDirection}, \
            "NeMo now has a RailDirection for it: give the row its surface"
    else:
        (surface,) = surfaces
        assert surface.direction is RailDirection(spec.surface) and surface.action == ref
        bound = {(b.action_param, b.key, b.required) for b in surface.bindings if b.kind == "context"}
        assert bound == set(spec.surface_context)


def test_every_nemo_direction_has_a_surface():
    assert {d.value for d in RailDirection} <= {s.surface for s in DIRECTIONS}


@pytest.mark.parametrize("spec", ROWS)
def test_the_colang_files_define_its_flow_with_its_action_and_exception(spec: DirectionSpec):
    v1 = _flow_bodies("flows.v1.co", "1.0")
    assert spec.flow in v1, "every direction runs in Colang 1.0"
    assert f"execute {spec.action}(" in v1[spec.flow]
    v2 = _flow_bodies("flows.co", "2.x")
    assert (spec.flow in v2) == spec.colang2
    for version, bodies in (("1.0", v1), ("2.x", v2)):
        body = bodies.get(spec.flow, "")
        if version == "2.x" and body:
            assert f"await {''.join(w.capitalize() for w in spec.action.split('_'))}Action(" in body
        sent = set(re.findall(r"\b(\w+RailException)\(", body))
        assert sent <= {spec.exception}, f"{spec.flow} ({version}) sends {sent}, the table says {spec.exception}"
        assert bool(sent) == ("is_blocked" in body), f"{spec.flow} ({version}): a flow that blocks raises its exception"


@pytest.mark.parametrize("spec", ROWS)
def test_the_flow_name_parsing_knows_it(spec: DirectionSpec):
    assert spec.rails_section in RAILS_SECTIONS
    rails = SimpleNamespace(**{s: SimpleNamespace(flows=[]) for s in RAILS_SECTIONS})
    getattr(rails, spec.rails_section).flows.append(f'{spec.flow} $policy="p"')
    assert referenced_policies(SimpleNamespace(rails=rails)) == {(spec.direction.value, "p")}
    assert bool(BARE_OUTPUT_RE.search(f"  {spec.flow}\n")) == (spec.direction is not Direction.INPUT)


def test_register_adds_every_action():
    got: dict[str, object] = {}
    nemo_csr_rail.register(SimpleNamespace(register_action=lambda fn, name: got.setdefault(name, fn)))
    assert set(got) == {s.action for s in DIRECTIONS}
    assert all(fn.action_meta["name"] == name for name, fn in got.items())  # type: ignore[attr-defined]


@pytest.mark.parametrize("spec", ROWS)
def test_the_decision_words_it(spec: DirectionSpec):
    verdict = Verdict(prompt_harm="harmful", response_harm="harmful")
    d = Decision(policy="p", direction=spec.direction, outcome=Outcome.BLOCK, verdict=verdict, cost=Cost(1.0),
                 refusal="no")
    assert d.reason == f"The {spec.noun} violates policy 'p'."
    assert d.exception_message == f"{spec.blocked} blocked by {spec.flow} (policy p): {d.reason}"


@pytest.mark.parametrize("spec", ROWS)
def test_the_metric_and_eval_labels_know_it(spec: DirectionSpec):
    assert spec.metric_label in IN_FLIGHT
    assert spec.eval_label in EVAL_DIRECTIONS and DIRECTION_OF[spec.eval_label] is spec.direction


@pytest.mark.parametrize("spec", ROWS)
def test_a_policy_without_a_refusal_uses_the_rows_default(spec: DirectionSpec):
    """Policy's refusal fields (one per direction that has its own) default to the table's: they must agree."""
    assert Policy.custom("p", "No weapons.").refusal(spec.direction) == spec.default_refusal
    plugin = parse_plugin_settings({"policies": {"p": {"policy": "No weapons."}}})
    assert compile_policies(plugin)["p"].refusal(spec.direction) == spec.default_refusal
    own = parse_plugin_settings({"policies": {"p": {"policy": "No weapons.", "refusal": "Not here."}}})
    assert compile_policies(own)["p"].refusal(spec.direction) == "Not here.", "a configured refusal is every row's"


@pytest.mark.parametrize("spec", ROWS)
def test_the_import_path_shim_exposes_its_action(spec: DirectionSpec):
    """NeMo executes nemo_csr_rail/actions.py from import_paths and registers the @action functions it finds."""
    assert getattr(nemo_csr_rail.actions, spec.action).action_meta["name"] == spec.action
