"""The user docs say what the code has, and nothing that goes stale by itself.

- The README and the configuration reference name every flow the packaged Colang files define, with the Colang
  versions that define it, and every action NeMo can find (the ``import_paths`` module and ``register()``).
- No doc tells a user to ``pip install nemo-csr-rail`` by name: the package is not on the package index, so an
  install line installs from a clone (``pip install .``) or from a built wheel (``--find-links``).
- No doc writes a count of the current tree's tests or modules by hand: it is stale after the next commit; give
  the command that counts them, or label a measured run's count as of then ("28 tests then").
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RAIL = ROOT / "nemo_csr_rail" / "rail"
COLANG_FILES = {"1.0": RAIL / "flows.v1.co", "2.x": RAIL / "flows.co"}
FLOW_TABLE_DOCS = [ROOT / "README.md", ROOT / "docs" / "configuration.md"]

# Pages another change of the same issue rewrites; each still has an install line by name. When it has none, the
# test below fails so that the exclusion is removed with it.
INSTALL_BY_NAME_PENDING: set[str] = set()


def user_docs() -> list[Path]:
    return sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "example_configs").rglob("*.md"),
                   *(ROOT / "deploy").rglob("*.md")])


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def defined_flows(text: str, version: str) -> set[str]:
    """Flow names a Colang file defines: ``define flow NAME`` (1.0) or ``flow NAME $param=…`` (2.x), at the start
    of a line, so that a name in a comment or a docstring does not count."""
    if version == "1.0":
        pattern = r"^define flow ([a-z][a-z0-9_ ]*?)\s*$"
    else:
        pattern = r"^flow ([a-z][a-z0-9_ ]*?)(?:\s+\$.*)?$"
    return set(re.findall(pattern, text, flags=re.MULTILINE))


def flows_by_version() -> dict[str, set[str]]:
    return {version: defined_flows(path.read_text(), version) for version, path in COLANG_FILES.items()}


def registered_actions() -> set[str]:
    """Actions NeMo finds: those decorated in the module ``import_paths`` loads, and those ``register()`` adds."""
    import nemo_csr_rail
    import nemo_csr_rail.actions as loaded

    metas = [getattr(obj, "action_meta", None) for obj in vars(loaded).values()]
    names = {meta["name"] for meta in metas if isinstance(meta, dict)}

    class App:
        def register_action(self, action: object, name: str | None = None) -> None:
            names.add(name or action.action_meta["name"])  # type: ignore[attr-defined]

    nemo_csr_rail.register(App())
    return names


def test_the_colang_files_define_the_flows_the_parser_finds():
    """Guards the parser below: both files define flows, and a name only in a comment is not taken for one."""
    by_version = flows_by_version()
    assert {"csr check input", "csr check output"} <= by_version["1.0"] & by_version["2.x"]
    assert defined_flows("# define flow csr check nothing\n  flow not at start\n", "1.0") == set()
    assert defined_flows('# flow csr check nothing\n  """flow in a docstring"""\n', "2.x") == set()
    assert defined_flows('flow csr check x $policy=""\n', "2.x") == {"csr check x"}


@pytest.mark.parametrize("doc", FLOW_TABLE_DOCS, ids=rel)
def test_the_flows_table_names_every_flow_with_its_colang_versions(doc):
    text = doc.read_text()
    by_version = flows_by_version()
    for flow in sorted(set().union(*by_version.values())):
        rows = [line for line in text.splitlines() if line.startswith(f"| `{flow}`")]
        assert len(rows) == 1, f"{rel(doc)}: one flows-table row starting with | `{flow}` |, found {len(rows)}"
        colang = rows[0].rstrip().rstrip("|").rsplit("|", 1)[-1]
        for version, flows in by_version.items():
            assert (version in colang) == (flow in flows), (
                f"{rel(doc)}: the row of `{flow}` says Colang '{colang.strip()}'; "
                f"{rel(COLANG_FILES[version])} {'defines' if flow in flows else 'does not define'} it")


@pytest.mark.parametrize("doc", FLOW_TABLE_DOCS, ids=rel)
def test_the_docs_name_every_registered_action(doc):
    text = doc.read_text()
    actions = registered_actions()
    assert {"csr_check_input", "csr_check_output"} <= actions
    missing = sorted(a for a in actions if f"`{a}`" not in text)
    assert not missing, f"{rel(doc)} does not name the registered actions {missing}"


def install_lines_by_name(text: str) -> list[tuple[int, str]]:
    """``pip install`` lines that name the distribution itself (``nemo-csr-rail``, with extras or a version) and
    give pip no place to find it (``--find-links``/``-f``, ``--no-index``): they fail with "no matching
    distribution" while the package is not on the index."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for command in re.findall(r"pip install\b([^`\n]*)", line):
            try:
                words = shlex.split(command, comments=True)
            except ValueError:  # an unbalanced quote in prose: split on blanks
                words = command.split()
            names = [w for w in words if re.fullmatch(r"nemo[-_.]csr[-_.]rail(\[[^\]]*\])?([=<>!~;].*)?", w, re.I)]
            where = {"--find-links", "-f", "--no-index"} & {w.split("=")[0] for w in words}
            if names and not where:
                found.append((number, line.strip()))
    return found


def test_the_install_line_check_tells_name_from_path():
    assert install_lines_by_name("pip install nemo-csr-rail\n`pip install 'nemo-csr-rail[embedded]'`")
    assert install_lines_by_name("pip install -U nemo_csr_rail==0.1.0  # comment")
    assert not install_lines_by_name("pip install .\npip install '.[embedded]'\npip install -e .")
    assert not install_lines_by_name("pip install --find-links dist 'nemo-csr-rail[langchain]'")
    assert not install_lines_by_name('pip install "$(ls dist/nemo_csr_rail-*.whl)[embedded]"')
    assert not install_lines_by_name("~/.cache/nemo-csr-rail/router-venv/bin/pip install vllm-router==0.1.17")


def test_no_doc_installs_the_package_by_name():
    offending = {rel(doc): install_lines_by_name(doc.read_text()) for doc in user_docs()}
    for pending in INSTALL_BY_NAME_PENDING:
        assert offending.pop(pending, None), f"{pending} no longer installs by name: drop it from the pending set"
    bad = [f"{doc}:{n}: {line}" for doc, lines in offending.items() for n, line in lines]
    assert not bad, ("the package is not on the package index: install from a clone (pip install '.[extra]') or a "
                     "built wheel (--find-links dist), see docs/configuration.md#installing\n" + "\n".join(bad))


STALE_COUNT = re.compile(r"\b\d[\d,]*\s+(?:unit |integration |tooling |e2e )?(?:tests|test files|modules)\b(?! then)")


def test_no_doc_writes_the_trees_test_or_module_count_by_hand():
    assert STALE_COUNT.search("the unit tier (143 tests) takes") and STALE_COUNT.search("68 modules")
    assert not STALE_COUNT.search("whole tests/e2e/real (28 tests then)")
    bad = [f"{rel(doc)}:{n}: {line.strip()}" for doc in user_docs()
           for n, line in enumerate(doc.read_text().splitlines(), 1) if STALE_COUNT.search(line)]
    assert not bad, ("a hand-written count goes stale: give the command that counts it "
                     "(pytest --collect-only -q | tail -1) or label a measured run's count 'N tests then'\n"
                     + "\n".join(bad))
