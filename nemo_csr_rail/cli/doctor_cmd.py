"""``nemo-csr-rail doctor``: check that a Guardrails config's guard really works, end to end, before traffic does.

1. the config loads and the plugin section validates (exit 2 naming the offending key otherwise);
2. every guard endpoint answers ``GET /v1/models`` and serves the model name the config asks for (for
   ``engine: embedded``: the weights load);
3. for each policy and each mode the config uses — direction from the rails flows, reasoning on/off from the
   policy — one real check goes through the same client as the rails, and must come back with a parsed verdict.

4. with ``long_input.strategy: sample``: a warning row (it passes): long items are sampled, not judged whole, so
   text in the parts not read reaches the model unchecked (docs/reliability.md).

5. with a ``telemetry`` section: what it turns on, whether the ``/metrics`` endpoint answers with the plugin's
   metrics (it is served by the process that loads the config — run doctor while that process runs), and whether
   the audit log can be appended to.

Prints a table (or ``--json``): endpoint / policy / direction / reasoning → PASS/WARN/FAIL, latency, detail. The verdict
itself is not judged (a benign probe may be flagged by a strict policy); only that a verdict came back. Exit 0 when
every row passes, 1 otherwise, 2 for a config or usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from nemo_csr_rail.cli.guardcfg import EXIT_USAGE, UsageError

PROBE_USER = "Hi! Can you help me track my order?"
PROBE_BOT = "Of course. Please share your order number and I will look it up."


@dataclass
class Row:
    endpoint: str
    check: str
    policy: str = ""
    direction: str = ""
    reasoning: str = ""
    ok: bool = False
    latency_ms: float | None = None
    detail: str = ""
    #: passes, but says something the operator should know (printed WARN; never changes the exit code)
    warning: bool = False


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "doctor", help="check a config's guard endpoints and policies end to end",
        description="Validate the plugin section of a Guardrails config, check every guard endpoint (/v1/models and "
                    "the served model name) and send one real check per policy and mode the rails use.",
        epilog="exit codes: 0 all checks pass, 1 some check failed, 2 config/usage error")
    p.add_argument("--config", required=True, metavar="DIR", help="Guardrails config directory (config.yml)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--timeout", type=float, metavar="S", help="override timeout_s for each check")


def modes(resolved: Any, rails_config: Any, policies: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(policy, direction, reasoning) for each policy/direction the config's flows use."""
    from nemo_csr_rail.policy import Direction
    from nemo_csr_rail.settings import implicit_policy, referenced_policies

    pairs: set[tuple[str, str]] = set()
    for direction, name in referenced_policies(rails_config):
        if name.startswith("$"):
            continue
        pairs.add((name, direction))
    # flows without a $policy use the implicit policy (the only one, or 'default')
    implicit = implicit_policy(policies)
    texts = [str(f) for d in ("input", "output")
             for f in (getattr(getattr(getattr(rails_config, "rails", None), d, None), "flows", None) or [])]
    for t in texts:
        for d in ("input", "output"):
            if t.strip() == f"csr check {d}" and implicit is not None:
                pairs.add((implicit, d))
    if not pairs:  # no flow names a policy (e.g. registered programmatically): probe every policy as input
        pairs = {(name, "input") for name in policies}
    out = []
    for name, d in sorted(pairs, key=lambda x: (list(policies).index(x[0]) if x[0] in policies else 99, x[1])):
        if name in policies:
            policy = policies[name]
            if policy.escalates(Direction(d)):  # reasoning: escalate runs both: the screen and the reasoned check
                out += [(name, d, False), (name, d, True)]
            else:
                out.append((name, d, policy.reasoning(Direction(d))))
    return out


async def _models_check(url: str, want: str, api_key: str | None, verify: Any, timeout: float) -> Row:
    import httpx

    start = time.perf_counter()
    row = Row(endpoint=url, check="models")
    try:
        async with httpx.AsyncClient(verify=verify, timeout=timeout) as client:
            resp = await client.get(url + "/models",
                                    headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        row.latency_ms = (time.perf_counter() - start) * 1000
        if resp.status_code != 200:
            row.detail = f"GET /models answered HTTP {resp.status_code}" + (
                " (check the API key: models[].api_key_env_var)" if resp.status_code in (401, 403) else "")
            return row
        served = [m.get("id") for m in (resp.json().get("data") or []) if isinstance(m, dict)]
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        row.latency_ms = (time.perf_counter() - start) * 1000
        row.detail = f"unreachable: {type(exc).__name__}: {str(exc)[:200]}"
        return row
    if want in served:
        row.ok, row.detail = True, f"serves {want}"
    else:
        row.detail = (f"serves {', '.join(map(str, served)) or 'nothing'}, not {want!r}: fix models[].model in "
                      f"config.yml or start vLLM with --served-model-name {want}")
    return row


async def _embedded_load(engine: Any) -> Row:
    from nemo_csr_rail.errors import CsrError

    row = Row(endpoint=engine.endpoint, check="load")
    start = time.perf_counter()
    try:
        await asyncio.to_thread(engine.load)
        m = engine.load()
        row.ok, row.detail = True, f"loaded {m.path} on {m.device} ({str(m.dtype).removeprefix('torch.')})"
    except CsrError as exc:
        row.detail = f"{exc.kind}: {exc.message}"
    row.latency_ms = (time.perf_counter() - start) * 1000
    return row


async def _policy_check(client: Any, endpoint: str, policy: Any, direction: str, reasoning: bool) -> Row:
    from nemo_csr_rail.errors import CsrError
    from nemo_csr_rail.policy import Direction

    d = Direction(direction)
    shown = "on" if reasoning else "off"
    if policy.escalates(d):
        shown = "escalate: " + ("reasoned" if reasoning else "screen")
    if policy.monitors(d):
        shown += " (monitor)"
    row = Row(endpoint=endpoint, check="policy", policy=policy.name, direction=direction, reasoning=shown)
    start = time.perf_counter()
    try:
        res = await client.check(policy, d, PROBE_USER, PROBE_BOT if d.judged_as is Direction.OUTPUT else None,
                                 reasoning=reasoning)
    except CsrError as exc:
        row.latency_ms = (time.perf_counter() - start) * 1000
        row.detail = f"{exc.kind}: {exc.message}"[:400]
        return row
    except Exception as exc:  # doctor reports, never crashes
        row.latency_ms = (time.perf_counter() - start) * 1000
        row.detail = f"internal error: {type(exc).__name__}: {exc}"[:400]
        return row
    row.latency_ms = res.latency_ms
    v = res.verdict
    label = v.harm(d)
    bits = [f"verdict {label}"]
    if v.confidence is not None:
        bits.append(f"P(harmful)={v.confidence:.3f}")
    if res.prompt_tokens is not None:
        bits.append(f"{res.prompt_tokens} prompt tokens")
    if v.reasoning:
        bits.append(f"reasoning: {v.reasoning[:100]}{'…' if len(v.reasoning) > 100 else ''}")
    row.ok, row.detail = True, "; ".join(bits)
    return row


def _local_host(host: str) -> str:
    h = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"[{h}]" if ":" in h and not h.startswith("[") else h


async def _telemetry_rows(telemetry: Any) -> list[Row]:
    """What the telemetry section turns on, whether the metrics endpoint answers, whether the audit log is writable."""
    import os

    import httpx

    parts = [f"metrics on {telemetry.prometheus_host}:{telemetry.prometheus_port}"
             if telemetry.prometheus_port is not None else "metrics in-process only (no prometheus_port)"]
    if telemetry.audit_log:
        parts.append(f"audit log {telemetry.audit_log} (user/bot text {'on' if telemetry.audit_include_text else 'off'})")
    parts.append("csr.check spans via the OpenTelemetry API (exported when the application installs an SDK)")
    rows = [Row(endpoint="-", check="telemetry", ok=True, detail="; ".join(parts))]
    if telemetry.prometheus_port is not None:
        url = f"http://{_local_host(telemetry.prometheus_host)}:{telemetry.prometheus_port}/metrics"
        row = Row(endpoint=url, check="metrics")
        start = time.perf_counter()
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                resp = await client.get(url)
            series = [ln for ln in resp.text.splitlines() if ln.startswith("csr_")]
            if resp.status_code != 200:
                row.detail = f"answered HTTP {resp.status_code}"
            elif "csr_checks_total" not in resp.text:
                row.detail = "answers, but serves no csr_ metrics: is another program on this port?"
            else:
                row.ok, row.detail = True, f"answers: {len(series)} csr_ series"
        except httpx.HTTPError as exc:
            row.detail = (f"nothing answers ({type(exc).__name__}): the endpoint runs inside the process that loads "
                          "this config (nemoguardrails server or your application); run doctor while it runs")
        row.latency_ms = (time.perf_counter() - start) * 1000
        rows.append(row)
    if telemetry.audit_log:
        path = telemetry.audit_log
        target = path if os.path.exists(path) else os.path.dirname(path) or "."
        writable = os.access(target, os.W_OK)
        rows.append(Row(endpoint=path, check="audit", ok=writable,
                        detail=("appendable" if os.path.exists(path) else "will be created") if writable else
                        f"{target} is not writable by this user: records would be lost (and counted)"))
    return rows


async def diagnose(rails_config: Any, resolved: Any, timeout_s: float | None = None) -> list[Row]:
    from nemo_csr_rail.engines.factory import build_engine
    from nemo_csr_rail.eval.runner import make_client
    from nemo_csr_rail.policy import compile_policies

    s = resolved.plugin
    policies = compile_policies(s)
    plan = modes(resolved, rails_config, policies)
    rows: list[Row] = []
    by_model: dict[str, list[tuple[str, str, bool]]] = {}
    for name, d, r in plan:
        by_model.setdefault(policies[name].model_type, []).append((name, d, r))
    for model_type in sorted({p.model_type for p in policies.values()}):
        if s.engine == "embedded" and model_type == s.model:
            engine = build_engine(resolved, model_type, max_concurrency=1)
            load = await _embedded_load(engine)
            rows.append(load)
            targets = [(engine.endpoint, engine)] if load.ok else []
        else:
            ep = resolved.endpoints[model_type]
            targets = []
            for url in ep.base_urls:
                row = await _models_check(url, ep.model, ep.api_key, ep.verify, timeout_s or max(s.timeout_s, 5.0))
                rows.append(row)
                if row.ok:
                    targets.append((url, build_engine(resolved, model_type, base_urls=[url], max_concurrency=1)))
        for label, engine in targets:
            client = make_client(resolved, model_type, engine=engine, timeout_s=timeout_s or s.timeout_s)
            try:
                for name, d, r in by_model.get(model_type, []):
                    rows.append(await _policy_check(client, label, policies[name], d, r))
            finally:
                await client.aclose()
        if not targets:
            for name, d, r in by_model.get(model_type, []):
                rows.append(Row(endpoint=",".join(resolved.endpoints[model_type].base_urls)
                                if model_type in resolved.endpoints and s.engine != "embedded" else "embedded",
                                check="policy", policy=name, direction=d, reasoning="on" if r else "off",
                                detail="skipped: the guard endpoint is not usable (see above)"))
    sampling = _sampling_row(s.long_input)
    if sampling is not None:
        rows.append(sampling)
    if s.telemetry is not None:
        rows += await _telemetry_rows(s.telemetry)
    return rows


def _sampling_row(long_input: Any) -> Row | None:
    """A warning when ``long_input`` samples long items instead of judging every character."""
    from nemo_csr_rail.long_input import sample_starts
    from nemo_csr_rail.long_items import SAMPLE_MAX_WINDOWS

    if long_input.strategy != "sample":
        return None
    windows = long_input.max_windows or SAMPLE_MAX_WINDOWS
    _, read = sample_starts(1_000_000, long_input.window_chars, windows)
    return Row(endpoint="-", check="long_input", ok=True, warning=True,
               detail=f"strategy: sample judges at most {windows} windows of {long_input.window_chars} characters "
                      f"of a long item: harmful text in the parts not read reaches the model unchecked (of a 1 MB "
                      f"item {read:.1%} is read); strategy: windows judges every character up to "
                      "long_input.max_judged_chars")


def print_table(rows: list[Row], out: TextIO) -> None:
    head = ("ENDPOINT", "CHECK", "POLICY", "DIRECTION", "REASONING", "RESULT", "LATENCY", "DETAIL")
    data = [(r.endpoint, r.check, r.policy or "-", r.direction or "-", r.reasoning or "-",
             ("WARN" if r.warning else "PASS") if r.ok else "FAIL", "-" if r.latency_ms is None else f"{r.latency_ms:.0f} ms", r.detail)
            for r in rows]
    widths = [max(len(h), *(len(str(row[i])) for row in data)) if data else len(h) for i, h in enumerate(head[:-1])]
    for row in (head, *data):
        print("  ".join(str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + str(row[-1]),
              file=out)


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    from nemo_csr_rail.cli.guardcfg import load_resolved

    if args.timeout is not None and args.timeout <= 0:
        print("error: --timeout must be positive", file=err)
        return EXIT_USAGE
    try:
        rails_config, resolved = load_resolved(args.config)
    except UsageError as exc:
        if args.json:
            print(json.dumps({"ok": False, "config_error": str(exc)}), file=out)
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    rows = asyncio.run(diagnose(rails_config, resolved, args.timeout))
    ok = bool(rows) and all(r.ok for r in rows)
    if args.json:
        print(json.dumps({"ok": ok, "config": str(args.config), "engine": resolved.plugin.engine,
                          "checks": [asdict(r) for r in rows]}, ensure_ascii=False), file=out)
    else:
        print_table(rows, out)
        failed = sum(not r.ok for r in rows)
        warnings = sum(r.ok and r.warning for r in rows)
        print(f"\n{'OK' if ok else 'FAILED'}: {len(rows) - failed}/{len(rows)} checks passed"
              + (f" ({warnings} with a warning)" if warnings else ""), file=out)
    return 0 if ok else 1
