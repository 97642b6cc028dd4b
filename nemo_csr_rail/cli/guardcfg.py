"""Loading a Guardrails config for the operator tools (``check``, ``eval``): every problem is a usage error (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

EXIT_OK, EXIT_HARMFUL, EXIT_USAGE, EXIT_GUARD = 0, 1, 2, 3


class UsageError(Exception):
    """Bad flags, a config that does not load or validate, an unknown policy, an unreadable dataset: exit 2."""


def load_resolved(path: str | Path) -> tuple[Any, Any]:
    """(RailsConfig, ResolvedSettings) of a config directory, or UsageError naming what is wrong."""
    from nemo_csr_rail.cli.common import load_rails_config
    from nemo_csr_rail.errors import ConfigError

    p = Path(path)
    if not p.exists():
        raise UsageError(f"config directory {str(p)!r} does not exist")
    try:
        cfg = load_rails_config(p)
    except SystemExit as exc:
        raise UsageError(str(exc.code).removeprefix("error: ")) from None
    except Exception as exc:
        raise UsageError(f"cannot load the config {str(p)!r}: {type(exc).__name__}: {exc}") from None
    from nemo_csr_rail.settings import resolve

    try:
        resolved = resolve(cfg)
    except ConfigError as exc:
        raise UsageError(exc.message) from None
    return cfg, resolved


def default_policy(policies: dict[str, Any], name: str | None) -> str:
    """The policy a command uses: the one named, else the only one, else the one called 'default'."""
    if name:
        if name not in policies:
            raise UsageError(f"unknown policy {name!r}; the config defines: {', '.join(sorted(policies))}")
        return name
    from nemo_csr_rail.settings import implicit_policy

    implicit = implicit_policy(policies)
    if implicit is not None:
        return implicit
    raise UsageError(f"the config defines several policies ({', '.join(sorted(policies))}): pass --policy NAME")
