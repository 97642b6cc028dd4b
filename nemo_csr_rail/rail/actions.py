"""The NeMo Guardrails actions ``csr_check_input`` / ``csr_check_output``.

NeMo Guardrails loads this file standalone from ``import_paths``; it only adapts the runtime's arguments, all state
lives in :mod:`nemo_csr_rail.rail.runtime`. ``is_system_action=True`` keeps the call (and its result) out of the Colang
history that dialog prompts see, and keeps it local when an actions server is configured.
"""

from __future__ import annotations

from typing import Any

from nemoguardrails.actions import action
from nemoguardrails.actions.rail_outcome import RailOutcome

from nemo_csr_rail.policy import Direction
from nemo_csr_rail.rail.history import history_from_events
from nemo_csr_rail.rail.runtime import runtime_for


def _policy_arg(policy: str | None, kwargs: dict[str, Any]) -> str | None:
    # The streaming output path calls the action directly and passes the flow parameter as `model_name`.
    if policy is None or str(policy).startswith("$"):
        return kwargs.get("model_name") or policy
    return policy


@action(name="csr_check_input", is_system_action=True)
async def csr_check_input(
    policy: str | None = None,
    context: dict[str, Any] | None = None,
    config: Any = None,
    text: str | None = None,
    events: list[Any] | None = None,
    **kwargs: Any,
) -> RailOutcome:
    """Check the user's message against ``policy``; block (with the reasoning) if the model finds it harmful.

    A topic policy also gets the conversation before the message, read from ``events`` (both Colang versions
    pass them to an action that declares the parameter)."""
    user = text if text is not None else (context or {}).get("user_message")
    runtime = runtime_for(config)
    name = _policy_arg(policy, kwargs)
    history = history_from_events(events) if runtime.wants_history(name) else None
    return await runtime.check(name, Direction.INPUT, user, history=history)


@action(name="csr_check_output", is_system_action=True)
async def csr_check_output(
    policy: str | None = None,
    context: dict[str, Any] | None = None,
    config: Any = None,
    text: str | None = None,
    **kwargs: Any,
) -> RailOutcome:
    """Check the bot's answer (with the user's message as context) against ``policy``."""
    ctx = context or {}
    bot = text if text is not None else ctx.get("bot_message")
    return await runtime_for(config).check(_policy_arg(policy, kwargs), Direction.OUTPUT, ctx.get("user_message"), bot)
