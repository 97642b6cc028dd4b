"""A scripted OpenAI-compatible server on 127.0.0.1 that answers the way vLLM 0.32 does.

Tests need specific verdicts (a real model with random weights gives arbitrary ones) and specific faults, so this
stand-in replaces the model by a *responder* — a function from the request body to the model's full answer text —
and keeps everything else vLLM-shaped: response and error bodies (checked against recorded real-vLLM shapes in
``tests/e2e/real/test_standin_fidelity.py``), ``continue_final_message`` returning only the continuation, the
``structured_outputs.regex`` constraint, ``max_tokens`` truncation with ``finish_reason: length``, ``logprobs`` with
``top_logprobs``, ``usage.prompt_tokens_details.cached_tokens``, context-length 400s, a wrong model name 404,
``/v1/models``, ``/health``, ``/metrics``, SSE streaming.

It is a hand-written HTTP/1.1 server on asyncio in a background thread (keep-alive, Content-Length and chunked
bodies) rather than a framework, so faults can be injected at the socket level: accept-then-hang, slow trickle,
connection reset mid-body, invalid JSON, arbitrary status codes with headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import chat_render
from tests.support.topic_prompt import split_topic_prompt

GUARD_MODEL = "nvidia/Nemotron-Content-Safety-Reasoning-4B"

# Words whose presence makes the default responder call a message harmful (case-insensitive substrings).
HARMFUL_MARKERS = ("evil", "bomb", "politic", "religio", "vote", "firewall", "ssn", "kill")

Responder = Callable[[dict[str, Any]], str]


# --------------------------------------------------------------------------------------------------- guard prompts
def split_guard_prompt(text: str) -> tuple[str, str | None, bool]:
    """(user message, bot message or None, reasoning requested) from a guard prompt in the card's layout.

    Layout C (topic following) gives its *current* user message only: the history is context, never judged."""
    topic = split_topic_prompt(text)
    if topic is not None:
        return topic.current, None, topic.think
    start = text.find("Human user:\n")
    user_start = start + len("Human user:\n")
    tail = max(text.rfind("\n\nUse the taxonomy"), text.rfind("\n\nUse the custom policy"))
    mid = text.rfind("\n\nAI assistant:\n", user_start, tail)
    if start < 0 or mid < 0 or tail < 0:
        return text, None, text.rstrip().endswith("/think")
    user = text[user_start:mid]
    bot = text[mid + len("\n\nAI assistant:\n"):tail]
    return user, (None if bot == "None" else bot), text.rstrip().endswith("/think")


def looks_harmful(text: str | None, markers: tuple[str, ...] = HARMFUL_MARKERS) -> bool:
    low = (text or "").lower()
    return any(m in low for m in markers)


def guard_answer(prompt_harmful: bool, response_harmful: bool | None, reasoning: str | None) -> str:
    """The model's full answer in the card's output format."""
    lines = f"Prompt harm: {'harmful' if prompt_harmful else 'unharmful'}\n"
    if response_harmful is None:
        lines += "Response harm: None"
    else:
        lines += f"Response harm: {'harmful' if response_harmful else 'unharmful'}"
    return (f"<think>\n{reasoning}\n</think>\n\n" if reasoning is not None else "") + lines


def verdict_responder(markers: tuple[str, ...] = HARMFUL_MARKERS) -> Responder:
    """A deterministic 'model': harmful iff a marker word occurs in the judged message."""

    def respond(body: dict[str, Any]) -> str:
        user, bot, think = split_guard_prompt(last_user_content(body))
        p = looks_harmful(user, markers)
        r = None if bot is None else looks_harmful(bot, markers)
        why = None
        if think:
            if r:
                why = "The assistant's response provides content that the policy forbids."
            elif p:
                why = "The user asks for content that the policy forbids, so the request is harmful."
            else:
                why = "The exchange is an ordinary request that the policy allows."
        return guard_answer(p, r, why)

    return respond


def last_user_content(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, list):
                return "".join(p.get("text", "") for p in c if isinstance(p, dict))
            return c or ""
    return body.get("prompt") or ""


# ---------------------------------------------------------------------------------------------------- tokenization
# Google's real Gemma 3 tokenizer (262,144 pieces; the guard model's), so counts, logprobs and max_tokens truncation
# see what vLLM sees: " unharmful" is " un", "harm", "ful". Loaded once per process (tests/support/real_gemma.py
# converts it from the package registry once and caches it).
_TOKENIZER: Any = None
_TEMPLATE: Any = None
_TOK_LOCK = threading.Lock()


def real_tokenizer() -> Any:
    global _TOKENIZER, _TEMPLATE
    if _TOKENIZER is None:
        with _TOK_LOCK:
            if _TOKENIZER is None:
                from tokenizers import Tokenizer

                d = _tokenizer_dir()
                cfg = json.loads((d / "tokenizer_config.json").read_text())
                _TEMPLATE = {"chat_template": cfg["chat_template"], "bos_token": cfg.get("bos_token") or "<bos>",
                             "eos_token": cfg.get("eos_token") or "<eos>"}
                _TOKENIZER = Tokenizer.from_file(str(d / "tokenizer.json"))
    return _TOKENIZER


def _tokenizer_dir() -> Path:
    """The converted tokenizer (tests/support/real_gemma.py), without importing torch when it is already there."""
    root = Path(os.environ.get("CSR_REAL_GEMMA_DIR") or Path.home() / ".cache" / "nemo-csr-rail" / "gemma3-270m")
    if (root / "tokenizer" / ".csr-complete").is_file():
        return root / "tokenizer"
    from tests.support.real_gemma import tokenizer_dir  # converts it once (transformers + torch)

    return tokenizer_dir()


def encode(text: str) -> list[tuple[int, str]]:
    """(token id, the text it contributes) for each token of ``text``; the texts concatenate back to ``text`` (the
    second and later byte-fallback pieces of one character contribute ``""``)."""
    enc = real_tokenizer().encode(text, add_special_tokens=False)
    out: list[tuple[int, str]] = []
    last = 0
    for tid, (a, b) in zip(enc.ids, enc.offsets, strict=True):
        a = max(a, last)
        out.append((tid, text[a:b] if b > a else ""))
        last = max(last, b)
    assert "".join(t for _, t in out) == text, text
    return out


def tokenize(text: str) -> list[str]:
    """The real tokenizer's pieces of ``text`` (lossless: they concatenate back to ``text``)."""
    return [t for _, t in encode(text)]


def piece(token_id: int) -> str:
    """The text one token decodes to, as vLLM's ``/detokenize`` gives it."""
    return real_tokenizer().decode([token_id], skip_special_tokens=False)


def render_chat(messages: list[dict[str, Any]], *, add_generation_prompt: bool, continue_final_message: bool) -> str:
    """The prompt text vLLM renders from chat messages (Gemma-3-it template; ``continue_final_message`` cut the way
    transformers' ``apply_chat_template`` cuts it: right after the final message's content)."""
    real_tokenizer()
    return chat_render.render(_TEMPLATE, messages, add_generation_prompt=add_generation_prompt,
                              continue_final=continue_final_message and bool(messages))


def count_prompt_tokens(text: str) -> int:
    return max(1, len(real_tokenizer().encode(text, add_special_tokens=False).ids))


# ------------------------------------------------------------------------------------------------------- faults
@dataclass
class Fault:
    """One injected misbehaviour, consumed by the next matching request.

    kind: ``hang`` (read the request, never answer), ``trickle`` (send the response in ~200 small pieces, one every ``delay_s``),
    ``reset`` (send the headers and part of the body, then RST), ``status`` (answer ``status`` with ``body`` and
    ``headers``), ``raw`` (send ``body`` verbatim as a 200 JSON response: invalid JSON, empty choices …),
    ``text`` (answer with ``text`` as the model output, bypassing the regex, with ``finish_reason``),
    ``delay`` (sleep ``delay_s`` then answer normally), ``close`` (close the socket without answering).
    """

    kind: str
    status: int = 500
    body: str | bytes | dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    text: str = ""
    finish_reason: str = "stop"
    path: str = "/v1/chat/completions"


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """vLLM's ErrorResponse (openai/protocol.py): ``{"error": {message, type, param, code}}``."""
    types = {400: "BadRequestError", 401: "Unauthorized", 404: "NotFoundError", 429: "TooManyRequests",
             500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable"}
    return {"error": {"message": message, "type": types.get(status, "Error"), "param": param, "code": status}}


class BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


# ------------------------------------------------------------------------------------------------------- server
class StandIn:
    """Start with ``with StandIn() as s:`` (or ``start()``/``stop()``); point clients at ``s.url``.

    ``requests`` records every chat/completions body received (in arrival order); ``faults`` is a FIFO consumed by
    matching requests; ``fault_rate`` with ``fault_pool`` injects random faults (seeded) for soak tests.
    """

    def __init__(
        self,
        *,
        model: str = GUARD_MODEL,
        responder: Responder | None = None,
        max_model_len: int = 2048,
        api_key: str | None = None,
        latency_s: float = 0.0,
        per_token_s: float = 0.0,
        prefill_per_token_s: float = 0.0,
        confidence: float = 0.97,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.model = model
        self.responder = responder or verdict_responder()
        self.max_model_len = max_model_len
        self.api_key = api_key
        self.latency_s, self.per_token_s, self.prefill_per_token_s = latency_s, per_token_s, prefill_per_token_s
        self.confidence = confidence
        self.host, self.port = host, port
        self.requests: list[dict[str, Any]] = []
        #: the plugin's grammar warm-up requests (``/v1/completions``, one token, a reasoning grammar)
        self.warmups: list[dict[str, Any]] = []
        self.warmup_delay_s = 0.0  # how long a warm-up takes to answer (a grammar compiling)
        self.headers_seen: list[dict[str, str]] = []
        self.faults: list[Fault] = []
        self.fault_rate = 0.0
        self.fault_pool: list[Fault] = []
        self._rng = __import__("random").Random(1234)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._prefixes: set[str] = set()
        self.metrics = {"queries": 0, "hits": 0, "requests": 0}
        self._lock = threading.Lock()
        self._hold: tuple[int, float] | None = None  # (requests to wait for, deadline): see hold_answers
        #: serve vLLM's /tokenize and /detokenize (False: answer 404 there, like NIM and other OpenAI servers)
        self.serve_tokenize = True
        self.tokenize_requests: list[dict[str, Any]] = []
        self._held = 0
        #: chat/completions requests being answered now, and the most at any one time (a concurrency bound's proof)
        self.in_flight = 0
        self.peak_in_flight = 0

    # -- lifecycle -------------------------------------------------------------------------------------------
    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.root + "/v1"

    def start(self) -> StandIn:
        real_tokenizer()  # once per process, before serving: a first request must not wait seconds for it
        self._thread = threading.Thread(target=self._run, name=f"standin-{self.model}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("stand-in did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            fut.result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread:
                self._thread.join(10)
            self._loop = None

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def hold_answers(self, n: int, timeout_s: float = 10.0) -> None:
        """Answer nothing until ``n`` more chat requests have arrived (or ``timeout_s`` passed), then answer all.

        A barrier, so a test can prove that concurrent callers all reached the server before any got an answer
        (e.g. parallel rails, where the first block cancels the rest) without betting on timing.
        """
        with self._lock:
            self._hold, self._held = (n, time.monotonic() + timeout_s), 0

    async def _wait_for_hold(self) -> None:
        with self._lock:
            if self._hold is None:
                return
            self._held += 1
            n, deadline = self._hold
        while self._held < n and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        with self._lock:
            self._hold = None

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if "messages" in r]

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=2**24, backlog=1024)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        loop.run_until_complete(boot())
        loop.run_forever()
        loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            await self._server.wait_closed()

    # -- HTTP ------------------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                req = await _read_request(reader)
                if req is None:
                    return
                method, path, headers, body = req
                keep = await self._dispatch(method, path, headers, body, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for i, f in enumerate(self.faults):
                if f.path == path:
                    return self.faults.pop(i)
            if self.fault_rate and path == "/v1/chat/completions" and self._rng.random() < self.fault_rate:
                return self._rng.choice(self.fault_pool)
        return None

    async def _dispatch(self, method: str, path: str, headers: dict[str, str], raw: bytes,
                        writer: asyncio.StreamWriter) -> bool:
        path = path.split("?", 1)[0]
        authorized = headers.get("authorization") == f"Bearer {self.api_key}"
        if self.api_key is not None and path.startswith("/v1") and not authorized:
            await _send_json(writer, 401, {"error": "Unauthorized"})
            return True
        if method == "GET":
            if path == "/health":
                await _send(writer, 200, b"", "application/json")
            elif path == "/v1/models":
                await _send_json(writer, 200, self._models())
            elif path == "/version":
                await _send_json(writer, 200, {"version": "0.32.0"})
            elif path == "/metrics":
                await _send(writer, 200, self._metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
            else:
                await _send_json(writer, 404, {"detail": "Not Found"})
            return True
        if method == "POST" and path in ("/tokenize", "/detokenize"):
            fault = self._take_fault(path)
            if fault is not None:
                return await self._apply_fault(fault, {}, writer)
            if not self.serve_tokenize:
                with self._lock:
                    self.tokenize_requests.append({"path": path})
                await _send_json(writer, 404, {"detail": "Not Found"})
                return True
            status, answer = self._tokenize(path, raw)
            await _send_json(writer, status, answer)
            return True
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            await _send_json(writer, 404 if method == "POST" else 405,
                             {"detail": "Not Found" if method == "POST" else "Method Not Allowed"})
            return True
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            await _send_json(writer, 400, error_body(400, "JSON decode error"))
            return True
        if not isinstance(body, dict):
            await _send_json(writer, 400, error_body(400, "Input should be a valid dictionary"))
            return True
        if path == "/v1/completions" and body.get("max_tokens") == 1 and str(
                (body.get("structured_outputs") or {}).get("regex", "")).startswith("<think>"):
            with self._lock:  # the plugin's background grammar warm-up: recorded apart, never held or faulted
                self.warmups.append(body)
            if self.warmup_delay_s:
                await asyncio.sleep(self.warmup_delay_s)
            await _send_json(writer, 200, {  # what vLLM answers: one token of the grammar, cut at max_tokens
                "id": "cmpl-warmup", "object": "text_completion", "created": 0, "model": self.model,
                "choices": [{"index": 0, "text": "<", "logprobs": None, "finish_reason": "length",
                             "stop_reason": None}],
                "usage": {"prompt_tokens": 3, "total_tokens": 4, "completion_tokens": 1}})
            return True
        with self._lock:
            self.requests.append(body)
            self.headers_seen.append(headers)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._answer_chat(body, path, writer)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _answer_chat(self, body: dict[str, Any], path: str,
                           writer: asyncio.StreamWriter) -> bool:
        await self._wait_for_hold()
        fault = self._take_fault(path)
        if fault is not None:
            return await self._apply_fault(fault, body, writer)
        try:
            result = self._answer(body, path)
        except BadRequest as exc:
            await _send_json(writer, exc.status, error_body(exc.status, exc.message, exc.param))
            return True
        payload, n_prompt, n_out = result
        delay = self.latency_s + n_prompt * self.prefill_per_token_s + n_out * self.per_token_s
        if delay:
            await asyncio.sleep(delay)
        if body.get("stream"):
            await self._stream(writer, payload, body)
        else:
            await _send_json(writer, 200, payload)
        return True

    async def _apply_fault(self, fault: Fault, body: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        k = fault.kind
        if k == "hang":
            await asyncio.sleep(3600)
            return False
        if k == "close":
            return False
        if k == "delay":
            await asyncio.sleep(fault.delay_s)
            try:
                payload, _, _ = self._answer(body, fault.path)
            except BadRequest as exc:
                await _send_json(writer, exc.status, error_body(exc.status, exc.message, exc.param))
                return True
            await _send_json(writer, 200, payload)
            return True
        if k == "status":
            b = fault.body if fault.body is not None else error_body(fault.status, f"injected {fault.status}")
            data = b if isinstance(b, bytes) else (b.encode() if isinstance(b, str) else json.dumps(b).encode())
            await _send(writer, fault.status, data, "application/json", fault.headers)
            return True
        if k == "raw":
            b = fault.body
            data = b if isinstance(b, bytes) else (b.encode() if isinstance(b, str) else json.dumps(b).encode())
            await _send(writer, 200, data, "application/json", fault.headers)
            return True
        if k == "text":
            payload = self._chat_payload(body, fault.text, fault.finish_reason, None,
                                         count_prompt_tokens(last_user_content(body)), len(tokenize(fault.text)))
            await _send_json(writer, 200, payload)
            return True
        payload, _, _ = self._answer(body, fault.path)
        data = json.dumps(payload).encode()
        head = _head(200, len(data), "application/json", {})
        if k == "trickle":
            writer.write(head)
            step = max(1, len(data) // 200)  # ~200 slow writes whatever the body size
            for i in range(0, len(data), step):
                writer.write(data[i:i + step])
                await writer.drain()
                await asyncio.sleep(fault.delay_s or 0.05)
            return True
        if k == "reset":
            writer.write(head + data[: max(1, len(data) // 3)])
            await writer.drain()
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        raise ValueError(f"unknown fault kind {k!r}")

    # -- OpenAI / vLLM semantics ---------------------------------------------------------------------------
    def _tokenize(self, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        """vLLM's ``/tokenize`` (chat or prompt form) and ``/detokenize``: same request and answer fields."""
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            return 400, error_body(400, "JSON decode error")
        if not isinstance(body, dict):
            return 400, error_body(400, "Input should be a valid dictionary")
        with self._lock:
            self.tokenize_requests.append({"path": path, **body})
        if body.get("model") not in (None, self.model):
            return 404, error_body(404, f"The model `{body.get('model')}` does not exist. Valid aliases: "
                                        f"{self.model}.", "model")
        if path == "/detokenize":
            tokens = body.get("tokens")
            if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
                return 400, error_body(400, "tokens: Input should be a valid list of integers")
            return 200, {"prompt": real_tokenizer().decode(tokens, skip_special_tokens=False)}
        if "messages" in body:
            cont = bool(body.get("continue_final_message"))
            agp = bool(body.get("add_generation_prompt", True))
            if cont and agp:
                return 400, error_body(400, "Cannot set both `continue_final_message` and `add_generation_prompt` "
                                            "to True.")
            try:
                text = render_chat(body["messages"], add_generation_prompt=agp, continue_final_message=cont)
            except Exception as exc:
                return 400, error_body(400, f"chat template error: {exc}")
            special = bool(body.get("add_special_tokens", False))
        else:
            text, special = str(body.get("prompt") or ""), bool(body.get("add_special_tokens", True))
        enc = real_tokenizer().encode(text, add_special_tokens=special)
        return 200, {"count": len(enc.ids), "max_model_len": self.max_model_len, "tokens": list(enc.ids),
                     "token_strs": list(enc.tokens) if body.get("return_token_strs") else None}

    def _models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": self.model, "object": "model", "created": int(time.time()), "owned_by": "vllm",
            "root": self.model, "parent": None, "max_model_len": self.max_model_len,
            "permission": [{"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission",
                            "created": int(time.time()), "allow_create_engine": False, "allow_sampling": True,
                            "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                            "allow_fine_tuning": False, "organization": "*", "group": None, "is_blocking": False}],
        }]}

    def _metrics(self) -> str:
        m, name = self.metrics, self.model
        return (
            "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.\n"
            "# TYPE vllm:prefix_cache_queries_total counter\n"
            f'vllm:prefix_cache_queries_total{{engine="0",model_name="{name}"}} {float(m["queries"])}\n'
            "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.\n"
            "# TYPE vllm:prefix_cache_hits_total counter\n"
            f'vllm:prefix_cache_hits_total{{engine="0",model_name="{name}"}} {float(m["hits"])}\n'
            "# TYPE vllm:request_success_total counter\n"
            f'vllm:request_success_total{{engine="0",finished_reason="stop",model_name="{name}"}} '
            f'{float(m["requests"])}\n'
        )

    def _answer(self, body: dict[str, Any], path: str) -> tuple[dict[str, Any], int, int]:
        if body.get("model") != self.model:
            raise BadRequest(404, f"The model `{body.get('model')}` does not exist. Valid aliases: {self.model}.",
                             "model")
        msgs = body.get("messages")
        if path == "/v1/chat/completions" and (not isinstance(msgs, list) or not msgs):
            raise BadRequest(400, "messages: Field required" if msgs is None else "messages must not be empty")
        cont = bool(body.get("continue_final_message"))
        agp = body.get("add_generation_prompt", True)
        if cont and agp:
            raise BadRequest(400, "Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        prompt_text = "".join(
            (m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content")))
            for m in msgs or [])
        n_prompt = self._prompt_tokens(body, path)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise BadRequest(400, f"max_tokens must be at least 1, got {max_tokens}. "
                                  f"(parameter=max_tokens, value={max_tokens})", "max_tokens")
        if n_prompt > self.max_model_len:
            # vLLM 0.32 rejects only a prompt that alone exceeds the context; it clamps max_tokens otherwise.
            raise BadRequest(400, (
                f"This model's maximum context length is {self.max_model_len} tokens. However, your prompt "
                f"contains at least {self.max_model_len + 1} input tokens, which exceeds this limit even without "
                f"any output tokens. Please reduce the length of the input prompt. "
                f"(parameter=input_tokens, value={self.max_model_len + 1})"), "input_tokens")
        want = min(max_tokens or self.max_model_len, self.max_model_len - n_prompt)
        full = self.responder(body)
        prefill = ""
        if cont and msgs and msgs[-1].get("role") == "assistant":
            prefill = msgs[-1].get("content") or ""
        text = full[len(prefill):] if prefill and full.startswith(prefill) else full
        if prefill and not full.startswith(prefill):
            text = _continue_after(prefill, full)
        regex = (body.get("structured_outputs") or {}).get("regex")
        if regex is not None:
            text = _constrain(text, regex)
        intent = text  # what the scripted model means to write, before any cut (its logprobs follow this)
        allowed = body.get("allowed_token_ids")
        if allowed is not None:
            if not isinstance(allowed, list) or not allowed:
                raise BadRequest(400, "allowed_token_ids is not None and empty!", "allowed_token_ids")
            text = _only_allowed(text, [int(t) for t in allowed])
        toks = tokenize(text)
        finish = "stop"
        stops = body.get("stop") or []
        if isinstance(stops, str):
            stops = [stops]
        stop_reason = None
        keep_stop = bool(body.get("include_stop_str_in_output"))
        for s in stops:
            at = text.find(s)
            if s and at >= 0:
                text, stop_reason = text[:at + (len(s) if keep_stop else 0)], s
                toks = tokenize(text)
        eos = False
        if len(toks) >= want and (len(toks) > want or allowed is not None):
            # with allowed_token_ids the model cannot end its turn (<end_of_turn> is not allowed): it stops at
            # max_tokens, as vLLM reports it
            toks, finish = toks[:want], "length"
            text = "".join(toks)
        elif stop_reason is None and len(toks) < want and allowed is None:
            eos = True  # the model ended its turn: vLLM counts <end_of_turn> and lists it in logprobs
        logprobs = self._logprobs(text, body, eos, intent) if body.get("logprobs") else None
        cached = self._cache_lookup(prompt_text, n_prompt)
        role = msgs[-1].get("role", "assistant") if cont and msgs else "assistant"
        payload = self._chat_payload(body, text, finish, logprobs, n_prompt, len(toks) + eos, cached, stop_reason,
                                     role)
        with self._lock:
            self.metrics["requests"] += 1
        return payload, n_prompt, len(toks) + eos

    def _cache_lookup(self, prompt_text: str, n_prompt: int) -> int:
        """Model vLLM's prefix cache crudely: tokens up to the conversation are cached after the first request."""
        cut = prompt_text.find("Human user:")
        prefix = prompt_text[:cut] if cut > 0 else ""
        n_prefix = count_prompt_tokens(prefix) if prefix else 0
        with self._lock:
            self.metrics["queries"] += n_prompt
            hit = prefix in self._prefixes
            self._prefixes.add(prefix)
            cached = (n_prefix // 16) * 16 if hit else 0
            self.metrics["hits"] += cached
        return cached

    def _prompt_tokens(self, body: dict[str, Any], path: str) -> int:
        """The prompt's real token count: the chat template rendered as vLLM renders it, then tokenized."""
        msgs = body.get("messages")
        if path != "/v1/chat/completions" or not isinstance(msgs, list):
            prompt = body.get("prompt")
            return len(prompt) if isinstance(prompt, list) else count_prompt_tokens(str(prompt or ""))
        cont = bool(body.get("continue_final_message"))
        try:
            text = render_chat(msgs, add_generation_prompt=bool(body.get("add_generation_prompt", True)) and not cont,
                               continue_final_message=cont)
        except Exception as exc:  # jinja2's TemplateError, malformed messages: vLLM answers 400
            raise BadRequest(400, f"chat template error: {exc}") from None
        return count_prompt_tokens(text)

    def _logprobs(self, text: str, body: dict[str, Any], eos: bool, intent: str) -> dict[str, Any]:
        """vLLM's ``logprobs.content`` for the generated ``text``. The scripted model puts ``confidence`` on the
        verdict it writes and the rest on the other verdict's first token, at the token where a verdict word starts;
        every other token is near-certain. ``logprob_token_ids`` lists exactly those ids (vLLM 0.32), else the
        alternatives are the top ones; ``return_tokens_as_token_ids`` names tokens ``token_id:N`` as vLLM does
        (the sampled token keeps its own bytes, the listed ones carry the bytes of that name)."""
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        wanted = body.get("logprob_token_ids")
        content = []
        pos = 0
        toks = encode(text)
        for tid, t in toks + ([(106, "<end_of_turn>")] if eos else []):
            alts: list[tuple[int, float]]
            m = _VERDICT_AT.match(intent, pos) if t and intent.startswith(text) else None
            if m:
                word = m.group(0)
                other = word.replace(m.group(1), "unharmful" if m.group(1) == "harmful" else "harmful")
                p = self.confidence
                alts = [(tid, math.log(p)), (encode(other)[0][0], math.log(max(1e-9, 1 - p)))]
            else:
                alts = [(tid, math.log(0.999))]
            if isinstance(wanted, list) and wanted:  # vLLM lists the sampled token first, then the others asked
                known = dict(alts)
                tops = [(tid, alts[0][1])] + [(int(w), known.get(int(w), math.log(1e-6))) for w in wanted
                                              if int(w) != tid]
            else:
                tops = alts[: max(1, int(body.get("top_logprobs") or 0))] if body.get("top_logprobs") else []

            def name(token_id: int, own: str | None = None) -> str:
                return f"token_id:{token_id}" if as_ids else (own if own is not None else piece(token_id))

            content.append({
                "token": name(tid, t), "logprob": alts[0][1], "bytes": list(t.encode()),
                "top_logprobs": [{"token": name(a), "logprob": lp, "bytes": list(name(a).encode())} for a, lp in tops],
            })
            pos += len(t)
        return {"content": content}

    def _chat_payload(self, body: dict[str, Any], text: str, finish: str, logprobs: dict[str, Any] | None,
                      n_prompt: int, n_out: int, cached: int = 0, stop_reason: str | None = None,
                      role: str = "assistant") -> dict[str, Any]:
        """Exactly the keys vLLM 0.32 returns (checked by tests/e2e/real/test_standin_fidelity.py)."""
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{
                "index": 0,
                "message": {"role": role, "content": text, "refusal": None, "annotations": None,
                            "audio": None, "function_call": None, "reasoning": None},
                "logprobs": logprobs,
                "finish_reason": finish,
                "stop_reason": stop_reason,
                "token_ids": None,
                "routed_experts": None,
            }],
            "service_tier": None,
            "system_fingerprint": "vllm-0.32.0-standin",
            "usage": {"prompt_tokens": n_prompt, "total_tokens": n_prompt + n_out, "completion_tokens": n_out,
                      "prompt_tokens_details": {"cached_tokens": cached,
                                                "created_cache_tokens": 0 if cached else (n_prompt // 128) * 128,
                                                "multimodal_tokens": None},
                      "completion_tokens_details": None},
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }

    async def _stream(self, writer: asyncio.StreamWriter, payload: dict[str, Any], body: dict[str, Any]) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        cid, created, model = payload["id"], payload["created"], payload["model"]
        text = payload["choices"][0]["message"]["content"]

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": t}) for t in tokenize(text)]
        events.append(chunk({"content": ""}, payload["choices"][0]["finish_reason"]))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [], "usage": payload["usage"]})
        for ev in events:
            _write_chunk(writer, f"data: {json.dumps(ev)}\n\n".encode())
            await writer.drain()
            if self.per_token_s:
                await asyncio.sleep(self.per_token_s)
        _write_chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def _continue_after(prefill: str, full: str) -> str:
    """The model's continuation of a prefill that disagrees with the answer it 'wants'.

    A real model forced to start with ``Prompt harm: unharmful\nResponse harm:`` still judges the response as it
    would have: the stand-in continues after the prefill's last label (``Response harm:``) with what the scripted
    answer says there, and with the whole scripted answer when it has no such label.
    """
    label = prefill.rsplit("\n", 1)[-1]
    at = full.find(label) if label.strip() else -1
    return full[at + len(label):] if at >= 0 else full


_VERDICT_AT = re.compile(r"(?<![A-Za-z]) ?(unharmful|harmful)\b")


def _only_allowed(text: str, allowed: list[int]) -> str:
    """What a model that 'wants' ``text`` generates when only ``allowed`` token ids may be sampled (vLLM's
    ``allowed_token_ids``): its own tokens while they are allowed; where its first token is not, the allowed token
    that spells the longest prefix of what it wanted."""
    toks = encode(text)
    keep = 0
    while keep < len(toks) and toks[keep][0] in allowed:
        keep += 1
    if keep:
        return "".join(t for _, t in toks[:keep])
    fits = [p for p in (piece(t) for t in allowed) if p and text.startswith(p)]
    # none spells what it wanted (only a request made up for a shape check does this): the first allowed token
    return max(fits, key=len) if fits else piece(allowed[0])


def _constrain(text: str, regex: str) -> str:
    """What a grammar-constrained decode of a model that 'wants' ``text`` yields: the longest prefix that matches.

    If no prefix of the scripted answer satisfies the grammar the test's script is wrong for this request shape;
    that is a test bug, reported loudly rather than papered over.
    """
    pat = re.compile(regex, re.DOTALL)
    for end in range(len(text), 0, -1):
        if pat.fullmatch(text, 0, end):
            return text[:end]
    raise BadRequest(500, f"stand-in: scripted answer {text!r} has no prefix matching the regex {regex!r}")


# ------------------------------------------------------------------------------------------------- wire helpers
async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        line = await reader.readline()
    except (ConnectionError, asyncio.LimitOverrunError):
        return None
    if not line:
        return None
    try:
        method, path, _ = line.decode("latin-1").split(" ", 2)
    except ValueError:
        return None
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
    return method, path, headers, body


def _head(status: int, length: int, ctype: str, extra: dict[str, str]) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
              405: "Method Not Allowed", 429: "Too Many Requests", 500: "Internal Server Error",
              502: "Bad Gateway", 503: "Service Unavailable"}.get(status, "Status")
    lines = [f"HTTP/1.1 {status} {reason}", f"content-type: {ctype}", f"content-length: {length}",
             "server: uvicorn"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send(writer: asyncio.StreamWriter, status: int, data: bytes, ctype: str,
                extra: dict[str, str] | None = None) -> None:
    writer.write(_head(status, len(data), ctype, extra or {}) + data)
    await writer.drain()


async def _send_json(writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
    await _send(writer, status, json.dumps(obj).encode(), "application/json")


def _write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


# ----------------------------------------------------------------------------------------- scripted main model
def main_llm(responder: Responder | None = None, **kw: Any) -> StandIn:
    """A stand-in for the application's own LLM (``models: - type: main``)."""
    from tests.support.rails_configs import MAIN_MODEL, main_responder

    return StandIn(model=MAIN_MODEL, responder=responder or main_responder, max_model_len=1_000_000, **kw)
