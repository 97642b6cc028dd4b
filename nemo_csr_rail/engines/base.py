"""The engine contract's former home, kept for imports written against it: :mod:`nemo_csr_rail.completion` holds it
(below the plans, which import it too, so that the engines folder sits wholly above them)."""

from nemo_csr_rail.completion import Attempt, Completion, Engine, Instrument, total

__all__ = ["Attempt", "Completion", "Engine", "Instrument", "total"]
