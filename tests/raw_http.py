"""Raw-socket HTTP for the tests that pin what a server does with connections (pipelining, closes, timeouts)."""

from __future__ import annotations

import socket

import pytest


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open after the socket's
    timeout."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the connection stayed open for {sock.gettimeout()} s; received {data[:300]!r}")
    return data


def answer_then_close(port: int, request: bytes, timeout: float) -> bytes:
    """``request`` on a new connection, and all that comes back until the server closes it.

    A proxy with a short idle timeout may close a new connection before the request reaches it (the client was
    descheduled for longer than that): then the request is sent again, on a new connection."""
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            try:
                sock.sendall(request)
            except OSError:
                continue
            if data := read_until_closed(sock):
                return data
    pytest.fail("the server closed five new connections before their requests reached it")
