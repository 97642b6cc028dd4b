"""Runs a labelled dataset through the guard: bounded concurrency, one record per check appended as it completes.

A *unit* is one (run, row, direction): a row with a ``prompt_label`` gets an input check (user turn only, as the
input rail sends it), a row with a ``response_label`` an output check (user + bot turn, as the output rail sends
it). Each finished unit is appended to ``rows.jsonl`` and flushed at once, so an interrupted run loses at most the
checks in flight; on restart, units already in the file are not sent again. ``run.json`` pins what the records
mean (dataset, policies, modes, endpoint, model): resuming into a directory made with different settings is
refused rather than mixed.

The guard is called through :class:`~nemo_csr_rail.client.CsrClient` with the config's own settings (prompt
layout, structured output, prefill, logprobs, timeout, retries) and no verdict cache, so the numbers are those of
the rails, and repeated texts are really re-checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from nemo_csr_rail.client import CheckResult, CsrClient
from nemo_csr_rail.completion import Engine
from nemo_csr_rail.coverage import multi_turn_text
from nemo_csr_rail.decision import Coverage, Decision, on_error_for
from nemo_csr_rail.engines.factory import build_engine
from nemo_csr_rail.errors import ConfigError, CsrError
from nemo_csr_rail.eval.datasets import AGENT_DIRECTIONS, DIRECTION_OF, DIRECTIONS, JUDGED, Dataset, Row
from nemo_csr_rail.policy import Direction, Policy, compile_policies
from nemo_csr_rail.settings import DEFAULT_ERROR_REFUSAL, ResolvedSettings

ROWS_FILE = "rows.jsonl"
RUN_FILE = "run.json"


class RunError(Exception):
    """The run cannot start as asked (settings clash with an existing output directory, unknown policy …)."""


@dataclass(frozen=True)
class RunSpec:
    """One setting of the guard to evaluate. ``reasoning=None`` keeps each policy's own per-direction mode;
    ``"escalate"`` screens with reasoning off and reasons only where the screen may be harmful."""

    name: str
    policy: str
    reasoning: bool | Literal["escalate"] | None = None
    base_url: str | None = None
    force_policy: bool = False  # True: ignore per-row policies (the policy under comparison applies to every row)

    def describe(self) -> str:
        mode = {None: "policy default", True: "on", False: "off", "escalate": "escalate"}[self.reasoning]
        return f"policy={self.policy}, reasoning={mode}" + (f", endpoint={self.base_url}" if self.base_url else "")


# ---------------------------------------------------------------------------------------------------- the guard
def endpoint_label(resolved: ResolvedSettings, model_type: str, base_url: str | None) -> str:
    s = resolved.plugin
    if base_url:
        return base_url.rstrip("/")
    if s.engine == "embedded" and model_type == s.model:
        return "embedded:" + (s.embedded.model_path or model_name(resolved, model_type))
    return ",".join(resolved.endpoints[model_type].base_urls)


def model_name(resolved: ResolvedSettings, model_type: str) -> str:
    ep = resolved.endpoints.get(model_type)
    return ep.model if ep is not None else str(resolved.plugin.embedded.model_path)


def make_client(resolved: ResolvedSettings, model_type: str, *, base_url: str | None = None,
                timeout_s: float | None = None, concurrency: int = 16, engine: Engine | None = None) -> CsrClient:
    """A client with the config's settings and no cache (every check reaches the model)."""
    engine = engine or build_engine(resolved, model_type, base_urls=[base_url] if base_url else None,
                                    max_concurrency=max(concurrency, 1))
    return CsrClient.from_settings(resolved.plugin, engine, timeout_s=timeout_s)


def check_decision(policy: Policy, direction: Direction, reasoning: bool | None, result: CheckResult | None = None,
                   error: BaseException | None = None, latency_ms: float | None = None, *,
                   error_refusal: str = DEFAULT_ERROR_REFUSAL) -> Decision:
    """The rail's decision on one check of ``check`` or ``eval``: the policy's on a verdict (``reasoning``: the mode
    the check was forced to, None for the policy's own), or ``on_error``'s on a failure (any exception; one that is
    not a :class:`CsrError` is an ``internal_error``)."""
    if error is None:
        assert result is not None
        return Decision.from_result(policy, direction, result, reasoning=reasoning)
    if not isinstance(error, CsrError):
        error = CsrError(f"{type(error).__name__}: {error}")
    return Decision.from_error(policy.name, direction, error, on_error=on_error_for(error, policy.on_error),
                               latency_ms=latency_ms, error_refusal=error_refusal, threshold=policy.threshold,
                               reasoning_mode=policy.reasoning(direction) if reasoning is None else reasoning)


def check_record(decision: Decision) -> dict[str, Any]:
    """The JSON record of one check, shared by ``eval``'s rows.jsonl and ``check --json``: the decision's own
    :meth:`~Decision.to_record` (``direction`` is ``input`` / ``output``, the canonical name) plus ``predicted``
    (``harmful`` / ``unharmful``, the policy's answer with its threshold; null when the check failed) and ``judged``
    (``prompt`` / ``response``: the value ``direction`` had before it used the rails' names, kept for old readers)."""
    rec = decision.to_record()
    harmful = decision.harmful
    rec["predicted"] = None if harmful is None else "harmful" if harmful else "unharmful"
    rec["judged"] = JUDGED[decision.direction]
    return rec


def legacy_record(rec: dict[str, Any]) -> dict[str, Any]:
    """A record as written before directions were ``input`` / ``output`` (``direction: prompt``), in today's
    names; a current record is returned as it is."""
    d = rec.get("direction")
    if d in DIRECTION_OF:
        rec = {**rec, "direction": DIRECTION_OF[d].value, "judged": d}
    return rec


async def _agent_check(client: CsrClient, policy: Policy, direction: Direction, row: Row,
                       reasoning: bool | None) -> CheckResult:
    """An agent row checked as the rails check it (docs/agents.md)."""
    user = row.prompt or None
    if direction is Direction.TOOL_CALL:
        call = row.tool_call or {}
        return await client.check_tool_call(policy, user, call.get("name", ""), call.get("arguments"),
                                            reasoning=reasoning)
    if direction is Direction.TOOL_RESULT:
        res = row.tool_result or {}
        return await client.check_tool_result(policy, user, res.get("name"), res.get("content"), reasoning=reasoning)
    return await client.check_document(policy, user, row.document, reasoning=reasoning)


# ------------------------------------------------------------------------------------------------------ the run
@dataclass
class Unit:
    run: str
    row: Row
    direction: Direction

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.run, self.row.id, self.direction.value)


@dataclass
class RunResult:
    records: list[dict[str, Any]]
    sent: int
    resumed: int
    elapsed_s: float
    interrupted: bool = False
    settings: dict[str, Any] = field(default_factory=dict)


def _policy_fingerprint(p: Policy) -> str:
    return hashlib.sha256(json.dumps(asdict(p), sort_keys=True, default=str).encode()).hexdigest()[:16]


class Runner:
    def __init__(self, resolved: ResolvedSettings, dataset: Dataset, specs: Sequence[RunSpec], out_dir: str | Path, *,
                 concurrency: int = 8, limit: int | None = None, timeout_s: float | None = None,
                 progress: bool = True, retry_errors: bool = False, overwrite: bool = False,
                 engines: dict[tuple[str, str], Engine] | None = None,
                 on_record: Callable[[dict[str, Any]], None] | None = None) -> None:
        if concurrency < 1:
            raise RunError("--concurrency must be at least 1")
        if limit is not None and limit < 1:
            raise RunError("--limit must be at least 1")
        if len({s.name for s in specs}) != len(specs):
            raise RunError("run names must be unique")
        self.resolved = resolved
        self.dataset = dataset
        self.specs = list(specs)
        self.out = Path(out_dir)
        self.concurrency = concurrency
        self.limit = limit
        self.timeout_s = timeout_s
        self.progress = progress
        self.retry_errors = retry_errors
        self.overwrite = overwrite
        self.on_record = on_record
        self.policies = compile_policies(resolved.plugin)
        self.rows = dataset.rows[:limit] if limit else list(dataset.rows)
        for spec in self.specs:
            if spec.policy not in self.policies:
                raise RunError(f"unknown policy {spec.policy!r}; the config defines: {', '.join(sorted(self.policies))}")
        unknown = sorted({r.policy for r in self.rows if r.policy and r.policy not in self.policies})
        if unknown:
            raise RunError(f"dataset rows name unknown policies {unknown}; the config defines: "
                           f"{', '.join(sorted(self.policies))}")
        self._engines = dict(engines or {})
        self._clients: dict[tuple[str, str], CsrClient] = {}

    # -- settings ------------------------------------------------------------------------------------------
    def policy_for(self, spec: RunSpec, row: Row) -> Policy:
        """The policy a row is judged with. ``eval`` measures what the policy decides, so a policy in monitor mode
        is evaluated as if enforced (its would-be blocks are its predictions)."""
        name = spec.policy if (spec.force_policy or not row.policy) else row.policy
        return self.policies[name]

    def run_settings(self, spec: RunSpec) -> dict[str, Any]:
        pol = self.policies[spec.policy]
        mt = pol.model_type
        # the agent directions are listed when the rows use them (the card's two, always)
        used = [d for d in DIRECTIONS if d not in AGENT_DIRECTIONS or any(r.label(d) for r in self.rows)]
        modes = {d: (pol.reasoning_mode(DIRECTION_OF[d]) if spec.reasoning is None else spec.reasoning)
                 for d in used}
        row_policies = sorted({r.policy for r in self.rows if r.policy} - {spec.policy}) if not spec.force_policy else []
        return {
            "name": spec.name,
            "description": spec.describe(),
            "policy": spec.policy,
            "policy_kind": pol.kind,
            "row_policies": row_policies,
            "reasoning": spec.reasoning,
            "reasoning_mode": modes,
            "threshold": pol.threshold,
            "endpoint": endpoint_label(self.resolved, mt, spec.base_url),
            "model": model_name(self.resolved, mt),
            "timeout_s": self.timeout_s or self.resolved.plugin.timeout_s,
            "structured_output": self.resolved.plugin.structured_output,
            "assistant_prefill": self.resolved.plugin.assistant_prefill,
            "logprobs": self.resolved.plugin.logprobs,
            "dataset": str(Path(self.dataset.path).resolve()),
            "format": self.dataset.format,
            "limit": self.limit,
            "concurrency": self.concurrency,
        }

    def _identity(self) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        runs = []
        for spec in self.specs:
            pol = self.policies[spec.policy]
            used = {self.policy_for(spec, r).name for r in self.rows} | {spec.policy}
            runs.append({
                "name": spec.name, "policy": spec.policy, "reasoning": spec.reasoning, "force_policy": spec.force_policy,
                "endpoint": endpoint_label(self.resolved, pol.model_type, spec.base_url),
                "model": model_name(self.resolved, pol.model_type),
                "policies": {n: _policy_fingerprint(self.policies[n]) for n in sorted(used)},
            })
        s = self.resolved.plugin
        return {"version": 1, "dataset": str(Path(self.dataset.path).resolve()), "format": self.dataset.format,
                "runs": runs, "prompting": {"structured_output": s.structured_output,
                                            "assistant_prefill": s.assistant_prefill, "logprobs": s.logprobs,
                                            "reasoning_max_tokens": s.reasoning_max_tokens}}

    # -- resume --------------------------------------------------------------------------------------------
    def _prepare_out(self) -> list[dict[str, Any]]:
        self.out.mkdir(parents=True, exist_ok=True)
        rows_path, run_path = self.out / ROWS_FILE, self.out / RUN_FILE
        ident = self._identity()
        if self.overwrite:
            for p in (rows_path, run_path):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        if run_path.exists() and rows_path.exists():
            try:
                old = json.loads(run_path.read_text())
            except ValueError:
                raise RunError(f"{run_path} is not valid JSON; use another --out or --overwrite") from None
            if old != ident:
                changed = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
                raise RunError(f"{self.out} holds a run with different settings ({', '.join(changed)} changed); "
                               "use another --out, or --overwrite to discard it")
        elif rows_path.exists() and rows_path.stat().st_size > 0:
            raise RunError(f"{rows_path} exists without {RUN_FILE}; use another --out or --overwrite")
        run_path.write_text(json.dumps(ident, indent=2) + "\n")
        return self._read_rows(rows_path)

    def _read_rows(self, path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            path.touch()
            return []
        lines = path.read_bytes().splitlines(keepends=True)
        records: list[dict[str, Any]] = []
        offset = 0
        for i, line in enumerate(lines):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("no newline")
                rec = json.loads(line) if line.strip() else None
                if rec is not None and not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError:
                if i == len(lines) - 1:  # a record cut short by the interruption: drop it, it will be re-sent
                    with open(path, "r+b") as f:
                        f.truncate(offset)
                    break
                raise RunError(f"{path}: line {i + 1} is not a JSON record; fix or remove it, or use --overwrite") from None
            if rec is not None:
                records.append(legacy_record(rec))
            offset += len(line)
        if self.retry_errors and any(r.get("error") is not None for r in records):
            records = [r for r in records if r.get("error") is None]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            os.replace(tmp, path)
        return records

    # -- scoring -------------------------------------------------------------------------------------------
    def units(self) -> list[Unit]:
        return [Unit(spec.name, row, DIRECTION_OF[d]) for spec in self.specs for row in self.rows for d in DIRECTIONS
                if row.label(d) is not None]

    def _client(self, spec: RunSpec, model_type: str) -> CsrClient:
        key = (spec.name, model_type)
        if key not in self._clients:
            self._clients[key] = make_client(self.resolved, model_type, base_url=spec.base_url,
                                             timeout_s=self.timeout_s, concurrency=self.concurrency,
                                             engine=self._engines.get(key))
        return self._clients[key]

    async def _score(self, spec: RunSpec, unit: Unit) -> dict[str, Any]:
        row, d = unit.row, unit.direction
        policy = self.policy_for(spec, row)
        forced: bool | None = None if spec.reasoning == "escalate" else spec.reasoning  # type: ignore[assignment]
        if spec.reasoning == "escalate":  # the policy as if it said reasoning: escalate in both directions
            policy = replace(policy, reasoning_input=False, reasoning_output=False, escalate_input=True,
                             escalate_output=True, reasoning_tool_call=None, reasoning_tool_result=None,
                             reasoning_retrieval=None)
        client = self._client(spec, policy.model_type)
        bot = row.response if d is Direction.OUTPUT else None
        refusal = self.resolved.plugin.error_refusal
        start = time.perf_counter()
        try:
            if d.value in AGENT_DIRECTIONS:
                result = await _agent_check(client, policy, d, row, forced)
            else:
                joined = multi_turn_text(policy, [t.text for t in row.history if t.role == "user"] + [row.prompt]) \
                    if d is Direction.INPUT else None
                if joined is not None:
                    return await self._score_multi_turn(spec, unit, policy, client, forced, joined)
                result = await client.check(policy, d, row.prompt, bot, reasoning=forced, history=row.history)
            decision = check_decision(policy, d, forced, result, error_refusal=refusal)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure is a counted error row, never a dropped or scored one
            decision = check_decision(policy, d, forced, error=exc, error_refusal=refusal,
                                      latency_ms=(time.perf_counter() - start) * 1000)
        return {"run": spec.name, "id": row.id, "label": row.label(d), **check_record(decision)}

    async def _score_multi_turn(self, spec: RunSpec, unit: Unit, policy: Policy, client: CsrClient,
                                forced: bool | None, joined: tuple[str, int]) -> dict[str, Any]:
        """A multi-turn row under a ``multi_turn`` policy, judged as the input rail judges it (docs/coverage.md):
        the last user message alone and the last N user turns together, concurrently; harmful if either is. The
        record is the deciding check's, with ``coverage.multi_turn`` saying how many turns were joined."""
        row = unit.row
        refusal = self.resolved.plugin.error_refusal
        start = time.perf_counter()
        texts = (row.prompt, joined[0])
        results = await asyncio.gather(*(client.check(policy, Direction.INPUT, t, None, reasoning=forced)
                                         for t in texts), return_exceptions=True)
        elapsed = (time.perf_counter() - start) * 1000
        decisions = []
        for r in results:
            if isinstance(r, asyncio.CancelledError):
                raise r
            if isinstance(r, BaseException):
                decisions.append(check_decision(policy, Direction.INPUT, forced, error=r, error_refusal=refusal,
                                                 latency_ms=elapsed))
            else:
                decisions.append(check_decision(policy, Direction.INPUT, forced, r, error_refusal=refusal))
        single, whole = decisions
        deciding = next((x for x in (single, whole) if x.harmful), None) or next(
            (x for x in (single, whole) if x.failed), single)
        index = len(row.history)
        coverage = Coverage(mode=policy.coverage, messages=index + 1, judged=2, guard=2, cached=0,
                            blocked_index=index if deciding.harmful else None,
                            blocked_role="user" if deciding.harmful else None, multi_turn=joined[1])
        return {"run": spec.name, "id": row.id, "label": row.label(Direction.INPUT),
                **check_record(deciding.with_coverage(coverage))}

    async def _run_async(self, todo: list[Unit], sink: Any, bar: Any) -> int:
        specs = {s.name: s for s in self.specs}
        queue: asyncio.Queue[Unit] = asyncio.Queue()
        for u in todo:
            queue.put_nowait(u)
        done = 0
        errors = 0

        async def worker() -> None:
            nonlocal done, errors
            while True:
                try:
                    unit = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                rec = await self._score(specs[unit.run], unit)
                sink.write(json.dumps(rec, ensure_ascii=False) + "\n")
                sink.flush()
                done += 1
                if rec["error"] is not None:
                    errors += 1
                if self.on_record is not None:
                    self.on_record(rec)
                if bar is not None:
                    bar.update(1)
                    if errors:
                        bar.set_postfix(errors=errors, refresh=False)

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.concurrency, max(len(todo), 1)))))
        finally:
            for c in self._clients.values():
                with contextlib.suppress(Exception):
                    await c.aclose()
        return done

    def run(self) -> RunResult:
        existing = self._prepare_out()
        have = {(r.get("run"), r.get("id"), r.get("direction")) for r in existing}
        units = self.units()
        todo = [u for u in units if u.key not in have]
        resumed = len(units) - len(todo)
        bar = _progress(len(units), resumed, self.progress)
        start = time.perf_counter()
        interrupted = False
        sent = 0
        new: list[dict[str, Any]] = []

        def collect(rec: dict[str, Any]) -> None:
            new.append(rec)

        user_cb = self.on_record
        self.on_record = (lambda r: (collect(r), user_cb(r))) if user_cb else collect  # type: ignore[assignment,func-returns-value]
        try:
            with open(self.out / ROWS_FILE, "a", encoding="utf-8") as sink:
                if todo:
                    sent = asyncio.run(self._run_async(todo, sink, bar))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.on_record = user_cb
            if bar is not None:
                bar.close()
        wanted = {u.key for u in units}
        merged: dict[tuple[str, str, str], dict[str, Any]] = {}
        for r in [*existing, *new]:
            k = (r.get("run"), r.get("id"), r.get("direction"))
            if k in wanted:
                merged[k] = r  # type: ignore[index]
        order = {u.key: i for i, u in enumerate(units)}
        records = sorted(merged.values(), key=lambda r: order[(r["run"], r["id"], r["direction"])])
        return RunResult(records, len(new) if interrupted else sent, resumed, time.perf_counter() - start,
                         interrupted, {s.name: self.run_settings(s) for s in self.specs})


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the 'eval' extra; without it, no bar
        return None
    return tqdm(total=total, initial=initial, desc="eval", unit="check", file=sys.stderr, dynamic_ncols=True,
                mininterval=0.2)


def records_by(records: Iterable[dict[str, Any]], run: str, direction: str | Direction) -> list[dict[str, Any]]:
    """The records of one run and direction (``input`` / ``output``, or the label's name ``prompt`` / ``response``)."""
    want = DIRECTION_OF.get(direction, direction)  # type: ignore[call-overload]
    return [r for r in records if r["run"] == run and r["direction"] == want]


__all__ = ["ROWS_FILE", "RUN_FILE", "ConfigError", "RunError", "RunResult", "RunSpec", "Runner", "check_decision",
           "check_record", "legacy_record", "make_client", "records_by"]
