"""The tools against a TorchServe given by URLs and keys (torchserve_accel/tools/endpoints.py), without a TorchServe
process: the loopback check, key files as TorchServe writes them or holding one key, which instance the command
line names, keys used as given (no Authorization header without one; a refused key is an error that says there is
nothing to rotate), a URL's path prefix kept by every client, and ``start --python``."""

from __future__ import annotations

import json
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from torchserve_accel.tools import drain, endpoints, torchserve
from torchserve_accel.tools.cli import build_parser, main
from torchserve_accel.tools.endpoints import TorchServeAt
from torchserve_accel.tools.launch import TorchServeError
from torchserve_accel.tools.loadgen import driver
from tests.stubs import JsonHandler


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("localhost", True), ("LOCALHOST", True),
    ("10.0.0.5", False), ("192.168.1.2", False), ("::ffff:10.0.0.1", False), ("0.0.0.0", False),
    ("torchserve.serving.svc", False), ("localhost.example.com", False), ("127.0.0.1.nip.io", False), ("", False),
])
def test_loopback_hosts(host, loopback):
    assert endpoints.is_loopback(host) is loopback


def test_a_remote_url_needs_allow_remote():
    with pytest.raises(TorchServeError, match=r"--url http://10\.0\.0\.5:8080: 10\.0\.0\.5 is not a loopback.*"
                                              r"--allow-remote"):
        endpoints.check_loopback("http://10.0.0.5:8080", allow_remote=False)
    with pytest.raises(TorchServeError, match="--management-url .*torchserve.serving.svc"):
        TorchServeAt({"management": "http://torchserve.serving.svc:8081"})
    endpoints.check_loopback("http://10.0.0.5:8080", allow_remote=True)
    endpoints.check_loopback("http://[::1]:8080", allow_remote=False)
    remote = TorchServeAt({"inference": "https://ts.example.com/serving/"}, allow_remote=True)
    assert remote.url("inference", "/ping") == "https://ts.example.com/serving/ping" and remote.remote_allowed


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://127.0.0.1", "http://", "http://127.0.0.1:99999",
                                 "http://127.0.0.1:8080/?x=1", "http://127.0.0.1:8080#f"])
def test_malformed_urls_are_refused(url):
    with pytest.raises(TorchServeError, match="--url"):
        TorchServeAt({"inference": url})


def test_key_files_as_torchserve_writes_them_or_holding_one_key(tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"management": {"key": "m0", "expiration time": "2026-12-02T08:00:00Z"},
                                    "inference": {"key": "i0", "expiration time": "2026-12-02T08:00:00Z"},
                                    "API": {"key": "a0"}}))
    assert endpoints.read_keys(key_file, "inference") == {"management": "m0", "inference": "i0", "API": "a0"}
    plain = tmp_path / "token"
    plain.write_text("s3cret\n")
    assert endpoints.read_keys(plain, "inference") == {"inference": "s3cret"}
    assert endpoints.read_keys(plain, "management") == {"management": "s3cret"}
    for text in ("", "two words", json.dumps({"inference": "not an entry"})):
        plain.write_text(text)
        with pytest.raises(TorchServeError, match="--token-file"):
            endpoints.read_keys(plain, "inference")
    with pytest.raises(TorchServeError, match="--token-file .*missing"):
        endpoints.read_keys(tmp_path / "missing", "inference")


def parse(argv: list[str]):
    return build_parser().parse_args(argv)


def test_the_command_line_names_the_instance(tmp_path):
    (tmp_path / "token").write_text("k1")
    run_dir = endpoints.open_instance(parse(["predict", "m", "--text", "t", "--run-dir", str(tmp_path)]))
    assert type(run_dir) is torchserve.TorchServe and run_dir.run_dir == tmp_path.resolve()
    default = endpoints.open_instance(parse(["describe", "m"]), default_run_dir=tmp_path / "default")
    assert type(default) is torchserve.TorchServe and default.run_dir == (tmp_path / "default").resolve()

    given = endpoints.open_instance(parse(["predict", "m", "--text", "t", "--url", "http://127.0.0.1:8080",
                                           "--token-file", str(tmp_path / "token")]))
    assert isinstance(given, TorchServeAt) and given.keys() == {"inference": "k1"}
    assert given.url("inference", "/predictions/m") == "http://127.0.0.1:8080/predictions/m"
    with pytest.raises(TorchServeError, match="no management API given: pass --management-url"):
        given.url("management")

    management = endpoints.open_instance(parse(["scale", "m", "--min", "2", "--management-url",
                                                "http://localhost:8081", "--token-file", str(tmp_path / "token")]))
    assert management.keys() == {"management": "k1"} and set(management.urls) == {"management"}
    both = endpoints.open_instance(parse(["soak", "--model", "m", "--url", "http://127.0.0.1:1",
                                          "--management-url", "http://127.0.0.1:2", "--metrics-url",
                                          "http://127.0.0.1:3", "--token", "i", "--management-token", "m"]))
    assert both.keys() == {"inference": "i", "management": "m"} and set(both.urls) == {"inference", "management",
                                                                                         "metrics"}

    with pytest.raises(TorchServeError, match="either --run-dir or URLs"):
        endpoints.open_instance(parse(["predict", "m", "--url", "http://127.0.0.1:1", "--run-dir", str(tmp_path)]))
    with pytest.raises(TorchServeError, match="go with --url"):
        endpoints.open_instance(parse(["predict", "m", "--token", "k"]))
    with pytest.raises(TorchServeError, match="not a loopback address"):
        endpoints.open_instance(parse(["bench", "m", "--url", "http://10.1.1.1:8080"]))
    remote = endpoints.open_instance(parse(["bench", "m", "--url", "http://10.1.1.1:8080", "--allow-remote"]))
    assert remote.remote_allowed


@pytest.mark.parametrize("command", [["predict", "m"], ["bench", "m"], ["soak", "--model", "m"]])
def test_inference_tools_take_urls_and_keys(command):
    args = parse([*command, "--url", "http://127.0.0.1:8080", "--token-file", "k", "--token", "t", "--allow-remote"])
    assert (args.inference_url, args.inference_token, str(args.token_file), args.allow_remote) == (
        "http://127.0.0.1:8080", "t", "k", True)


@pytest.mark.parametrize("command", [["register", "m.mar"], ["scale", "m", "--min", "1"], ["describe", "m"],
                                     ["unregister", "m"]])
def test_management_tools_take_the_management_url_and_key(command):
    args = parse([*command, "--management-url", "http://127.0.0.1:8081", "--management-token", "t"])
    assert (args.management_url, args.management_token, args.target_api) == ("http://127.0.0.1:8081", "t",
                                                                              "management")
    with pytest.raises(SystemExit):
        parse([*command, "--url", "http://127.0.0.1:8080"])  # the inference URL is not theirs


@pytest.mark.parametrize("command", [["start"], ["stop"], ["rotate-keys"], ["sweep", "wait", "m"]])
def test_run_dir_commands_take_no_urls(command):
    with pytest.raises(SystemExit):
        parse([*command, "--url", "http://127.0.0.1:8080"])


# ------------------------------------------------------------------------------------------ against a fake server


class FakeServer:
    """Answers under ``/prefix`` what the tools ask, accepting the key ``good`` only; ``refusal`` is how it says no:
    TorchServe's 400, or 401 as a token proxy in front of it answers."""

    def __init__(self, refusal: int = 400):
        self.seen: list[tuple[str, str | None]] = []  # (method path, Authorization)
        self.key: str | None = "good"
        fake = self

        class Handler(JsonHandler):

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization")
                fake.seen.append((f"{self.command} {self.path}", auth))
                if fake.key is not None and auth != f"Bearer {fake.key}":
                    if refusal == 400:
                        return self._answer(400, {"code": 400, "message": torchserve.TOKEN_FAILED + ". Token either "
                                                  "incorrect, expired, or not provided correctly"})
                    return self._answer(401, {"error": "missing or wrong bearer token"})
                if self.path == "/prefix/models/m":
                    return self._answer(200, [{"modelName": "m", "modelVersion": "1.0", "workers": []}])
                return self._answer(200, {"bytes": len(body)})

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/prefix"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=[400, 401], ids=["torchserve-refusal", "proxy-refusal"])
def fake(request):
    server = FakeServer(refusal=request.param)
    yield server
    server.close()


def test_a_given_key_is_sent_as_is(fake):
    ts = TorchServeAt({"inference": fake.url, "management": fake.url}, {"inference": "good", "management": "good"})
    assert ts.predict("m", b"abc", "application/octet-stream").json() == {"bytes": 3}
    assert ts.describe("m")["modelName"] == "m"
    assert fake.seen == [("POST /prefix/predictions/m", "Bearer good"), ("GET /prefix/models/m", "Bearer good")]


def test_a_refused_key_stops_with_nothing_to_rotate(fake, tmp_path, capsys):
    ts = TorchServeAt({"inference": fake.url}, {"inference": "stale"}, key_source="--token")
    with pytest.raises(TorchServeError, match=r"inference API refused the key \(--token\).*nothing here to rotate"):
        ts.predict("m", b"x", "text/plain")
    assert fake.seen == [("POST /prefix/predictions/m", "Bearer stale")]  # asked once: no /token call, no retry
    (tmp_path / "token").write_text("stale")
    assert main(["describe", "m", "--management-url", fake.url, "--token-file", str(tmp_path / "token")]) == 1
    assert "management API refused the key (--token-file" in capsys.readouterr().err


def test_no_key_no_header(fake, capsys):
    fake.key = None  # token auth off
    assert main(["predict", "m", "--text", "hi", "--url", fake.url]) == 0
    assert fake.seen == [("POST /prefix/predictions/m", None)]
    fake.key = "good"
    assert main(["predict", "m", "--text", "hi", "--url", fake.url]) == 1
    assert "the inference API wants a key (no key given): pass --token-file" in capsys.readouterr().err


def test_the_load_generator_keeps_the_path_prefix_and_stays_on_loopback(fake):
    ts = TorchServeAt({"inference": fake.url}, {"inference": "good"})
    host, port, prefix = driver.inference_address(ts)
    assert (host, prefix) == ("127.0.0.1", "/prefix") and fake.url == f"http://127.0.0.1:{port}/prefix"
    ts.remote_allowed = False
    ts.urls["inference"] = "http://10.0.0.9:80"
    with pytest.raises(TorchServeError, match="not a loopback address"):
        driver.inference_address(ts)
    with pytest.raises(ValueError, match="plain HTTP"):
        driver.inference_address(TorchServeAt({"inference": "https://127.0.0.1:8443"}))


def test_nothing_is_started_or_stopped_through_urls():
    ts = TorchServeAt({"inference": "http://127.0.0.1:8080"})
    for call in (ts.stop, ts.start, lambda: ts.info):
        with pytest.raises(TorchServeError, match="not started"):
            call()
    assert ts.frontend_pid() is None and ts.worker_pids() == [] and not ts.pid_alive()


# ------------------------------------------------------------------------------------------ start --python


def test_start_checks_the_python_it_is_given(tmp_path):
    assert torchserve.check_python(sys.executable) == sys.executable
    with pytest.raises(TorchServeError, match="not an executable file"):
        torchserve.check_python(tmp_path / "nope")
    no_ts = tmp_path / "python"
    no_ts.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")  # no site-packages: no TorchServe
    no_ts.chmod(0o755)
    with pytest.raises(TorchServeError, match="cannot run TorchServe .*ModuleNotFoundError.*install torchserve"):
        torchserve.check_python(no_ts)
    args = parse(["start", "--python", str(no_ts)])
    assert args.python == Path(no_ts)


@pytest.mark.parametrize("command", [
    ["register", "../echo.mar"], ["register", "/srv/models/echo.mar"], ["register", "echo.mar", "--name", ".."],
    ["register", "echo.mar", "--name", "a/b"], ["scale", ".", "--min", "0"], ["describe", "../../x"],
    ["unregister", "a/b"],
])
def test_names_that_are_paths_are_refused_before_asking(fake, command, capsys):
    """TorchServe 0.12 registers models named ".", ".." or "a/b" that can then be neither reached nor unregistered,
    and any absolute directory: the tools refuse such names and archive paths without a request."""
    assert main([*command, "--management-url", fake.url, "--management-token", "good"]) == 1
    assert "a name in the model store, not a path" in capsys.readouterr().err
    assert fake.seen == []
    assert main(["describe", "m", "--management-url", fake.url, "--management-token", "good"]) == 0
    assert fake.seen == [("GET /prefix/models/m", "Bearer good")]


# ------------------------------------------------------------------------------------------ draining


RACE = 'Cannot invoke "org.pytorch.serve.job.Job.isControlCmd()" because "job" is null'  # TorchServe 0.12.0's words


class QueueFake:
    """A management and metrics API for model ``m`` whose backlog the test sets: ``pending`` queued requests,
    ``arrived``/``answered`` counts in Prometheus text (None: no such sample). PUT applies TorchServe's scaling rule
    to ``workers``; DELETE unregisters."""

    def __init__(self, workers: int = 1, pending: int = 0, arrived: float | None = None,
                 answered: float | None = None, response_timeout: int = 120):
        self.seen: list[str] = []
        self.workers, self.pending, self.arrived, self.answered = workers, pending, arrived, answered
        self.response_timeout = response_timeout
        self.registered = True
        # what each DELETE meets: "500-gone" (TorchServe's race answered 500 and removed the model), "500-kept"
        # (500 and still registered); when empty, a plain unregister
        self.delete_answers: list[str] = []
        fake = self

        class Handler(JsonHandler):

            def _serve(self):
                parts = urlsplit(self.path)
                fake.seen.append(f"{self.command} {parts.path}" + (f"?{parts.query}" if self.command == "PUT" else ""))
                if parts.path == "/prefix/metrics":
                    return self._text(fake.metrics_text())
                if parts.path != "/prefix/models/m" or not fake.registered:
                    return self._answer(404, {"code": 404, "message": "Model not found: m"})
                if self.command == "GET":
                    return self._answer(200, [fake.description()])
                if self.command == "DELETE":
                    race = fake.delete_answers.pop(0) if fake.delete_answers else None
                    fake.registered = race == "500-kept"
                    if race:
                        return self._answer(500, {"code": 500, "type": "InternalServerException", "message": RACE})
                    return self._answer(200, {"status": 'Model "m" unregistered'})
                query = parse_qs(parts.query)
                low, high = int(query["min_worker"][0]), int(query["max_worker"][0])
                fake.workers = low if fake.workers < low else min(fake.workers, high)
                return self._answer(200, {"status": "Workers updated"})

            def _text(self, text):
                data = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/prefix"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def description(self) -> dict:
        return {"modelName": "m", "maxBatchDelay": 0, "responseTimeout": self.response_timeout,
                "workers": [{"id": str(9000 + i), "status": "READY"} for i in range(self.workers)],
                "jobQueueStatus": {"remainingCapacity": 1000 - self.pending, "pendingRequests": self.pending}}

    def metrics_text(self) -> str:
        lines = []
        if self.arrived is not None:
            labels = 'model_name="m",model_version="default",hostname="h",'
            lines += ["# TYPE ts_inference_requests_total counter",
                      f"ts_inference_requests_total{{{labels}}} {self.arrived}"]
        if self.answered is not None:
            lines += ["# TYPE HandlerBatchedRequests counter",
                      f'HandlerBatchedRequests{{ModelName="m",Level="Model",Hostname="h",}} {self.answered}']
        return "\n".join(lines) + "\n"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def queue_fake():
    servers = []

    def make(**state) -> QueueFake:
        servers.append(QueueFake(**state))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def manage(fake: QueueFake, *command: str, metrics: bool = True) -> list[str]:
    return [*command, "--management-url", fake.url, "--management-token", "good",
            *(["--metrics-url", fake.url] if metrics else [])]


def test_a_queue_that_never_empties_is_refused_at_the_deadline(queue_fake, capsys):
    fake = queue_fake(workers=1, pending=3)
    assert main(manage(fake, "unregister", "m", "--drain-timeout", "0.6", metrics=False)) == 1
    out, err = capsys.readouterr()
    assert ("error: m did not drain within 0.6 s: 3 queued, in flight unknown, 1 worker(s) left; not unregistered "
            "(--force unregisters without draining)") in err
    assert "draining m: 3 queued" in out and "no metrics API (--metrics-url)" in out
    assert fake.registered and "DELETE /prefix/models/m" not in fake.seen

    fake = queue_fake(workers=2, pending=3)
    assert main(manage(fake, "scale", "m", "--min", "0", "--drain-timeout", "0.6")) == 1
    assert "3 queued, 0 in flight, 2 worker(s) left; m left at 2 worker(s), not scaled below that" in \
        capsys.readouterr().err
    assert fake.workers == 2 and not [s for s in fake.seen if s.startswith("PUT")]


def test_requests_in_flight_are_waited_for(queue_fake, capsys):
    """Queue empty, but one request counted on arrival has not been answered by the handler: in flight."""
    fake = queue_fake(workers=1, pending=0, arrived=5, answered=4)
    assert main(manage(fake, "unregister", "m", "--drain-timeout", "0.6")) == 1
    assert "m did not drain within 0.6 s: 0 queued, 1 in flight, 1 worker(s) left" in capsys.readouterr().err
    assert fake.registered

    fake.answered = 5
    assert main(manage(fake, "unregister", "m")) == 0
    assert not fake.registered and fake.seen[-1] == "DELETE /prefix/models/m"


def test_force_does_not_wait(queue_fake, capsys):
    fake = queue_fake(workers=2, pending=7)
    assert main(manage(fake, "unregister", "m", "--force")) == 0
    assert fake.seen == ["DELETE /prefix/models/m"]  # not even a look at the queue
    fake = queue_fake(workers=2, pending=7)
    assert main(manage(fake, "scale", "m", "--min", "0", "--force")) == 0
    assert [s for s in fake.seen if s.startswith("PUT")] == [
        "PUT /prefix/models/m?min_worker=0&max_worker=0&synchronous=true"]
    assert fake.workers == 0


def test_an_unregister_answered_500_by_torchserves_race_is_looked_at_and_asked_again(queue_fake, capsys):
    fake = queue_fake(workers=1, pending=7)
    fake.delete_answers = ["500-gone"]
    assert main(manage(fake, "unregister", "m", "--force")) == 0
    assert fake.seen == ["DELETE /prefix/models/m", "GET /prefix/models/m"] and not fake.registered
    assert "m unregistered (TorchServe answered 500 and removed it" in capsys.readouterr().out

    fake = queue_fake(workers=1, pending=7)
    fake.delete_answers = ["500-kept"]
    assert main(manage(fake, "unregister", "m", "--force")) == 0
    assert fake.seen == ["DELETE /prefix/models/m", "GET /prefix/models/m", "DELETE /prefix/models/m"]
    assert not fake.registered and "kept the model; asking again" in capsys.readouterr().out

    fake = queue_fake(workers=1, pending=7)
    fake.delete_answers = ["500-kept"] * 3
    assert main(manage(fake, "unregister", "m", "--force")) == 1
    assert fake.registered and fake.seen.count("DELETE /prefix/models/m") == 3
    assert "(3 attempts; m is still registered)" in capsys.readouterr().err


def test_scaling_down_goes_one_worker_at_a_time(queue_fake, capsys):
    fake = queue_fake(workers=3, pending=0, arrived=10, answered=10)
    assert main(manage(fake, "scale", "m", "--min", "0")) == 0
    puts = [s.split("?")[1].removesuffix("&synchronous=true") for s in fake.seen if s.startswith("PUT")]
    assert puts == ["min_worker=2&max_worker=2", "min_worker=1&max_worker=1", "min_worker=0&max_worker=0"]
    steps = [i for i, s in enumerate(fake.seen) if s.startswith("PUT")]
    for before, step in zip([0, *steps], steps):  # the queue and the counts were read before each step
        assert {"GET /prefix/models/m", "GET /prefix/metrics"} <= set(fake.seen[before:step])
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("scaling")] == [
        f"scaling m to {n} worker(s)" for n in (2, 1, 0)]

    up = queue_fake(workers=1, pending=5)  # adding workers drops nothing: no waiting
    assert main(manage(up, "scale", "m", "--min", "3", "--drain-timeout", "0")) == 0
    assert up.workers == 3 and [s for s in up.seen if s.startswith("GET")] == ["GET /prefix/models/m"]


def test_requests_never_answered_by_the_handler_stop_counting_after_the_response_timeout(queue_fake, capsys):
    """Refused requests (503: queue full, no worker) are counted on arrival but never answered: once nothing has
    moved for maxBatchDelay + responseTimeout, no batch can still be running, and the later steps of a scale-down
    leave them out from the start."""
    fake = queue_fake(workers=3, pending=0, arrived=7, answered=5, response_timeout=0)
    assert main(manage(fake, "scale", "m", "--min", "0", "--drain-timeout", "30")) == 0
    out = capsys.readouterr().out
    assert out.count("the 2 request(s) counted on arrival but never answered by the handler are not in flight") == 1
    assert fake.workers == 0
    assert main(manage(fake, "unregister", "m", "--drain-timeout", "30")) == 0
    assert "the 2 request(s) counted on arrival but never answered" in capsys.readouterr().out
    assert not fake.registered


def test_drain_as_a_library_call(queue_fake):
    fake = queue_fake(workers=1, pending=0, arrived=3, answered=3)
    lines: list[str] = []
    ts = TorchServeAt({"management": fake.url, "metrics": fake.url}, {"management": "good"})
    backlog = drain.drain(ts, "m", timeout=10, log=lines.append)
    assert (backlog.queued, backlog.in_flight, backlog.workers) == (0, 0, 1) and lines == []  # nothing to wait for
    fake.pending = 2
    with pytest.raises(drain.DrainTimeout) as late:
        drain.drain(ts, "m", timeout=0.3, log=lines.append)
    assert late.value.backlog.queued == 2 and lines[0] == "draining m: 2 queued, 0 in flight, 1 worker(s)"
