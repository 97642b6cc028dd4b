"""``nemo-csr-rail check``: classify one text (or each line of stdin) with a config's policy, as the rail would.

Prints the decision, the model's reasoning, the confidence (P(harmful) from logprobs, when the server returns
them) and the latency; ``--json`` prints one JSON object per checked text instead: the text, ``response`` (with
``--response``) and the check's record (:func:`~nemo_csr_rail.eval.runner.check_record`, shared with ``eval``), whose
``decision`` is ``harmful`` / ``unharmful`` (null when the check failed) and ``direction`` ``input`` / ``output``.

Exit codes (the worst over all texts): 0 every text unharmful, 1 at least one harmful, 2 config or usage error,
3 guard error — the check could not run (unreachable, timeout, HTTP error, malformed answer); fail closed: the
error kind and message are printed, never a traceback. A guard error outranks a harmful verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from nemo_csr_rail.cli.guardcfg import EXIT_GUARD, EXIT_HARMFUL, EXIT_OK, EXIT_USAGE, UsageError

EPILOG = ("exit codes: 0 unharmful, 1 harmful, 2 config/usage error, 3 guard error (the check could not run; fail "
          "closed). With several stdin lines: the worst of them, guard error first.")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "check", help="classify a text (or stdin lines) against a config's policy and print the verdict",
        description="Classify TEXT (a user prompt; with --response, the bot's answer to it) exactly as the rails "
                    "of the config would, and print the verdict, reasoning, confidence and latency.",
        epilog=EPILOG)
    p.add_argument("--config", required=True, metavar="DIR", help="Guardrails config directory (config.yml)")
    p.add_argument("--policy", metavar="NAME",
                   help="policy under custom_data.nemo_csr_rail.policies (default: the only one, or 'default')")
    p.add_argument("--response", metavar="TEXT",
                   help="the bot's answer to TEXT: check the response (output rail) instead of the prompt")
    agent = p.add_argument_group(
        "agent rails (docs/agents.md)", "check what the agent rails check instead; TEXT is then the user message "
        "a tool call answers (optional, stdin is not read)")
    agent.add_argument("--tool-call", metavar="NAME", help="a tool call the model wants to make (judged as its "
                                                            "response to TEXT)")
    agent.add_argument("--arguments", metavar="JSON", help="the tool call's arguments (default: {})")
    agent.add_argument("--tool-result", metavar="TEXT", help="what a tool returned (with --tool-name: which tool)")
    agent.add_argument("--tool-name", metavar="NAME", help="the tool that returned --tool-result")
    agent.add_argument("--document", metavar="TEXT", help="a retrieved document (chunk)")
    p.add_argument("--reasoning", action=argparse.BooleanOptionalAction, default=None,
                   help="force reasoning on/off (default: the policy's setting for this direction)")
    p.add_argument("--json", action="store_true", help="one JSON object per checked text on stdout")
    p.add_argument("--base-url", metavar="URL", help="override the guard endpoint (the vLLM /v1 URL) of the config")
    p.add_argument("--timeout", type=float, metavar="S", help="override timeout_s for each check")
    p.add_argument("text", nargs="?", default="-",
                   help="the user message to check; omitted or '-': check each non-empty line of stdin")


def _texts(args: argparse.Namespace, stdin: TextIO) -> Iterator[str]:
    if args.text != "-":
        yield args.text
        return
    for line in stdin:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def _agent_mode(args: argparse.Namespace) -> str | None:
    """The agent item asked for: ``tool_call``, ``tool_result``, ``retrieval`` or None (a prompt or response)."""
    modes = [m for m, v in (("tool_call", args.tool_call), ("tool_result", args.tool_result),
                            ("retrieval", args.document)) if v is not None]
    if len(modes) > 1:
        raise UsageError("give one of --tool-call, --tool-result, --document")
    mode = modes[0] if modes else None
    if mode is not None and args.response is not None:
        raise UsageError("--response checks a bot answer; it does not go with --tool-call/--tool-result/--document")
    if args.arguments is not None and mode != "tool_call":
        raise UsageError("--arguments goes with --tool-call")
    if args.tool_name is not None and mode != "tool_result":
        raise UsageError("--tool-name goes with --tool-result")
    if mode == "tool_call" and not args.tool_call.strip():
        raise UsageError("--tool-call NAME is empty")
    if mode == "tool_result" and not args.tool_result.strip():
        raise UsageError("--tool-result is empty")
    if mode == "retrieval" and not args.document.strip():
        raise UsageError("--document is empty")
    return mode


async def _agent_check(client: Any, policy: Any, mode: str, args: argparse.Namespace, user: str | None) -> Any:
    if mode == "tool_call":
        return await client.check_tool_call(policy, user, args.tool_call, args.arguments, reasoning=args.reasoning)
    if mode == "tool_result":
        return await client.check_tool_result(policy, user, args.tool_name, args.tool_result,
                                              reasoning=args.reasoning)
    return await client.check_document(policy, user, args.document, reasoning=args.reasoning)


def _agent_fields(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    if mode == "tool_call":
        return {"tool_call": {"name": args.tool_call, "arguments": args.arguments}}
    if mode == "tool_result":
        return {"tool_result": {"name": args.tool_name, "content": args.tool_result}}
    return {"document": args.document}


_JUDGED_AS = {"tool_call": "tool call, judged on response", "tool_result": "tool result, judged on prompt",
              "retrieval": "retrieved document, judged on prompt"}


def _print_human(rec: dict[str, Any], text: str | None, out: TextIO) -> None:
    if text is not None:
        shown = " ".join(text.split())
        print(f"> {shown[:100]}{'…' if len(shown) > 100 else ''}", file=out)
    if rec.get("error"):
        return
    mode = {True: "on", False: "off"}.get(rec["reasoning_mode"], str(rec["reasoning_mode"]))
    what = f"{_JUDGED_AS.get(rec['direction'], rec['judged'])} harm, policy {rec['policy']}, reasoning {mode}"
    print(f"{rec['decision'].upper()}  ({what})", file=out)
    if rec.get("mode") == "monitor":
        print(f"mode: monitor (the rail would {'BLOCK' if rec['would_block'] else 'allow'} this turn; it never "
              "blocks in monitor mode)", file=out)
    esc = rec.get("escalation")
    if esc:
        screen = esc["screen_confidence"]
        print(f"escalation: screen {esc['screen_verdict']}" + (f" P(harmful)={screen:.3f}" if screen is not None
                                                                else "") + f", escalate_at {esc['escalate_at']:g}: "
              + ("escalated, the reasoning-on check decided" if esc["escalated"] and not esc.get("escalation_error")
                 else f"escalation failed ({esc['escalation_error']}), the screen decided"
                 if esc.get("escalation_error") else "not escalated, the screen decided"), file=out)
    if rec["threshold"] is not None:
        print(f"model verdict: {rec['model_label']} (threshold {rec['threshold']:g} on P(harmful))", file=out)
    conf = rec.get("confidence")
    print(f"confidence: {'P(harmful)=' + format(conf, '.3f') if conf is not None else 'n/a (no logprobs)'}", file=out)
    reasoning = rec.get("reasoning")
    print(f"reasoning: {reasoning if reasoning else '(none: reasoning off)' if not rec['reasoning_mode'] else '(none)'}",
          file=out)
    print(f"latency: {rec['latency_ms']:.1f} ms", file=out)


async def _run(args: argparse.Namespace, resolved: Any, policy_name: str, stdin: TextIO, out: TextIO,
               err: TextIO) -> int:
    from nemo_csr_rail.eval.runner import check_decision, check_record, make_client
    from nemo_csr_rail.policy import Direction, compile_policies

    policy = compile_policies(resolved.plugin)[policy_name]
    mode = _agent_mode(args)
    direction = Direction(mode) if mode else Direction.INPUT if args.response is None else Direction.OUTPUT
    refusal = resolved.plugin.error_refusal
    client = make_client(resolved, policy.model_type, base_url=args.base_url, timeout_s=args.timeout, concurrency=4)
    worst = EXIT_OK
    many = args.text == "-" and mode is None
    texts = _texts(args, stdin) if mode is None else iter([None if args.text == "-" else args.text])
    try:
        for text in texts:
            start = time.perf_counter()
            try:
                if mode is not None:
                    result = await _agent_check(client, policy, mode, args, text)
                else:
                    result = await client.check(policy, direction, text, args.response, reasoning=args.reasoning)
                decision = check_decision(policy, direction, args.reasoning, result, error_refusal=refusal)
            except Exception as exc:  # fail closed, with the kind and message, never a traceback
                decision = check_decision(policy, direction, args.reasoning, error=exc, error_refusal=refusal,
                                          latency_ms=(time.perf_counter() - start) * 1000)
            rec = check_record(decision)
            rec["decision"] = rec.pop("predicted")
            if args.json:
                extra = _agent_fields(mode, args) if mode is not None else (
                    {"response": args.response} if args.response is not None else {})
                print(json.dumps({"text": text, **extra, **rec}, ensure_ascii=False), file=out, flush=True)
            else:
                _print_human(rec, text if many else None, out)
                out.flush()
            if rec["error"]:
                if not args.json:
                    print(f"guard error ({rec['error']['kind']}): {rec['error']['message']}", file=err, flush=True)
                worst = EXIT_GUARD
            elif rec["decision"] == "harmful" and worst == EXIT_OK:
                worst = EXIT_HARMFUL
    finally:
        await client.aclose()
    return worst


def run(args: argparse.Namespace, *, stdin: TextIO | None = None, out: TextIO | None = None,
        err: TextIO | None = None) -> int:
    stdin, out, err = stdin or sys.stdin, out or sys.stdout, err or sys.stderr
    try:
        if args.text != "-" and not args.text.strip():
            raise UsageError("TEXT is empty")
        _agent_mode(args)  # usage errors first
        if args.response is not None and not args.response.strip():
            raise UsageError("--response is empty")
        if args.timeout is not None and args.timeout <= 0:
            raise UsageError("--timeout must be positive")
        from nemo_csr_rail.cli.guardcfg import default_policy, load_resolved
        from nemo_csr_rail.directions import TOPIC_ONLY
        from nemo_csr_rail.policy import compile_policies

        _, resolved = load_resolved(args.config)
        policies = compile_policies(resolved.plugin)
        name = default_policy(policies, args.policy)
        if args.response is not None and policies[name].kind == "topic":
            raise UsageError(f"policy {name!r} {TOPIC_ONLY} (drop --response)")
        if _agent_mode(args) is not None and policies[name].kind == "topic":
            raise UsageError(f"policy {name!r} {TOPIC_ONLY}, not tool calls, tool results or documents")
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    return asyncio.run(_run(args, resolved, name, stdin, out, err))
