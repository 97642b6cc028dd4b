"""The stand-in must answer like vLLM: same JSON structure for the same requests, success and error alike."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from nemo_csr_rail import plans
from nemo_csr_rail.policy import Direction, Policy
from tests.support.standin import StandIn

pytestmark = pytest.mark.vllm


def shape(obj: Any) -> Any:
    """Key/type skeleton; null and a value are compatible (vLLM leaves optional fields null)."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shape(obj[0])] if obj else []
    if obj is None:
        return None
    return "number" if isinstance(obj, (int, float)) and not isinstance(obj, bool) else type(obj).__name__


def diff(a: Any, b: Any, path: str = "$") -> list[str]:
    if a is None or b is None:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in vLLM" for k in a.keys() - b.keys()]
        out += [f"{path}.{k}: only in stand-in" for k in b.keys() - a.keys()]
        for k in a.keys() & b.keys():
            out += diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        return diff(a[0], b[0], path + "[0]") if a and b else []
    return [] if a == b else [f"{path}: {a} vs {b}"]


def requests(model: str) -> dict[str, tuple[str, str, dict | None]]:
    gp = plans.build(Policy.custom("p", "No politics."), Direction.INPUT, "Who should I vote for?", None,
                       reasoning=False)
    fast = {"model": model, "messages": gp.messages, "temperature": 0, "max_tokens": 32,
            "continue_final_message": True, "add_generation_prompt": False,
            "structured_outputs": {"regex": gp.regex}, "logprobs": True, "top_logprobs": 5}
    think = plans.build(Policy.custom("p", "No politics."), Direction.INPUT, "hi", None, reasoning=True)
    return {
        "fast path": ("POST", "/v1/chat/completions", fast),
        "reasoning": ("POST", "/v1/chat/completions", {"model": model, "messages": think.messages,
                                                       "temperature": 0, "max_tokens": 600,
                                                       "structured_outputs": {"regex": think.regex}}),
        "wrong model": ("POST", "/v1/chat/completions", dict(fast, model="nope")),
        "too long": ("POST", "/v1/chat/completions", dict(fast, messages=[
            {"role": "user", "content": "word " * 5000}])),
        "both flags": ("POST", "/v1/chat/completions", dict(fast, add_generation_prompt=True)),
        "models": ("GET", "/v1/models", None),
    }


def test_standin_matches_real_vllm(vllm):
    with StandIn(max_model_len=2048) as stand_in:
        problems = []
        for name, (method, path, body) in requests(vllm.model).items():
            real = httpx.request(method, vllm.root + path, json=body, timeout=120)
            fake = httpx.request(method, stand_in.root + path, json=body, timeout=30)
            assert real.status_code == fake.status_code, (name, real.text[:300], fake.text[:300])
            problems += [f"{name}: {p}" for p in diff(shape(real.json()), shape(fake.json()))]
        assert problems == [], "\n".join(problems)
