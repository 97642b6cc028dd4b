"""The embedded engine: the guard model in-process with transformers/torch, no server.

Same :class:`~nemo_csr_rail.prompt.GuardPrompt` in, same :class:`~nemo_csr_rail.completion.Completion` out as
the vLLM HTTP engine, so the client, parser and rails cannot tell them apart:

* the prompt is the tokenizer's chat template applied to the one user message; with ``prompt.prefill`` the
  assistant turn is rendered as vLLM's ``continue_final_message`` does (the prompt ends
  ``<start_of_turn>model\\nPrompt harm:``) and the text returned is only the continuation;
* greedy decoding up to ``max_tokens``, stopping at the model's end-of-turn / end-of-sequence tokens;
* a bare-verdict prompt (``prompt.verdict_choices``) is decided like the HTTP engine's one-token plan
  (:mod:`nemo_csr_rail.plans.one_token`): one forward pass over the prompt, the two verdicts' first-token
  logits compared, no generate loop;
* ``prompt.regex`` is enforced token by token (:mod:`nemo_csr_rail.engines.constrain`), so the verdict parses
  even with random weights; ``logprobs`` come back in OpenAI's ``logprobs.content`` shape, over the allowed tokens
  only (renormalised), as vLLM reports them under a structured-output constraint.

The model loads on first use (or :meth:`EmbeddedEngine.load`), once per process and (path, device, dtype); each
generation runs in a worker thread under a lock, and stops early when its caller gives up.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemo_csr_rail import weights
from nemo_csr_rail.completion import Completion
from nemo_csr_rail.engines.constrain import Grammar, Matcher, Unsupported
from nemo_csr_rail.errors import CsrError, EngineUnavailable, GuardTimeout, InputTooLong
from nemo_csr_rail.options import DecodeOptions, install_hint
from nemo_csr_rail.plans import one_token
from nemo_csr_rail.prompt import GuardPrompt

TOP_LOGPROBS = DecodeOptions.top_logprobs
INSTALL_HINT = install_hint("embedded") + "  (torch, transformers>=4.50, safetensors)"
_DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "half": "float16"}


def _import_torch() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise EngineUnavailable(
            f"the embedded engine needs torch and transformers ({exc.name or exc} is not installed): {INSTALL_HINT}"
        ) from None
    return torch, transformers


def pick_device(torch: Any, device: str) -> str:
    if device and device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(torch: Any, dtype: str, device: str) -> Any:
    name = (dtype or "auto").lower()
    if name == "auto":
        if device.startswith("cuda"):
            name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        elif device.startswith("mps"):
            name = "float16"
        else:
            name = "float32"  # CPUs without native bf16 run float32 faster, and it is exact
    if name not in _DTYPES:
        raise EngineUnavailable(f"embedded.dtype {dtype!r} is not one of auto, float32, bfloat16, float16")
    return getattr(torch, _DTYPES[name])


def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE: the printable character each byte is written as."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def token_table(tokenizer: Any, size: int) -> list[bytes | None]:
    """The UTF-8 bytes each token id contributes to the text (None for special tokens and unused ids)."""
    special: set[int] = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tid, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            special.add(int(tid))
    n_tok = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(size, n_tok))))
    byte_level = sum(1 for p in pieces[:5000] if p and p.startswith("Ġ")) > sum(
        1 for p in pieces[:5000] if p and p.startswith("▁"))
    dec = _byte_decoder() if byte_level else {}
    table: list[bytes | None] = []
    for tid in range(size):
        piece = pieces[tid] if tid < len(pieces) else None
        if piece is None or tid in special:
            table.append(None)
            continue
        if byte_level:
            try:
                table.append(bytes(dec[ch] for ch in piece))
            except KeyError:
                table.append(piece.encode("utf-8"))
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            table.append(bytes([int(piece[3:5], 16)]))
        else:
            table.append(piece.replace("▁", " ").encode("utf-8"))
    return table


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    torch: Any
    device: str
    dtype: Any
    path: Path
    table: list[bytes | None]
    by_bytes: dict[bytes, list[int]]
    max_token_len: int
    eos_ids: frozenset[int]
    max_len: int
    grammars: dict[str, Grammar]
    lock: threading.Lock
    cache_arg: str  # the forward() argument that carries the KV cache (see _cache_arg)
    plans: dict[str, one_token.Decision] = field(default_factory=dict)  # one-token plan per prefill


_MODELS: dict[tuple[str, str, str], _Loaded] = {}
_MODELS_LOCK = threading.Lock()


def _cache_arg(model: Any) -> str:
    """transformers 5.x renamed the KV-cache argument (and output field) ``past_key_values`` to ``cache`` and warns
    on every use of the old name; older releases only know the old one. Ask the model which it takes."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _kv_cache(out: Any, arg: str) -> Any:
    # Without its cache the next one-token step would be judged with no context at all: never carry on silently.
    if arg not in out or out[arg] is None:
        raise RuntimeError(f"the model returned no KV cache ({arg!r})")
    return out[arg]


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    gc = getattr(model, "generation_config", None)
    for src in (getattr(gc, "eos_token_id", None), getattr(model.config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>") if "<end_of_turn>" in tokenizer.get_vocab() else None
    if isinstance(eot, int):
        ids.add(eot)
    return frozenset(ids)


def _max_len(model: Any) -> int:
    cfg = model.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(getattr(text, "max_position_embeddings", None) or 8192)


class EmbeddedEngine:
    """Runs the guard model in this process. Safe to share across coroutines, threads and event loops."""

    name = "embedded"

    def __init__(self, model_path: str, *, device: str = "auto", dtype: str = "auto",
                 max_model_len: int | None = None, allow_download: bool | None = None) -> None:
        self.model = model_path or ""
        self.device = device or "auto"
        self.dtype = dtype or "auto"
        self.max_model_len = max_model_len
        self.allow_download = allow_download
        self._loaded: _Loaded | None = None
        self._load_lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"embedded:{self.model}"

    # -- loading ----------------------------------------------------------------------------------------------
    def resolve_path(self) -> Path:
        """The local weights directory; downloads a repo id only where the network is allowed."""
        found = weights.find_local(self.model)
        if found.path is not None:
            return found.path
        if not self.model:
            raise EngineUnavailable(
                "engine 'embedded' has no model: set custom_data.nemo_csr_rail.embedded.model_path to a local "
                f"directory or a Hugging Face repo id (e.g. {weights.DEFAULT_REPO}), or use engine: http")
        fix = (f"fix: set custom_data.nemo_csr_rail.embedded.model_path to a directory that holds config.json, "
               f"tokenizer and *.safetensors, or download them: {weights.download_hint(self.model if found.is_repo_id else weights.DEFAULT_REPO)}; "
               "or serve the model (nemo-csr-rail serve) and use engine: http")
        if not found.is_repo_id:
            raise EngineUnavailable(f"embedded engine: {found.describe_miss()}; {fix}")
        allow = (not weights.offline()) if self.allow_download is None else self.allow_download
        if not allow:
            raise EngineUnavailable(
                f"embedded engine: {found.describe_miss()} and downloads are off (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE "
                f"set); {fix}")
        try:
            return weights.download(self.model)
        except Exception as exc:
            raise EngineUnavailable(
                f"embedded engine: {found.describe_miss()}; download failed ({type(exc).__name__}: "
                f"{str(exc)[:300]}); {fix}") from None

    def load(self) -> _Loaded:
        """Load (once per process and path/device/dtype) and return the model; raises EngineUnavailable."""
        if self._loaded is not None:
            return self._loaded
        with self._load_lock:
            if self._loaded is not None:
                return self._loaded
            torch, transformers = _import_torch()
            path = self.resolve_path()
            device = pick_device(torch, self.device)
            dtype = pick_dtype(torch, self.dtype, device)
            key = (str(path), device, str(dtype))
            with _MODELS_LOCK:
                loaded = _MODELS.get(key)
                if loaded is None:
                    loaded = _MODELS[key] = self._load(torch, transformers, path, device, dtype)
            self._loaded = loaded
            return loaded

    def _load(self, torch: Any, transformers: Any, path: Path, device: str, dtype: Any) -> _Loaded:
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
            # transformers renamed torch_dtype to dtype in 4.56; older versions would ignore the new name
            major_minor = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit())
            kw = {"dtype": dtype} if major_minor >= (4, 56) else {"torch_dtype": dtype}
            try:
                model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kw)
            except ValueError:  # a checkpoint only registered as image-text-to-text
                model = transformers.AutoModelForImageTextToText.from_pretrained(str(path), **kw)
            model.to(device)
            model.eval()
        except EngineUnavailable:
            raise
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise EngineUnavailable(f"embedded engine could not load the model from {path}: {type(exc).__name__}: "
                                    f"{str(exc)[:400]}") from None
        if not getattr(tokenizer, "chat_template", None):
            raise EngineUnavailable(f"the tokenizer in {path} has no chat template (tokenizer_config.json / "
                                    "chat_template.jinja); the guard prompt cannot be rendered")
        size = int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() is not None \
            else len(tokenizer)
        table = token_table(tokenizer, size)
        by_bytes: dict[bytes, list[int]] = {}
        for tid, data in enumerate(table):
            if data:
                by_bytes.setdefault(data, []).append(tid)
        return _Loaded(model=model, tokenizer=tokenizer, torch=torch, device=device, dtype=dtype, path=path,
                       table=table, by_bytes=by_bytes, max_token_len=max((len(b) for b in by_bytes), default=1),
                       eos_ids=_eos_ids(model, tokenizer), max_len=_max_len(model),
                       grammars={}, lock=threading.Lock(), cache_arg=_cache_arg(model))

    # -- prompt -----------------------------------------------------------------------------------------------
    def render(self, prompt: GuardPrompt) -> str:
        """The exact prompt text the model sees (chat template; assistant prefill continued like vLLM)."""
        tok = self.load().tokenizer
        cont = bool(prompt.prefill)
        return tok.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=not cont,
                                       continue_final_message=cont)

    def prompt_ids(self, prompt: GuardPrompt) -> list[int]:
        # The template writes <bos> itself; like vLLM's chat path, add no special tokens on top.
        return list(self.load().tokenizer(self.render(prompt), add_special_tokens=False)["input_ids"])

    def _grammar(self, m: _Loaded, regex: str) -> Grammar | None:
        g = m.grammars.get(regex)
        if g is None:
            try:
                g = Grammar(regex, m.by_bytes, m.max_token_len)
            except Unsupported:
                return None
            m.grammars[regex] = g
        return g

    # -- generation -------------------------------------------------------------------------------------------
    async def complete(self, prompt: GuardPrompt, *, timeout_s: float) -> Completion:
        deadline = time.monotonic() + timeout_s
        cancel = threading.Event()
        task = asyncio.ensure_future(asyncio.to_thread(self._complete_sync, prompt, deadline, cancel))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # an abandoned run's error is not "lost"
        try:
            # The worker checks the deadline between tokens; this also bounds the wait for the model lock, the
            # load and the prefill, which it cannot interrupt.
            return await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            cancel.set()
            raise GuardTimeout(f"embedded guard check exceeded {timeout_s:g}s") from None
        except asyncio.CancelledError:
            cancel.set()  # the worker stops at its next token; a load in progress finishes for the next check
            raise

    def one_token_plan(self, prompt: GuardPrompt) -> one_token.Decision | None:
        """The one-token plan for this prompt's prefill with this model's tokenizer (None: not a bare verdict)."""
        if not prompt.verdict_choices or not prompt.prefill:
            return None
        m = self.load()
        hit = m.plans.get(prompt.prefill)
        if hit is None:
            def ids(messages: list[dict[str, str]]) -> list[int]:
                text = m.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False,
                                                       continue_final_message=True)
                return list(m.tokenizer(text, add_special_tokens=False)["input_ids"])

            def piece(tid: int) -> str | None:
                data = m.table[tid] if 0 <= tid < len(m.table) else None
                return data.decode("utf-8", errors="replace") if data else None

            hit = m.plans[prompt.prefill] = one_token.look_up_locally(ids, piece, prompt.prefill,
                                                                       prompt.verdict_choices)
        return hit

    def _complete_sync(self, prompt: GuardPrompt, deadline: float, cancel: threading.Event) -> Completion:
        m = self.load()
        ids = self.prompt_ids(prompt)
        plan = self.one_token_plan(prompt)
        plan = plan if isinstance(plan, one_token.OneTokenPlan) else None
        answer = 1 if plan is not None else prompt.max_tokens
        max_len = min(m.max_len, self.max_model_len) if self.max_model_len else m.max_len
        if len(ids) + answer > max_len:
            raise InputTooLong(
                f"the conversation does not fit the guard model's context: this model's maximum context length is "
                f"{max_len} tokens, the check needs {len(ids) + answer} ({len(ids)} in the prompt, "
                f"{answer} for the answer)")
        with m.lock:
            if cancel.is_set():
                raise GuardTimeout("guard check cancelled before it started")
            try:
                if plan is not None:
                    return self._first_token(m, prompt, plan, ids)
                return self._generate(m, prompt, ids, deadline, cancel)
            except CsrError:
                raise
            except Exception as exc:
                oom = type(exc).__name__ == "OutOfMemoryError"
                raise EngineUnavailable(
                    f"embedded engine failed during generation ({type(exc).__name__}: {str(exc)[:300]})"
                    + ("; the model does not fit this device's memory: use a smaller dtype or engine: http" if oom else "")
                ) from None

    def _first_token(self, m: _Loaded, prompt: GuardPrompt, plan: one_token.OneTokenPlan,
                     ids: list[int]) -> Completion:
        """One forward pass; the verdict whose first token has the larger logit. The logprobs are over the whole
        vocabulary (raw), as vLLM reports them; on an exact tie the lower token id wins, as vLLM's argmax does."""
        torch = m.torch
        with torch.inference_mode():
            out = m.model(input_ids=torch.tensor([ids], device=m.device), use_cache=False, logits_to_keep=1)
            logits = out.logits[0, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            scores = [float(logits[t]) for t in plan.token_ids]
            lps = [float(logp[t]) for t in plan.token_ids]
        best = max(range(len(scores)), key=lambda i: (scores[i], -plan.token_ids[i]))
        entries = None
        if prompt.want_logprobs:  # as vLLM lists logprob_token_ids: the sampled token first, then the others
            tops = [(plan.token_ids[best], lps[best])] + [(t, lp) for i, (t, lp) in
                                                          enumerate(zip(plan.token_ids, lps, strict=True)) if i != best]
            entries = [self._entry(m, plan.token_ids[best], lps[best], tops)]
        return Completion(
            text=plan.words[best], finish_reason="length", logprobs=entries, prompt_tokens=len(ids),
            completion_tokens=1, endpoint=self.endpoint, decode_plan=one_token.ONE_TOKEN,
            verdict_logprobs=dict(zip(plan.words, lps, strict=True)))

    def _generate(self, m: _Loaded, prompt: GuardPrompt, ids: list[int], deadline: float,
                  cancel: threading.Event) -> Completion:
        torch = m.torch
        grammar = self._grammar(m, prompt.regex) if prompt.regex else None
        # The grammar's token budget keeps one token for the stop token, so a forced close still ends "stop".
        matcher = Matcher(grammar, m.table, max(prompt.max_tokens - 1, 1)) if grammar is not None else None
        out_ids: list[int] = []
        entries: list[dict[str, Any]] = []
        finish = "length"
        stop_token: tuple[int, float, list[tuple[int, float]]] | None = None
        stopped_text: str | None = None
        with torch.inference_mode():
            inp = torch.tensor([ids], device=m.device)
            out = m.model(input_ids=inp, use_cache=True, logits_to_keep=1)
            past = _kv_cache(out, m.cache_arg)
            for _ in range(prompt.max_tokens):
                if cancel.is_set() or time.monotonic() > deadline:
                    raise GuardTimeout("embedded guard check exceeded its deadline")
                logits = out.logits[0, -1].float()
                choice, lp = self._pick(m, logits, matcher, prompt.want_logprobs)
                if choice is None or choice in m.eos_ids:
                    finish = "stop"
                    if choice is not None:  # a stop token: counted and reported, but not part of the text
                        stop_token = lp or (choice, 0.0, [])
                    break
                out_ids.append(choice)
                if lp is not None:
                    entries.append(self._entry(m, *lp))
                if matcher is not None:
                    matcher.accept(choice)
                if prompt.stop:
                    # Like vLLM's stop strings (kept in the output): end on the verdict, no <eos> step after it.
                    so_far = m.tokenizer.decode(out_ids, skip_special_tokens=True)
                    ends = [so_far.find(s) + len(s) for s in prompt.stop if s in so_far]
                    if ends:
                        stopped_text, finish = so_far[:min(ends)], "stop"
                        break
                if len(out_ids) >= prompt.max_tokens:
                    break  # finish_reason "length", even when the grammar is complete (as vLLM reports it)
                out = m.model(input_ids=torch.tensor([[choice]], device=m.device), use_cache=True,
                              **{m.cache_arg: past})
                past = _kv_cache(out, m.cache_arg)
                if matcher is not None and matcher.finished:
                    # The grammar is complete, so only a stop token may follow; vLLM generates it, counts it and
                    # reports its logprob (renormalised over the stop tokens), but leaves it out of the text.
                    finish = "stop"
                    eos = sorted(m.eos_ids)
                    sub = out.logits[0, -1].float()[torch.tensor(eos, device=m.device)]
                    logp = torch.log_softmax(sub, dim=-1)
                    best = int(torch.argmax(sub))
                    top = torch.topk(logp, min(TOP_LOGPROBS, len(eos)))
                    stop_token = (eos[best], float(logp[best]),
                                  [(eos[i], v) for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)])
                    break
        text = stopped_text if stopped_text is not None else m.tokenizer.decode(out_ids, skip_special_tokens=True)
        n_out = len(out_ids)
        if stop_token is not None:
            n_out += 1
            if prompt.want_logprobs:
                entries.append(self._entry(m, *stop_token))
        return Completion(
            text=text,
            finish_reason=finish,
            logprobs=entries if prompt.want_logprobs else None,
            prompt_tokens=len(ids),
            completion_tokens=n_out,
            endpoint=self.endpoint,
        )

    def _pick(self, m: _Loaded, logits: Any, matcher: Matcher | None,
              want_lp: bool) -> tuple[int | None, tuple[int, float, list[tuple[int, float]]] | None]:
        """The greedy token (a stop token, or None when nothing may follow) and, if wanted, its logprob data."""
        torch = m.torch
        if matcher is None:
            choice = int(torch.argmax(logits))
            if not want_lp:
                return choice, None
            logp = torch.log_softmax(logits, dim=-1)
            top = torch.topk(logp, TOP_LOGPROBS)
            return choice, (choice, float(logp[choice]), list(zip(top.indices.tolist(), top.values.tolist(), strict=True)))
        eos_ok = matcher.accepting  # a complete match that could still go on: the model may stop here
        allowed = matcher.allowed_tokens() if want_lp else None
        if allowed is not None:
            cand = allowed + (sorted(m.eos_ids) if eos_ok else [])
            if not cand:
                return None, None
            sub = logits[torch.tensor(cand, device=logits.device)]
            logp = torch.log_softmax(sub, dim=-1)
            best = int(torch.argmax(sub))
            top = torch.topk(logp, min(TOP_LOGPROBS, len(cand)))
            return cand[best], (cand[best], float(logp[best]),
                                [(cand[i], v) for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)])
        # Greedy without logprobs: walk the vocabulary from the most likely token down to the first allowed one.
        n = logits.shape[0]
        k, seen = 64, 0
        while seen < n:
            k = min(k, n)
            for tid in torch.topk(logits, k).indices.tolist()[seen:]:
                if tid in m.eos_ids:
                    if eos_ok:
                        return tid, None
                elif matcher.allows(tid):
                    return tid, None
            seen, k = k, k * 8
        return None, None

    @staticmethod
    def _entry(m: _Loaded, choice: int, logprob: float, tops: list[tuple[int, float]]) -> dict[str, Any]:
        def tok(tid: int) -> tuple[str, list[int]]:
            data = m.table[tid] if tid < len(m.table) else None
            if data is None:
                return m.tokenizer.decode([tid]), []
            return data.decode("utf-8", errors="replace"), list(data)

        text, raw = tok(choice)
        top_entries = []
        for tid, lp in tops:
            t, b = tok(tid)
            top_entries.append({"token": t, "logprob": lp if math.isfinite(lp) else -9999.0, "bytes": b})
        return {"token": text, "logprob": logprob if math.isfinite(logprob) else -9999.0, "bytes": raw,
                "top_logprobs": top_entries}

    async def aclose(self) -> None:
        """Nothing to release per engine: loaded models are shared by the process (see :func:`unload_all`)."""
        return None


def unload_all() -> None:
    """Forget every loaded model (tests; frees memory once no engine refers to it)."""
    with _MODELS_LOCK:
        _MODELS.clear()
