"""Security: the API key and the user's text never leak; TLS is verified by default, with a CA-bundle option."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from nemo_csr_rail.errors import ConfigError
from nemo_csr_rail.policy import Direction
from nemo_csr_rail.settings import resolve
from tests.support.rails_configs import write_config
from tests.support.runtime import rails_config, runtime
from tests.support.standin import Fault, StandIn, error_body

SECRET_KEY = "sk-csr-test-6f1c0e9d-THIS-MUST-NOT-LEAK"
USER_SECRET = "my card number is 4111-1111-1111-1111 and my PIN is 2468"


# ------------------------------------------------------------------------------------------------ helpers
class TlsStandIn(StandIn):
    """The stand-in behind TLS (the same server, its listening socket wrapped with an SSL context)."""

    def __init__(self, certfile: Path, keyfile: Path, **kw):
        super().__init__(**kw)
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(str(certfile), str(keyfile))

    @property
    def root(self) -> str:
        return f"https://{self.host}:{self.port}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            self._server = await asyncio.start_server(self._handle, self.host, self.port, ssl=self._ssl,
                                                      limit=2**24, backlog=1024)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        loop.run_until_complete(boot())
        loop.run_forever()
        loop.close()


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a self-signed certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_guard(self_signed):
    cert, key = self_signed
    with TlsStandIn(cert, key) as server:
        yield server


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self, min_level: int = logging.DEBUG) -> str:
        out = []
        for r in self.records:
            if r.levelno >= min_level:
                out.append(r.getMessage())
                if r.exc_info:
                    out.append(logging.Formatter().formatException(r.exc_info))
        return "\n".join(out)


@pytest.fixture
def all_logs():
    """Every log record of every logger at DEBUG (root handler), restored afterwards."""
    root = logging.getLogger()
    cap = _Capture()
    old = root.level
    root.addHandler(cap)
    root.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("nemo_csr_rail", "httpx", "httpcore")]
    old_levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    yield cap
    root.removeHandler(cap)
    root.setLevel(old)
    for lg, lvl in zip(loggers, old_levels, strict=True):
        lg.setLevel(lvl)


# ------------------------------------------------------------------------------------------------ API key
async def test_api_key_from_env_is_sent_and_never_logged_or_returned(monkeypatch, all_logs) -> None:
    monkeypatch.setenv("CSR_GUARD_KEY", SECRET_KEY)
    with StandIn(api_key=SECRET_KEY) as server:
        rt = runtime(server.url, params={"api_key_env_var": "CSR_GUARD_KEY"})
        ok = await rt.check("think", Direction.INPUT, "Where is my order?")
        assert ok.metadata["failed"] is False
        assert server.headers_seen[-1]["authorization"] == f"Bearer {SECRET_KEY}"
        server.inject(Fault(kind="status", status=401, body={"error": "Unauthorized"}),
                      Fault(kind="status", status=500, body=error_body(500, "boom")))
        outs = [await rt.check("think", Direction.INPUT, "again"), await rt.check("think", Direction.INPUT, "x")]
    server_down = await rt.check("think", Direction.INPUT, "after stop")
    blob = json.dumps([o.metadata for o in [ok, *outs, server_down]], default=str)
    blob += repr(rt.clients) + repr(resolve(rails_config(server.url, params={"api_key_env_var": "CSR_GUARD_KEY"})))
    assert SECRET_KEY not in blob
    assert SECRET_KEY not in all_logs.text()
    assert "Unauthorized" in json.dumps(outs[0].metadata)


def test_literal_api_key_in_config_warns_without_the_key(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="nemo_csr_rail")
    resolve(rails_config("http://127.0.0.1:9/v1", params={"api_key": SECRET_KEY}))
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert "api_key_env_var" in msgs and SECRET_KEY not in msgs


def test_missing_api_key_env_var_fails_at_load(monkeypatch) -> None:
    monkeypatch.delenv("CSR_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match="CSR_NOT_SET"):
        resolve(rails_config("http://127.0.0.1:9/v1", params={"api_key_env_var": "CSR_NOT_SET"}))


# ------------------------------------------------------------------------------------------------ TLS
async def test_tls_is_verified_by_default(tls_guard) -> None:
    rt = runtime(tls_guard.url, on_error="allow")
    t0 = time.monotonic()
    out = await rt.check("think", Direction.INPUT, "hello")
    assert out.metadata["error_kind"] == "guard_tls_error", out.metadata
    assert "CERTIFICATE_VERIFY_FAILED" in out.metadata["error"] or "certificate" in out.metadata["error"]
    assert time.monotonic() - t0 < 1.0, "a TLS failure is not retried"
    assert tls_guard.chat_requests() == []


async def test_tls_ca_bundle_setting_trusts_the_server(tls_guard, self_signed) -> None:
    cert, _ = self_signed
    rt = runtime(tls_guard.url, tls={"ca_bundle": str(cert)})
    out = await rt.check("think", Direction.INPUT, "Who should I vote for?")
    assert out.is_blocked and out.metadata["failed"] is False and out.metadata["prompt_harm"] == "harmful"
    assert len(tls_guard.chat_requests()) == 1


async def test_tls_ca_bundle_per_endpoint(tls_guard, self_signed) -> None:
    cert, _ = self_signed
    rt = runtime(tls_guard.url, params={"ca_bundle": str(cert)})
    assert (await rt.check("think", Direction.INPUT, "hello")).metadata["failed"] is False


@pytest.mark.parametrize("where", ["tls", "params"])
async def test_tls_ca_bundle_under_home_is_expanded(tls_guard, self_signed, tmp_path, monkeypatch, where) -> None:
    cert, _ = self_signed
    home = tmp_path / "home"
    (home / "certs").mkdir(parents=True)
    (home / "certs" / "guard-ca.pem").write_bytes(cert.read_bytes())
    monkeypatch.setenv("HOME", str(home))
    bundle = {"ca_bundle": "~/certs/guard-ca.pem"}
    rt = runtime(tls_guard.url, **({"tls": bundle} if where == "tls" else {"params": bundle}))
    out = await rt.check("think", Direction.INPUT, "Who should I vote for?")
    assert out.metadata["failed"] is False, out.metadata
    assert out.is_blocked and len(tls_guard.chat_requests()) == 1


async def test_tls_verification_can_only_be_turned_off_explicitly(tls_guard) -> None:
    rt = runtime(tls_guard.url, tls={"verify": False})
    assert (await rt.check("think", Direction.INPUT, "hello")).metadata["failed"] is False


async def test_plain_http_client_against_tls_server_is_unavailable(tls_guard) -> None:
    rt = runtime(tls_guard.url.replace("https://", "http://"), timeout_s=1.0)
    out = await rt.check("think", Direction.INPUT, "hello")
    assert out.is_blocked and out.metadata["failed"] is True
    assert out.metadata["error_kind"] in ("guard_unavailable", "guard_protocol_error", "guard_http_error")


# ------------------------------------------------------------------------------------------------ user text
@pytest.mark.parametrize("log_user_text", [False, True])
async def test_user_text_is_never_logged_at_info_and_only_at_debug_when_enabled(guard, all_logs,
                                                                                 log_user_text) -> None:
    rt = runtime(guard.url, log_user_text=log_user_text)
    await rt.check("think", Direction.INPUT, USER_SECRET)  # allowed
    await rt.check("think", Direction.INPUT, USER_SECRET + " vote")  # blocked
    await rt.check("think", Direction.OUTPUT, USER_SECRET, "Sure: " + USER_SECRET)
    guard.inject(Fault(kind="status", status=400, body=error_body(400, f"Invalid input {USER_SECRET!r}")))
    err = await rt.check("think", Direction.INPUT, USER_SECRET)  # a server error that echoes the input
    guard.inject(Fault(kind="text", text=f"Prompt harm: {USER_SECRET}"))
    err2 = await rt.check("think", Direction.INPUT, USER_SECRET)
    assert err.metadata["failed"] and err2.metadata["failed"]
    assert "4111" not in all_logs.text(logging.INFO)
    debug = all_logs.text(logging.DEBUG)
    if log_user_text:
        assert USER_SECRET in debug
        assert any(r.levelno == logging.DEBUG and USER_SECRET in r.getMessage() for r in all_logs.records)
    else:
        assert "4111" not in debug
        assert "4111" not in json.dumps(err.metadata) and "withheld" in err.metadata["error"]


async def test_metadata_has_no_user_text(guard) -> None:
    rt = runtime(guard.url)
    outs = [await rt.check(p, Direction.INPUT, USER_SECRET + extra) for p in ("think", "fast")
            for extra in ("", " vote")]
    outs.append(await rt.check("think", Direction.OUTPUT, USER_SECRET, USER_SECRET + " vote"))
    guard.inject(Fault(kind="status", status=400, body=error_body(400, f"bad input: {USER_SECRET}")))
    outs.append(await rt.check("think", Direction.INPUT, USER_SECRET))
    outs.append(await rt.check("think", Direction.INPUT, USER_SECRET * 400))  # long input path
    for o in outs:
        assert "4111" not in json.dumps(o.metadata) and "4111" not in (o.reason or "")


def test_metadata_over_nemoguardrails_server_has_no_user_text(tmp_path, guard, main_llm) -> None:
    """The outcome returned by `nemoguardrails server` (generation log) carries no user text."""
    from tests.support.guardrails_server import guardrails_server

    cfg = write_config(tmp_path / "shop", guard_url=guard.url, main_url=main_llm.url,
                       plugin={"policies": {"retail": {"policy": "Do not discuss politics or religion."}}},
                       input_flows=['csr check input $policy="retail"'],
                       output_flows=['csr check output $policy="retail"'])
    with guardrails_server(cfg) as base:
        found = 0
        for text in (USER_SECRET, USER_SECRET + " vote"):
            r = httpx.post(base + "/v1/chat/completions", timeout=30, json={
                "model": "main-llm", "messages": [{"role": "user", "content": text}],
                "guardrails": {"config_id": "shop", "options": {"log": {"activated_rails": True}}}})
            assert r.status_code == 200, r.text
            for rail in r.json()["guardrails"]["log"]["activated_rails"]:
                for act in rail.get("executed_actions") or []:
                    if act["action_name"].startswith("csr_check"):
                        found += 1
                        assert "4111" not in json.dumps(act["return_value"])
        assert found == 3  # input+output for the allowed turn, input for the blocked one
