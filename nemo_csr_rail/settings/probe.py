"""Whether optional packages are installed, without importing them.

The schema checks an extra (``telemetry``) when its section is present so that a missing package is a ConfigError
naming the extra at load time; the probe itself has nothing to do with the schema, so it lives here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable


def missing_packages(modules: Iterable[str]) -> list[str]:
    """The top-level packages of ``modules`` that cannot be found (each once, in order); nothing is imported
    except the parents of dotted names, as ``find_spec`` does."""
    missing: list[str] = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        top = module.split(".")[0]
        if not found and top not in missing:
            missing.append(top)
    return missing
