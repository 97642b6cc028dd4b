"""``report.json`` and ``report.md`` from the scored records of a run (one or two settings side by side)."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nemo_csr_rail.eval.datasets import DIRECTION_OF, DIRECTIONS, Dataset, Row
from nemo_csr_rail.eval.metrics import direction_metrics, latency_summary

SCHEMA = "nemo-csr-rail/eval-report/1"
POSITIVES_ONLY_NOTE = ("only harmful labels in this direction: every miss is a false negative and no false positive "
                       "is possible, so read recall; precision is 1.0 (or undefined) by construction")
_DELTA_KEYS = ("precision", "recall", "f1", "accuracy")


def build(dataset: Dataset, rows: Sequence[Row], records: Sequence[Mapping[str, Any]],
          run_settings: Mapping[str, Mapping[str, Any]], *, units: int, sent: int, resumed: int, elapsed_s: float,
          interrupted: bool) -> dict[str, Any]:
    labels = {d: {"harmful": 0, "unharmful": 0} for d in DIRECTIONS}
    for r in rows:
        for d in DIRECTIONS:
            lab = r.label(d)
            if lab is not None:
                labels[d][lab] += 1
    labels = {d: c for d, c in labels.items() if sum(c.values())}
    positives_only = [d for d, c in labels.items() if c["unharmful"] == 0]
    runs = []
    for name, settings in run_settings.items():
        directions: dict[str, Any] = {}
        for d in labels:
            recs = [r for r in records if r["run"] == name and r["direction"] == DIRECTION_OF[d]]
            m = direction_metrics(recs)
            m["expected"] = sum(labels[d].values())
            m["missing"] = m["expected"] - m["rows"]
            m["positives_only"] = d in positives_only
            if d in positives_only:
                m["note"] = POSITIVES_ONLY_NOTE
            directions[d] = m
        runs.append({"name": name, "settings": dict(settings), "directions": directions})
    complete = not interrupted and all(m["missing"] == 0 for run in runs for m in run["directions"].values())
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": complete,
        "dataset": {
            "path": runs[0]["settings"]["dataset"] if runs else dataset.path,
            "format": dataset.format,
            "card_row": dataset.card_row,
            "rows_in_file": len(dataset.rows),
            "rows_evaluated": len(rows),
            "limit": runs[0]["settings"]["limit"] if runs else None,
            "labels": labels,
            "positives_only": positives_only,
            "notes": list(dataset.notes),
            "skipped_by_loader": dict(dataset.skipped),
        },
        "settings": runs[0]["settings"] if runs else {},
        "directions": runs[0]["directions"] if runs else {},
        "runs": runs,
        "progress": {"checks": units, "sent_this_time": sent, "resumed_from_rows_jsonl": resumed,
                     "elapsed_s": round(elapsed_s, 3), "interrupted": interrupted},
    }
    escalating = [r for r in runs if r["settings"].get("reasoning") == "escalate"]
    if escalating:
        report["escalation"] = escalation_summary(records, runs, escalating[0]["name"], list(labels))
    if len(runs) == 2:
        a, b = runs
        delta: dict[str, Any] = {}
        for d in labels:
            ma, mb = a["directions"][d], b["directions"][d]
            dd = {k: (None if ma[k] is None or mb[k] is None else round(mb[k] - ma[k], 6)) for k in _DELTA_KEYS}
            for q in ("p50", "p95", "p99"):
                la, lb = ma["latency_ms"][q], mb["latency_ms"][q]
                dd[f"latency_{q}_ms"] = None if la is None or lb is None else round(lb - la, 3)
            dd["errors"] = mb["errors"] - ma["errors"]
            delta[d] = dd
        report["comparison"] = {"a": a["name"], "b": b["name"], "a_setting": a["settings"]["description"],
                                "b_setting": b["settings"]["description"], "delta_b_minus_a": delta}
    return report


def escalation_summary(records: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]], escalate_run: str,
                       judged: Sequence[str]) -> dict[str, Any]:
    """For the run with ``reasoning: escalate``, per direction: how often the screen escalated, how often its decision
    agrees with each other run's on the same rows (both judged), and generated tokens and latency per row of every
    run — what an operator needs to choose ``escalate_at`` on their own data."""
    out: dict[str, Any] = {"run": escalate_run, "directions": {}}
    for d in judged:
        by_run: dict[str, dict[str, Mapping[str, Any]]] = {}
        for r in records:
            if r["direction"] == DIRECTION_OF[d] and not r.get("error"):
                by_run.setdefault(r["run"], {})[r["id"]] = r
        esc = by_run.get(escalate_run, {})
        flags = [bool((r.get("escalation") or {}).get("escalated")) for r in esc.values()]
        agreement = {}
        for run in runs:
            other = by_run.get(run["name"], {})
            if run["name"] == escalate_run or not other:
                continue
            both = [i for i in esc if i in other and esc[i].get("predicted") and other[i].get("predicted")]
            same = sum(esc[i]["predicted"] == other[i]["predicted"] for i in both)
            agreement[run["name"]] = {"rows": len(both), "agree": round(same / len(both), 6) if both else None}
        per_row = {}
        for run in runs:
            rs = list(by_run.get(run["name"], {}).values())
            tokens = [r["completion_tokens"] for r in rs if isinstance(r.get("completion_tokens"), int)]
            lat = [float(r["latency_ms"]) for r in rs if r.get("latency_ms") is not None]
            per_row[run["name"]] = {"mean_generated_tokens": round(sum(tokens) / len(tokens), 3) if tokens else None,
                                    "latency_ms": latency_summary(lat)}
        out["directions"][d] = {"rows": len(esc), "escalation_rate": round(sum(flags) / len(flags), 6) if flags
                                else None, "agreement": agreement, "per_row": per_row}
    return out


def write_json(out: Path, report: Mapping[str, Any]) -> Path:
    path = out / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


# -------------------------------------------------------------------------------------------------- markdown
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _cell(text: Any, limit: int = 220) -> str:
    s = " ".join(str(text).split()) if text is not None else ""
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("|", "\\|").replace("<", "&lt;") or " "


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _metric_rows(runs: Sequence[Mapping[str, Any]], d: str, delta: Mapping[str, Any] | None) -> list[list[str]]:
    def get(m: Mapping[str, Any], key: str) -> Any:
        if key.startswith("lat_"):
            return m["latency_ms"][key[4:]]
        return m.get(key)

    spec = [("F1 (harmful)", "f1"), ("precision", "precision"), ("recall", "recall"), ("accuracy", "accuracy"),
            ("tp", "tp"), ("fp", "fp"), ("tn", "tn"), ("fn", "fn"), ("scored", "scored"), ("errors", "errors"),
            ("missing (not run yet)", "missing"), ("latency p50 (ms)", "lat_p50"), ("latency p95 (ms)", "lat_p95"),
            ("latency p99 (ms)", "lat_p99"), ("with confidence", "confidence_coverage")]
    rows = []
    for label, key in spec:
        vals = [_fmt(get(run["directions"][d], key), 1 if key.startswith("lat_") else 3) for run in runs]
        if delta is not None:
            dk = {"lat_p50": "latency_p50_ms", "lat_p95": "latency_p95_ms", "lat_p99": "latency_p99_ms"}.get(key, key)
            dv = delta.get(dk)
            vals.append(("+" if isinstance(dv, (int, float)) and dv > 0 else "") + _fmt(dv, 1 if key.startswith("lat_") else 3)
                        if dk in delta else "")
        rows.append([label, *vals])
    if any(run["directions"][d].get("pr") for run in runs):
        vals = []
        for run in runs:
            pr = run["directions"][d].get("pr")
            vals.append(f"{_fmt(pr['best_threshold'])} (F1 {_fmt(pr['best_f1'])}, AP {_fmt(pr['average_precision'])})"
                        if pr else "n/a")
        rows.append(["F1-best threshold on P(harmful)", *vals] + ([""] if delta is not None else []))
    return rows


def _worst(records: Sequence[Mapping[str, Any]], rows_by_id: Mapping[str, Row], run: str, d: str, n: int) -> list[str]:
    recs = [r for r in records if r["run"] == run and r["direction"] == DIRECTION_OF[d] and r.get("error") is None]
    out: list[str] = []
    for kind, want_label, want_pred in (("False positives", "unharmful", "harmful"), ("False negatives", "harmful", "unharmful")):
        wrong = [r for r in recs if r["label"] == want_label and r["predicted"] == want_pred]
        if not wrong:
            continue
        have_conf = all(r.get("confidence") is not None for r in wrong)
        if have_conf:  # most confident mistakes first
            wrong.sort(key=lambda r: -r["confidence"] if want_pred == "harmful" else r["confidence"])
        order = "by confidence" if have_conf else "in dataset order (no confidence without logprobs)"
        out += ["", f"#### {kind} — run {run}, {d} ({len(wrong)} total, top {min(n, len(wrong))} {order})", ""]
        table = []
        for r in wrong[:n]:
            row = rows_by_id.get(r["id"])
            text = "" if row is None else (row.prompt if d == "prompt" else f"USER: {row.prompt} / BOT: {row.response}")
            table.append([_cell(r["id"], 40), _fmt(r.get("confidence")), _cell(text), _cell(r.get("reasoning"), 300)])
        out += _table(["id", "P(harmful)", "text", "reasoning"], table)
    return out


def markdown(report: Mapping[str, Any], records: Sequence[Mapping[str, Any]], rows: Sequence[Row], *,
             worst: int = 10, plots: Sequence[str] = ()) -> str:
    ds = report["dataset"]
    runs = report["runs"]
    cmp_ = report.get("comparison")
    lines = [f"# Guard evaluation: {Path(ds['path']).name} ({ds['format']})", ""]
    if not report["complete"]:
        lines += ["> **Incomplete run**: some checks have not been made yet (interrupted). Rerun the same command "
                  "to resume; the numbers below cover only the rows scored so far.", ""]
    lines += [f"- dataset: `{ds['path']}` — format `{ds['format']}`"
              + (f" — model card row: {ds['card_row']}" if ds.get("card_row") else ""),
              f"- rows evaluated: {ds['rows_evaluated']} of {ds['rows_in_file']}"
              + (f" (--limit {ds['limit']})" if ds.get("limit") else ""),
              "- labels: " + "; ".join(f"{d}: {c['harmful']} harmful / {c['unharmful']} unharmful"
                                       for d, c in ds["labels"].items())]
    for note in ds["notes"]:
        lines.append(f"- note: {note}")
    for why, n in ds["skipped_by_loader"].items():
        lines.append(f"- skipped by the loader: {n} rows ({why})")
    for d in ds["positives_only"]:
        lines.append(f"- **{d} direction has only harmful labels**: {POSITIVES_ONLY_NOTE}")
    lines += ["", "## Settings", ""]
    keys = [("description", "setting"), ("policy", "policy"), ("row_policies", "per-row policies"),
            ("reasoning_mode", "reasoning (prompt / response)"), ("threshold", "threshold"), ("endpoint", "endpoint"),
            ("model", "model"), ("timeout_s", "timeout (s)"), ("concurrency", "concurrency"),
            ("structured_output", "structured output"), ("logprobs", "logprobs")]
    srows = []
    for k, label in keys:
        vals = []
        for run in runs:
            v = run["settings"].get(k)
            if k == "reasoning_mode":
                v = " / ".join("on" if v[d] else "off" for d in ("prompt", "response"))
            elif k == "threshold" and v is None:
                v = "none (the model's verdict)"
            elif isinstance(v, list):
                v = ", ".join(v) or "none"
            vals.append(_cell(_fmt(v), 120))
        srows.append([label, *vals])
    lines += _table(["", *(f"run {r['name']}" for r in runs)], srows)
    lines += ["", "## Results (harmful class)", ""]
    for d in ds["labels"]:
        delta = cmp_["delta_b_minus_a"][d] if cmp_ else None
        lines += [f"### {d.capitalize()} harm", ""]
        header = ["metric", *(f"run {r['name']}" for r in runs)] + (["Δ (b − a)"] if delta is not None else [])
        lines += _table(header, _metric_rows(runs, d, delta))
        for run in runs:
            m = run["directions"][d]
            if m["errors_by_kind"]:
                lines += ["", f"Errors in run {run['name']} (not scored): "
                          + ", ".join(f"{k}: {v}" for k, v in m["errors_by_kind"].items())]
        lines.append("")
    esc = report.get("escalation")
    if esc:
        lines += [f"## Escalation (run {esc['run']}: reasoning: escalate)", ""]
        for d, e in esc["directions"].items():
            lines += [f"### {d.capitalize()} harm", "",
                      f"Escalation rate: {_fmt(e['escalation_rate'])} of {e['rows']} rows. Agreement with "
                      + ", ".join(f"run {k}: {_fmt(v['agree'])} ({v['rows']} rows)" for k, v in e["agreement"].items())
                      + ".", ""]
            lines += _table(["run", "mean generated tokens per row", "latency p50 ms", "latency p95 ms"],
                            [[f"run {k}", _fmt(v["mean_generated_tokens"]), _fmt(v["latency_ms"]["p50"], 1),
                              _fmt(v["latency_ms"]["p95"], 1)] for k, v in e["per_row"].items()])
            lines.append("")
    lines += ["## Worst mistakes", "", "Content warning: dataset texts can be harmful by design. Texts are truncated.",
              "False positives are sorted by P(harmful) descending, false negatives ascending, when logprob "
              "confidences exist."]
    rows_by_id = {r.id: r for r in rows}
    for run in runs:
        for d in ds["labels"]:
            lines += _worst(records, rows_by_id, run["name"], d, worst)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    p = report["progress"]
    lines += ["", "---", f"{p['checks']} checks; {p['sent_this_time']} sent this invocation, "
              f"{p['resumed_from_rows_jsonl']} resumed from rows.jsonl; {p['elapsed_s']:.1f} s. "
              f"Per-check records: `rows.jsonl`. Generated {report['created']}.", ""]
    return "\n".join(lines)


def write_markdown(out: Path, text: str) -> Path:
    path = out / "report.md"
    path.write_text(text, encoding="utf-8")
    return path
