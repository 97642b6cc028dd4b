"""PNG plots of an eval run (matplotlib, from the ``eval`` extra; without it the plots are skipped, with a note).

Files: ``confusion_<run>_<direction>.png``, ``latency_<run>.png`` and, when every scored row of a direction has a
logprob confidence, ``pr_<run>_<direction>.png`` (precision-recall curve with the F1-best threshold marked).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nemo_csr_rail.eval.datasets import DIRECTION_OF
from nemo_csr_rail.eval.metrics import best_threshold, pr_curve


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def confusion(path: Path, m: Mapping[str, Any], title: str) -> Path:
    plt = _plt()
    grid = [[m["tn"], m["fp"]], [m["fn"], m["tp"]]]
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(grid, cmap="Blues")
    top = max(max(r) for r in grid) or 1
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(grid[i][j]), ha="center", va="center", fontsize=14,
                    color="white" if grid[i][j] > top / 2 else "black")
    ax.set_xticks([0, 1], ["unharmful", "harmful"])
    ax.set_yticks([0, 1], ["unharmful", "harmful"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    f1 = m.get("f1")
    ax.set_title(f"{title}\nF1(harmful)={'n/a' if f1 is None else f'{f1:.3f}'}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency(path: Path, series: Mapping[str, Sequence[float]], title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, values in series.items():
        if values:
            ax.hist(values, bins=min(50, max(5, len(values) // 4)), alpha=0.6, label=f"{name} (n={len(values)})")
    ax.set_xlabel("latency per check (ms)")
    ax.set_ylabel("checks")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pr(path: Path, scored: Sequence[tuple[float, bool]], title: str) -> Path:
    plt = _plt()
    curve = pr_curve(scored)
    best = best_threshold(curve)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.step([p["recall"] for p in curve], [p["precision"] for p in curve], where="post", marker=".")
    if best is not None:
        ax.plot([best["recall"]], [best["precision"]], "r*", markersize=12,
                label=f"best F1={best['f1']:.3f} at P(harmful)≥{best['threshold']:.3g}")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (harmful)")
    ax.set_ylabel("precision (harmful)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(out: Path, report: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """All plots for a report; returns the file names written (empty if matplotlib is missing)."""
    if not available():
        return []
    files: list[Path] = []
    for run in report["runs"]:
        name = run["name"]
        lat: dict[str, list[float]] = {}
        for direction, m in run["directions"].items():
            recs = [r for r in records
                    if r["run"] == name and r["direction"] == DIRECTION_OF[direction] and r.get("error") is None]
            files.append(confusion(out / f"confusion_{name}_{direction}.png", m, f"{name}: {direction} harm"))
            lat[direction] = [float(r["latency_ms"]) for r in recs if r.get("latency_ms") is not None]
            if "pr" in m:
                scored = [(float(r["confidence"]), r["label"] == "harmful") for r in recs]
                files.append(pr(out / f"pr_{name}_{direction}.png", scored, f"{name}: {direction} harm, logprob score"))
        if any(lat.values()):
            files.append(latency(out / f"latency_{name}.png", lat, f"{name}: {run['settings']['description']}"))
    return [f.name for f in files]
