"""Helpers shared by the sub-commands that read a Guardrails config directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import nemo_csr_rail


def ensure_import_path() -> None:
    """Make ``import_paths: [nemo_csr_rail]`` resolvable for an editable install (sets COLANGPATH pre-import)."""
    if "nemoguardrails" in sys.modules:
        return
    parent = os.path.dirname(nemo_csr_rail.package_dir())
    current = os.environ.get("COLANGPATH", "")
    if parent not in current.split(os.pathsep):
        os.environ["COLANGPATH"] = os.pathsep.join(p for p in (current, parent) if p)


def load_rails_config(path: str | Path) -> Any:
    ensure_import_path()
    from nemoguardrails import RailsConfig

    p = Path(path)
    if not p.exists():
        raise SystemExit(f"error: config directory {str(p)!r} does not exist")
    return RailsConfig.from_path(str(p))


def fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
