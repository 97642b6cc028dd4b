"""nemo-csr-rail: NeMo Guardrails rails backed by NVIDIA Nemotron-Content-Safety-Reasoning-4B.

Wire it with one line in ``config.yml`` — ``import_paths: [nemo_csr_rail]`` — or use :class:`CsrClient` directly.
"""

from nemo_csr_rail._version import __version__
from nemo_csr_rail.client import CheckResult, CsrClient
from nemo_csr_rail.conversation import Turn
from nemo_csr_rail.errors import (
    ConfigError,
    CsrError,
    GuardHTTPError,
    GuardProtocolError,
    GuardTimeout,
    GuardTLSError,
    GuardUnavailable,
    InputTooLong,
    VerdictParseError,
)
from nemo_csr_rail.policy import Direction, Policy
from nemo_csr_rail.verdict import Verdict


def package_dir() -> str:
    """Absolute directory of this package, for ``import_paths`` when the package is installed in editable mode."""
    import os

    return os.path.dirname(os.path.abspath(__file__))


def register(app: object) -> None:
    """Register the actions on an ``LLMRails`` built without ``import_paths`` (bring your own flows).

    Each direction's action is imported from its ``module:attr`` target in the directions' table, as NeMo's catalog
    resolves an ``ActionRef``: the package root names no adapter module, so importing it never imports NeMo."""
    import importlib

    from nemo_csr_rail.directions import DIRECTIONS

    for spec in DIRECTIONS:
        module, _, attr = spec.action_target.partition(":")
        fn = getattr(importlib.import_module(module), attr)
        app.register_action(fn, name=spec.action)  # type: ignore[attr-defined]


__all__ = [
    "CheckResult",
    "ConfigError",
    "CsrClient",
    "CsrError",
    "Direction",
    "GuardHTTPError",
    "GuardProtocolError",
    "GuardTLSError",
    "GuardTimeout",
    "GuardUnavailable",
    "InputTooLong",
    "Policy",
    "Turn",
    "Verdict",
    "VerdictParseError",
    "__version__",
    "package_dir",
    "register",
]
