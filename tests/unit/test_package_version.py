"""The package version is written once, in pyproject.toml, and read from the installed distribution's metadata."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import nemo_csr_rail

ROOT = Path(__file__).resolve().parents[2]


def _written_version() -> str:
    """``[project] version`` of pyproject.toml (read as text: ``tomllib`` is Python 3.11+, the package runs on 3.10)."""
    table = re.search(r"^\[project\]\n(.*?)(?=^\[|\Z)", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    found = re.search(r'^version\s*=\s*"([^"]+)"', table.group(1) if table else "", re.M)
    assert found, "pyproject.toml has no [project] version"
    return found.group(1)


def test_the_package_reports_the_installed_distributions_version() -> None:
    assert nemo_csr_rail.__version__ == importlib.metadata.version("nemo-csr-rail")
    assert nemo_csr_rail.__version__ == _written_version()  # the installed metadata is this checkout's


def test_the_version_is_written_nowhere_in_the_package() -> None:
    """A second copy goes stale at the next release; every place that reports the version reads ``__version__``."""
    written = re.compile(rf"(?<![\d.]){re.escape(_written_version())}(?![\d.])")
    copies = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "nemo_csr_rail").rglob("*"))
              if p.is_file() and p.suffix in (".py", ".co", ".yml", ".yaml", ".toml", ".json", ".md", ".txt", ".cfg")
              for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if written.search(line)]
    assert not copies, f"the version is written here as well as in pyproject.toml: {copies}"
