"""The guard request as vLLM turns it into token ids, offline: chat template rendered, then special tokens parsed.

vLLM (like transformers' ``apply_chat_template``) renders the tokenizer's Jinja chat template in a sandboxed
environment with ``trim_blocks``/``lstrip_blocks``; with ``continue_final_message`` it cuts the text right after
the final (assistant) message's content, so the prompt ends in the prefill. The text is then tokenized *with*
added-token matching on and without adding another ``<bos>`` (the template writes it). Tests that count or inspect
tokens use this instead of a server; ``tests/e2e/real_gemma`` checks the counts against vLLM's own ``/tokenize``.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.lru_cache(maxsize=8)
def _template(source: str) -> Any:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg: str) -> None:
        raise TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def render(cfg: dict[str, Any], messages: list[dict[str, str]], *, add_generation_prompt: bool,
           continue_final: bool) -> str:
    text = _template(cfg["chat_template"]).render(
        messages=messages, bos_token=cfg["bos_token"], eos_token=cfg["eos_token"],
        add_generation_prompt=add_generation_prompt)
    if continue_final and messages:  # vLLM/transformers: cut everything after the final message's content
        final = messages[-1].get("content")
        final = final.strip() if isinstance(final, str) else ""
        at = text.rfind(final)
        if final and at >= 0:
            text = text[: at + len(final)]
    return text


def request_ids(tok: Any, cfg: dict[str, Any], messages: list[dict[str, str]], *, prefill: bool) -> list[int]:
    """Token ids of a chat request as vLLM counts them (``prefill``: ``continue_final_message``)."""
    text = render(cfg, messages, add_generation_prompt=not prefill, continue_final=prefill)
    return tok.encode(text, add_special_tokens=False).ids
