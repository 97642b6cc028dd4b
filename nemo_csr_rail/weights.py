"""Where model weights are: a local directory, or a Hugging Face repo id in the local hub cache.

Shared by the embedded engine, ``serve`` and ``demo``. Pure standard library (the cache layout is documented and
stable: ``$HF_HUB_CACHE`` or ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``, then
``models--ORG--NAME/snapshots/<commit>/``), so ``serve --dry-run`` answers without importing huggingface_hub.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from nemo_csr_rail.options import DEFAULT_MODEL

DEFAULT_REPO = DEFAULT_MODEL
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = {"1", "true", "yes", "on"}


@dataclass
class Lookup:
    """The outcome of a search: ``path`` is a directory with ``config.json``, or None; ``looked`` says where."""

    spec: str
    path: Path | None
    is_repo_id: bool
    looked: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.path is not None

    def describe_miss(self) -> str:
        where = "; ".join(self.looked) or "nowhere"
        return f"no weights for {self.spec!r} (looked in: {where})"


def hub_cache_dir() -> Path:
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_repo_id(spec: str) -> bool:
    return bool(_REPO_ID.match(spec)) and not spec.startswith((".", "/", "~")) and not Path(spec).exists()


def _snapshot(repo_id: str, cache: Path) -> Path | None:
    root = cache / ("models--" + repo_id.replace("/", "--"))
    snaps = root / "snapshots"
    if not snaps.is_dir():
        return None
    ref = root / "refs" / "main"
    if ref.is_file():
        cand = snaps / ref.read_text().strip()
        if (cand / "config.json").is_file():
            return cand
    found = sorted((p for p in snaps.iterdir() if (p / "config.json").is_file()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def find_local(spec: str) -> Lookup:
    """Resolve ``spec`` (a directory or an HF repo id) to a local directory without touching the network."""
    spec = (spec or "").strip()
    if not spec:
        return Lookup(spec, None, False, ["(no model path or id given)"])
    if not looks_like_repo_id(spec):
        p = Path(spec).expanduser()
        if p.is_dir() and (p / "config.json").is_file():
            return Lookup(spec, p.resolve(), False, [str(p)])
        why = "no such directory" if not p.exists() else "no config.json in it" if p.is_dir() else "not a directory"
        return Lookup(spec, None, False, [f"{p} ({why})"])
    cache = hub_cache_dir()
    snap = _snapshot(spec, cache)
    looked = [f"{cache / ('models--' + spec.replace('/', '--'))} (Hugging Face cache)"]
    return Lookup(spec, snap, True, looked)


def download_hint(repo_id: str = DEFAULT_REPO) -> str:
    return f"huggingface-cli download {repo_id}  (or: hf download {repo_id})"


def download(repo_id: str) -> Path:
    """Fetch a repo into the HF cache (weights, config, tokenizer); raises on any failure."""
    from huggingface_hub import snapshot_download

    path = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"])
    return Path(path)
