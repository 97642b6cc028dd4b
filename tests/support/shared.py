"""Locate the workplace's shared reference material (``../shared``) without the product depending on it."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def shared_dir() -> Path | None:
    """``$CSR_SHARED_DIR``, else the nearest ``shared/`` next to the checkout or one of its parents."""
    env = os.environ.get("CSR_SHARED_DIR")
    if env:
        return Path(env) if Path(env).is_dir() else None
    for parent in [ROOT, *ROOT.parents]:
        cand = parent / "shared"
        if (cand / "reference").is_dir():
            return cand
    return Path("/work/shared") if Path("/work/shared/reference").is_dir() else None
