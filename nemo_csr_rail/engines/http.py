"""The vLLM (OpenAI-compatible) HTTP engine.

One pooled ``httpx.AsyncClient`` per event loop (connections are loop-bound), reused by every check; retries only
for faults that a retry can fix, with jittered backoff, always inside the caller's deadline; replicas are tried in
turn with a small circuit breaker so a dead one stops costing a connect timeout per check.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from nemo_csr_rail.engines.base import Completion
from nemo_csr_rail.errors import (
    CsrError,
    GuardHTTPError,
    GuardProtocolError,
    GuardTimeout,
    GuardUnavailable,
    InputTooLong,
)
from nemo_csr_rail.prompt import GuardPrompt

TOP_LOGPROBS = 5
SHARD_CONNECTIONS = 16
KEEPALIVE_EXPIRY_S = 3.0
_CONTEXT_MARKERS = ("maximum context length", "context length", "too long", "max_model_len")


@dataclass
class _Replica:
    base_url: str
    failures: int = 0
    open_until: float = 0.0

    def available(self, now: float) -> bool:
        return now >= self.open_until

    def record(self, ok: bool, *, threshold: int, cooldown_s: float) -> None:
        if ok:
            self.failures, self.open_until = 0, 0.0
            return
        self.failures += 1
        if self.failures >= threshold:
            self.open_until = time.monotonic() + cooldown_s


class _LoopPool:
    """The connections of one event loop: ``max_concurrency`` keep-alive connections, sharded over several httpx
    clients of at most :data:`SHARD_CONNECTIONS` each, behind one semaphore (back-pressure: check number
    ``max_concurrency + 1`` waits here, not in a socket queue).

    Sharding matters above a few dozen requests in flight: httpcore scans every connection of a pool each time a
    request starts or ends, so one pool of 256 connections costs O(in-flight^2) CPU; shards keep each scan short.
    """

    def __init__(self, make_client: Any, max_concurrency: int) -> None:
        self._n = max(1, -(-max_concurrency // SHARD_CONNECTIONS))
        self._per = -(-max_concurrency // self._n)
        self._make = make_client
        # Shards are opened on demand (each httpx client builds an SSL context, ~ms): one until it is full.
        self.clients: list[httpx.AsyncClient] = [make_client(self._per)]
        self.load = [0]
        self.sem = asyncio.Semaphore(max_concurrency)

    @property
    def is_closed(self) -> bool:
        return any(c.is_closed for c in self.clients)

    def lease(self) -> int:
        load = self.load
        i = load.index(min(load)) if len(load) > 1 else 0
        if load[i] >= self._per and len(load) < self._n:
            self.clients.append(self._make(self._per))
            load.append(0)
            i = len(load) - 1
        load[i] += 1
        return i

    def release(self, i: int) -> None:
        self.load[i] -= 1


def _error_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300] or resp.reason_phrase
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)[:500]
    if err:
        return str(err)[:500]
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])[:500]
    return json.dumps(body)[:300]


def _status_error(resp: httpx.Response, model: str) -> CsrError:
    msg = _error_message(resp)
    status = resp.status_code
    if status == 400 and any(m in msg.lower() for m in _CONTEXT_MARKERS):
        return InputTooLong(f"the conversation does not fit the guard model's context: {msg}")
    hint = {
        401: " (check the guard API key: models[].api_key_env_var)",
        403: " (check the guard API key: models[].api_key_env_var)",
        404: f" (is the server serving model {model!r}? compare with /v1/models or vLLM's --served-model-name)",
    }.get(status, "")
    return GuardHTTPError(status, msg + hint)


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class VllmHttpEngine:
    """Talks to vLLM's ``/v1/chat/completions``. Safe to share across coroutines and event loops."""

    name = "vllm_http"

    def __init__(
        self,
        base_urls: Sequence[str],
        model: str,
        *,
        api_key: str | None = None,
        max_retries: int = 2,
        max_concurrency: int = 256,
        verify: bool | str = True,
        breaker_threshold: int = 3,
        breaker_cooldown_s: float = 5.0,
    ) -> None:
        if not base_urls:
            raise ValueError("at least one base_url is required")
        self.model = model
        self._replicas = [_Replica(u.rstrip("/")) for u in base_urls]
        self._api_key = api_key
        self._max_retries = max_retries
        self._max_concurrency = max_concurrency
        self._verify = verify
        self._breaker = (breaker_threshold, breaker_cooldown_s)
        self._next = 0
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPool] = weakref.WeakKeyDictionary()

    @property
    def base_urls(self) -> tuple[str, ...]:
        return tuple(r.base_url for r in self._replicas)

    def _make_client(self, connections: int) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        return httpx.AsyncClient(
            headers=headers,
            verify=self._verify,
            timeout=httpx.Timeout(30.0, connect=5.0),
            # Drop idle connections before the server does (uvicorn, which serves vLLM, closes them after 5 s, as
            # does httpx by default): reusing one the server is closing right now fails the check with a ReadError.
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections,
                                keepalive_expiry=KEEPALIVE_EXPIRY_S),
        )

    def _pool(self) -> _LoopPool:
        loop = asyncio.get_running_loop()
        pool = self._per_loop.get(loop)
        if pool is None or pool.is_closed:
            pool = _LoopPool(self._make_client, self._max_concurrency)
            self._per_loop[loop] = pool
        return pool

    def payload(self, prompt: GuardPrompt) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": prompt.messages,
            "temperature": 0.0,
            "max_tokens": prompt.max_tokens,
        }
        if prompt.prefill:
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        if prompt.regex:
            body["structured_outputs"] = {"regex": prompt.regex}
        if prompt.want_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = TOP_LOGPROBS
        if prompt.stop:
            body["stop"] = list(prompt.stop)
            body["include_stop_str_in_output"] = True
        return body

    def _pick(self) -> list[_Replica]:
        """Replicas in try order: round-robin start, closed breakers first, open ones last (as a last resort)."""
        now = time.monotonic()
        n = len(self._replicas)
        start = self._next % n
        self._next += 1
        order = self._replicas[start:] + self._replicas[:start]
        return [r for r in order if r.available(now)] + [r for r in order if not r.available(now)]

    async def complete(self, prompt: GuardPrompt, *, timeout_s: float) -> Completion:
        pool = self._pool()
        async with pool.sem:
            shard = pool.lease()
            try:
                return await self._complete(pool.clients[shard], prompt, timeout_s)
            finally:
                pool.release(shard)

    async def _complete(self, client: httpx.AsyncClient, prompt: GuardPrompt, timeout_s: float) -> Completion:
        deadline = time.monotonic() + timeout_s
        body = self.payload(prompt)
        last: CsrError | None = None
        attempt = 0
        while True:
            for replica in self._pick():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GuardTimeout(f"guard check exceeded {timeout_s:g}s" + (f" (last error: {last.message})" if last else ""))
                try:
                    result = await self._post(client, replica.base_url, body, remaining)
                except (GuardUnavailable, GuardHTTPError, GuardTimeout) as exc:
                    replica.record(False, threshold=self._breaker[0], cooldown_s=self._breaker[1])
                    last = exc
                    if isinstance(exc, GuardHTTPError) and not exc.retryable:
                        raise
                    if isinstance(exc, GuardTimeout):
                        raise
                    continue
                replica.record(True, threshold=self._breaker[0], cooldown_s=self._breaker[1])
                return result
            attempt += 1
            if attempt > self._max_retries:
                assert last is not None
                raise last
            delay = min(0.05 * (2 ** attempt), 1.0) * random.uniform(0.5, 1.5)
            ra = getattr(last, "retry_after", None)
            if ra is not None:
                delay = max(delay, ra)
            if time.monotonic() + delay >= deadline:
                assert last is not None
                raise last
            await asyncio.sleep(delay)

    async def _post(self, client: httpx.AsyncClient, base_url: str, body: dict[str, Any], remaining: float) -> Completion:
        url = base_url + "/chat/completions"
        try:
            resp = await client.post(url, json=body, timeout=httpx.Timeout(remaining, connect=min(remaining, 5.0)))
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise GuardUnavailable(f"guard server at {base_url} did not accept the connection in time") from None
            raise GuardTimeout(f"guard server at {base_url} did not answer in time") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise GuardHTTPError(0, f"invalid guard URL {url!r}: {exc}") from None
        except httpx.HTTPError as exc:
            raise GuardUnavailable(f"guard server at {base_url} unreachable: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            err = _status_error(resp, self.model)
            if isinstance(err, GuardHTTPError):
                err.retry_after = _retry_after(resp)  # type: ignore[attr-defined]
            raise err
        return self._completion(resp, base_url)

    @staticmethod
    def _completion(resp: httpx.Response, base_url: str) -> Completion:
        try:
            data = resp.json()
        except ValueError:
            raise GuardProtocolError(f"guard server at {base_url} returned invalid JSON") from None
        try:
            choices = data["choices"]
            if not choices:
                raise GuardProtocolError(f"guard server at {base_url} returned no choices")
            choice = choices[0]
            message = choice.get("message") or {}
            text = message.get("content")
            if text is None:
                text = ""
            if not isinstance(text, str):
                raise GuardProtocolError("guard server returned non-text content")
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            lp = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
            usage = data.get("usage") or {}
            details = usage.get("prompt_tokens_details") or {}
            return Completion(
                text=text,
                finish_reason=choice.get("finish_reason"),
                reasoning_content=reasoning if isinstance(reasoning, str) else None,
                logprobs=lp,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
                cached_tokens=details.get("cached_tokens") if isinstance(details, dict) else None,
                endpoint=base_url,
            )
        except GuardProtocolError:
            raise
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise GuardProtocolError(f"guard server at {base_url} returned an unexpected body ({type(exc).__name__})") from None

    async def aclose(self) -> None:
        for pool in list(self._per_loop.values()):
            for client in pool.clients:
                await client.aclose()
        self._per_loop.clear()
