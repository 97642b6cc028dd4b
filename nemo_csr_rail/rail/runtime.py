"""The NeMo side of the check runtime: :class:`RailRuntime` answers NeMo's ``RailOutcome``.

Everything else a check needs (policies, clients, skip rules, long inputs, ``on_error``, the per-config registry)
is the NeMo-free :mod:`nemo_csr_rail.runtime`; this module only adds :meth:`RailRuntime.check` and keeps the
adapter's registry functions where NeMo users import them (``nemo_csr_rail.rail.runtime_for``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nemoguardrails.actions.rail_outcome import RailOutcome

from nemo_csr_rail.conversation import Turn
from nemo_csr_rail.policy import Direction
from nemo_csr_rail.rail.outcome import to_rail_outcome
from nemo_csr_rail.runtime import CheckRuntime, reset_runtimes
from nemo_csr_rail.runtime import runtime_for as _core_runtime_for


class RailRuntime(CheckRuntime):
    """A :class:`~nemo_csr_rail.runtime.CheckRuntime` whose :meth:`check` answers NeMo's ``RailOutcome``."""

    async def check(self, policy_name: str | None, direction: Direction, user_message: str | None,
                    bot_message: str | None = None, history: Sequence[Turn] | None = None) -> RailOutcome:
        """:meth:`decide`, as the ``RailOutcome`` a rail action returns."""
        return to_rail_outcome(await self.decide(policy_name, direction, user_message, bot_message, history))


def runtime_for(rails_config: Any) -> RailRuntime:
    """The rail runtime of a NeMo ``RailsConfig``, built (and validated) once; configs with equal settings share
    one."""
    return _core_runtime_for(rails_config, RailRuntime)


__all__ = ["RailRuntime", "reset_runtimes", "runtime_for"]
