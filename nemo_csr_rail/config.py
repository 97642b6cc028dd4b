"""Executed by NeMo Guardrails when a config imports this package (``<dir>/config.py``, then ``init(app)``).

The hook lives with the rest of the NeMo adapter in :mod:`nemo_csr_rail.rail.hooks`.
"""

from nemo_csr_rail.rail.hooks import init

__all__ = ["init"]
