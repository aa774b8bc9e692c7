"""TorchServe 0.12 frontend behaviour this project cannot change, pinned against a real TorchServe, each beside what
the pod's token proxy (deploy/token_proxy.py, run as in the pod: its own process) does about it.

docs/reliability.md (section 3) lists each behaviour and the proxy's answer to it. A failure in a ``torchserve_*``
test means TorchServe behaves differently now: update the docs (and reconsider the proxy's guard) rather than the
test. The models: the echo archive, and a gate model that answers a body ``wait:<path>`` only once the test creates
<path>, so request order is decided by the test, not by timing.
"""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from torchserve_accel.tools.launch import free_ports
from torchserve_accel.tools.polling import wait_until
from tests.integration.serving import running_torchserve, wait_for_requests_metric
from tests.integration.test_bad_inputs import model_store
from tests import raw_http
from tests.raw_http import read_until_closed

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
UPDATE_DOCS = "TorchServe's frontend changed: update docs/reliability.md (section 3) and this test"
DEADLINE_S = 60.0  # the longest any answer or close is waited for
IDLE_S = 5.0  # how long connections sit idle before TorchServe is shown to have kept them
UNANSWERED_S = 3.0  # how long a short body is shown to stay unanswered
PROXY_LIMIT_S = 1.0  # the idle or receive timeout of a proxy whose timeouts are tested (DEADLINE_S otherwise)
CONNECTIONS = 20
TOKEN = "frontend-test-token"

GATE_HANDLER = '''"""Answers each request with b"answer:" + its body; a body b"wait:<path>" creates <path>.started, then waits
(at most 120 s) for <path> to exist before answering."""
import os
import time


def handle(data, context):
    if data is None:  # TorchServe's initialization call of a function handler
        return None
    answers = []
    for request in data:
        body = bytes(request.get("body") or request.get("data") or b"")
        if body.startswith(b"wait:"):
            gate = body[5:].decode()
            open(gate + ".started", "w").close()
            deadline = time.monotonic() + 120
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.02)
        answers.append(b"answer:" + body)
    return answers
'''


@pytest.fixture(scope="module")
def served(tmp_path_factory, echo_store):
    work = tmp_path_factory.mktemp("frontend")
    store = model_store(work / "model_store", echo_store / "echo.mar")
    (work / "gate_handler.py").write_text(GATE_HANDLER)
    (work / "gate-config.yaml").write_text("responseTimeout: 150\n")
    subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", "gate", "--version", "1.0",
                    "--handler", str(work / "gate_handler.py"), "--config-file", str(work / "gate-config.yaml"),
                    "--export-path", str(store)], check=True, capture_output=True, text=True)
    with running_torchserve(work / "run", store) as ts:
        ts.register("echo.mar", "echo", batch_size=1, max_batch_delay=10, initial_workers=1)
        ts.register("gate.mar", "gate", batch_size=1, max_batch_delay=10, initial_workers=1)
        yield ts


_fresh_names = itertools.count()


@pytest.fixture
def counted_echo(served) -> str:
    """The echo archive under a name no other test sends to: its request count (a worker metric, which reaches the
    frontend asynchronously) is this test's alone."""
    name = f"counted_{next(_fresh_names)}"
    served.register("echo.mar", name, batch_size=1, max_batch_delay=10, initial_workers=1)
    yield name
    served.unregister(name)


@pytest.fixture(scope="module")
def start_proxy(served, tmp_path_factory):
    """start(idle_timeout, receive_timeout) -> (port, psutil.Process): deploy/token_proxy.py in front of ``served``,
    run as the pod runs it (its own process, the instance's key file)."""
    token_file = tmp_path_factory.mktemp("proxy") / "token"
    token_file.write_text(TOKEN)
    processes = []

    def start(idle_timeout: float = DEADLINE_S, receive_timeout: float = DEADLINE_S):
        port = free_ports(1)[0]
        processes.append(subprocess.Popen([
            sys.executable, str(REPO / "deploy" / "token_proxy.py"), "--listen", f"127.0.0.1:{port}",
            "--inference", served.url("inference"), "--management", served.url("management"),
            "--key-file", str(served.run_dir / "key_file.json"), "--client-token-file", str(token_file),
            "--idle-timeout", str(idle_timeout), "--receive-timeout", str(receive_timeout)]))

        def alive() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/livez", timeout=5).ok
            except requests.ConnectionError:
                return False

        assert wait_until(alive, DEADLINE_S, interval=0.1), "the token proxy did not start"
        return port, psutil.Process(processes[-1].pid)

    yield start
    for process in processes:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def proxy(start_proxy):
    return start_proxy()


# ---------------------------------------------------------------------------------------------- raw HTTP


def request(method: str, model: str, body: bytes, key: str, headers: str = "") -> bytes:
    return (f"{method} /predictions/{model} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n{headers}\r\n").encode() + body


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)


def read_answer(reader, waiting_for: str) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer (status, headers with lower-case names, body) from ``reader`` (a socket's makefile("rb"))."""
    try:
        status_line = reader.readline()
        headers = {}
        while (line := reader.readline().decode("latin-1").strip()):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = reader.read(int(headers.get("content-length", 0)))
    except TimeoutError:
        pytest.fail(f"no answer within {DEADLINE_S} s while waiting for {waiting_for}")
    assert status_line, f"the connection closed while waiting for {waiting_for}"
    return int(status_line.split()[1]), headers, body


def answer_then_close(port: int, request: bytes) -> bytes:
    return raw_http.answer_then_close(port, request, DEADLINE_S)

def body_of(data: bytes) -> dict:
    """The JSON body of the one answer in ``data``."""
    return json.loads(data.partition(b"\r\n\r\n")[2])


def gate_paths(tmp_path: Path) -> tuple[Path, bytes]:
    gate = tmp_path / "gate"
    return gate, f"wait:{gate}".encode()


# ---------------------------------------------------------------------------------------------- pipelining


def test_torchserve_answers_pipelined_requests_out_of_order(served, tmp_path):
    gate, wait_body = gate_paths(tmp_path)
    key = served.keys()["inference"]
    with connect(served.info.inference_port) as sock, sock.makefile("rb") as reader:
        sock.sendall(request("POST", "gate", wait_body, key) + request("POST", "echo", b"xyz", key))
        # The first request waits for the gate, which opens only after an answer has come: in-order answers hang.
        try:
            status, _, body = read_answer(reader, f"the second request's answer ({UPDATE_DOCS})")
        finally:
            gate.touch()
        assert status == 200 and json.loads(body)["bytes"] == 3, UPDATE_DOCS
        status, _, body = read_answer(reader, "the first request's answer")
        assert status == 200 and body == b"answer:" + wait_body


def test_proxy_answers_pipelined_requests_in_order(served, proxy, tmp_path):
    port, _ = proxy
    gate, wait_body = gate_paths(tmp_path)
    with connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(request("POST", "gate", wait_body, TOKEN) + request("POST", "echo", b"xyz", TOKEN))
        assert wait_until(lambda: Path(f"{gate}.started").exists(), DEADLINE_S, interval=0.05)
        gate.touch()
        first, second = read_answer(reader, "the first answer"), read_answer(reader, "the second answer")
    assert first[0] == 200 and first[2] == b"answer:" + wait_body
    assert second[0] == 200 and json.loads(second[2])["bytes"] == 3


# ---------------------------------------------------------------------------------------------- methods


def test_torchserve_runs_inference_for_any_method(served, counted_echo):
    auth = {"Authorization": f"Bearer {served.keys()['inference']}", "Content-Type": "application/octet-stream"}
    url = served.url("inference", f"/predictions/{counted_echo}")
    methods = ("GET", "PUT", "DELETE", "PATCH", "TRACE", "FOO")
    for method in methods:
        answer = requests.request(method, url, data=b"abcd", headers=auth, timeout=DEADLINE_S)
        assert answer.status_code == 200 and answer.json()["bytes"] == 4, (method, answer.text[:200], UPDATE_DOCS)
    head = requests.head(url, data=b"abcd", headers=auth, timeout=DEADLINE_S)
    assert head.status_code == 200 and int(head.headers["content-length"]) > 0
    _, handled = wait_for_requests_metric(served, counted_echo, len(methods) + 1, timeout=DEADLINE_S)
    assert handled == len(methods) + 1, f"HEAD no longer runs inference: {UPDATE_DOCS}"
    # OPTIONS is the one exception: the model's OpenAPI description.
    options = requests.options(url, headers=auth, timeout=DEADLINE_S)
    assert options.status_code == 200 and "openapi" in options.json(), UPDATE_DOCS
    for method in ("POST", "DELETE"):
        ping = requests.request(method, served.url("inference", "/ping"), headers=auth, timeout=DEADLINE_S)
        assert ping.status_code == 200 and ping.json() == {"status": "Healthy"}, (method, UPDATE_DOCS)
    # No KServe health or model-metadata routes, so the proxy lets none through.
    for path in ("/v2/health/ready", "/v2/health/live", f"/v2/models/{counted_echo}", f"/v1/models/{counted_echo}"):
        assert requests.get(served.url("inference", path), headers=auth, timeout=DEADLINE_S).status_code == 404, (
            path, UPDATE_DOCS)


def test_proxy_lets_only_post_reach_the_model(served, proxy, counted_echo):
    port, _ = proxy
    url = f"http://127.0.0.1:{port}/predictions/{counted_echo}"
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}
    for method in ("GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"):
        answer = requests.request(method, url, data=b"abcd", headers=auth, timeout=DEADLINE_S)
        assert answer.status_code == 405 and answer.headers["Allow"] == "POST", method
    answer = requests.post(url, data=b"abcd", headers=auth, timeout=DEADLINE_S)
    assert answer.status_code == 200 and answer.json()["bytes"] == 4
    # One worker, batch size 1: refused requests that had run would have been counted before this one.
    _, handled = wait_for_requests_metric(served, counted_echo, 1, timeout=DEADLINE_S)
    assert handled == 1


# ---------------------------------------------------------------------------------------------- idle connections


def test_torchserve_keeps_idle_connections_and_ignores_connection_close(served):
    key = served.keys()["inference"]
    sockets = [connect(served.info.inference_port) for _ in range(CONNECTIONS)]
    try:
        asks_close, http_1_0 = sockets[:2]
        with asks_close.makefile("rb") as reader:
            asks_close.sendall(request("POST", "echo", b"ab", key, headers="Connection: close\r\n"))
            status, headers, _ = read_answer(reader, "the answer to a Connection: close request")
            assert status == 200 and headers["connection"] == "keep-alive", UPDATE_DOCS
        with http_1_0.makefile("rb") as reader:  # HTTP/1.0 without keep-alive means close after the answer
            http_1_0.sendall(request("POST", "echo", b"ab", key).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
            status, headers, _ = read_answer(reader, "the answer to an HTTP/1.0 request")
            assert status == 200 and headers["connection"] == "keep-alive", UPDATE_DOCS
        time.sleep(IDLE_S)  # idle: TorchServe has no idle timeout that would close them meanwhile
        for sock in sockets:  # each still serves, those that asked to be closed included
            with sock.makefile("rb") as reader:
                sock.sendall(request("POST", "echo", b"abc", key))
                status, _, body = read_answer(reader, f"an answer after {IDLE_S} s idle ({UPDATE_DOCS})")
                assert status == 200 and json.loads(body)["bytes"] == 3
    finally:
        for sock in sockets:
            sock.close()


def test_proxy_closes_idle_connections_and_honours_connection_close(served, start_proxy, proxy):
    port, process = start_proxy(idle_timeout=PROXY_LIMIT_S)
    one_request = request("POST", "echo", b"abc", TOKEN)
    sockets = [connect(port) for _ in range(CONNECTIONS)]
    try:
        for sock in sockets:
            sock.sendall(one_request)
        # Answered, then closed after the idle timeout. Nothing came back only where the proxy closed the connection
        # before the request reached it (the test was descheduled for longer than the timeout): sent again then.
        answers = [read_until_closed(sock) or answer_then_close(port, one_request) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    for data in answers:
        assert data.startswith(b"HTTP/1.1 200 ") and body_of(data)["bytes"] == 3, data[:300]

    # The proxy's connections to TorchServe (one per client connection) close with them: TorchServe never would.
    def upstream_connections() -> list:
        return [c for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_ESTABLISHED and c.raddr
                and c.raddr.port == served.info.inference_port]

    assert wait_until(lambda: not upstream_connections(), DEADLINE_S, interval=0.1), upstream_connections()
    with connect(proxy[0]) as sock:
        sock.sendall(request("POST", "echo", b"ab", TOKEN, headers="Connection: close\r\n")
                     + request("POST", "echo", b"never", TOKEN))
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close\r\n" in data
    assert data.count(b"HTTP/1.1 ") == 1 and body_of(data)["bytes"] == 2, data[:500]


# ---------------------------------------------------------------------------------------------- short bodies


def test_torchserve_never_answers_a_body_shorter_than_its_content_length(served):
    key = served.keys()["inference"]
    whole = request("POST", "echo", b"x" * 100, key)
    with connect(served.info.inference_port) as sock:
        sock.sendall(whole[:-90])
        sock.settimeout(UNANSWERED_S)
        try:
            early = sock.recv(65536)
        except TimeoutError:
            early = None
        assert early is None, f"TorchServe answered or closed a short body: {early[:300]!r}; {UPDATE_DOCS}"
        sock.settimeout(DEADLINE_S)
        sock.sendall(whole[-90:])  # it was waiting for the rest, with no deadline of its own
        with sock.makefile("rb") as reader:
            status, _, body = read_answer(reader, "the answer once the body is complete")
        assert status == 200 and json.loads(body)["bytes"] == 100
    with connect(served.info.inference_port) as sock:  # the client gives up sending: closed, still no answer
        sock.sendall(whole[:-90])
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b"", UPDATE_DOCS


def test_proxy_answers_408_to_a_body_that_stops_arriving(served, start_proxy):
    port, _ = start_proxy(receive_timeout=PROXY_LIMIT_S)
    with connect(port) as sock:
        sock.sendall(request("POST", "echo", b"x" * 100, TOKEN)[:-90])
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 ") and b"\r\nConnection: close\r\n" in data


# ---------------------------------------------------------------------------------------------- chunked bodies


def test_torchserve_accepts_chunked_bodies(served):
    """The proxy refuses them (411, tests/test_token_proxy.py): a difference clients see only through the proxy."""
    key = served.keys()["inference"]
    with connect(served.info.inference_port) as sock, sock.makefile("rb") as reader:
        sock.sendall(f"POST /predictions/echo HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
                     "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n".encode())
        status, _, body = read_answer(reader, "the answer to a chunked body")
    assert status == 200 and json.loads(body)["bytes"] == 8, UPDATE_DOCS
