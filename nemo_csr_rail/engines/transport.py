"""The sockets under the HTTP engine: httpx over an asyncio network backend that reads into one reusable buffer.

Why not httpx's default (httpcore over anyio over asyncio's socket transport)? That transport allocates a fresh
256 KiB buffer for every ``recv`` and shrinks it to the bytes received. With hundreds of guard requests in flight
those short-lived large blocks interleave with small long-lived ones, and glibc keeps the freed pages: the soak
(docs/reliability.md) measured RSS growing ~0.9 KB per check with the heap's live bytes flat, all of it
free-but-held memory. Here every connection of an event loop reads into the same 64 KiB buffer (``recv_into``) and
keeps only an exact-size copy of what arrived, so a long-running rail's memory stays flat. It also takes anyio's
per-read bookkeeping off the guard's hot path.

Errors are httpcore's (``ConnectError``, ``ReadTimeout``, ...), so httpx maps them exactly as it does for its own
backend and the engine's fault classification is unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import select
import ssl
import sys
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

READ_BUFFER = 64 * 1024
# Stop reading from a socket whose unread data passes this; a guard answer is a few KB.
HIGH_WATER = 1024 * 1024

SocketOption = tuple[Any, ...]  # as for socket.setsockopt


def _socket_readable(sock: Any) -> bool:
    """Whether the kernel holds data (or a FIN/RST) for ``sock`` that the event loop has not delivered yet.

    A server can close an idle kept-alive connection while this loop is busy elsewhere; until the loop runs the
    read callback, only the socket itself knows. A closed or missing socket counts as readable (don't reuse it).
    """
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True
    if sys.platform == "win32" or not hasattr(select, "poll"):  # pragma: no cover
        return bool(select.select([fd], [], [], 0)[0])
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(asyncio.TimeoutError())


async def _wait(fut: asyncio.Future[None], timeout: float | None) -> None:
    """Await ``fut`` for at most ``timeout`` s (asyncio.TimeoutError), without wrapping it in a task."""
    if timeout is None:
        await fut
        return
    handle = asyncio.get_running_loop().call_later(max(0.0, timeout), _expire, fut)
    try:
        await fut
    finally:
        handle.cancel()


class _Protocol(asyncio.BufferedProtocol):
    """Collects what one connection receives; wakes the reader or writer waiting on it."""

    def __init__(self, buffer: memoryview) -> None:
        self.buffer = buffer
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.unread = 0
        self.eof = False
        self.lost: BaseException | None = None
        self.closed = False
        self.reading_paused = False
        self.writing_paused = False
        self.read_waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.chunks.append(bytes(self.buffer[:nbytes]))
        self.unread += nbytes
        if self.unread > HIGH_WATER and self.transport is not None and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.eof = True
        self.lost = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer()

    # -- helpers
    def _wake_reader(self) -> None:
        if self.read_waiter is not None and not self.read_waiter.done():
            self.read_waiter.set_result(None)

    def _wake_writer(self) -> None:
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)


class BufferedStream(httpcore.AsyncNetworkStream):
    """One connection, plain or TLS, as httpcore expects it."""

    def __init__(self, protocol: _Protocol, transport: asyncio.Transport) -> None:
        self._protocol = protocol
        self._transport = transport
        # Read once, while the transport is open: CPython's TLS transport raises from get_extra_info once it has
        # been closed after the connection was lost, and callers may ask after the response (network_stream).
        self._info = {name: transport.get_extra_info(key) for name, key in (
            ("ssl_object", "ssl_object"), ("client_addr", "sockname"), ("server_addr", "peername"), ("socket", "socket"))}

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        p = self._protocol
        while not p.chunks:
            if p.lost is not None:
                raise httpcore.ReadError(f"connection lost: {p.lost}") from p.lost
            if p.eof:
                return b""
            p.read_waiter = asyncio.get_running_loop().create_future()
            try:
                await _wait(p.read_waiter, timeout)
            except asyncio.TimeoutError:
                raise httpcore.ReadTimeout("timed out reading from the guard server") from None
            finally:
                p.read_waiter = None
        chunk = p.chunks.popleft()
        if len(chunk) > max_bytes:
            chunk, rest = chunk[:max_bytes], chunk[max_bytes:]
            p.chunks.appendleft(rest)
        p.unread -= len(chunk)
        if p.reading_paused and p.unread <= HIGH_WATER // 2 and not p.closed:
            self._transport.resume_reading()
            p.reading_paused = False
        return chunk

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        p = self._protocol
        if p.closed or self._transport.is_closing():
            raise httpcore.WriteError("connection closed before the request was sent")
        self._transport.write(buffer)
        while p.writing_paused and not p.closed:
            p.drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await _wait(p.drain_waiter, timeout)
            except asyncio.TimeoutError:
                raise httpcore.WriteTimeout("timed out writing to the guard server") from None
            finally:
                p.drain_waiter = None
        if p.lost is not None:
            raise httpcore.WriteError(f"connection lost: {p.lost}") from p.lost

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        p = self._protocol
        if p.closed or p.eof or self._transport.is_closing():
            # asyncio's start_tls on a connection the peer already closed waits for a handshake that never comes.
            self._transport.close()
            raise httpcore.ConnectError("connection closed by the server before the TLS handshake")
        loop = asyncio.get_running_loop()
        try:
            tls = await asyncio.wait_for(
                loop.start_tls(self._transport, self._protocol, ssl_context, server_hostname=server_hostname),
                timeout)
        except asyncio.TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("timed out during the TLS handshake") from None
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        if tls is None:  # the peer closed during the handshake
            raise httpcore.ConnectError("connection closed during the TLS handshake")
        self._protocol.transport = tls  # type: ignore[assignment]
        return BufferedStream(self._protocol, tls)  # type: ignore[arg-type]

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # httpcore asks this of an idle pooled connection: anything received (data, EOF, reset), whether the
            # loop has delivered it yet or it still waits in the kernel, means the server dropped or spoiled it.
            p = self._protocol
            return bool(p.chunks) or p.eof or p.closed or _socket_readable(self._info["socket"])
        return self._info.get(info)


class BufferedBackend(httpcore.AsyncNetworkBackend):
    """Opens connections for one event loop; they all share its read buffer (reads never overlap in a loop)."""

    def __init__(self, read_buffer: int = READ_BUFFER) -> None:
        self._buffer = memoryview(bytearray(read_buffer))

    async def _open(self, connect: Any, timeout: float | None,
                    socket_options: Iterable[SocketOption] | None) -> BufferedStream:
        protocol = _Protocol(self._buffer)
        try:
            transport, _ = await asyncio.wait_for(connect(lambda: protocol), timeout)
        except asyncio.TimeoutError:
            raise httpcore.ConnectTimeout("timed out connecting to the guard server") from None
        except OSError as exc:  # refused, unreachable, DNS (socket.gaierror)
            raise httpcore.ConnectError(str(exc)) from exc
        try:
            sock = transport.get_extra_info("socket")
            for option in socket_options or ():
                sock.setsockopt(*option)
        except OSError as exc:
            transport.close()
            raise httpcore.ConnectError(f"cannot set a socket option: {exc}") from exc
        return BufferedStream(protocol, transport)

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[SocketOption] | None = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        return await self._open(lambda f: loop.create_connection(f, host, port, local_addr=local), timeout,
                                socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[SocketOption] | None = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        return await self._open(lambda f: loop.create_unix_connection(f, path), timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class BufferedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (its request handling and error mapping) over a :class:`BufferedBackend` pool.

    ``httpx.AsyncHTTPTransport.__init__`` does nothing but build its connection pool, with no way to pass a
    network backend; this builds that pool itself, with the same settings, instead of calling it.
    """

    def __init__(self, *, backend: BufferedBackend, verify: ssl.SSLContext | bool, limits: httpx.Limits) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


__all__ = ["BufferedBackend", "BufferedStream", "BufferedTransport"]
