"""Executed by NeMo Guardrails when it loads a config that imports this package: validate at load time.

``LLMRails.__init__`` calls ``init(app)`` before any turn runs, so a bad ``custom_data.nemo_csr_rail`` section fails
there with the offending key named, instead of on the first user message.
"""

from typing import Any

from nemo_csr_rail.rail.runtime import runtime_for


def init(app: Any) -> None:
    runtime_for(app.config)
