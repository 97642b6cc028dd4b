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


@pytest.fixture
def tls_cert(tmp_path) -> tuple[str, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: (its path, a server context that presents it)."""
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
    return str(cert), server_ctx


async def test_tls_connection_reads_whole_bodies(tls_cert) -> None:
    cert, server_ctx = tls_cert
    server = await asyncio.start_server(echo_digest, "127.0.0.1", 0, ssl=server_ctx)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    body = b"0123456789abcdef" * 20_000  # 320 KB
    lim = httpx.Limits(max_connections=4)
    try:
        verified = ssl.create_default_context(cafile=cert)
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


async def test_tls_to_a_server_that_already_closed_fails_at_once_as_connect_error(tls_cert) -> None:
    """The peer's close is processed before the handshake starts (a busy loop): fail now, not at the timeout."""
    cert, _ = tls_cert

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def busy_between_connect_and_tls(event: str, info: dict) -> None:
        if event == "connection.connect_tcp.complete":
            await asyncio.sleep(0.1)

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    transport = BufferedTransport(backend=BufferedBackend(), verify=ssl.create_default_context(cafile=cert),
                                  limits=httpx.Limits())
    try:
        async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(30, connect=10)) as c:
            t0 = asyncio.get_running_loop().time()
            with pytest.raises(httpx.ConnectError, match="before the TLS handshake"):
                await c.get(url, extensions={"trace": busy_between_connect_and_tls})
            assert asyncio.get_running_loop().time() - t0 < 5, "must not wait for the connect timeout"
    finally:
        server.close()


async def test_connection_info_is_readable_after_a_tls_connection_closed(tls_cert) -> None:
    cert, server_ctx = tls_cert

    async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(b"ok", close=True))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_and_close, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    transport = BufferedTransport(backend=BufferedBackend(), verify=ssl.create_default_context(cafile=cert),
                                  limits=httpx.Limits())
    try:
        async with httpx.AsyncClient(transport=transport) as c:
            r = await c.get(f"https://127.0.0.1:{port}/")
            await asyncio.sleep(0.1)  # the connection is gone by now
            stream = r.extensions["network_stream"]
            assert stream.get_extra_info("server_addr") == ("127.0.0.1", port)
            assert stream.get_extra_info("ssl_object") is not None
            assert stream.get_extra_info("is_readable") is True
            assert stream.get_extra_info("no such key") is None
    finally:
        server.close()


def test_an_idle_connection_the_server_closed_while_the_loop_was_busy_is_not_reused() -> None:
    """The server (its own thread) drops each kept-alive connection 20 ms after answering; the client's loop is
    blocked meanwhile, so the FIN waits in the kernel, unseen by any callback. The next request must not take that
    connection (httpcore asks ``is_readable``), or it fails with 'Server disconnected'."""
    import threading
    import time

    port: list[int] = []
    stop = threading.Event()

    async def answer_then_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(b"ok"))
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.close()

    def server_thread() -> None:
        async def main() -> None:
            server = await asyncio.start_server(answer_then_drop, "127.0.0.1", 0)
            port.append(server.sockets[0].getsockname()[1])
            while not stop.is_set():
                await asyncio.sleep(0.02)
            server.close()

        asyncio.run(main())

    thread = threading.Thread(target=server_thread, daemon=True)
    thread.start()
    while not port:
        time.sleep(0.01)

    async def main() -> list[str]:
        answers = []
        async with client(keepalive_expiry=30) as c:
            for _ in range(10):
                answers.append((await c.get(f"http://127.0.0.1:{port[0]}/")).text)
                time.sleep(0.1)  # blocks the loop: the server's FIN arrives meanwhile
        return answers

    try:
        assert asyncio.run(main()) == ["ok"] * 10
    finally:
        stop.set()
        thread.join(5)


async def test_a_socket_option_the_system_rejects_is_a_connect_error(serve) -> None:
    import httpcore

    url = await serve(echo_digest)
    port = int(url.rsplit(":", 1)[1])
    bogus = (__import__("socket").SOL_SOCKET, 12345, 1)
    with pytest.raises(httpcore.ConnectError, match="socket option"):
        await BufferedBackend().connect_tcp("127.0.0.1", port, timeout=2, socket_options=[bogus])


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
            await test_a_socket_option_the_system_rejects_is_a_connect_error(servers)
        finally:
            servers.close()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
