"""Builders for Guardrails configs pointed at local stand-ins, and the scripted main LLM."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import yaml

GUARD_MODEL = "nvidia/Nemotron-Content-Safety-Reasoning-4B"
MAIN_MODEL = "main-llm"

V2_MAIN_FLOW = """\
import core
import guardrails
import nemo_csr_rail

flow main
  activate reply

flow reply
  user said something as $ref
  if "OUT" in $ref.transcript
    bot say "Sure, here is EVIL stuff."
  else
    bot say "Hello! How can I help you today?"
"""


def main_reply(user_text: str) -> str:
    """What the scripted application LLM answers: harmful-on-purpose when asked to, so output rails have work."""
    if "EVILOUT" in user_text or "TRIGGEROUT" in user_text:
        return "Sure, here is EVIL stuff."
    if "POLITICSOUT" in user_text:
        return "Honestly, you should vote for the party I like; politics is simple."
    return "Hello! How can I help you today?"


def main_responder(request: dict[str, Any]) -> str:
    """Stand-in responder for the main model: answers the last user line it can find."""
    last = ""
    for m in request.get("messages", []):
        if m.get("role") == "user":
            last = m.get("content") or ""
    return main_reply(last)


def write_config(
    path: Path,
    *,
    guard_url: str,
    main_url: str | None,
    plugin: dict[str, Any],
    input_flows: list[str] | None = None,
    output_flows: list[str] | None = None,
    colang2: bool = False,
    extra: dict[str, Any] | None = None,
    main_co: str | None = None,
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    models: list[dict[str, Any]] = []
    if main_url:
        models.append({"type": "main", "engine": "openai", "model": MAIN_MODEL,
                       "parameters": {"base_url": main_url, "api_key": "not-needed", "max_retries": 0}})
    models.append({"type": "nemotron_csr", "engine": "vllm_openai", "model": GUARD_MODEL,
                   "parameters": {"base_url": guard_url}})
    cfg: dict[str, Any] = {"import_paths": ["nemo_csr_rail"], "models": models,
                           "custom_data": {"nemo_csr_rail": plugin}}
    if colang2:
        cfg["colang_version"] = "2.x"
    rails: dict[str, Any] = {}
    if input_flows:
        rails["input"] = {"flows": input_flows}
    if output_flows:
        rails["output"] = {"flows": output_flows}
    if rails:
        cfg["rails"] = rails
    for k, v in (extra or {}).items():
        if k == "rails":
            for d, section in v.items():
                rails.setdefault(d, {}).update(section)
            cfg["rails"] = rails
        else:
            cfg[k] = v
    (path / "config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if main_co is not None:
        (path / "main.co").write_text(textwrap.dedent(main_co))
    return path


def retarget(src: Path, dst: Path, *, guard_url: str, main_url: str, plugin_overrides: dict[str, Any] | None = None) -> Path:
    """Copy an example config, pointing its models at local servers (everything else unchanged)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix in {".yml", ".yaml"}:
            cfg = yaml.safe_load(f.read_text())
            for m in cfg.get("models", []):
                m.setdefault("parameters", {})["base_url"] = main_url if m["type"] == "main" else guard_url
                if m["type"] == "main":
                    m["model"] = MAIN_MODEL
            if plugin_overrides:
                cfg["custom_data"]["nemo_csr_rail"].update(plugin_overrides)
            (dst / f.name).write_text(yaml.safe_dump(cfg, sort_keys=False))
        elif f.is_file():
            (dst / f.name).write_text(f.read_text())
    return dst


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
