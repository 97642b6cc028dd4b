"""A deterministic, offline embedding model for NeMo Guardrails' dialog and knowledge-base indexes.

NeMo's default (FastEmbed all-MiniLM-L6-v2) downloads a model; these tests must run without a network. Retrieval
rails only run on NeMo's dialog path (user canonical forms, then ``bot …`` → ``generate bot message``), whose index
needs embeddings, so test configs register this bag-of-words hash model from their ``config.py``::

    models: [{type: embeddings, engine: csr_test_hash, model: bow}]
"""

from __future__ import annotations

import hashlib
import math
import re

from nemoguardrails.embeddings.providers.base import EmbeddingModel

DIM = 64
ENGINE = "csr_test_hash"


def _vector(text: str) -> list[float]:
    v = [0.0] * DIM
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
        v[h % DIM] += 1.0
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


class HashEmbeddingModel(EmbeddingModel):
    engine_name = ENGINE

    def __init__(self, embedding_model: str = "bow", **_: object) -> None:
        self.model = embedding_model

    async def encode_async(self, documents: list[str]) -> list[list[float]]:
        return self.encode(documents)

    def encode(self, documents: list[str]) -> list[list[float]]:
        return [_vector(d) for d in documents]


def register(app: object) -> None:
    """Call from a test config's ``config.py``: ``def init(app): register(app)``."""
    from nemoguardrails.embeddings.providers.registry import EmbeddingProviderRegistry

    if ENGINE not in EmbeddingProviderRegistry():  # once per process: NeMo's registry refuses a second add
        app.register_embedding_provider(HashEmbeddingModel, ENGINE)  # type: ignore[attr-defined]


CONFIG_PY = (
    "from tests.support.hash_embeddings import register\n\n\n"
    "def init(app):\n"
    "    register(app)\n"
)
