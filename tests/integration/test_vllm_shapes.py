"""The recorded real-vLLM JSON skeletons (``tests/support/vllm_shapes.json``), offline: the helper itself, and the
stand-in held to them (the live comparison is ``tests/e2e/real/test_standin_fidelity.py``)."""

from __future__ import annotations

from tests.support import vllm_shapes
from tests.support.standin import StandIn


def test_shape_and_diff():
    a = vllm_shapes.shape({"b": [1, 2], "a": {"x": "s", "y": None, "z": True}, "e": []})
    assert a == {"a": {"x": "str", "y": None, "z": "bool"}, "b": ["number"], "e": []}
    b = vllm_shapes.shape({"b": [1.5], "a": {"x": "t", "y": 3, "w": 1}, "e": [{"k": 1}]})
    assert vllm_shapes.diff(a, b) == ["$.a.z: missing", "$.a.w: unexpected"]
    assert vllm_shapes.diff(a, b, null_matches_any=False) == [
        "$.a.z: missing", "$.a.w: unexpected", "$.a.y: None vs 'number'"]


def test_recorded_file_covers_the_documented_requests():
    recorded = vllm_shapes.load()
    assert set(vllm_shapes.requests()) <= set(recorded)
    assert recorded["error_404_model"]["status"] == 404
    assert recorded["error_400_context"]["status"] == 400
    assert "maximum context length" in recorded["error_400_context"]["message"]
    assert recorded["error_400_prefill_flags"]["status"] == 400


def test_standin_matches_the_recorded_shapes():
    recorded = vllm_shapes.load()
    with StandIn() as server:
        live = vllm_shapes.record(server.root, server.model)
    for name, rec in live.items():
        assert rec["status"] == recorded[name]["status"], name
        assert vllm_shapes.diff(recorded[name]["shape"], rec["shape"], null_matches_any=False) == [], name
