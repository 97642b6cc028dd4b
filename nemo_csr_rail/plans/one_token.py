"""The one-token plan (the "one-token floor"): a bare-verdict request answered by the prefill's own forward pass.

With reasoning off, the continuation of the input check and of both halves of the split output check is one bare
verdict word (``" harmful"`` or ``" unharmful"``: :mod:`nemo_csr_rail.plans.grammar` marks such requests with
``verdict_choices``). The grammar plan lets the
model spell that word in as many steps as it likes: with Gemma 3's real tokenizer ``" unharmful"`` is three pieces
(``" un"``, ``"harm"``, ``"ful"``), and a trained model under the grammar may even start with a bare ``" "`` that
does not tell the two verdicts apart. The decision is made at the first token anyway, so this plan asks for exactly
one generated token, restricted to the first token of each verdict *as the server itself tokenizes them after the
prefill*:

* ``max_tokens: 1`` and ``allowed_token_ids`` = those two ids. vLLM samples the first generated token from the
  prefill's forward pass, so the request costs the prefill and nothing else; greedy over two ids is the argmax of
  their two logits.
* ``logprob_token_ids`` = the same two ids (vLLM >= 0.32): the server returns both candidates' logprobs whichever
  wins, so ``confidence`` is exact. vLLM reports *raw* logprobs (``logprobs_mode: raw_logprobs``, computed before
  the allowed-ids mask), so the two are renormalised over the pair; where a server only gives ``top_logprobs`` and
  the losing candidate is not among them, the confidence is left unknown (``None``) rather than guessed.

The ids come from the server's ``/tokenize`` (chat form, ``continue_final_message``): the prefill alone, and the
prefill followed by each verdict. The plan is used only when the prefill's tokens are a prefix of both, the two
first tokens differ, and neither token's text (``/detokenize``) is a prefix of the other verdict's text, i.e. the
first token alone identifies the verdict. Anything else (a tokenizer that merges ``":"`` with the space, a shared
first piece, a server without ``/tokenize``: NIM and other OpenAI-compatible servers answer 404) keeps the grammar
plan for that endpoint — never a guess. Results are cached per endpoint and prefill: one look-up per shape.

The data flows one way: the HTTP engine hands :func:`send` the grammar plan's body and its transport to one replica
(plain callables); this module looks up, builds the request, and returns the completion mapped to its verdict word.
The embedded engine hands :func:`look_up_locally` its tokenizer instead.

Why ``allowed_token_ids`` and not ``logit_bias``: a bias of +100 on two ids is a request for the same thing with a
numeric margin that a confident model could in principle overcome, and it changes nothing in what is returned;
the allow-list makes any other token impossible, which is the guarantee wanted here.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from nemo_csr_rail.completion import Completion
from nemo_csr_rail.errors import CsrError, GuardHTTPError
from nemo_csr_rail.prompt import GuardPrompt
from nemo_csr_rail.verdict import Verdict, parse

ONE_TOKEN = "one_token"
#: a user message for the look-ups: the template closes the user turn with control tokens, so what follows the
#: prefill is tokenized the same whatever the real message says
PROBE_USER = "x"
#: words in an HTTP 400 that mean the server does not take the plan's parameters (it keeps the grammar plan)
UNSUPPORTED_MARKERS = ("allowed_token_ids", "logprob_token_ids", "return_tokens_as_token_ids", "extra_forbidden",
                       "extra inputs are not permitted", "unrecognized")


@dataclass(frozen=True)
class OneTokenPlan:
    """The two first tokens, each standing for one verdict word (``words[i]`` ↔ ``token_ids[i]``)."""

    words: tuple[str, ...]
    token_ids: tuple[int, ...]
    pieces: tuple[str, ...]

    def word_for(self, token: str) -> str | None:
        """The verdict a returned token stands for, by its text (unique: :func:`decide` checked it) or as
        ``"token_id:N"`` (how vLLM names tokens under ``return_tokens_as_token_ids``)."""
        if token.startswith("token_id:"):
            try:
                tid = int(token.split(":", 1)[1])
            except ValueError:
                return None
            return self.words[self.token_ids.index(tid)] if tid in self.token_ids else None
        return self.words[self.pieces.index(token)] if token in self.pieces else None


@dataclass(frozen=True)
class Fallback:
    """Why an endpoint keeps the grammar plan for a prefill (reported in logs and tests, never guessed around)."""

    reason: str


Decision = OneTokenPlan | Fallback


def decide(words: Sequence[str], prefill_ids: Sequence[int], continued_ids: Sequence[Sequence[int]],
           piece_text: Callable[[int], str | None]) -> Decision:
    """The plan for ``words`` from the server's tokens: the prefill alone and the prefill + each word.

    ``piece_text(id)`` is the text the server decodes one token to (None if unknown). Pure: unit-tested.
    """
    n = len(prefill_ids)
    firsts: list[int] = []
    for word, ids in zip(words, continued_ids, strict=True):
        if list(ids[:n]) != list(prefill_ids) or len(ids) <= n:
            return Fallback(f"the prefill's tokens are not a prefix of the prefill + {word!r}: the tokenizer merges "
                            "across the boundary")
        firsts.append(int(ids[n]))
    if len(set(firsts)) != len(firsts):
        return Fallback(f"the verdicts share their first token {firsts}")
    pieces: list[str] = []
    for word, tid in zip(words, firsts, strict=True):
        text = piece_text(tid)
        if not text or not word.startswith(text):
            return Fallback(f"token {tid} ({text!r}) is not a prefix of {word!r}")
        pieces.append(text)
    for i, piece in enumerate(pieces):
        for j, other in enumerate(words):
            if i != j and other.startswith(piece):
                return Fallback(f"the first token of {words[i]!r} ({piece!r}) also begins {other!r}")
    return OneTokenPlan(tuple(words), tuple(firsts), tuple(pieces))


def payload(base: dict[str, Any], plan: OneTokenPlan, *, logprobs: bool) -> dict[str, Any]:
    """The grammar plan's body turned into the one-token request (same messages, model and prefill flags)."""
    body = {k: v for k, v in base.items()
            if k not in ("structured_outputs", "stop", "include_stop_str_in_output", "logprobs", "top_logprobs")}
    body["max_tokens"] = 1
    body["allowed_token_ids"] = list(plan.token_ids)
    if logprobs:
        body["logprobs"] = True
        body["logprob_token_ids"] = list(plan.token_ids)
        body["top_logprobs"] = len(plan.token_ids)  # servers without logprob_token_ids still list the top ones
    return body


def as_word(plan: OneTokenPlan, completion: Completion) -> Completion:
    """Map the one generated token back to its verdict word, so the parser and the rest of the pipeline see the
    same text as under the grammar plan. A token that is neither candidate is left as it came (the parser then
    rejects it: fail closed, with the server's text in the message)."""
    entries = completion.logprobs or []
    word = None
    if entries:
        word = plan.word_for(str(entries[0].get("token") or ""))
    if word is None:
        word = plan.word_for(completion.text)
    candidates: dict[str, float] | None = None
    if entries:
        found: dict[str, float] = {}
        for alt in [entries[0], *(entries[0].get("top_logprobs") or [])]:
            w = plan.word_for(str(alt.get("token") or ""))
            lp = alt.get("logprob")
            if w is not None and isinstance(lp, (int, float)):
                found.setdefault(w, float(lp))
        candidates = found or None
    return replace(completion, text=completion.text if word is None else word, decode_plan=ONE_TOKEN,
                   verdict_logprobs=candidates)


class PlanCache:
    """Decisions per (endpoint, prefill), shared by every event loop. Concurrent first checks share one look-up,
    which runs as its own task: a check cancelled meanwhile (the split plan's discarded guess) does not waste it."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, str], Decision] = {}
        self._pending: dict[tuple[asyncio.AbstractEventLoop, str, str], asyncio.Task[Decision | None]] = {}
        self._lock = threading.Lock()

    def known(self, endpoint: str, prefill: str) -> Decision | None:
        return self._done.get((endpoint, prefill))

    def decisions(self) -> dict[tuple[str, str], Decision]:
        return dict(self._done)

    def settle(self, endpoint: str, prefill: str, decision: Decision) -> None:
        self._done[(endpoint, prefill)] = decision

    async def get(self, endpoint: str, prefill: str,
                  look_up: Callable[[], Awaitable[Decision | None]]) -> Decision | None:
        """The cached decision, else the result of ``look_up()`` (cached unless None: a transient failure)."""
        hit = self._done.get((endpoint, prefill))
        if hit is not None:
            return hit
        loop = asyncio.get_running_loop()
        key = (loop, endpoint, prefill)
        with self._lock:
            task = self._pending.get(key)
            if task is None:
                task = self._pending[key] = loop.create_task(self._run(key, look_up))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved even if nobody waits
        return await asyncio.shield(task)

    async def _run(self, key: tuple[asyncio.AbstractEventLoop, str, str],
                   look_up: Callable[[], Awaitable[Decision | None]]) -> Decision | None:
        try:
            decision = await look_up()
        except CsrError:
            raise  # the replica is down or refuses us: the caller fails over exactly as for its own request
        except Exception:
            decision = None  # this check uses the grammar plan; the next one looks up again
        finally:
            with self._lock:
                self._pending.pop(key, None)
        if decision is not None:
            self._done[(key[1], key[2])] = decision
        return decision


#: what a server call of the look-up returns: the JSON body, ``None`` (transient: ask again next time) or why the
#: endpoint keeps the grammar plan
Call = Callable[[str, dict[str, Any]], Awaitable[Any]]
#: the engine's transport of one chat request body to the replica: its completion, or a ``CsrError``
Post = Callable[[dict[str, Any]], Awaitable[Completion]]


def probe_messages(content: str) -> list[dict[str, str]]:
    """The chat the look-ups tokenize: :data:`PROBE_USER`, then an assistant turn that ``content`` begins."""
    return [{"role": "user", "content": PROBE_USER}, {"role": "assistant", "content": content}]


async def send(plans: PlanCache, replica: str, prompt: GuardPrompt, body: dict[str, Any], *, model: str,
               call: Call, post: Post) -> Completion:
    """One request of ``prompt`` to one replica, decided by its first token where the prompt and the replica allow
    it, else ``body`` (the grammar plan's request) as it is. The engine hands over its transport to that replica
    (``call`` for the look-up's ``/tokenize`` and ``/detokenize``, ``post`` for the chat request) and gets the
    completion back, mapped to its verdict word. A server that refuses the plan's parameters keeps the grammar plan
    from then on (``plans``: the engine's decisions per replica and prefill)."""
    plan = await plan_for(plans, replica, prompt, model=model, call=call)
    if plan is None:
        return await post(body)
    try:
        done = await post(payload(body, plan, logprobs=prompt.want_logprobs))
    except GuardHTTPError as exc:
        if not unsupported(exc.status, exc.message):
            raise
        plans.settle(replica, prompt.prefill, Fallback(f"the server refused the one-token request: {exc.message[:200]}"))
        return await post(body)
    return as_word(plan, done)


async def plan_for(plans: PlanCache, replica: str, prompt: GuardPrompt, *, model: str,
                   call: Call) -> OneTokenPlan | None:
    """The one-token plan for this prompt's prefill on this replica (looked up once through ``call``, then cached
    in ``plans``), or None: the grammar plan."""
    if not prompt.verdict_choices or not prompt.prefill:
        return None
    known = plans.known(replica, prompt.prefill)
    if known is None:
        known = await plans.get(replica, prompt.prefill,
                                lambda: look_up(call, model, prompt.prefill, prompt.verdict_choices))
    return known if isinstance(known, OneTokenPlan) else None


async def look_up(call: Call, model: str, prefill: str, words: Sequence[str]) -> Decision | None:
    """Ask the server how it tokenizes the prefill and the prefill + each verdict (``/tokenize``, chat form), then
    what text each candidate first token decodes to (``/detokenize``). ``call(path, payload)`` is the engine's
    transport to one replica. None: a transient failure (the check uses the grammar plan and the next one asks
    again)."""

    def chat(content: str) -> dict[str, Any]:
        return {"model": model, "continue_final_message": True, "add_generation_prompt": False,
                "messages": probe_messages(content)}

    try:
        answers = await asyncio.gather(call("/tokenize", chat(prefill)),
                                       *(call("/tokenize", chat(prefill + w)) for w in words))
        for a in answers:
            if a is None or isinstance(a, Fallback):
                return a
        seqs = [a["tokens"] for a in answers]
        if not all(isinstance(q, list) and all(isinstance(t, int) for t in q) for q in seqs):
            return Fallback("/tokenize returned no token list")
        n = len(seqs[0])
        firsts = sorted({q[n] for q in seqs[1:] if len(q) > n})
        texts = await asyncio.gather(*(call("/detokenize", {"model": model, "tokens": [t]}) for t in firsts))
        pieces: dict[int, str | None] = {}
        for t, a in zip(firsts, texts, strict=True):
            if a is None or isinstance(a, Fallback):
                return a
            pieces[t] = a.get("prompt") if isinstance(a, dict) and isinstance(a.get("prompt"), str) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return decide(words, seqs[0], seqs[1:], pieces.get)


def look_up_locally(tokenize: Callable[[list[dict[str, str]]], Sequence[int]], piece_text: Callable[[int], str | None],
                    prefill: str, words: Sequence[str]) -> Decision:
    """:func:`look_up` with a tokenizer in this process (the embedded engine): ``tokenize(messages)`` gives the ids
    of a chat rendered as vLLM's ``continue_final_message`` renders it, ``piece_text(id)`` one token's text."""
    return decide(words, tokenize(probe_messages(prefill)), [tokenize(probe_messages(prefill + w)) for w in words],
                  piece_text)


def read(gp: GuardPrompt, completion: Completion) -> Verdict:
    """A one-token completion (already mapped to its verdict word by :func:`as_word`) → Verdict, with the exact
    confidence from both candidates' logprobs. No truncation to report: one token was asked for."""
    verdict = parse(gp.prefill + completion.text, reasoning_content=completion.reasoning_content)
    if gp.want_logprobs:
        conf = confidence(completion.verdict_logprobs)
        if conf is not None:
            verdict = replace(verdict, confidence=round(conf, 6))
    return verdict


def confidence(logprobs: dict[str, float] | None) -> float | None:
    """P(harmful) from the logprobs of the two verdicts' first tokens, renormalised over the pair: vLLM reports raw
    logprobs (before the allowed-ids mask), so the two need not sum to one. ``None`` unless both are known: a
    candidate the server did not report is not assumed to be improbable."""
    words = {k.strip().lower(): v for k, v in (logprobs or {}).items()}
    if "harmful" not in words or "unharmful" not in words:
        return None
    lp_h, lp_u = words["harmful"], words["unharmful"]
    if not (math.isfinite(lp_h) or math.isfinite(lp_u)):
        return None
    top = max(lp_h, lp_u)
    p_h, p_u = math.exp(lp_h - top), math.exp(lp_u - top)
    return p_h / (p_h + p_u)


def unsupported(status: int, message: str) -> bool:
    """Whether an error answer to the one-token request means "this server does not take these parameters"."""
    low = message.lower()
    return status in (400, 422) and any(m in low for m in UNSUPPORTED_MARKERS)


__all__ = ["ONE_TOKEN", "Call", "Decision", "Fallback", "OneTokenPlan", "PlanCache", "Post", "as_word", "confidence",
           "decide", "look_up", "look_up_locally", "payload", "plan_for", "probe_messages", "read", "send",
           "unsupported"]
