"""Executed by NeMo Guardrails when it loads a config that imports this package: validate at load time.

``LLMRails.__init__`` calls ``init(app)`` before any turn runs, so a bad ``custom_data.nemo_csr_rail`` section fails
there with the offending key named, instead of on the first user message. It also installs the turn-shape
workaround on that ``LLMRails`` (:mod:`nemo_csr_rail.rail.nemo_compat`): the rails run on every turn of an agent
conversation and see the request's messages.
"""

from typing import Any

from nemo_csr_rail.directions import Direction
from nemo_csr_rail.rail import nemo_compat
from nemo_csr_rail.rail.runtime import runtime_for

RETRIEVAL_FLOW = Direction.RETRIEVAL.spec.flow


def init(app: Any) -> None:
    runtime_for(app.config)
    accept_retrieval_flow_parameters(app.config)
    nemo_compat.install(app)  # the rails run on every turn shape; they see the whole request (docs/agents.md)


def accept_retrieval_flow_parameters(config: Any) -> None:
    """Let ``rails.retrieval.flows: ['csr check retrieval $policy="NAME"']`` load in NeMo Guardrails 0.24.1.

    ``LLMRails`` checks that every retrieval rail names an existing flow by comparing the string as written with
    the flow ids — unlike input and output rails, it does not strip the parameters first — so a retrieval rail
    with ``$policy`` is refused as a flow that does not exist, although NeMo's runtime runs it like any rail with a
    parameter (``do`` sets ``$policy`` and starts ``csr check retrieval``). This hook runs before that check: it
    adds an empty, system-only flow record whose id is the string as written. The runtime's flow table is built
    before the hook runs, so the record is seen by the check alone; the rail that runs is the real flow."""
    if getattr(config, "colang_version", "1.0") != "1.0":
        return
    rails = getattr(config, "rails", None)
    flows = getattr(getattr(rails, "retrieval", None), "flows", None) or []
    known = {f.get("id") for f in config.flows if isinstance(f, dict)}
    for name in flows:
        if (isinstance(name, str) and name not in known and name.split("$", 1)[0].strip() == RETRIEVAL_FLOW
                and RETRIEVAL_FLOW in known):
            config.flows.append({"id": name, "elements": [], "source_code": "", "is_system_flow": True})
            known.add(name)
