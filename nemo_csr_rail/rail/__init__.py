"""The NeMo Guardrails adapter, laid out like a NeMo library rail (``nemoguardrails/library/<rail>/``).

``rail.py`` (the :class:`~nemoguardrails.manifests.RailManifest`), ``actions.py``, ``flows.co`` (Colang 2.x),
``flows.v1.co`` (Colang 1.0) and ``hooks.py`` (the load-time ``init``) are what NeMo sees; ``runtime.py``,
``outcome.py`` and ``history.py`` turn its calls into a check of the NeMo-free core and the result back into a
``RailOutcome``. Nothing outside this package imports NeMo Guardrails, so following NeMo to a new engine means
changing this package alone.
"""

from nemo_csr_rail.rail.runtime import RailRuntime, reset_runtimes, runtime_for

__all__ = ["RailRuntime", "reset_runtimes", "runtime_for"]
