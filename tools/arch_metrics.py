"""Architecture figures of a checkout, for change notes: the package's import graph and its layering.

    python tools/arch_metrics.py [REPO]          # default: this checkout

Prints the number of modules and intra-package import edges (lazy imports inside functions included), the import
cycles (strongly connected components), the imports that run back up the pipeline chain as ranked by that
checkout's own tests/test_layering.py, and the modules outside the NeMo adapter that import NeMo Guardrails or
LangChain. Repeated blocks are measured separately with the workplace's ``duplicates --repo nemo_csr_rail``.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

FOREIGN = ("nemoguardrails", "langchain", "langchain_core")


def module_name(pkg: Path, path: Path) -> str:
    parts = [p for p in path.relative_to(pkg).with_suffix("").parts if p != "__init__"]
    return ".".join(parts)


def imports(pkg: Path, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(package modules imported, foreign top-level packages imported) by one file, at any depth of its code."""
    inner: set[str] = set()
    foreign: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mod = node.module
            if mod.split(".")[0] in FOREIGN:
                foreign.add(mod.split(".")[0])
            if mod == "nemo_csr_rail" or mod.startswith("nemo_csr_rail."):
                base = mod.removeprefix("nemo_csr_rail").lstrip(".")
                for alias in node.names:
                    full = f"{base}.{alias.name}" if base else alias.name
                    inner.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in FOREIGN:
                    foreign.add(a.name.split(".")[0])
                if a.name.startswith("nemo_csr_rail."):
                    inner.add(a.name.removeprefix("nemo_csr_rail."))
    inner.discard("")
    return inner, foreign


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of size > 1 (import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def load_rank(repo: Path) -> dict[str, int] | None:
    test = next(iter(sorted(repo.glob("tests/**/test_layering.py"))), None)
    if test is None:
        return None
    spec = importlib.util.spec_from_file_location("_layering", test)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return dict(mod.RANK)


def rank_of(rank: dict[str, int], name: str) -> int | None:
    while name:
        if name in rank:
            return rank[name]
        name = name.rpartition(".")[0]
    return None


def main(argv: list[str]) -> int:
    repo = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parents[1]).resolve()
    pkg = repo / "nemo_csr_rail"
    files = sorted(p for p in pkg.rglob("*.py") if module_name(pkg, p))
    known = {module_name(pkg, p) for p in files}
    graph: dict[str, set[str]] = {}
    foreign: dict[str, set[str]] = {}
    for p in files:
        name = module_name(pkg, p)
        inner, outer = imports(pkg, p, known)
        graph[name] = {d for d in inner if d in known and d != name}
        if outer:
            foreign[name] = outer
    edges = sum(len(v) for v in graph.values())
    print(f"repo: {repo}")
    print(f"modules: {len(graph)}  import edges inside the package: {edges}")
    cyc = cycles(graph)
    print(f"import cycles: {len(cyc)}" + "".join(f"\n  {' <-> '.join(c)}" for c in cyc))
    rank = load_rank(repo)
    if rank is not None:
        back = sorted((m, d) for m, deps in graph.items() for d in deps
                      if not m.startswith(("cli", "eval")) and rank_of(rank, m) is not None
                      and (rank_of(rank, d) or 0) > (rank_of(rank, m) or 0))
        print(f"imports back up the chain (ranks of tests/tooling/test_layering.py): {len(back)}"
              + "".join(f"\n  {m} -> {d}" for m, d in back))
    # Folders on both sides of each other (plans -> engines.x while engines.y -> plans): ranks per module can allow
    # it, a reader following one check still walks back and forth between the two folders.
    def folder(m: str) -> str:
        return m.split(".")[0] if "." in m or (pkg / m).is_dir() else m

    folder_edges = {(folder(m), folder(d)) for m, deps in graph.items() for d in deps if folder(m) != folder(d)}
    both = sorted({tuple(sorted(e)) for e in folder_edges if (e[1], e[0]) in folder_edges
                   and not {"cli", "eval"} & set(e)})
    print(f"folders importing each other: {len(both)}" + "".join(f"\n  {a} <-> {b}" for a, b in both))
    root_up = sorted(d for d in imports(pkg, pkg / "__init__.py", known)[0] if folder(d) == "rail")
    print(f"package root importing the NeMo adapter: {len(root_up)}" + "".join(f"\n  {d}" for d in root_up))
    adapter = {m: f for m, f in foreign.items()
               if not (m == "rail" or m.startswith("rail.") or m in ("actions", "config") or m.startswith("cli")
                       or m.startswith("langchain"))}
    print(f"library modules (not cli) importing NeMo/LangChain outside the adapters (rail/, langchain*): {len(adapter)}"
          + "".join(f"\n  {m}: {', '.join(sorted(f))}" for m, f in sorted(adapter.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
