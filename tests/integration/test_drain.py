"""Draining before a model loses workers, against the real frontend (torchserve_accel/tools/drain.py).

The echo model sleeps 0.5 s per batch of one, so the requests sent at once stay queued for seconds. While they are
queued, ``unregister``, ``scale --min 1`` (from two workers, given by URLs) and ``scale --min 0`` (two steps) wait, and
every request is answered 200; the in-flight count closes exactly (neither the no-metrics nor the response-timeout
path is taken). ``--force`` does not wait: it returns while requests are still unanswered.

Each test registers its own model name: the frontend's counters are per name, and a forced unregister leaves requests
counted on arrival that are never answered.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import requests

from torchserve_accel.tools.cli import main
from torchserve_accel.tools.polling import wait_until
from torchserve_accel.tools.torchserve import TorchServe, TorchServeError
from tests.integration.serving import (
    build_echo_archive, ready_workers, running_torchserve, wait_for_requests_metric,
)

pytestmark = pytest.mark.integration
REQUESTS = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory, java_home):
    store = tmp_path_factory.mktemp("drain") / "model_store"
    build_echo_archive(store, "slow_echo", handler="  delay_s: 0.5\n")
    with running_torchserve(tmp_path_factory.mktemp("drain-run"), store) as ts:
        # The frontend registers a handler metric when a worker first reports it, and loses an increment when two
        # workers do so at once ("Collector already registered"): let one worker report it first.
        register(ts, "warm_up", 1)
        assert ts.predict("warm_up", b"x", "application/octet-stream").status_code == 200
        assert wait_for_requests_metric(ts, "warm_up", 1)[1] == 1
        ts.unregister("warm_up")
        yield ts


def register(ts: TorchServe, name: str, workers: int) -> None:
    ts.register("slow_echo.mar", name, batch_size=1, max_batch_delay=10, initial_workers=workers)
    assert [w["status"] for w in ready_workers(ts, name, workers)] == ["READY"] * workers


@contextlib.contextmanager
def load(ts: TorchServe, name: str, count: int = REQUESTS, timeout: float = 120):
    """``count`` requests sent at once (futures of their answers); waits on exit until each has an outcome."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        yield [pool.submit(ts.predict, name, b"x" * (i + 1), "application/octet-stream", timeout)
               for i in range(count)]


def wait_queued(ts: TorchServe, name: str, at_least: int) -> None:
    def queued() -> int:
        return ts.describe(name)["jobQueueStatus"]["pendingRequests"]

    assert wait_until(lambda: queued() >= at_least, 60, interval=0.05), f"never {at_least} queued ({queued()})"


def statuses(futures: list[Future]) -> list[int]:
    return [f.result().status_code for f in futures]


def run_dir(ts: TorchServe) -> list[str]:
    return ["--run-dir", str(ts.run_dir)]


def test_unregister_waits_for_queued_requests(server, capsys):
    register(server, "drain_unregister", 1)
    with load(server, "drain_unregister") as futures:
        wait_queued(server, "drain_unregister", 5)
        assert main(run_dir(server) + ["unregister", "drain_unregister"]) == 0
    assert statuses(futures) == [200] * REQUESTS
    assert [f.result().json()["bytes"] for f in futures] == list(range(1, REQUESTS + 1))
    with pytest.raises(TorchServeError) as gone:
        server.describe("drain_unregister")
    assert gone.value.status == 404
    out = capsys.readouterr().out
    assert "draining drain_unregister: " in out and "drain_unregister drained" in out
    assert "never answered" not in out and "no metrics API" not in out


def test_scale_down_by_urls_waits_for_queued_requests(server, capsys):
    register(server, "drain_scale", 2)
    urls = ["--management-url", server.url("management"), "--metrics-url", server.url("metrics"),
            "--token-file", str(server.run_dir / "key_file.json")]
    with load(server, "drain_scale") as futures:
        wait_queued(server, "drain_scale", 5)
        assert main(["scale", "drain_scale", "--min", "1", *urls]) == 0
    assert statuses(futures) == [200] * REQUESTS
    assert len(ready_workers(server, "drain_scale", 1)) == 1
    out = capsys.readouterr().out
    assert "draining drain_scale: " in out and "scaling drain_scale to 1 worker(s)" in out
    assert "never answered" not in out


def test_scale_to_zero_goes_one_worker_at_a_time(server, capsys):
    register(server, "drain_zero", 2)
    with load(server, "drain_zero") as futures:
        wait_queued(server, "drain_zero", 5)
        assert main(run_dir(server) + ["scale", "drain_zero", "--min", "0"]) == 0
    assert statuses(futures) == [200] * REQUESTS
    assert server.describe("drain_zero")["workers"] == []
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("scaling")] == [
        "scaling drain_zero to 1 worker(s)", "scaling drain_zero to 0 worker(s)"]
    server.unregister("drain_zero")


def test_force_does_not_wait(server, capsys):
    """Control: with --force the tool returns while requests are unanswered (what the frontend then does with them
    varies and is not asserted). 40 requests at 0.5 s each are far more work than a forced unregister takes."""
    register(server, "drain_forced", 1)
    with load(server, "drain_forced", count=2 * REQUESTS, timeout=20) as futures:
        wait_queued(server, "drain_forced", REQUESTS)
        assert main(run_dir(server) + ["unregister", "drain_forced", "--force"]) == 0
        answered = sum(f.done() and f.exception() is None and f.result().status_code == 200 for f in futures)
        assert answered < 2 * REQUESTS
    assert "draining" not in capsys.readouterr().out
    with pytest.raises(TorchServeError):
        server.describe("drain_forced")
    for future in futures:  # abandoned requests end at their client timeout
        assert future.exception() is None or isinstance(future.exception(), requests.RequestException)
