"""A plugin runtime built from a real ``RailsConfig`` pointed at local stand-ins (no main LLM needed)."""

from __future__ import annotations

from typing import Any

import yaml
from nemoguardrails import RailsConfig

from nemo_csr_rail.rail import RailRuntime, runtime_for
from tests.support.rails_configs import GUARD_MODEL

POLITICS = "Do not discuss politics or religion."


def plugin(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "timeout_s": 2.0,
        "max_retries": 2,
        "policies": {
            "think": {"policy": POLITICS, "reasoning": True},
            "fast": {"policy": POLITICS, "reasoning": False},
        },
    }
    base.update(overrides)
    return base


def rails_config(urls: str | list[str], *, model: str = GUARD_MODEL, params: dict[str, Any] | None = None,
                 **overrides: Any) -> RailsConfig:
    p: dict[str, Any] = {"base_urls": urls} if isinstance(urls, list) else {"base_url": urls}
    p.update(params or {})
    cfg = {
        "models": [{"type": "nemotron_csr", "engine": "vllm_openai", "model": model, "parameters": p}],
        "custom_data": {"nemo_csr_rail": plugin(**overrides)},
    }
    return RailsConfig.from_content(yaml_content=yaml.safe_dump(cfg))


def runtime(urls: str | list[str], **kw: Any) -> RailRuntime:
    return runtime_for(rails_config(urls, **kw))
