"""The vLLM (OpenAI-compatible) HTTP engine: carries a plan's requests to ``/v1/chat/completions``.

One pooled ``httpx.AsyncClient`` per event loop (connections are loop-bound), reused by every check; HTTP faults
mapped to the package's errors; which replica gets an attempt and when to retry is
:mod:`nemo_csr_rail.engines.replicas`. Each attempt hands the request, with this engine's transport to the replica,
to :func:`nemo_csr_rail.plans.one_token.send`, which looks up and builds the one-token request where the request
and the replica allow it (else sends the grammar plan's body as it is) and returns the completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
import weakref
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import httpx

from nemo_csr_rail.completion import Completion, Instrument
from nemo_csr_rail.engines.deadline import MIN_START_S, Deadline, LoopLag, within
from nemo_csr_rail.engines.replicas import ReplicaSet
from nemo_csr_rail.engines.replicas import (
    attempt_status as attempt_status,  # re-exported: telemetry tests use it
)
from nemo_csr_rail.engines.transport import BufferedBackend, BufferedTransport
from nemo_csr_rail.errors import (
    ConfigError,
    CsrError,
    GuardHTTPError,
    GuardProtocolError,
    GuardTimeout,
    GuardTLSError,
    GuardUnavailable,
    InputTooLong,
)
from nemo_csr_rail.options import DecodeOptions, HttpOptions, split_overrides
from nemo_csr_rail.plans import one_token
from nemo_csr_rail.prompt import GuardPrompt

log = logging.getLogger("nemo_csr_rail")
_CONTEXT_MARKERS = ("maximum context length", "context length", "too long", "max_model_len")


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


def _ssl_context(verify: bool | str) -> ssl.SSLContext | bool:
    """``True`` (system CAs), ``False`` (no verification, explicit opt-out) or a CA bundle path."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    # One context shared by every pooled client: loading the CA store costs ~30 ms per context.
    return httpx.create_ssl_context() if verify else False


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return "CERTIFICATE_VERIFY_FAILED" in text or "SSL:" in text


# httpcore assigns queued requests to connections in O(requests x connections) per event; with hundreds of
# connections in one pool that dominates the CPU (measured: 256 in flight made the client CPU-bound and checks
# missed their deadline). Several small pools, each request on the least busy one, keep that cost flat.
POOL_SHARD = 8
KEEPALIVE_EXPIRY_S = 3.0
#: how long a background grammar warm-up request may take (the compile itself: ~13 s on a small CPU)
WARM_UP_TIMEOUT_S = 120.0


class _Pool:
    def __init__(self, clients: list[httpx.AsyncClient], sem: asyncio.Semaphore) -> None:
        self.clients = clients
        self.inflight = [0] * len(clients)
        self.sem = sem
        self.warmed = False
        self.lag = LoopLag()

    @property
    def closed(self) -> bool:
        return any(c.is_closed for c in self.clients)

    @contextlib.contextmanager
    def lease(self) -> Iterator[httpx.AsyncClient]:
        i = min(range(len(self.clients)), key=self.inflight.__getitem__)
        self.inflight[i] += 1
        try:
            yield self.clients[i]
        finally:
            self.inflight[i] -= 1


class VllmHttpEngine:
    """Talks to vLLM's ``/v1/chat/completions``. Safe to share across coroutines and event loops."""

    name = "vllm_http"

    def __init__(
        self,
        base_urls: Sequence[str],
        model: str,
        *,
        api_key: str | None = None,
        verify: bool | str = True,
        options: HttpOptions | None = None,
        top_logprobs: int = DecodeOptions.top_logprobs,
        warm_regexes: Sequence[str] = (),
        **overrides: Any,
    ) -> None:
        """``options`` carries retries, concurrency, breaker and transport (``timeout_s`` is the caller's, per
        call); single options may be given as keywords instead (``max_retries=0``), overriding the object."""
        _, http_overrides = split_overrides(overrides)
        opts = replace(options or HttpOptions(), **http_overrides)
        if opts.transport not in ("buffered", "httpx"):
            raise ValueError(f"transport must be 'buffered' or 'httpx', not {opts.transport!r}")
        self.model = model
        self.options = opts
        self.replicas = ReplicaSet(base_urls, max_retries=opts.max_retries, breaker_threshold=opts.breaker_threshold,
                                   breaker_cooldown_s=opts.breaker_cooldown_s, routing=opts.replica_routing)
        self._api_key = api_key
        self._max_concurrency = opts.max_concurrency
        self._verify = verify
        self._transport = opts.transport
        self._top_logprobs = top_logprobs
        self._plans = one_token.PlanCache()  # one-token plan per (replica, prefill), looked up once
        #: grammars to have each replica compile once, in the background, when the engine is first used
        self._warm_regexes = tuple(warm_regexes)
        self._warming: set[asyncio.Task[None]] = set()
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()
        #: telemetry's hook (nemo_csr_rail.telemetry): per-request reports and trace headers; None = not observed
        self.instrument: Instrument | None = None

    @property
    def base_urls(self) -> tuple[str, ...]:
        return self.replicas.base_urls

    def _client(self) -> _Pool:
        loop = asyncio.get_running_loop()
        pool = self._per_loop.get(loop)
        if pool is None or pool.closed:
            self._forget_closed_loops()
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            ctx = _ssl_context(self._verify)
            shards = max(1, -(-self._max_concurrency // POOL_SHARD))
            per = -(-self._max_concurrency // shards)
            # Drop idle connections before the server does (uvicorn, which serves vLLM, closes them after 5 s):
            # reusing one the server is closing right now fails the check with a ReadError.
            limits = httpx.Limits(max_connections=per, max_keepalive_connections=per,
                                  keepalive_expiry=KEEPALIVE_EXPIRY_S)
            backend = BufferedBackend() if self._transport == "buffered" else None  # one read buffer per loop
            clients = [
                httpx.AsyncClient(
                    headers=headers,
                    verify=ctx,
                    timeout=httpx.Timeout(30.0, connect=5.0),
                    limits=limits,
                    transport=BufferedTransport(backend=backend, verify=ctx, limits=limits) if backend else None,
                )
                for _ in range(shards)
            ]
            pool = _Pool(clients, asyncio.Semaphore(self._max_concurrency))
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
            body["top_logprobs"] = self._top_logprobs
        if prompt.stop:
            body["stop"] = list(prompt.stop)
            body["include_stop_str_in_output"] = True
        return body

    def breaker_states(self) -> dict[str, str]:
        return self.replicas.breaker_states()

    async def complete(self, prompt: GuardPrompt, *, timeout_s: float) -> Completion:
        start = time.monotonic()
        pool = self._client()
        if not pool.warmed:
            self._warm(pool)
        lag = pool.lag
        # Give up early enough that a late timer and what follows it still end by the deadline (engines/deadline.py):
        # under overload the event loop runs every timer late.
        deadline = Deadline(start + timeout_s, timeout_s, lag)
        body = self.payload(prompt)
        lag.enter()
        try:
            await self._slot(pool.sem, deadline.give_up(), timeout_s)
            try:
                left = deadline.give_up() - time.monotonic()
                if left < MIN_START_S:
                    raise GuardTimeout(f"guard check exceeded {timeout_s:g}s: not started, {max(left, 0.0) * 1000:.0f} "
                                       f"ms were left after waiting for a request slot, too little to start a request "
                                       f"(max_concurrency {self._max_concurrency} reached; event loop "
                                       f"{lag.estimate * 1000:.0f} ms behind)")

                async def request(base_url: str, budget: float) -> Completion:
                    with pool.lease() as client:
                        return await self._decode(client, base_url, body, budget, prompt)

                async def send(base_url: str, budget: float) -> Completion:
                    # httpx's timeouts are per read: this bounds the whole response
                    return await within(request(base_url, budget), budget,
                                        f"guard server at {base_url} did not answer in time", deadline)

                return await self.replicas.run(send, deadline=deadline.give_up, timeout_s=timeout_s,
                                               instrument=self.instrument, key=prompt.affinity)
            finally:
                pool.sem.release()
        finally:
            lag.exit()

    async def _slot(self, sem: asyncio.Semaphore, give_up: float, timeout_s: float) -> None:
        """One of the ``max_concurrency`` request slots, or ``GuardTimeout`` at once when none can be had in time:
        waiting is part of the check's deadline, and a wait that would leave less than ``MIN_START_S`` is not
        started at all."""
        if not sem.locked():
            await sem.acquire()
            return
        wait = give_up - MIN_START_S - time.monotonic()
        if wait <= 0:
            raise GuardTimeout(f"guard check exceeded {timeout_s:g}s: not started, all {self._max_concurrency} request "
                               "slots (max_concurrency) are busy and too little time is left to wait for one")
        try:
            await asyncio.wait_for(sem.acquire(), wait)
        except asyncio.TimeoutError:
            raise GuardTimeout(f"guard check exceeded {timeout_s:g}s waiting for one of the "
                               f"{self._max_concurrency} request slots (max_concurrency)") from None

    def _warm(self, pool: _Pool) -> None:
        """Have every replica compile the slow grammars now, off the check's path: one background task, one
        one-token ``/v1/completions`` request per grammar and replica, whatever they answer (a compile that outlives
        the server's timeout still lands in its cache). The first check does not wait for it."""
        pool.warmed = True
        if not self._warm_regexes:
            return

        async def warm() -> None:
            for base_url in self.base_urls:
                for regex in self._warm_regexes:
                    body = {"model": self.model, "prompt": "Hello.", "max_tokens": 1, "temperature": 0.0,
                            "structured_outputs": {"regex": regex}}
                    try:
                        with pool.lease() as client:
                            await client.post(base_url + "/completions", json=body,
                                              timeout=httpx.Timeout(WARM_UP_TIMEOUT_S, connect=5.0))
                    except Exception as exc:  # warming is best effort: the checks report real failures
                        log.debug("grammar warm-up at %s: %s: %s", base_url, type(exc).__name__, exc)

        task = asyncio.get_running_loop().create_task(warm())
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _decode(self, client: httpx.AsyncClient, base_url: str, body: dict[str, Any], budget: float,
                      prompt: GuardPrompt) -> Completion:
        """One request to one replica: ``body`` (the grammar plan), or the one-token plan's request where the prompt
        and this replica allow it (:func:`~nemo_csr_rail.plans.one_token.send` builds it; this engine carries it)."""
        start = time.monotonic()

        def post(request: dict[str, Any]) -> Awaitable[Completion]:
            return self._post(client, base_url, request, max(0.001, budget - (time.monotonic() - start)))

        return await one_token.send(self._plans, base_url, prompt, body, model=self.model,
                                    call=self._server_call(client, base_url, budget), post=post)

    async def plan_for(self, client: httpx.AsyncClient, base_url: str, prompt: GuardPrompt,
                       budget: float) -> one_token.OneTokenPlan | None:
        """The one-token plan for this prompt's prefill on this replica, or None (grammar plan)."""
        return await one_token.plan_for(self._plans, base_url, prompt, model=self.model,
                                        call=self._server_call(client, base_url, budget))

    def plan_decisions(self) -> dict[tuple[str, str], one_token.Decision]:
        """Every (replica, prefill) decided so far: a one-token plan or why not (``doctor``, tests)."""
        return self._plans.decisions()

    @staticmethod
    def _server_call(client: httpx.AsyncClient, base_url: str, budget: float) -> one_token.Call:
        """The one-token look-up's transport to this replica (``POST`` to the server root: ``/tokenize``,
        ``/detokenize``): a dead replica raises as its chat request would (so failover applies); an auth, overload
        or server error is transient (None); any other status means the endpoint keeps the grammar plan."""
        root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url

        async def call(path: str, payload: dict[str, Any]) -> Any:
            timeout = httpx.Timeout(max(0.001, budget), connect=min(max(0.001, budget), 5.0))
            try:
                r = await client.post(root + path, json=payload, timeout=timeout)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if _is_tls_failure(exc):
                    raise GuardTLSError(f"TLS with the guard server at {base_url} failed: {exc}") from None
                raise GuardUnavailable(f"guard server at {base_url} unreachable: {type(exc).__name__}: {exc}") from None
            except httpx.HTTPError:
                return None
            if r.status_code == 200:
                try:
                    return r.json()
                except ValueError:
                    return None
            if r.status_code in (401, 403, 408, 429) or r.status_code >= 500:
                return None
            return one_token.Fallback(f"{path} answered HTTP {r.status_code}: {_error_message(r)[:200]}")

        return call

    async def _post(self, client: httpx.AsyncClient, base_url: str, body: dict[str, Any], remaining: float) -> Completion:
        url = base_url + "/chat/completions"
        headers = self.instrument.request_headers() if self.instrument is not None else None
        try:
            resp = await client.post(url, json=body, headers=headers,
                                     timeout=httpx.Timeout(remaining, connect=min(remaining, 5.0)))
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise GuardUnavailable(f"guard server at {base_url} did not accept the connection in time") from None
            raise GuardTimeout(f"guard server at {base_url} did not answer in time") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise ConfigError("base_url", f"invalid guard URL {url!r}: {exc}") from None
        except httpx.ConnectError as exc:
            if _is_tls_failure(exc):
                raise GuardTLSError(f"TLS with the guard server at {base_url} failed: {exc}") from None
            raise GuardUnavailable(f"guard server at {base_url} unreachable: {type(exc).__name__}: {exc}") from None
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

    def _forget_closed_loops(self) -> None:
        """Drop the pools of event loops that have ended (a new loop per call, as sync callers do).

        A pool's connections refer to their loop, so the weak mapping alone never lets go of them; their sockets
        can no longer be closed through the dead loop, so the transports close them when collected.
        """
        for loop in [lp for lp in self._per_loop if lp.is_closed()]:
            del self._per_loop[loop]

    async def aclose(self) -> None:
        """Close this event loop's connections; forget every other loop's (they cannot be closed from here)."""
        mine = [t for t in self._warming if t.get_loop() is asyncio.get_running_loop()]
        for task in mine:
            task.cancel()
        await asyncio.gather(*mine, return_exceptions=True)
        pool = self._per_loop.pop(asyncio.get_running_loop(), None)
        self._per_loop.clear()
        for client in pool.clients if pool else ():
            with contextlib.suppress(Exception):
                await client.aclose()
