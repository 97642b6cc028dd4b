"""The NeMo Guardrails adapter, laid out like a NeMo library rail (``nemoguardrails/library/<rail>/``).

``rail.py`` (the :class:`~nemoguardrails.manifests.RailManifest`), ``actions.py``, ``flows.co`` (Colang 2.x),
``flows.v1.co`` (Colang 1.0) and ``hooks.py`` (the load-time ``init``) are what NeMo sees; ``runtime.py`` (the core
runtime answering ``RailOutcome``), ``outcome.py`` and ``history.py`` turn its calls into checks of the NeMo-free core
(:mod:`nemo_csr_rail.runtime`, :mod:`nemo_csr_rail.agent_checks`) and the decisions back into ``RailOutcome`` values.
The core imports no NeMo (``tests/tooling/test_layering.py``); NeMo is imported here and by the command line
(``cli/common.py`` reads a ``RailsConfig``, ``cli/demo_cmd.py`` builds ``LLMRails``), so following NeMo to a new
engine changes this package and those commands, not the checks.
"""

from nemo_csr_rail.rail.runtime import RailRuntime, reset_runtimes, runtime_for

__all__ = ["RailRuntime", "reset_runtimes", "runtime_for"]
