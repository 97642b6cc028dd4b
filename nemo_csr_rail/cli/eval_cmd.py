"""``nemo-csr-rail eval``: run a labelled dataset through the guard and write report.json / report.md / plots.

Resumable: every finished check is appended to ``OUT/rows.jsonl``; rerunning the same command sends only the
checks not in it yet. ``--compare …`` evaluates a second setting (run ``b``) against the first (run ``a``) in the
same invocation, side by side. See ``docs/evaluation.md``.

Exit codes: 0 done (check errors, if any, are counted in the report), 2 config/usage/dataset error, 3 every check
failed (guard unusable: nothing could be scored), 130 interrupted (rows so far are kept; rerun to resume).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nemo_csr_rail.cli.guardcfg import EXIT_GUARD, EXIT_OK, EXIT_USAGE, UsageError
from nemo_csr_rail.options import install_hint

EPILOG = """\
comparison (one extra setting, run b, against run a):
  --compare reasoning        a = reasoning off, b = reasoning on (same policy and endpoint)
  --compare escalate         a = off, b = on, c = reasoning: escalate (the policy's escalate_at); the report adds
                             c's escalation rate, agreement with a and with b, tokens and latency per row
  --compare-policy NAME2     b uses policy NAME2 (a uses --policy; both ignore per-row policies)
  --compare-base-url URL     b sends to another guard endpoint (e.g. a second vLLM deployment)
  the three can be combined; b differs from a in every aspect given.

exit codes: 0 done, 2 config/usage/dataset error, 3 every check failed, 130 interrupted (rerun to resume)
"""


def add_parser(sub: Any) -> None:
    from nemo_csr_rail.eval.datasets import formats

    p = sub.add_parser("eval", help="evaluate the guard on a labelled dataset (report.json, report.md, plots)",
                       description="Run a labelled dataset through the guard (bounded concurrency, resumable) and "
                                   "write per-direction precision/recall/F1 of the harmful class, latency "
                                   "percentiles, the worst mistakes and plots.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, metavar="DIR", help="Guardrails config directory (config.yml)")
    p.add_argument("--policy", metavar="NAME", help="policy to evaluate (default: the only one, or 'default'); "
                                                   "rows of our JSONL may name their own")
    p.add_argument("--dataset", required=True, metavar="PATH", help="dataset file (or directory, for JailbreakBench "
                                                                   "artifacts and Do-Not-Answer)")
    p.add_argument("--format", default="auto", choices=formats(), help="dataset format (default: auto-detect)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N rows of the dataset")
    p.add_argument("--concurrency", type=int, default=8, metavar="N", help="checks in flight at once (default 8)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (rows.jsonl, report.*, *.png)")
    p.add_argument("--reasoning", action=argparse.BooleanOptionalAction, default=None,
                   help="force reasoning on/off (default: each policy's own per-direction setting)")
    p.add_argument("--base-url", metavar="URL", help="override the config's guard endpoint (the vLLM /v1 URL)")
    p.add_argument("--timeout", type=float, metavar="S", help="override timeout_s for each check")
    g = p.add_argument_group("comparison")
    g.add_argument("--compare", choices=["reasoning", "escalate"],
                   help="'reasoning': run a with reasoning off, b with it on; 'escalate': also run c with "
                        "reasoning: escalate, and report its escalation rate and agreement with a and b")
    g.add_argument("--compare-policy", metavar="NAME2", help="run b with policy NAME2")
    g.add_argument("--compare-base-url", metavar="URL", help="run b against this guard endpoint")
    o = p.add_argument_group("run control")
    o.add_argument("--retry-errors", action="store_true", help="on resume, re-send the checks that failed before")
    o.add_argument("--overwrite", action="store_true", help="discard rows.jsonl in --out and start over")
    o.add_argument("--worst", type=int, default=10, metavar="N", help="mistakes listed per kind in report.md")
    o.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    o.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def specs_from_args(args: argparse.Namespace, policies: dict[str, Any]) -> list[Any]:
    from nemo_csr_rail.cli.guardcfg import default_policy
    from nemo_csr_rail.eval.runner import RunSpec

    name = default_policy(policies, args.policy)
    comparing = bool(args.compare or args.compare_policy or args.compare_base_url)
    if not comparing:
        return [RunSpec("a", name, args.reasoning, args.base_url)]
    if args.compare and args.reasoning is not None:
        raise UsageError(f"--compare {args.compare} sets the reasoning of each run; drop --reasoning")
    if args.compare == "escalate":
        if args.compare_policy or args.compare_base_url:
            raise UsageError("--compare escalate runs one policy on one endpoint three ways; drop --compare-policy "
                             "and --compare-base-url")
        return [RunSpec("a", name, False, args.base_url), RunSpec("b", name, True, args.base_url),
                RunSpec("c", name, "escalate", args.base_url)]
    force = args.compare_policy is not None
    b_policy = default_policy(policies, args.compare_policy) if force else name
    a = RunSpec("a", name, False if args.compare == "reasoning" else args.reasoning, args.base_url, force_policy=force)
    b = RunSpec("b", b_policy, True if args.compare == "reasoning" else args.reasoning,
                args.compare_base_url or args.base_url, force_policy=force)
    if (a.policy, a.reasoning, a.base_url) == (b.policy, b.reasoning, b.base_url):
        raise UsageError("the compared settings are identical (same policy, reasoning and endpoint)")
    return [a, b]


def run(args: argparse.Namespace) -> int:
    from nemo_csr_rail.eval import datasets, plots, report
    from nemo_csr_rail.eval.runner import RunError, Runner
    from nemo_csr_rail.policy import compile_policies

    try:
        if args.concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        if args.limit is not None and args.limit < 1:
            raise UsageError("--limit must be at least 1")
        if args.timeout is not None and args.timeout <= 0:
            raise UsageError("--timeout must be positive")
        from nemo_csr_rail.cli.guardcfg import load_resolved

        _, resolved = load_resolved(args.config)
        specs = specs_from_args(args, compile_policies(resolved.plugin))
        try:
            ds = datasets.load(args.dataset, args.format)
        except datasets.DatasetError as exc:
            raise UsageError(str(exc)) from None
        out = Path(args.out)
        runner = Runner(resolved, ds, specs, out, concurrency=args.concurrency, limit=args.limit,
                        timeout_s=args.timeout, progress=not args.no_progress, retry_errors=args.retry_errors,
                        overwrite=args.overwrite)
        result = runner.run()
    except (UsageError, RunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rep = report.build(ds, runner.rows, result.records, result.settings, units=len(runner.units()),
                       sent=result.sent, resumed=result.resumed, elapsed_s=result.elapsed_s,
                       interrupted=result.interrupted)
    files: list[str] = []
    if not args.no_plots:
        if plots.available():
            files = plots.write_all(out, rep, result.records)
        else:
            print(f"note: matplotlib is not installed ({install_hint('eval')}): no plots", file=sys.stderr)
    rep["plots"] = files
    report.write_json(out, rep)
    report.write_markdown(out, report.markdown(rep, result.records, runner.rows, worst=args.worst, plots=files))
    _summary(rep, out)
    if result.interrupted:
        print(f"interrupted: {len(result.records)} checks saved in {out / 'rows.jsonl'}; rerun the same command to "
              "resume", file=sys.stderr)
        return 130
    scored = sum(m["scored"] for r in rep["runs"] for m in r["directions"].values())
    return EXIT_OK if scored else EXIT_GUARD


def _summary(rep: dict[str, Any], out: Path) -> None:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for r in rep["runs"]:
        for d, m in r["directions"].items():
            lat = m["latency_ms"]["p50"]
            print(f"run {r['name']} ({r['settings']['description']}) {d}: F1={f(m['f1'])} P={f(m['precision'])} "
                  f"R={f(m['recall'])} acc={f(m['accuracy'])} scored={m['scored']} errors={m['errors']} "
                  f"p50={'n/a' if lat is None else f'{lat:.1f}'} ms"
                  + (" [harmful-only labels: read recall]" if m["positives_only"] else ""))
    print(f"report: {out / 'report.md'} , {out / 'report.json'}")
