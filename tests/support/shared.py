"""Locate the workplace's shared reference material (``../shared``) without the product depending on it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

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


def missing(why: str) -> NoReturn:
    """Shared data that a ``shared_data`` test needs is absent: a failure with ``CSR_REQUIRE_SHARED=1`` (CI always
    has ``../shared``), else a skip that says how to point the tests at a copy (``CSR_SHARED_DIR``)."""
    import pytest

    if os.environ.get("CSR_REQUIRE_SHARED") == "1":
        pytest.fail(f"CSR_REQUIRE_SHARED=1 but {why}", pytrace=False)
    pytest.skip(f"{why}; set CSR_SHARED_DIR to a copy of the shared folder to run it")
