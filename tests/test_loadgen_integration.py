"""The load generator (``torchserve-accel bench``) and the sweep against a real TorchServe serving the echo test handler
(tests/integration/echo_handler.py): closed loop through the CLI (JSON written), open loop with per-request
4xx counted by status, a two-point sweep, and gRPC ``Predictions`` calls (``--transport grpc``) with a refusal
counted by the status in its body. Loopback only, free ports, about 30-40 s on 2 cores.

The figures are checked for being written and agreeing with each other, never against speeds: how many requests
a window holds, how fast they are answered and how late an arrival leaves depend on how busy the machine is.
"""

from __future__ import annotations

import json

import pytest

from torchserve_accel.tools import loadgen, sweep
from torchserve_accel.tools.cli import main
from torchserve_accel.tools.launch import find_java_home
from tests.integration.serving import build_echo_archive, ready_workers, running_torchserve

pytestmark = pytest.mark.integration
BATCH = 8


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    find_java_home()  # fails (does not skip) without Java 17+, like the other integration tests
    store = tmp_path_factory.mktemp("loadgen-echo") / "model_store"
    build_echo_archive(store)
    with running_torchserve(tmp_path_factory.mktemp("loadgen-run"), store) as ts:
        ts.register("echo.mar", "echo", batch_size=BATCH, max_batch_delay=5, initial_workers=1)
        ready_workers(ts, "echo", 1)  # a describe right after registering can still show the worker loading
        yield ts


def test_closed_loop_cli_writes_every_figure(echo, tmp_path):
    out = tmp_path / "closed.json"
    rc = main(["bench", "echo", "--run-dir", str(echo.run_dir), "--images", "8", "--concurrency", "16",
                       "--processes", "2", "--warmup", "1", "--duration", "3", "--label", "echo-closed",
                       "--out", str(out)])
    assert rc == 0
    document = json.loads(out.read_text())
    assert document["schema"] == loadgen.SCHEMA and document["label"] == "echo-closed"
    assert document["card"] and document["versions"]["torchserve"] == "0.12.0"
    assert document["command"][:3] == ["torchserve-accel", "bench", "echo"] and "--concurrency" in document["command"]
    assert document["config"]["server"]["batchSize"] == BATCH and document["config"]["server"]["workers_ready"] == 1
    assert document["config"]["payload"]["kind"] == "images"
    assert 55_000 < document["config"]["payload"]["bytes"]["mean"] < 100_000
    r = document["results"]
    assert r["probe"]["status"] == 200
    assert r["errors"] == {} and r["error_rate"] == 0.0
    assert r["window_s"] == 3.0 and r["completed"] > 0 and r["started"] > 0
    assert r["throughput_rps"] == r["ok_rps"] == pytest.approx(r["completed"] / r["window_s"], abs=0.01)
    lat = r["latency_ms"]
    assert lat["count"] == r["latency_ok_ms"]["count"] == r["started"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] <= 60_000  # each request is bounded by --timeout
    server = r["server"]
    assert server["handler_batched_requests"] > 0 and server["server_requests"] > 0
    assert server["mean_batch_size"] == round(server["handler_batched_requests"] / server["handler_batches"], 3) > 0
    assert r["gpu"] is None or "util_mean" in r["gpu"]
    client = r["client"]
    assert client["processes"] == 2 and client["failures"] == [] and len(client["per_process"]) == 2
    assert all(p["connections"] == 8 for p in client["per_process"])


def test_open_loop_counts_errors_by_status(echo):
    good = loadgen.Payload(b"x" * 1000, "application/octet-stream")
    bad = loadgen.Payload(b"bad", "application/octet-stream")  # the echo handler answers 422 for this one body
    config = loadgen.LoadConfig(rate=60, processes=2, warmup_s=0.5, duration_s=2.5, timeout_s=60)
    r = loadgen.run_load(echo, "echo", [good, bad, good, good], config, log=print)
    assert r["mode"] == "open" and r["window_s"] == 2.5
    # Arrival times come from a seeded generator: the requests that start inside the window do not depend on load.
    started = r["started"]
    assert started > 0 and r["throughput_rps"] == pytest.approx(r["completed"] / r["window_s"], abs=0.01)
    assert list(r["errors"]) == ["422"]
    # Each process sends the payloads in turn, so one request in four of its run inside the window is the bad one.
    assert abs(r["errors"]["422"] - started / 4) < config.processes
    assert r["error_rate"] == round(r["errors"]["422"] / started, 6)
    assert r["latency_ms"]["count"] == started
    assert r["latency_ok_ms"]["count"] == started - r["errors"]["422"]
    lag = r["client"]["dispatch_lag_ms"]  # one sample per arrival inside the window
    assert lag["count"] == started and lag["p50"] <= lag["p90"] <= lag["p99"] <= lag["max"]


def test_two_point_sweep(echo, tmp_path):
    payloads = [loadgen.Payload(b"y" * 500, "application/octet-stream")]
    base = loadgen.LoadConfig(processes=1, warmup_s=0.3, duration_s=1.2, timeout_s=60)
    # A p99 bound no answered request can exceed (the timeout): which point is best depends on errors and rates only.
    summary = sweep.run_sweep(echo, "echo", "echo.mar", [1, 2], [4], [5], payloads, {"kind": "bytes"}, base,
                              concurrency=None, per_slot=1.5, p99_bound_ms=base.timeout_s * 1000, out_dir=tmp_path,
                              start_timeout=180, log=print)
    points = summary["points"]
    assert [(p["workers"], p["batch_size"], p["max_batch_delay"]) for p in points] == [(1, 4, 5), (2, 4, 5)]
    assert [p["concurrency"] for p in points] == [8, 12]  # 1.5 x workers x batch size, at least 8
    assert all(p["ok_rps"] > 0 and p["errors"] == {} and not p["error"] for p in points)
    assert summary["best"] == max(points, key=lambda p: p["ok_rps"])
    files = sorted(p.name for p in tmp_path.glob("*.json"))
    assert files == ["echo-sweep.json", "echo-w1-bs4-d5.json", "echo-w2-bs4-d5.json"]
    assert json.loads((tmp_path / "echo-w2-bs4-d5.json").read_text())["config"]["server"]["workers"] == 2
    description = echo.describe("echo")
    assert description["batchSize"] == 4 and len(description["workers"]) == 2


def test_up_registers_with_batching_and_scales(echo):
    """``sweep up``: what the GPU scripts run to bring a model up (register, first worker, scale)."""
    argv = ["sweep", "--run-dir", str(echo.run_dir), "up", "echo_up", "2", "--archive", "echo.mar", "--batch-size", "3",
            "--max-batch-delay", "7", "--timeout", "180"]
    try:
        assert main(argv) == 0
        description = echo.describe("echo_up")
        assert (description["batchSize"], description["maxBatchDelay"]) == (3, 7)
        assert [w["status"] for w in description["workers"]] == ["READY", "READY"]
        assert main(["sweep", "wait", "echo_up", "--workers", "2", "--run-dir", str(echo.run_dir)]) == 0
    finally:
        sweep.unregister_and_wait(echo, "echo_up", log=print)


def test_grpc_transport_counts_answers_and_refusals(echo, tmp_path):
    """``bench --transport grpc``: Predictions calls on the instance's gRPC port, a group's images as entries "0",
    "1" (the echo model answers entry "0"'s length); a body the handler refuses is answered gRPC OK with
    ``{"error": ..., "status": 422}`` and recorded as 422."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed (pip install -e .[dev])")
    import grpc

    from torchserve_accel.tools.grpc_stubs import bearer, compile_stubs
    from torchserve_accel.tools.loadgen.grpc_client import PREDICTIONS, prebuilt_requests

    pair = loadgen.Payload(b"p", "multipart/form-data", items=(b"x" * 1000, b"y" * 10))
    stubs = compile_stubs(tmp_path / "stubs")
    (raw,) = prebuilt_requests(stubs, "echo", [pair])
    with grpc.insecure_channel(f"127.0.0.1:{echo.info.grpc_ports[0]}") as channel:
        answer = channel.unary_unary(PREDICTIONS)(raw, metadata=bearer(echo.keys()["inference"]), timeout=60)
    assert json.loads(stubs.inference.PredictionResponse.FromString(answer).prediction)["bytes"] == 1000

    good = loadgen.Payload(b"x" * 1000, "application/octet-stream")
    bad = loadgen.Payload(b"bad", "application/octet-stream")  # the echo handler answers 422 for this one body
    config = loadgen.LoadConfig(concurrency=4, processes=2, warmup_s=0.5, duration_s=2.5, transport="grpc")
    r = loadgen.run_load(echo, "echo", [good, pair, bad], config, log=print)
    assert r["completed"] > 0 and r["started"] > 0 and r["client"]["failures"] == []
    assert list(r["errors"]) == ["422"] and 0 < r["errors"]["422"] < r["started"]
    assert r["latency_ok_ms"]["count"] == r["started"] - r["errors"]["422"]
    assert r["server"]["handler_batched_requests"] > 0  # the calls reached the handler

    out = tmp_path / "grpc.json"
    rc = main(["bench", "echo", "--run-dir", str(echo.run_dir), "--images", "4", "--per-request", "2",
               "--transport", "grpc", "--concurrency", "4", "--processes", "1", "--warmup", "0.5", "--duration", "2",
               "--out", str(out)])
    assert rc == 0
    document = json.loads(out.read_text())
    assert document["label"] == "echo-closed-grpc" and document["config"]["load"]["transport"] == "grpc"
    assert document["config"]["payload"]["image_format"] == "grpc input entries"
    r = document["results"]
    assert r["errors"] == {} and r["completed"] > 0 and r["ok_items_per_s"] == pytest.approx(2 * r["ok_rps"])
