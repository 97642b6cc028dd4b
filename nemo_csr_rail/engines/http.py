"""The vLLM (OpenAI-compatible) HTTP engine.

One pooled ``httpx.AsyncClient`` per event loop (connections are loop-bound), reused by every check; retries only
for faults that a retry can fix, with jittered backoff, always inside the caller's deadline; replicas are tried in
turn with a small circuit breaker so a dead one stops costing a connect timeout per check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from nemo_csr_rail.engines import token_floor
from nemo_csr_rail.engines.base import Attempt, Completion, Instrument
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
from nemo_csr_rail.options import DecodeOptions, HttpOptions
from nemo_csr_rail.prompt import GuardPrompt

TOP_LOGPROBS = DecodeOptions.top_logprobs
_CONTEXT_MARKERS = ("maximum context length", "context length", "too long", "max_model_len")


@dataclass
class _Replica:
    """One base URL and its circuit breaker: closed → open (after ``threshold`` consecutive failures) → half-open
    (after ``cooldown_s``: exactly one probe request at a time) → closed on the probe's success, open again on failure.
    """

    base_url: str
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False

    def state(self, now: float) -> str:
        if self.open_until == 0.0:
            return "closed"
        return "open" if now < self.open_until else "half_open"

    def record(self, ok: bool, *, threshold: int, cooldown_s: float) -> None:
        if ok:
            self.failures, self.open_until = 0, 0.0
            return
        self.failures += 1
        if self.failures >= threshold or self.open_until:
            self.open_until = time.monotonic() + cooldown_s


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


def attempt_status(exc: BaseException | None) -> str:
    """How one request ended, for :class:`Attempt`: the HTTP status, or the failure that left none."""
    if isinstance(exc, GuardHTTPError):
        return str(exc.status)
    for kind, status in ((InputTooLong, "400"), (GuardTLSError, "tls_error"), (GuardTimeout, "timeout"),
                         (GuardUnavailable, "unreachable"), (GuardProtocolError, "protocol_error"),
                         (ConfigError, "config_error")):
        if isinstance(exc, kind):
            return status
    return "error"


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


class _Pool:
    def __init__(self, clients: list[httpx.AsyncClient], sem: asyncio.Semaphore) -> None:
        self.clients = clients
        self.inflight = [0] * len(clients)
        self.sem = sem

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


class _Retry(Exception):
    """Internal: this replica failed in a way another attempt may fix."""


class VllmHttpEngine:
    """Talks to vLLM's ``/v1/chat/completions``. Safe to share across coroutines and event loops."""

    name = "vllm_http"

    def __init__(
        self,
        base_urls: Sequence[str],
        model: str,
        *,
        api_key: str | None = None,
        max_retries: int = HttpOptions.max_retries,
        max_concurrency: int = HttpOptions.max_concurrency,
        verify: bool | str = True,
        breaker_threshold: int = HttpOptions.breaker_threshold,
        breaker_cooldown_s: float = HttpOptions.breaker_cooldown_s,
        transport: Literal["buffered", "httpx"] = HttpOptions.transport,
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
        if transport not in ("buffered", "httpx"):
            raise ValueError(f"transport must be 'buffered' or 'httpx', not {transport!r}")
        self._transport = transport
        self._next = 0
        self._plans = token_floor.PlanCache()  # one-token plan per (replica, prefill), looked up once
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()
        #: telemetry's hook (nemo_csr_rail.telemetry): per-request reports and trace headers; None = not observed
        self.instrument: Instrument | None = None

    @property
    def base_urls(self) -> tuple[str, ...]:
        return tuple(r.base_url for r in self._replicas)

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
            body["top_logprobs"] = TOP_LOGPROBS
        if prompt.stop:
            body["stop"] = list(prompt.stop)
            body["include_stop_str_in_output"] = True
        return body

    def _order(self) -> list[_Replica]:
        """Replicas in round-robin order, starting one further on each call (spreads load across replicas)."""
        n = len(self._replicas)
        start = self._next % n
        self._next += 1
        return self._replicas[start:] + self._replicas[:start]

    def breaker_states(self) -> dict[str, str]:
        now = time.monotonic()
        return {r.base_url: r.state(now) for r in self._replicas}

    async def complete(self, prompt: GuardPrompt, *, timeout_s: float) -> Completion:
        deadline = time.monotonic() + timeout_s
        pool = self._client()
        body = self.payload(prompt)
        sem = pool.sem
        if sem.locked():  # back-pressure: waiting for a slot is part of the check's deadline
            try:
                await asyncio.wait_for(sem.acquire(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise GuardTimeout(f"guard check exceeded {timeout_s:g}s waiting for one of the "
                                   f"{self._max_concurrency} request slots (max_concurrency)") from None
        else:
            await sem.acquire()
        try:
            return await self._attempts(pool, body, deadline, timeout_s, prompt)
        finally:
            sem.release()

    async def _attempts(self, pool: _Pool, body: dict[str, Any], deadline: float, timeout_s: float,
                        prompt: GuardPrompt | None = None) -> Completion:
        threshold, cooldown = self._breaker
        last: CsrError | None = None
        retry_after = 0.0  # the longest Retry-After of the current round, whichever replica sent it
        attempt = 0
        sent = 0

        async def observed(replica: _Replica, share: int) -> Completion:
            """``attempt_on``, reported to the instrument (if any) once the breaker has recorded the result."""
            nonlocal sent
            instrument = self.instrument
            if instrument is None:
                return await attempt_on(replica, share)
            retry, sent = sent > 0, sent + 1
            before, status, t0 = replica.state(time.monotonic()), "cancelled", time.perf_counter()
            try:
                result = await attempt_on(replica, share)
                status = "200"
                return result
            except _Retry:
                status = attempt_status(last)
                raise
            except CsrError as exc:
                status = attempt_status(exc)
                raise
            finally:
                with contextlib.suppress(Exception):
                    instrument.attempt(Attempt(replica.base_url, status, time.perf_counter() - t0, retry, before,
                                               replica.state(time.monotonic())))

        async def attempt_on(replica: _Replica, share: int) -> Completion:
            """One request to ``replica``, with 1/``share`` of the time left: when other replicas are still to be
            tried this round, a replica that hangs (or drops connection attempts) must leave them time to answer."""
            nonlocal last, retry_after
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GuardTimeout(f"guard check exceeded {timeout_s:g}s" + (f" (last error: {last.message})" if last else ""))
            budget = remaining / share
            try:
                with pool.lease() as client:
                    try:
                        result = await asyncio.wait_for(self._decode(client, replica.base_url, body, budget, prompt),
                                                        budget)
                    except asyncio.TimeoutError:  # httpx's timeouts are per read: this bounds the whole response
                        raise GuardTimeout(f"guard server at {replica.base_url} did not answer in time") from None
            except (GuardUnavailable, GuardHTTPError, GuardTimeout) as exc:
                last = exc
                if isinstance(exc, GuardTLSError) or (isinstance(exc, GuardHTTPError) and not exc.retryable):
                    raise  # the server is up and answered; no retry can change this
                replica.record(False, threshold=threshold, cooldown_s=cooldown)
                retry_after = max(retry_after, getattr(exc, "retry_after", None) or 0.0)
                if isinstance(exc, GuardTimeout) and share == 1:
                    raise  # the whole remaining budget was spent on this attempt
                raise _Retry() from None
            except CsrError:
                replica.record(True, threshold=threshold, cooldown_s=cooldown)  # it answered: it is alive
                raise
            replica.record(True, threshold=threshold, cooldown_s=cooldown)
            return result

        while True:
            now = time.monotonic()
            order = self._order()
            ready = [r for r in order if not (r.state(now) == "open" or (r.state(now) == "half_open" and r.probing))]
            # Every breaker open: a guard must still try rather than fail every check for cooldown_s.
            candidates = ready or order
            retry_after = 0.0
            for i, replica in enumerate(candidates):
                probe = bool(ready) and replica.state(time.monotonic()) == "half_open"
                if probe:
                    if replica.probing:
                        continue  # another check took the probe meanwhile
                    replica.probing = True
                try:
                    return await observed(replica, len(candidates) - i)
                except _Retry:
                    continue
                finally:
                    if probe:
                        replica.probing = False
            attempt += 1
            if attempt > self._max_retries:
                assert last is not None
                raise last
            delay = max(min(0.05 * (2 ** attempt), 1.0) * random.uniform(0.5, 1.5), retry_after)
            if time.monotonic() + delay >= deadline:
                assert last is not None
                raise last
            await asyncio.sleep(delay)

    async def _decode(self, client: httpx.AsyncClient, base_url: str, body: dict[str, Any], budget: float,
                      prompt: GuardPrompt | None) -> Completion:
        """One request to one replica: the one-token plan where the prompt and this replica allow it, else ``body``
        (the grammar plan). A server that refuses the plan's parameters keeps the grammar plan from then on."""
        start = time.monotonic()
        plan = await self.plan_for(client, base_url, prompt, budget) if prompt is not None else None
        if plan is None:
            return await self._post(client, base_url, body, max(0.001, budget - (time.monotonic() - start)))
        assert prompt is not None
        try:
            done = await self._post(client, base_url, token_floor.payload(body, plan, logprobs=prompt.want_logprobs),
                                    max(0.001, budget - (time.monotonic() - start)))
        except GuardHTTPError as exc:
            if not token_floor.unsupported(exc.status, exc.message):
                raise
            self._plans.settle(base_url, prompt.prefill,
                               token_floor.Fallback(f"the server refused the one-token request: {exc.message[:200]}"))
            return await self._post(client, base_url, body, max(0.001, budget - (time.monotonic() - start)))
        return token_floor.read(plan, done)

    async def plan_for(self, client: httpx.AsyncClient, base_url: str, prompt: GuardPrompt,
                       budget: float) -> token_floor.OneTokenPlan | None:
        """The one-token plan for this prompt's prefill on this replica, or None (grammar plan)."""
        if not prompt.verdict_choices or not prompt.prefill:
            return None
        known = self._plans.known(base_url, prompt.prefill)
        if known is None:
            known = await self._plans.get(base_url, prompt.prefill,
                                          lambda: self._look_up(client, base_url, prompt, budget))
        return known if isinstance(known, token_floor.OneTokenPlan) else None

    def plan_decisions(self) -> dict[tuple[str, str], token_floor.Decision]:
        """Every (replica, prefill) decided so far: a one-token plan or why not (``doctor``, tests)."""
        return self._plans.decisions()

    async def _look_up(self, client: httpx.AsyncClient, base_url: str, prompt: GuardPrompt,
                       budget: float) -> token_floor.Decision | None:
        """Ask the server how it tokenizes the prefill and the prefill + each verdict (``/tokenize``, chat form),
        then what text each candidate first token decodes to (``/detokenize``). None: a transient failure (the
        check uses the grammar plan and the next one asks again)."""
        root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
        timeout = httpx.Timeout(max(0.001, budget), connect=min(max(0.001, budget), 5.0))

        async def call(path: str, payload: dict[str, Any]) -> Any:
            try:
                r = await client.post(root + path, json=payload, timeout=timeout)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # a dead replica: the same error its chat request would raise, so the failover logic applies
                if _is_tls_failure(exc):
                    raise GuardTLSError(f"TLS with the guard server at {base_url} failed: {exc}") from None
                raise GuardUnavailable(f"guard server at {base_url} unreachable: {type(exc).__name__}: {exc}") from None
            if r.status_code == 200:
                return r.json()
            if r.status_code in (401, 403, 408, 429) or r.status_code >= 500:
                return None
            return token_floor.Fallback(f"{path} answered HTTP {r.status_code}: {_error_message(r)[:200]}")

        def chat(content: str) -> dict[str, Any]:
            return {"model": self.model, "continue_final_message": True, "add_generation_prompt": False,
                    "messages": [{"role": "user", "content": token_floor.PROBE_USER},
                                 {"role": "assistant", "content": content}]}

        try:
            answers = await asyncio.gather(call("/tokenize", chat(prompt.prefill)),
                                           *(call("/tokenize", chat(prompt.prefill + w)) for w in prompt.verdict_choices))
            for a in answers:
                if a is None or isinstance(a, token_floor.Fallback):
                    return a
            seqs = [a["tokens"] for a in answers]
            if not all(isinstance(q, list) and all(isinstance(t, int) for t in q) for q in seqs):
                return token_floor.Fallback("/tokenize returned no token list")
            n = len(seqs[0])
            firsts = sorted({q[n] for q in seqs[1:] if len(q) > n})
            texts = await asyncio.gather(*(call("/detokenize", {"model": self.model, "tokens": [t]}) for t in firsts))
            pieces: dict[int, str | None] = {}
            for t, a in zip(firsts, texts, strict=True):
                if a is None or isinstance(a, token_floor.Fallback):
                    return a
                pieces[t] = a.get("prompt") if isinstance(a, dict) and isinstance(a.get("prompt"), str) else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return token_floor.decide(prompt.verdict_choices, seqs[0], seqs[1:], pieces.get)

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
        pool = self._per_loop.pop(asyncio.get_running_loop(), None)
        self._per_loop.clear()
        for client in pool.clients if pool else ():
            with contextlib.suppress(Exception):
                await client.aclose()
