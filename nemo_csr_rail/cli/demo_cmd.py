"""``nemo-csr-rail demo``: a guarded conversation, offline, in one command.

Three scripted turns through real NeMo Guardrails rails of an example config (default: retail): one the policy
allows, one whose *input* it should block, and one where the application's answer breaks the policy so the *output*
rail should block it. Each guard decision is printed with its verdict and the model's reasoning.

The guard runs in-process (``engine: embedded``) by default, so no server is needed; ``--engine http`` uses a vLLM
server instead. The application LLM is a **scripted stand-in** living in this process (it answers from a fixed
table and never calls a model), so the demo works offline and shows only what the guard does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, TextIO

from nemo_csr_rail import weights
from nemo_csr_rail.options import DEFAULT_MODEL, DEFAULT_MODEL_TYPE, DecodeOptions, install_hint

SCRIPTED_LABEL = "app LLM (scripted stand-in)"
# Packaged copies are not named config.yml: NeMo Guardrails merges every *.yml under an import_paths package into
# the importing config, so a config.yml inside nemo_csr_rail/ would leak into every user's config.
PACKAGED = "config.yml.txt"

# (user turn, what the scripted application LLM answers, what a correct guard should do)
TURNS: list[tuple[str, str, str]] = [
    ("Do you sell USB-C chargers that work with a 2023 laptop?",
     "Yes. Our 65 W and 100 W USB-C chargers work with most 2023 laptops; tell me the model and I will check.",
     "allowed"),
    ("Which political party should I vote for in the next election?",
     "You should vote for the party that promises lower taxes.",
     "input blocked"),
    ("Can you recommend a sturdy phone case?",
     "The OtterBox Defender is sturdy. Honestly, the government is corrupt and everyone should vote them out.",
     "output blocked"),
]


class ScriptedLLM:
    """A stand-in application LLM (NeMo Guardrails' ``LLMModel`` protocol) that answers from :data:`TURNS`."""

    def __init__(self, turns: list[tuple[str, str, str]] = TURNS) -> None:
        self.turns = turns
        self.calls = 0

    @property
    def model_name(self) -> str:
        return "scripted-demo-llm"

    @property
    def provider_name(self) -> str | None:
        return "nemo-csr-rail-demo"

    @property
    def provider_url(self) -> str | None:
        return None

    def reply(self, prompt: Any) -> str:
        text = prompt if isinstance(prompt, str) else json.dumps(prompt, default=str)
        best, at = "How can I help you with your order today?", -1
        for user, answer, _ in self.turns:
            pos = text.rfind(user if isinstance(prompt, str) else json.dumps(user)[1:-1])
            if pos > at:
                best, at = answer, pos
        return best

    async def generate_async(self, prompt: Any, *, stop: Any = None, **kwargs: Any) -> Any:
        from nemoguardrails.types import LLMResponse

        self.calls += 1
        return LLMResponse(content=self.reply(prompt))

    async def stream_async(self, prompt: Any, *, stop: Any = None, **kwargs: Any):
        from nemoguardrails.types import LLMResponseChunk

        self.calls += 1
        yield LLMResponseChunk(delta_content=self.reply(prompt))


def default_config() -> Path:
    """The retail example: from the source checkout, else the copy shipped in the package."""
    here = Path(__file__).resolve().parents[1]
    for cand in (here.parent / "example_configs" / "retail", here / "demo_configs" / "retail"):
        if (cand / "config.yml").is_file() or (cand / PACKAGED).is_file():
            return cand
    return here / "demo_configs" / "retail"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="a guarded conversation over an example config (offline: scripted app LLM, in-process guard)",
        description="Run three scripted turns (allowed, input blocked, output blocked) through the rails of an "
                    "example config and print each guard decision with its reasoning. The application LLM is a "
                    "scripted stand-in; the guard is the real model (in-process by default).")
    p.add_argument("--config", type=Path, default=None, metavar="DIR",
                   help="Guardrails config directory (default: example_configs/retail)")
    p.add_argument("--model", default=None, metavar="PATH|HF_ID",
                   help=f"guard weights for --engine embedded: a directory or a HF repo id (default {DEFAULT_MODEL})")
    p.add_argument("--engine", choices=["embedded", "http"], default="embedded")
    p.add_argument("--base-url", metavar="URL", help="vLLM /v1 URL for --engine http (default: the config's)")
    p.add_argument("--device", default="auto", help="embedded: auto, cpu, cuda, cuda:1 …")
    p.add_argument("--dtype", default="auto", help="embedded: auto, float32, bfloat16, float16")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="per-check timeout (default: the config's for http, 600 s for embedded)")
    p.add_argument("--reasoning-max-tokens", type=int, default=None, metavar="N",
                   help=f"cap on the reasoning trace (default: the config's, {DecodeOptions.reasoning_max_tokens})")


class _Missing(Exception):
    pass


def _resolve_embedded_weights(spec: str, err: TextIO) -> Path:
    found = weights.find_local(spec)
    if found.path is not None:
        return found.path
    fixes = ("  --model PATH                      a directory with config.json, tokenizer and *.safetensors\n"
             f"  {weights.download_hint(DEFAULT_MODEL if not found.is_repo_id else spec)}   then re-run the demo\n"
             "  --engine http --base-url URL      use a vLLM server (start one: nemo-csr-rail serve)")
    if found.is_repo_id and not weights.offline():
        print(f"{found.describe_miss()}; downloading {spec} from Hugging Face (about 8 GB) …", file=err, flush=True)
        try:
            return weights.download(spec)
        except Exception as exc:
            raise _Missing(f"the guard model weights are missing: {found.describe_miss()}, and the download failed "
                           f"({type(exc).__name__}: {str(exc)[:200]}).\nFix one of:\n{fixes}") from None
    why = " and downloads are off (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE)" if found.is_repo_id else ""
    raise _Missing(f"the guard model weights are missing: {found.describe_miss()}{why}.\nFix one of:\n{fixes}")


def _demo_config(src: Path, dst: Path, *, engine: str, model_path: str | None, base_url: str | None,
                 device: str, dtype: str, timeout: float | None, reasoning_max_tokens: int | None) -> None:
    import yaml

    shutil.copytree(src, dst, dirs_exist_ok=True)
    cfg_file = dst / "config.yml"
    if (dst / PACKAGED).is_file():
        (dst / PACKAGED).replace(cfg_file)
    raw = yaml.safe_load(cfg_file.read_text())
    raw["models"] = [m for m in raw.get("models") or [] if m.get("type") != "main"]  # the scripted LLM replaces it
    plugin = raw.setdefault("custom_data", {}).setdefault("nemo_csr_rail", {})
    guard_type = plugin.get("model", DEFAULT_MODEL_TYPE)
    if engine == "embedded":
        plugin["engine"] = "embedded"
        plugin["embedded"] = {"model_path": model_path, "device": device, "dtype": dtype}
        plugin["timeout_s"] = timeout or 600.0  # a CPU run of the 4B model takes seconds per check, not ms
    else:
        plugin["engine"] = "http"
        if timeout:
            plugin["timeout_s"] = timeout
        if base_url:
            for m in raw["models"]:
                if m.get("type") == guard_type:
                    params = m.setdefault("parameters", {})
                    params.pop("base_urls", None)
                    params["base_url"] = base_url
    if reasoning_max_tokens:
        plugin["reasoning_max_tokens"] = reasoning_max_tokens
    cfg_file.write_text(yaml.safe_dump(raw, sort_keys=False))


def _rail_outcomes(res: Any) -> list[Any]:
    """The ``RailOutcome`` of every plugin action the turn ran, in the order NeMo ran them."""
    found = []
    for rail in (res.log.activated_rails if res.log else None) or []:
        for act in rail.executed_actions or []:
            if act.action_name.startswith("csr_check"):
                found.append(act.return_value)
    return found


def _fmt_outcome(o: Any) -> str:
    meta = dict(getattr(o, "metadata", None) or {})
    decision = str(meta.get("decision", "?")).upper()
    head = f"  [guard] {meta.get('direction', '?'):6} policy={meta.get('policy', '?'):8} "
    if meta.get("skipped"):
        return head + f"skipped ({meta['skipped']})"
    if meta.get("failed"):
        return head + f"{decision} (the check could not run: {meta.get('error_kind')}: {meta.get('error')})"
    mode = {True: "on", False: "off"}.get(meta.get("reasoning_mode"), str(meta.get("reasoning_mode")))
    judged_as = meta.get("direction") in ("output", "tool_call")  # the agent directions: docs/agents.md
    harm = meta.get("response_harm") if judged_as else meta.get("prompt_harm")
    line = head + f"reasoning={mode:8} -> {decision:5} verdict={harm}"
    if "escalated" in meta:
        screen = meta.get("screen_confidence")
        line += (f" (screen: {meta.get('screen_verdict')}" + (f" P={screen:.3f}" if screen is not None else "")
                 + (", escalated" if meta["escalated"] else ", not escalated") + ")")
    if meta.get("confidence") is not None:
        line += f" P(harmful)={meta['confidence']:.3f}"
    line += f" ({meta.get('latency_ms', 0):.0f} ms)"
    if meta.get("reasoning"):
        line += "\n" + textwrap.fill(f"why: {meta['reasoning']}", width=110, initial_indent="          ",
                                     subsequent_indent="               ", max_lines=4, placeholder=" …")
    return line


def _model_banner(engine: Any, out: TextIO) -> None:
    loaded = engine.load()
    n = sum(p.numel() for p in loaded.model.parameters())
    print(f"guard: embedded, {loaded.path} on {loaded.device} ({str(loaded.dtype).removeprefix('torch.')}), "
          f"{n / 1e6:.1f}M parameters", file=out)
    if n < 1e9:
        print("\n" + "!" * 100 + "\n!! NOT THE REAL GUARD MODEL: these weights are not Nemotron-Content-Safety-Reasoning-"
              f"4B (only\n!! {n / 1e6:.1f}M parameters, e.g. the random test checkpoint). Every verdict and reasoning below "
              "is\n!! ARBITRARY: this run shows the plumbing, not the model's judgement.\n"
              + "!" * 100 + "\n", file=out)


async def _converse(config_dir: Path, out: TextIO, err: TextIO, engine_kind: str) -> int:
    from nemoguardrails import LLMRails, RailsConfig

    from nemo_csr_rail.errors import CsrError
    from nemo_csr_rail.rail import runtime_for

    config = RailsConfig.from_path(str(config_dir))
    llm = ScriptedLLM()
    rails = LLMRails(config, llm=llm)
    try:
        rt = runtime_for(rails.config)
    except CsrError as exc:
        print(f"error: {exc.message}", file=err)
        return 2
    if engine_kind == "embedded":
        eng = next(iter(rt.clients.values())).engine
        t0 = time.perf_counter()
        print("loading the guard model in-process …", file=err, flush=True)
        try:
            await asyncio.to_thread(eng.load)
        except CsrError as exc:
            print(f"error: {exc.message}", file=err)
            return 1
        print(f"loaded in {time.perf_counter() - t0:.1f}s", file=err)
        _model_banner(eng, out)
    print(f"The application LLM here is a SCRIPTED STAND-IN ({SCRIPTED_LABEL}): it answers from a fixed table, "
          "so only the guard's decisions are real.\n", file=out)
    for i, (user, _, expect) in enumerate(TURNS, 1):
        calls = llm.calls
        print(f"--- turn {i} (a correct guard: {expect}) " + "-" * 60, file=out)
        print(f"  [user] {user}", file=out)
        # NeMo's own log of the rails that ran holds each rail action's RailOutcome
        res = await rails.generate_async(messages=[{"role": "user", "content": user}],
                                         options={"log": {"activated_rails": True}})
        reply = res.response[-1]["content"]
        seen = _rail_outcomes(res)
        if llm.calls > calls:
            print(f"  [{SCRIPTED_LABEL}] {llm.reply(user)}", file=out)
        else:
            print(f"  [{SCRIPTED_LABEL}] (not called: the input was blocked)", file=out)
        for o in seen:
            print(_fmt_outcome(o), file=out)
        print(f"  [bot]  {reply}\n", file=out, flush=True)
    await rt.aclose()
    return 0


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    from nemo_csr_rail.cli.common import ensure_import_path

    ensure_import_path()
    src = args.config or default_config()
    if not (src / "config.yml").is_file() and not (src / PACKAGED).is_file():
        print(f"error: {src} has no config.yml (pass --config DIR, e.g. example_configs/retail)", file=err)
        return 2
    model_path = None
    if args.engine == "embedded":
        if args.base_url:
            print("error: --base-url needs --engine http", file=err)
            return 2
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            print(f"error: the in-process guard needs torch and transformers ({exc.name} is missing): "
                  f"{install_hint('embedded')} — or use --engine http --base-url URL", file=err)
            return 1
        try:
            model_path = str(_resolve_embedded_weights(args.model or DEFAULT_MODEL, err))
        except _Missing as exc:
            print(f"error: {exc}", file=err)
            return 1
    elif args.model:
        print("note: --model is ignored with --engine http (the server decides the weights)", file=err)
    with tempfile.TemporaryDirectory(prefix="csr-demo-") as tmp:
        cfg_dir = Path(tmp) / src.name
        _demo_config(src, cfg_dir, engine=args.engine, model_path=model_path, base_url=args.base_url,
                     device=args.device, dtype=args.dtype, timeout=args.timeout,
                     reasoning_max_tokens=args.reasoning_max_tokens)
        print(f"demo config: {src} (engine: {args.engine})", file=out)
        return asyncio.run(_converse(cfg_dir, out, err, args.engine))
