#!/usr/bin/env python3
"""The pod's front door when TorchServe runs with token authorization on: a Service-wide client token outside,
this pod's own TorchServe key inside.

TorchServe 0.12 makes its keys itself, at random, per process, and writes them to ``key_file.json`` in the
directory it starts in; the inference key expires after ``token_expiration_min``. Behind a Service a request can
land on any pod, so no client can hold the right key. This proxy runs beside TorchServe in the pod (a sidecar
sharing the key file's emptyDir and the pod's loopback) and:

* accepts ``Authorization: Bearer <client token>``, the token being a file from a Kubernetes Secret, re-read when
  it changes (rotating the Secret needs no restart), on everything except ``GET /ping`` and ``GET /livez``;
* forwards the request to TorchServe's inference address on loopback with ``Authorization: Bearer <inference
  key>`` from the key file (the client's token never reaches TorchServe);
* when TorchServe refuses the key (400 "Token Authorization failed": it expired, or TorchServe restarted with new
  keys), re-reads the key file and, if the key there is still the refused one, rotates it with the API key
  (``GET <management>/token?type=inference``), then retries the request once.

``GET /ping`` is forwarded without a client token: it is the kubelet's readiness probe (TorchServe 0.12 wants the
inference key on /ping too, so a probe can't call TorchServe directly) and answers only Healthy/Unhealthy.
``GET /livez`` is answered by the proxy itself (its own liveness probe).

It also guards against TorchServe 0.12 frontend behaviour (docs/reliability.md, section 3):

* only what inference needs passes: ``POST`` to the prediction routes (``/predictions/<model>[/<version>]``,
  ``/v1/models/<model>:predict``, ``/v2/models/<model>/infer``), ``GET /ping``; other methods get 405, other paths
  404 (TorchServe runs inference for any method, HEAD and DELETE included);
* a connection waiting for its next request is closed after ``--idle-timeout`` s, and a request must arrive in full
  (line, headers, body) within ``--receive-timeout`` s of its first byte, else 408 and the connection closes
  (TorchServe has no idle timeout and waits forever for a body shorter than its Content-Length);
* ``Connection: close`` is honoured, and pipelined requests are answered one after the other, in order, so TorchServe
  sees one request at a time per connection (TorchServe ignores ``Connection: close`` and answers pipelined requests
  as they complete);
* a body must come with a Content-Length: chunked bodies get 411.

Standard library only; a thread per client connection, HTTP/1.1 keep-alive on both sides. Measure its overhead
against direct calls on the GPU machine before relying on it at full ResNet-101 rates (docs/scaling.md).

    python deploy/token_proxy.py --listen 0.0.0.0:8000 --inference http://127.0.0.1:8080 \
        --management http://127.0.0.1:8081 --key-file /run/torchserve/key_file.json \
        --client-token-file /var/run/secrets/torchserve-client/token
"""

from __future__ import annotations

import argparse
import hmac
import http.client
import io
import json
import os
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

TOKEN_FAILED = b"Token Authorization failed"  # TorchServe 0.12's message for a missing, wrong or expired key
PUBLIC_PATHS = {"/ping"}  # GET only; TorchServe's health answer, needed by the kubelet without a token
# The only (method, path) pairs let through: TorchServe 0.12 runs inference for any method on a model route.
ROUTES = {
    "POST": re.compile(r"/predictions/[^/]+(/[^/]+)?|/v1/models/[^/]+:predict|/v2/models/[^/]+/infer"),
    "GET": re.compile(r"/ping|/livez"),
}
# Not copied between client and TorchServe (RFC 9110 hop-by-hop fields, plus those the proxy sets or handles itself).
DROPPED_HEADERS = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                             "transfer-encoding", "upgrade", "host", "content-length", "authorization", "expect"})
LINGER_S = 2.0  # after refusing a request whose body was not read, how long to drain it before closing


class KeyRefused(Exception):
    """TorchServe refused the pod's inference key, and rotating it did not help."""


def log(message: str) -> None:
    print(f"token-proxy: {message}", file=sys.stderr, flush=True)


class WatchedFile:
    """A small file's parsed content, re-read when the file changes (size, mtime or inode).

    Kubernetes updates a mounted Secret by swapping a symlink, TorchServe rewrites key_file.json in place; both
    show up in ``os.stat``. A file caught half-written fails to parse and is read again a moment later.
    """

    def __init__(self, path: str, parse: Callable[[str], object]):
        self.path = path
        self.parse = parse
        self._stamp: tuple | None = None
        self._value: object = None
        self._lock = threading.Lock()

    def get(self, force: bool = False) -> object:
        with self._lock:
            for attempt in range(5):
                st = os.stat(self.path)  # FileNotFoundError: not there (yet)
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
                if stamp == self._stamp and not force:
                    return self._value
                try:
                    with open(self.path) as f:
                        value = self.parse(f.read())
                except ValueError:
                    if attempt == 4:
                        raise
                    time.sleep(0.05)
                    continue
                self._stamp, self._value = stamp, value
                return value
        raise AssertionError("unreachable")


def parse_token(text: str) -> str:
    token = text.strip()
    if not token:
        raise ValueError("empty token file")
    return token


def parse_keys(text: str) -> dict[str, str]:
    """key_file.json -> {"inference": ..., "management": ..., "API": ...}."""
    data = json.loads(text)
    return {name: entry["key"] for name, entry in data.items()}


class Upstream:
    """Keep-alive HTTP connections to one TorchServe address, one per proxy thread."""

    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"expected http://HOST:PORT, got {url!r}")
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self._local = threading.local()

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]):
        """(status, reason, headers, body). A keep-alive connection TorchServe closed meanwhile is retried once."""
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request(method, path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
            except TimeoutError:
                self.close()
                raise
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt:
                    raise
                continue
            if answer.will_close:
                self.close()
            return answer.status, answer.reason, answer.getheaders(), data
        raise AssertionError("unreachable")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None


class TokenProxy:
    def __init__(self, inference: Upstream, management: Upstream, key_file: str, client_token_file: str,
                 max_body: int):
        self.inference = inference
        self.management = management
        self.keys = WatchedFile(key_file, parse_keys)
        self.client_token = WatchedFile(client_token_file, parse_token)
        self.max_body = max_body
        self.rotations = 0
        self._rotate_lock = threading.Lock()

    def client_allowed(self, authorization: str | None) -> bool:
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return False
        expected = self.client_token.get()
        return hmac.compare_digest(presented.strip().encode(), expected.encode())

    def forward(self, method: str, path: str, body: bytes | None, headers: dict[str, str]):
        key = self.keys.get()["inference"]
        answer = self.inference.request(method, path, body, {**headers, "Authorization": f"Bearer {key}"})
        if key_refused(answer):
            key = self.fresh_inference_key(refused=key)
            answer = self.inference.request(method, path, body, {**headers, "Authorization": f"Bearer {key}"})
            if key_refused(answer):  # TorchServe's 400 would read as the client's fault: it is this pod's
                raise KeyRefused()
        return answer

    def fresh_inference_key(self, refused: str) -> str:
        """A key TorchServe should accept: the key file's, if it changed since ``refused``; else a rotated one.

        One rotation at a time: threads refused together find the rotated key in the file and don't rotate again.
        """
        with self._rotate_lock:
            keys = self.keys.get(force=True)
            if keys["inference"] != refused:
                return keys["inference"]
            status, _, _, data = self.management.request(
                "GET", "/token?type=inference", None, {"Authorization": f"Bearer {keys['API']}"})
            if status != 200:
                log(f"rotating the inference key failed: {status} {data[:200]!r}")
                return refused
            self.rotations += 1
            log("inference key rotated")
            return self.keys.get(force=True)["inference"]


def key_refused(answer: tuple) -> bool:
    return answer[0] == 400 and TOKEN_FAILED in answer[3]


class ClientReader(io.RawIOBase):
    """The client's socket for reading, under two limits: ``idle_timeout`` s for the first byte of the next request,
    then ``receive_timeout`` s for the whole request (line, headers, body) from that byte on.

    A socket timeout alone bounds each ``recv``, so a client sending a byte now and then would hold its connection
    (and thread) for ever; the deadline bounds the request.
    """

    def __init__(self, sock, idle_timeout: float, receive_timeout: float):
        self.sock = sock
        self.idle_timeout = idle_timeout
        self.receive_timeout = receive_timeout
        self.deadline: float | None = None  # None while idle

    def readable(self) -> bool:
        return True

    def expect_request(self) -> None:
        self.deadline = None

    def request_begun(self) -> None:
        """A request line came out of the buffer without a read: its clock starts now."""
        if self.deadline is None:
            self.deadline = time.monotonic() + self.receive_timeout

    @property
    def receiving(self) -> bool:
        return self.deadline is not None

    def readinto(self, buffer) -> int:
        if self.deadline is None:
            self.sock.settimeout(self.idle_timeout)
        else:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request not received in time")
            self.sock.settimeout(left)
        count = self.sock.recv_into(buffer)
        if count and self.deadline is None:
            self.deadline = time.monotonic() + self.receive_timeout
        return count


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "torchserve-token-proxy"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + the client's delayed ACK add
    # ~40 ms to every answer (2026-11: 46 ms -> 2-3 ms per 100 KB request on loopback). http.client sets it upstream.
    disable_nagle_algorithm = True
    server: "ProxyServer"
    _answering = False  # an answer (not a "100 Continue") has begun
    _body_pending = False  # the request has a body not read yet: the connection closes after the answer
    _connection_sent = False  # the answer has a Connection header already

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced: an unclosed file would keep the socket open after the server closes it
        self.reader = ClientReader(self.connection, self.server.idle_timeout, self.server.receive_timeout)
        self.rfile = io.BufferedReader(self.reader)

    def finish(self) -> None:
        super().finish()
        for upstream in (self.server.proxy.inference, self.server.proxy.management):
            upstream.close()  # this thread's connections to TorchServe end with the client's
        if self._body_pending:
            linger(self.connection)

    def handle_one_request(self) -> None:
        """One request, whatever its method (all go through the route check); the stdlib version answers an
        unknown method with 501 and gives no answer to a request that stops arriving."""
        self.reader.expect_request()
        self.command, self.request_version, self.requestline = "", "HTTP/1.1", ""  # until parse_request sets them
        self._answering = self._body_pending = False
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                self.close_connection = True
                return
            self.reader.request_begun()
            if len(self.raw_requestline) > 65536:
                self.send_error(414)
                return
            if self.parse_request():
                self._handle()
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True
            if self.reader.receiving and not self._answering:  # a request that began and did not arrive in time;
                self._request_timeout()                        # an idle connection just closes
        except ConnectionError:  # the client went away
            self.close_connection = True

    def _request_timeout(self) -> None:
        try:
            self._reply_json(408, {"error": f"request not received in full within {self.server.receive_timeout:g} s"},
                             close=True)
        except OSError:
            pass

    def send_response(self, code, message=None) -> None:
        self._answering, self._connection_sent = True, False  # a "100 Continue" goes through send_response_only
        super().send_response(code, message)

    def send_header(self, keyword, value) -> None:
        self._connection_sent |= keyword.lower() == "connection"
        super().send_header(keyword, value)

    def end_headers(self) -> None:
        if self._answering and self.close_connection and not self._connection_sent:
            self.send_header("Connection", "close")  # the answer says so when the connection ends after it
        # An answer the client does not take is dropped after the idle timeout (the last read's timeout is left).
        self.connection.settimeout(self.server.idle_timeout)
        super().end_headers()

    def _handle(self) -> None:
        proxy = self.server.proxy
        target = urlsplit(self.path)
        route = target.path
        # The body is read only once the request is let through; an answer before that closes the connection, so
        # an unread body is never taken for the next request.
        self._body_pending = ("Transfer-Encoding" in self.headers
                              or self.headers.get("Content-Length", "").strip() not in ("", "0"))
        allowed = [method for method, routes in ROUTES.items() if routes.fullmatch(route)]
        if not allowed:
            return self._reply_json(404, {"error": f"no such route here: {route}"})
        if self.command not in allowed:
            return self._reply_json(405, {"error": f"{self.command} not allowed on {route}"},
                                    [("Allow", ", ".join(allowed))])
        if route == "/livez":
            return self._reply_json(200, {"status": "alive"})
        if route not in PUBLIC_PATHS:
            try:
                allowed_client = proxy.client_allowed(self.headers.get("Authorization"))
            except (OSError, ValueError) as err:
                log(f"client token unreadable: {err}")
                return self._reply_json(503, {"error": "client token not configured"})
            if not allowed_client:
                return self._reply_json(401, {"error": "missing or wrong bearer token"},
                                        [("WWW-Authenticate", 'Bearer realm="torchserve"')])
        body = self._read_body()
        if body is False:
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in DROPPED_HEADERS}
        path = route + (f"?{target.query}" if target.query else "")
        try:
            status, reason, answer_headers, data = proxy.forward(self.command, path, body, headers)
        except KeyRefused:
            log("TorchServe refused the inference key after a rotation")
            return self._reply_json(503, {"error": "TorchServe refused this pod's inference key, and rotating it "
                                                   "failed"})
        except TimeoutError:
            return self._reply_json(504, {"error": f"TorchServe did not answer within {proxy.inference.timeout:g} s"})
        except (OSError, http.client.HTTPException, KeyError, ValueError) as err:  # key file missing, unreachable...
            return self._reply_json(503, {"error": f"TorchServe not available: {type(err).__name__}: {err}"})
        self.send_response(status, reason)
        for name, value in answer_headers:
            if name.lower() not in DROPPED_HEADERS:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> bytes | None | bool:
        """The request body; None without one; False after answering an error (the connection then closes)."""
        if "Transfer-Encoding" in self.headers:  # chunked or any other coding: the size must be known up front
            self._reply_json(411, {"error": "send a Content-Length (chunked bodies are not accepted)"}, close=True)
            return False
        lengths = {v.strip() for v in self.headers.get_all("Content-Length", [])}
        if not lengths:
            return None
        length = lengths.pop() if len(lengths) == 1 else ""  # two different lengths: a request smuggling trick
        if not re.fullmatch(r"[0-9]{1,18}", length):
            self._reply_json(400, {"error": "bad Content-Length"}, close=True)
            return False
        size = int(length)
        if size > self.server.proxy.max_body:
            self._reply_json(413, {"error": f"body of {size} bytes is over {self.server.proxy.max_body}"}, close=True)
            return False
        body = self.rfile.read(size)  # TimeoutError past the request's deadline: 408 (handle_one_request)
        if len(body) < size:
            self._reply_json(400, {"error": f"body ended after {len(body)} of {size} bytes"}, close=True)
            return False
        self._body_pending = False
        return body

    def _reply_json(self, status: int, payload: dict, extra: list[tuple[str, str]] = (), close: bool = False) -> None:
        data = json.dumps(payload).encode()
        if close or self._body_pending:
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format, *args):  # noqa: A002 - no access log: TorchServe logs every request already
        pass


def linger(sock: socket.socket) -> None:
    """Close after the answer without resetting: a socket closed with unread data sends a reset, and a client still
    sending its body may then lose the answer. Drain what comes for up to LINGER_S first."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_S
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                break
    except OSError:
        pass


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], proxy: TokenProxy, idle_timeout: float, receive_timeout: float):
        super().__init__(address, ProxyHandler)
        self.proxy = proxy
        self.idle_timeout = idle_timeout
        self.receive_timeout = receive_timeout


def build_server(listen: str, inference: str, management: str, key_file: str, client_token_file: str,
                 timeout: float = 300.0, max_body: int = 16 * 1024 * 1024, idle_timeout: float = 60.0,
                 receive_timeout: float = 60.0) -> ProxyServer:
    host, _, port = listen.rpartition(":")
    proxy = TokenProxy(Upstream(inference, timeout), Upstream(management, 30.0), key_file, client_token_file,
                       max_body)
    return ProxyServer((host or "0.0.0.0", int(port)), proxy, idle_timeout, receive_timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="0.0.0.0:8000", help="HOST:PORT the Service targets")
    parser.add_argument("--inference", default="http://127.0.0.1:8080", help="TorchServe inference_address")
    parser.add_argument("--management", default="http://127.0.0.1:8081", help="TorchServe management_address")
    parser.add_argument("--key-file", default="/run/torchserve/key_file.json")
    parser.add_argument("--client-token-file", default="/var/run/secrets/torchserve-client/token")
    parser.add_argument("--timeout", type=float, default=300.0, help="s to wait for TorchServe's answer")
    parser.add_argument("--max-body", type=int, default=16 * 1024 * 1024,
                        help="bytes; keep equal to config.properties max_request_size")
    parser.add_argument("--idle-timeout", type=float, default=60.0,
                        help="s a client connection may wait for its next request (TorchServe has no such limit)")
    parser.add_argument("--receive-timeout", type=float, default=60.0,
                        help="s for a request to arrive in full once its first byte has (else 408)")
    args = parser.parse_args(argv)
    server = build_server(args.listen, args.inference, args.management, args.key_file, args.client_token_file,
                          args.timeout, args.max_body, args.idle_timeout, args.receive_timeout)
    log(f"listening on {args.listen}, forwarding to {args.inference}")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
