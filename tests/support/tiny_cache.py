"""The tiny random Gemma-3 checkpoint, built once per machine into ``$CSR_TEST_CACHE`` (default ``.cache/``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("CSR_TEST_CACHE") or ROOT / ".cache")


def need_torch() -> None:
    """Skip (or, with CSR_REQUIRE_EMBEDDED=1, fail) when torch/transformers are not installed."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CSR_REQUIRE_EMBEDDED") == "1":
            pytest.fail(f"CSR_REQUIRE_EMBEDDED=1 but the embedded extra is missing: {exc}")
        pytest.skip(f"embedded engine not installed ({exc.name}): pip install -e '.[embedded]'")


def tiny_checkpoint(multimodal: bool = False) -> Path:
    """Path of the tiny Gemma-3 (float32; text-only, or the production ``Gemma3ForConditionalGeneration``
    architecture with ``multimodal``), building it (~8 s) the first time."""
    need_torch()
    out = cache_dir() / ("tiny-gemma3-mm" if multimodal else "tiny-gemma3")
    if (out / "generation_config.json").is_file():  # written last: a complete build
        return out
    from tests.support import tiny_gemma

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-gemma3-", dir=out.parent))
    try:
        tiny_gemma.build(str(tmp), multimodal=multimodal, dtype="float32")
        if not (out / "generation_config.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
