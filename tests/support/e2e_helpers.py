"""Driving NeMo Guardrails end to end and reading back what the plugin decided."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nemoguardrails import LLMRails, RailsConfig

from nemo_csr_rail import plans
from nemo_csr_rail import prompt as prompts
from nemo_csr_rail.policy import Direction, compile_policies
from nemo_csr_rail.settings import PluginSettings
from tests.support.rails_configs import write_config


def rails_for(path: Path) -> LLMRails:
    return LLMRails(RailsConfig.from_path(str(path)))


def retail_rails(tmp_path: Path, guard: Any, main_llm: Any, *, timeout_s: float, **plugin: Any) -> LLMRails:
    """Rails with one policy, ``retail`` (no politics or religion), on the input and output rails, against the
    ``guard`` and ``main_llm`` stand-ins; ``plugin`` adds or overrides plugin settings."""
    cfg: dict[str, Any] = {"timeout_s": timeout_s, "policies": {"retail": {"policy": "Do not discuss politics or religion."}}}
    cfg.update(plugin)
    return rails_for(write_config(tmp_path / "cfg", guard_url=guard.url, main_url=main_llm.url, plugin=cfg,
                                  input_flows=['csr check input $policy="retail"'],
                                  output_flows=['csr check output $policy="retail"']))


async def ask(rails: LLMRails, text: str, *, history: list[dict[str, str]] | None = None) -> tuple[str, list[dict]]:
    """One user turn; returns the bot's reply and the metadata of every csr rail that ran."""
    messages = [*list(history or []), {"role": "user", "content": text}]
    if rails.config.colang_version == "2.x":  # 0.24 supports no generation log for Colang 2.x
        res = await rails.generate_async(messages=messages)
        return res["content"], []
    res = await rails.generate_async(messages=messages, options={"log": {"activated_rails": True}})
    reply = res.response[-1]["content"] if isinstance(res.response, list) else res.response
    return reply, csr_outcomes(res)


def csr_outcomes(res: Any) -> list[dict[str, Any]]:
    found = []
    for rail in (res.log.activated_rails if res.log else None) or []:
        for act in rail.executed_actions or []:
            if act.action_name in ("csr_check_input", "csr_check_output", "CsrCheckInputAction",
                                   "CsrCheckOutputAction"):
                rv = act.return_value
                meta = rv.get("metadata") if isinstance(rv, dict) else getattr(rv, "metadata", None)
                get = rv.get if isinstance(rv, dict) else (lambda k, rv=rv: getattr(rv, k, None))
                decision = get("decision")
                found.append({"rail": rail.name, "action": act.action_name, "metadata": meta,
                              "decision": getattr(decision, "value", decision), "reason": get("reason")})
    return found


def expected_prompt(plugin: dict[str, Any], policy: str, direction: Direction, user: str, bot: str | None,
                    *, reasoning: bool | None = None) -> prompts.GuardPrompt:
    pol = compile_policies(PluginSettings.model_validate(plugin))[policy]
    return plans.build(pol, direction, user, bot, reasoning=reasoning)


def guard_texts(guard: Any) -> list[str]:
    return [r["messages"][0]["content"] for r in guard.chat_requests()]
