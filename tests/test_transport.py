"""The engine's own network backend (engines/transport.py) against real sockets on 127.0.0.1.

It replaces httpx's default backend on the guard's hot path, so it must behave like it: whole bodies of any size,
no cross-talk between connections sharing one read buffer, keep-alive reuse but never of a connection the server
dropped, and httpx's own exception types for every fault (the engine classifies faults by them).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from nemo_csr_rail.engines.transport import HIGH_WATER, READ_BUFFER, BufferedBackend, BufferedTransport
from tests.support.net import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[str, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(h.split(":", 1)[1]) for h in lines if h.lower().startswith("content-length:")), 0)
    return lines[0].split(" ")[1], await reader.readexactly(length)


def response(body: bytes, *, status: int = 200, close: bool = False) -> bytes:
    head = f"HTTP/1.1 {status} OK\r\ncontent-length: {len(body)}\r\ncontent-type: application/octet-stream\r\n"
    return (head + ("connection: close\r\n" if close else "") + "\r\n").encode() + body


class Servers:
    """Starts raw HTTP servers on 127.0.0.1 for one test; ``await servers(handler)`` gives the URL."""

    def __init__(self) -> None:
        self.started: list[asyncio.Server] = []

    async def __call__(self, handler: Handler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        self.started.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        for s in self.started:
            s.close()


@pytest.fixture
async def serve() -> AsyncIterator[Servers]:
    servers = Servers()
    yield servers
    servers.close()


def client(**limits: float) -> httpx.AsyncClient:
    lim = httpx.Limits(max_connections=int(limits.get("max_connections", 8)),
                       keepalive_expiry=limits.get("keepalive_expiry", 5.0))
    return httpx.AsyncClient(transport=BufferedTransport(backend=BufferedBackend(), verify=False, limits=lim),
                             timeout=httpx.Timeout(5.0))


async def echo_digest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each request with its body repeated, so every byte of a large answer is checkable."""
    while (req := await read_request(reader)) is not None:
        path, body = req
        times = int(path.strip("/") or 1)
        writer.write(response(body * times))
        await writer.drain()
    writer.close()


async def test_bodies_larger_than_the_read_buffer_and_the_high_water_mark_arrive_whole(serve) -> None:
    url = await serve(echo_digest)
    body = bytes(range(256)) * 1024  # 256 KiB, four read buffers
    times = HIGH_WATER // len(body) * 3  # the answer is three times the point where reading pauses
    async with client() as c:
        r = await c.post(f"{url}/{times}", content=body)
    assert r.status_code == 200
    assert len(r.content) == len(body) * times > 2 * HIGH_WATER > READ_BUFFER
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(body * times).digest()


async def test_concurrent_connections_sharing_one_read_buffer_never_mix_bytes(serve) -> None:
    url = await serve(echo_digest)
    async with client(max_connections=64) as c:
        async def one(i: int) -> bool:
            body = bytes([i]) * (READ_BUFFER + 1000 * i)  # each connection's bytes differ and span reads
            r = await c.post(f"{url}/2", content=body)
            return r.content == body * 2

        assert all(await asyncio.gather(*(one(i) for i in range(64))))


async def test_keep_alive_reuses_a_connection_but_not_one_the_server_dropped(serve) -> None:
    peers: list[tuple[str, int]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername"))
        req = await read_request(reader)
        while req is not None:
            writer.write(response(b"ok"))
            await writer.drain()
            if req[0] == "/bye":  # answer, then drop the idle connection
                await asyncio.sleep(0.05)
                break
            req = await read_request(reader)
        writer.close()

    url = await serve(handler)
    async with client() as c:
        for _ in range(3):
            assert (await c.get(f"{url}/")).text == "ok"
        assert len(peers) == 1, "sequential requests share one kept-alive connection"
        assert (await c.get(f"{url}/bye")).text == "ok"
        await asyncio.sleep(0.2)  # the server has closed it by now
        assert (await c.get(f"{url}/")).text == "ok", "a dropped idle connection is replaced, not reused"
        assert len(peers) == 2


async def test_faults_surface_as_httpx_exceptions(serve) -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    async def reset_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(b"x" * 100_000)[:5000])
        await writer.drain()
        writer.transport.abort()

    async def close_without_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async with client() as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(f"http://127.0.0.1:{free_port()}/")
        with pytest.raises(httpx.ReadTimeout):
            await c.get(f"{await serve(hang)}/", timeout=httpx.Timeout(0.3))
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await c.get(f"{await serve(reset_mid_body)}/")
        with pytest.raises(httpx.RemoteProtocolError, match="disconnected"):
            await c.get(f"{await serve(close_without_answer)}/")


async def test_a_server_that_stops_reading_a_large_request_is_a_write_timeout(serve) -> None:
    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    url = await serve(never_reads)
    async with client() as c:
        with pytest.raises(httpx.WriteTimeout):
            await c.post(f"{url}/", content=b"x" * (64 * 1024 * 1024), timeout=httpx.Timeout(0.5))


async def test_a_cancelled_request_leaves_the_pool_usable(serve) -> None:
    url = await serve(echo_digest)

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    slow_url = await serve(slow)
    async with client(max_connections=2) as c:
        for _ in range(5):  # more cancellations than connections: each must give its connection back
            task = asyncio.ensure_future(c.get(f"{slow_url}/"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert (await c.post(f"{url}/1", content=b"still fine")).content == b"still fine"


async def test_tls_connection_reads_whole_bodies(tmp_path) -> None:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(cert), str(key))
    server = await asyncio.start_server(echo_digest, "127.0.0.1", 0, ssl=server_ctx)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    body = b"0123456789abcdef" * 20_000  # 320 KB
    lim = httpx.Limits(max_connections=4)
    try:
        verified = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(transport=BufferedTransport(backend=BufferedBackend(), verify=verified,
                                                                 limits=lim)) as c:
            r = await c.post(f"{url}/3", content=body)
            assert r.content == body * 3
        async with httpx.AsyncClient(transport=BufferedTransport(backend=BufferedBackend(),
                                                                 verify=ssl.create_default_context(),
                                                                 limits=lim)) as c:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await c.get(f"{url}/")
    finally:
        server.close()


@pytest.mark.parametrize("transport", ["buffered", "httpx"])
async def test_http_transport_setting_selects_the_sockets_and_both_check(guard, transport) -> None:
    from nemo_csr_rail.policy import Direction
    from tests.support.runtime import runtime

    rt = runtime(guard.url, http_transport=transport)
    try:
        allowed = await rt.check("fast", Direction.INPUT, "Where is my order?")
        blocked = await rt.check("think", Direction.OUTPUT, "Hi", "Let me tell you about politics.")
        assert (allowed.decision.value, blocked.decision.value) == ("allow", "block")
        (client,) = {id(c): c for c in rt.clients.values()}.values()
        pool = client.engine._client()  # the engine's connection pool for this event loop
        used = {type(c._transport).__name__ for c in pool.clients}
        assert used == {"BufferedTransport" if transport == "buffered" else "AsyncHTTPTransport"}
    finally:
        await rt.aclose()


def test_the_transport_behaves_the_same_on_uvloop() -> None:
    """uvicorn runs ``nemoguardrails server`` on uvloop when it is installed: the same socket tests, on that loop."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        servers = Servers()
        try:
            await test_bodies_larger_than_the_read_buffer_and_the_high_water_mark_arrive_whole(servers)
            await test_concurrent_connections_sharing_one_read_buffer_never_mix_bytes(servers)
            await test_keep_alive_reuses_a_connection_but_not_one_the_server_dropped(servers)
            await test_faults_surface_as_httpx_exceptions(servers)
            await test_a_server_that_stops_reading_a_large_request_is_a_write_timeout(servers)
            await test_a_cancelled_request_leaves_the_pool_usable(servers)
        finally:
            servers.close()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
