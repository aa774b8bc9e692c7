"""The load generator's HTTP/1.1 client: keep-alive connections on raw asyncio streams, requests prebuilt as bytes.

Not a generic HTTP library: at 10k+ requests/s such a client spends more CPU per request than the server does,
and the load generator would measure itself. This one writes a prebuilt request and reads the status, the length
and the body, nothing more.
"""

from __future__ import annotations

import asyncio

from torchserve_accel.tools.loadgen.payloads import Payload
from torchserve_accel.tools.loadgen.stats import STATUS_CONNECTION, STATUS_TIMEOUT


def raw_request(host: str, port: int, path: str, key: str | None, payload: Payload) -> bytes:
    """One complete HTTP/1.1 POST (head and body), built once and re-sent as is."""
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Type: {payload.content_type}",
            f"Content-Length: {len(payload.body)}", "Connection: keep-alive"]
    if key:
        head.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload.body


def parse_response_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """Status line and headers -> (status, content_length or None, chunked, server_closes)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP status line: {lines[0]!r}")
    status, length, chunked, close = int(parts[1]), None, False, parts[0] == "HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value
        elif name == "connection":
            close = value == "close"
    return status, length, chunked, close


class Connection:
    """One keep-alive HTTP/1.1 connection; (re)connects lazily; one request at a time."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def _exchange(self, raw: bytes) -> int:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, length, chunked, close = parse_response_head(head)
        if chunked:
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        elif length is None:
            close = True  # body runs until the server closes: read it all
            await self.reader.read()
        if close:
            self.close()
        return status

    async def send(self, raw: bytes, timeout: float) -> int:
        """HTTP status, or STATUS_TIMEOUT / STATUS_CONNECTION (the connection is then dropped)."""
        try:
            return await asyncio.wait_for(self._exchange(raw), timeout=max(timeout, 0.001))
        except (asyncio.TimeoutError, TimeoutError):
            self.close()
            return STATUS_TIMEOUT
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.close()
            return STATUS_CONNECTION
