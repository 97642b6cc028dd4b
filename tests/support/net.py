"""Loopback ports for test servers, and URLs where nothing listens (a refused connection)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (nothing listens on it until a test starts a server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_url() -> str:
    """A guard base URL that refuses connections."""
    return f"http://127.0.0.1:{free_port()}/v1"
