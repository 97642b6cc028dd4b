"""The test suite's layout (docs/testing.md): every test file sits in one of the four tiers, and the doc names the
command that runs the unit tier."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
TIERS = ("unit", "integration", "tooling", "e2e")
UNIT_COMMAND = "python -m pytest tests/unit -q"
# what the unit tier never uses: processes, servers (stand-in, vLLM, nemoguardrails server), the tiny checkpoint
NOT_IN_UNIT = ("subprocess", "multiprocessing", "benchmarks", "tests.support.standin", "tests.support.vllm_server",
               "tests.support.guardrails_server", "tests.support.tiny_cache", "tests.support.tiny_gemma")


def _test_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if p.name.startswith("test_") or p.name.endswith("_test.py"))


def test_every_test_file_sits_in_a_tier():
    """A new test gets a tier (unit, integration, tooling or e2e), never tests/ itself or tests/support."""
    outside = [str(p.relative_to(TESTS)) for p in _test_files() if p.relative_to(TESTS).parts[0] not in TIERS]
    assert outside == [], f"test files outside tests/{{{','.join(TIERS)}}}/ (see docs/testing.md): {outside}"


def test_test_file_names_are_unique_across_tiers():
    """The tier folders are not packages: pytest imports their files by base name, so two equal names collide."""
    counts = Counter(p.name for p in _test_files() if p.parent.name in TIERS)
    assert [name for name, n in counts.items() if n > 1] == []


def test_unit_tier_starts_no_process_and_no_server():
    """tests/unit stays pure (and under 20 s): no subprocess, no stand-in or other server, no tiny checkpoint."""
    found = []
    for path in sorted((TESTS / "unit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            found += [f"{path.name}: {n}" for n in names if n in NOT_IN_UNIT or n.split(".")[0] in NOT_IN_UNIT]
    assert found == []


def test_testing_doc_names_the_unit_command():
    doc = (ROOT / "docs" / "testing.md").read_text()
    assert UNIT_COMMAND in doc
    for tier in TIERS:
        assert f"tests/{tier}" in doc
