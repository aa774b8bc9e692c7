"""deploy/token_proxy.py on loopback, in front of the stand-in TorchServe of tests/test_k8s_manifests.py (which also
tests the token paths): what it lets through, the limits it puts on client connections, and what it answers when
TorchServe, its key rotation or the client-token file fail. The same guards against the real TorchServe are in
tests/integration/test_frontend_behaviour.py; docs/reliability.md (section 3) lists them.

The proxies here wait DEADLINE_S for anything, except where a test is about a timeout: that proxy gives up after
LIMIT_S, and the test waits for it up to DEADLINE_S, so a loaded machine only makes tests slower.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from http.server import ThreadingHTTPServer

import pytest
import requests

from torchserve_accel.tools.launch import free_ports
from torchserve_accel.tools.polling import wait_until
from tests.stubs import JsonHandler
from tests.test_k8s_manifests import FakeTorchServe, load_proxy_module
from tests import raw_http
from tests.raw_http import read_until_closed

PROXY = load_proxy_module()
TOKEN = "client-secret-1"
LIMIT_S = 0.5  # the idle or receive timeout of a proxy whose timeouts are tested
DEADLINE_S = 30.0  # the proxies' timeouts otherwise, and how long a test waits for anything
MODEL = "/predictions/resnet101"


@pytest.fixture
def start_proxy():
    """start(inference_url, management_url, key_file, token_file, **build_server options) -> the proxy's port."""
    servers = []

    def start(inference: str, management: str, key_file, token_file, **options) -> int:
        options = {"timeout": 10, "max_body": 1024, "idle_timeout": DEADLINE_S, "receive_timeout": DEADLINE_S,
                   **options}
        server = PROXY.build_server("127.0.0.1:0", inference, management, str(key_file), str(token_file), **options)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake(tmp_path):
    fake = FakeTorchServe(tmp_path)
    yield fake
    fake.close()


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def port(fake, token_file, start_proxy) -> int:
    return start_proxy(fake.url(fake.inference), fake.url(fake.management), fake.key_file, token_file)


@pytest.fixture
def idle_port(fake, token_file, start_proxy) -> int:
    """A proxy that closes idle connections after LIMIT_S."""
    return start_proxy(fake.url(fake.inference), fake.url(fake.management), fake.key_file, token_file,
                       idle_timeout=LIMIT_S)


@pytest.fixture
def receive_port(fake, token_file, start_proxy) -> int:
    """A proxy that gives up on a request not received in full within LIMIT_S of its first byte."""
    return start_proxy(fake.url(fake.inference), fake.url(fake.management), fake.key_file, token_file,
                       receive_timeout=LIMIT_S)


def url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}


def post(port: int, body: bytes = b"jpeg-bytes", path: str = MODEL, **kwargs) -> requests.Response:
    return requests.post(url(port, path), data=body, headers=auth(), timeout=DEADLINE_S, **kwargs)


def raw_request(method: str, path: str, body: bytes = b"", headers: str = "", length: int | None = None,
                token: str = TOKEN) -> bytes:
    length = len(body) if length is None else length
    return (f"{method} {path} HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n{headers}\r\n").encode() + body


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)


def answer_then_close(port: int, request: bytes) -> bytes:
    return raw_http.answer_then_close(port, request, DEADLINE_S)

def parse_answers(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """(status, headers with lower-case names, body) of each HTTP answer in ``data``, in order."""
    answers = []
    while data:
        head, separator, rest = data.partition(b"\r\n\r\n")
        assert separator, f"incomplete answer: {data[:300]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
        size = int(headers.get("content-length", 0))
        answers.append((int(status_line.split()[1]), headers, rest[:size]))
        data = rest[size:]
    return answers


# ---------------------------------------------------------------------------------------------- methods and routes

ALLOWED = [("POST", MODEL), ("POST", MODEL + "/2.0"), ("POST", "/v1/models/resnet101:predict"),
           ("POST", "/v2/models/resnet101/infer"), ("GET", "/ping")]
NOT_ALLOWED = [(m, MODEL, "POST") for m in ("GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO")] + [
    (m, "/ping", "GET") for m in ("POST", "HEAD", "DELETE")] + [
    ("GET", "/v2/models/resnet101/infer", "POST"), ("GET", "/v1/models/resnet101:predict", "POST")]
NOT_ROUTES = [("GET", "/api-description"), ("OPTIONS", "/"), ("GET", "/models"), ("POST", "/explanations/resnet101"),
              ("POST", "/predictions"), ("POST", MODEL + "/2.0/extra"), ("GET", "/v2/health/ready"),
              ("GET", "/metrics")]


@pytest.mark.parametrize("method, path", ALLOWED, ids=[f"{m} {p}" for m, p in ALLOWED])
def test_inference_routes_pass(fake, port, method, path):
    answer = requests.request(method, url(port, path), data=b"abc" if method == "POST" else None, headers=auth(),
                              timeout=DEADLINE_S)
    assert answer.status_code == 200, answer.text
    assert [seen["path"] for seen in fake.seen] == [path]


@pytest.mark.parametrize("method, path, allow", NOT_ALLOWED, ids=[f"{m} {p}" for m, p, _ in NOT_ALLOWED])
def test_other_methods_get_405_and_never_reach_torchserve(fake, port, method, path, allow):
    """TorchServe 0.12 runs inference for any method on a model route (HEAD and DELETE included) and answers /ping
    to any method: only the methods inference needs pass."""
    answer = requests.request(method, url(port, path), data=b"abc", headers=auth(), timeout=DEADLINE_S)
    assert answer.status_code == 405 and answer.headers["Allow"] == allow
    if method != "HEAD":
        assert method in answer.json()["error"]
    assert fake.seen == []


@pytest.mark.parametrize("method, path", NOT_ROUTES, ids=[f"{m} {p}" for m, p in NOT_ROUTES])
def test_other_paths_get_404_and_never_reach_torchserve(fake, port, method, path):
    answer = requests.request(method, url(port, path), data=b"abc", headers=auth(), timeout=DEADLINE_S)
    assert answer.status_code == 404 and path in answer.json()["error"]
    assert fake.seen == []


@pytest.mark.parametrize("refusal", ["405", "401"])
def test_an_unread_body_is_never_taken_for_the_next_request(fake, port, refusal):
    """A request refused before its body is read closes the connection after the answer: the body (here a whole
    second request) is not parsed as a request of its own."""
    smuggled = raw_request("POST", MODEL, b"smuggled")
    if refusal == "405":
        first = raw_request("DELETE", MODEL, smuggled)
    else:
        first = raw_request("POST", MODEL, smuggled, token="wrong-token")
    with connect(port) as sock:
        sock.sendall(first)
        answers = parse_answers(read_until_closed(sock))
    assert [(status, headers.get("connection")) for status, headers, _ in answers] == [(int(refusal), "close")]
    assert fake.seen == []


# ---------------------------------------------------------------------------------------------- client connections


def test_idle_connections_are_closed(fake, idle_port):
    """TorchServe keeps idle connections open for ever; the proxy closes them after its idle timeout, before any
    request and between requests."""
    idle = [connect(idle_port) for _ in range(5)]
    for sock in idle:
        with sock:
            assert read_until_closed(sock) == b""
    (status, headers, body), = parse_answers(answer_then_close(idle_port, raw_request("POST", MODEL, b"abc")))
    assert status == 200 and json.loads(body)["bytes"] == 3 and "connection" not in headers  # kept alive, then idle


STALLED = {
    "body": raw_request("POST", MODEL, b"x" * 10, length=100),
    "headers": raw_request("POST", MODEL, b"")[:40],
    "request line": b"POST /predictions/res",
}


@pytest.mark.parametrize("part", STALLED)
def test_a_request_that_stops_arriving_gets_408_and_is_closed(fake, receive_port, part):
    """TorchServe waits for ever for a body shorter than its Content-Length; the proxy gives up on any part of a
    request that does not arrive within its receive timeout."""
    with connect(receive_port) as sock:
        sock.sendall(STALLED[part])
        (status, headers, body), = parse_answers(read_until_closed(sock))
    assert status == 408 and headers["connection"] == "close" and "not received in full" in json.loads(body)["error"]
    assert fake.seen == []


def test_the_receive_deadline_bounds_the_whole_request_not_each_read(fake, receive_port):
    """A client sending a byte now and then, each well within the receive timeout, still gets 408."""
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:
        sock.sendall(raw_request("POST", MODEL, length=1000))
        while not stop.wait(LIMIT_S / 10):
            try:
                sock.sendall(b"x")
            except OSError:
                return

    with connect(receive_port) as sock:
        sender = threading.Thread(target=trickle, args=(sock,), daemon=True)
        sender.start()
        try:
            (status, _, _), = parse_answers(read_until_closed(sock))
        finally:
            stop.set()
            sender.join(DEADLINE_S)
    assert status == 408 and fake.seen == []


def test_a_body_cut_short_by_the_client_is_not_forwarded(fake, port):
    with connect(port) as sock:
        sock.sendall(raw_request("POST", MODEL, b"x" * 10, length=100))
        sock.shutdown(socket.SHUT_WR)
        (status, _, body), = parse_answers(read_until_closed(sock))
    assert status == 400 and "10 of 100 bytes" in json.loads(body)["error"]
    assert fake.seen == []


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_connection_close_is_honoured(fake, port, version):
    """TorchServe ignores ``Connection: close`` (and answers HTTP/1.0 with keep-alive); the proxy answers and
    closes, leaving a second request sent behind it unanswered."""
    first = raw_request("POST", MODEL, b"abc", headers="Connection: close\r\n" if version == "HTTP/1.1" else "")
    with connect(port) as sock:
        sock.sendall(first.replace(b"HTTP/1.1", version.encode(), 1) + raw_request("POST", MODEL, b"second"))
        answers = parse_answers(read_until_closed(sock))
    assert [(status, headers["connection"]) for status, headers, _ in answers] == [(200, "close")]
    assert [seen["body"] for seen in fake.seen] == [b"abc"]


@pytest.fixture
def gated(tmp_path, token_file, start_proxy):
    """The proxy in front of a stand-in that answers a request whose body is b"wait" only once ``gate`` is set:
    (proxy port, gate, log of ("start" | "end", body))."""
    gate, events = threading.Event(), []

    class Handler(JsonHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            events.append(("start", body))
            if body == b"wait":
                gate.wait(DEADLINE_S)
            events.append(("end", body))
            self._answer(200, {"body": body.decode()})

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    key_file = tmp_path / "keys.json"
    key_file.write_text(json.dumps({k: {"key": f"{k}-key"} for k in ("inference", "management", "API")}))
    upstream_url = f"http://127.0.0.1:{upstream.server_address[1]}"
    yield start_proxy(upstream_url, upstream_url, key_file, token_file), gate, events
    gate.set()
    upstream.shutdown()
    upstream.server_close()


def test_pipelined_requests_are_answered_in_order_one_at_a_time(gated):
    """TorchServe answers pipelined requests as they complete; the proxy reads the next request only after answering
    the one before, so answers keep the order and TorchServe sees one request at a time per client connection."""
    port, gate, events = gated
    with connect(port) as sock:
        sock.sendall(raw_request("POST", MODEL, b"wait") + raw_request("POST", MODEL, b"quick")
                     + raw_request("POST", MODEL, b"last", headers="Connection: close\r\n"))
        assert wait_until(lambda: ("start", b"wait") in events, DEADLINE_S, interval=0.02)
        gate.set()
        answers = parse_answers(read_until_closed(sock))
    assert [json.loads(body)["body"] for _, _, body in answers] == ["wait", "quick", "last"]
    assert events == [(e, b) for b in (b"wait", b"quick", b"last") for e in ("start", "end")]


# ---------------------------------------------------------------------------------------------- bodies

CHUNKED = (f"POST {MODEL} HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer {TOKEN}\r\n"
           "Transfer-Encoding: {coding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


@pytest.mark.parametrize("coding", ["chunked", "gzip, chunked"])
def test_chunked_bodies_get_411_and_are_closed(fake, port, coding):
    """TorchServe 0.12 accepts chunked bodies; the proxy does not: it checks a body's size against --max-body before
    reading it, so it needs the Content-Length."""
    with connect(port) as sock:
        sock.sendall(CHUNKED.format(coding=coding).encode())
        (status, headers, body), = parse_answers(read_until_closed(sock))
    assert status == 411 and headers["connection"] == "close" and "Content-Length" in json.loads(body)["error"]
    # What an HTTP client sends for a body of unknown length (requests: a generator) gets the same.
    assert post(port, iter([b"ab", b"cd"])).status_code == 411
    assert fake.seen == []


@pytest.mark.parametrize("lengths", [["-1"], ["1e3"], ["3", "5"], ["+3"]])
def test_bad_content_lengths_get_400(fake, port, lengths):
    request = raw_request("POST", MODEL, b"abc").replace(b"Content-Length: 3\r\n",
                                                         b"".join(b"Content-Length: %s\r\n" % n.encode() for n in lengths))
    with connect(port) as sock:
        sock.sendall(request)
        (status, _, body), = parse_answers(read_until_closed(sock))
    assert status == 400 and json.loads(body)["error"] == "bad Content-Length"
    assert fake.seen == []


# ---------------------------------------------------------------------------------------------- failures


def test_torchserve_down_gets_503_at_once(fake, token_file, start_proxy):
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    port = start_proxy(dead, dead, fake.key_file, token_file)
    for answer in (post(port), requests.get(url(port, "/ping"), timeout=DEADLINE_S)):
        assert answer.status_code == 503
        assert answer.json()["error"].startswith("TorchServe not available: ConnectionRefusedError")


def test_torchserve_not_answering_gets_504_after_the_timeout(fake, token_file, start_proxy):
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts connections; nothing ever answers
    with silent:
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        port = start_proxy(silent_url, silent_url, fake.key_file, token_file, timeout=LIMIT_S)
        answer = post(port)
    assert answer.status_code == 504 and answer.json()["error"] == f"TorchServe did not answer within {LIMIT_S:g} s"


def test_a_refused_key_rotation_gets_503_and_fails_readiness(fake, port):
    """TorchServe refuses the pod's key and then the rotation (the API key in the file is not the one it takes):
    the answer is the pod's failure (503), not TorchServe's 400, and /ping fails the readiness probe."""
    fake.expired = True
    fake.keys["API"] = "api-not-in-the-file"
    answer = post(port)
    assert answer.status_code == 503 and "refused this pod's inference key" in answer.json()["error"]
    assert requests.get(url(port, "/ping"), timeout=DEADLINE_S).status_code == 503
    assert fake.rotations == 0
    fake.keys["API"] = "api-0"  # the key file's again: the next refusal rotates
    assert post(port).status_code == 200 and fake.rotations == 1


def test_management_api_down_during_a_rotation_gets_503(fake, token_file, start_proxy):
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    port = start_proxy(fake.url(fake.inference), dead, fake.key_file, token_file)
    fake.expired = True
    answer = post(port)
    assert answer.status_code == 503
    assert answer.json()["error"].startswith("TorchServe not available: ConnectionRefusedError")


def unreadable(path, how: str) -> None:
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_text("\n")
    elif how == "a directory":
        path.unlink()
        path.mkdir()
    elif how == "not UTF-8":
        path.write_bytes(b"\xff\xfe\xfa")
    elif how == "no read permission":
        path.chmod(0)


@pytest.mark.parametrize("how", ["missing", "empty", "a directory", "not UTF-8", pytest.param(
    "no read permission", marks=pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file"))])
def test_an_unreadable_client_token_file_gets_503(fake, port, token_file, how):
    """Every client is refused with 503 (not 401: the client may hold the right token); /ping, which needs no client
    token, still reflects TorchServe; the token is read again once the file is fixed."""
    unreadable(token_file, how)
    answer = post(port)
    assert answer.status_code == 503 and answer.json() == {"error": "client token not configured"}
    assert requests.get(url(port, "/ping"), timeout=DEADLINE_S).status_code == 200
    assert [seen["path"] for seen in fake.seen] == ["/ping"]
    if token_file.is_dir():
        token_file.rmdir()
    elif token_file.exists():
        token_file.chmod(0o600)
    token_file.write_text(TOKEN + "\n")
    assert post(port).status_code == 200
