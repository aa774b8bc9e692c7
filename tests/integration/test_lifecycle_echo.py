"""The TorchServe lifecycle our tools drive, against the real frontend with a tiny echo model (fast).

Covers: start on free ports with token auth on, register with batching, batch aggregation (responses and the
handler's custom metrics at the Prometheus endpoint), per-request 4xx inside a batch, token refusal, allowed
URLs, scale up/down, unregister, key rotation after expiry, the lifecycle commands, two instances side by side,
stop. Batches of 4 with a 5 s maxBatchDelay: a group of four sent at once closes its batch as soon as it is in, so
which requests share a batch does not depend on how fast a busy machine delivers them.
"""

from __future__ import annotations

import time

import psutil
import pytest
import requests

from torchserve_accel.tools.cli import main
from torchserve_accel.tools.launch import derive_config, free_ports
from torchserve_accel.tools.paths import BASE_CONFIG
from torchserve_accel.tools.torchserve import TOKEN_FAILED, TorchServe, TorchServeError, pid_alive
from tests.integration.serving import (
    handler_counters, ready_workers, running_torchserve, send_concurrently, wait_for_requests_metric,
)

pytestmark = pytest.mark.integration
BATCH = 4
DELAY_MS = 5000  # a batch closes when its fourth request is in; only a group that never fills waits this long


@pytest.fixture(scope="module")
def echo(tmp_path_factory, echo_store):
    with running_torchserve(tmp_path_factory.mktemp("echo-run"), echo_store) as ts:
        answer = ts.register("echo.mar", "echo", batch_size=BATCH, max_batch_delay=DELAY_MS, initial_workers=1)
        assert "registered" in answer["status"]
        ready_workers(ts, "echo", 1)  # a describe right after registering can still show the worker loading
        yield ts


def test_registered_with_batching(echo):
    description = echo.describe("echo")
    assert description["batchSize"] == BATCH and description["maxBatchDelay"] == DELAY_MS
    assert [w["status"] for w in description["workers"]] == ["READY"]
    assert (echo.run_dir / "key_file.json").exists() and (echo.run_dir / "tmp" / ".model_server.pid").exists()


def test_requests_without_a_valid_token_are_refused(echo):
    url = echo.url("inference", "/predictions/echo")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {echo.keys()['management']}"}):
        answer = requests.post(url, data=b"x", headers={"Content-Type": "application/octet-stream", **headers})
        assert answer.status_code == 400 and TOKEN_FAILED in answer.text, headers
    assert requests.get(echo.url("management", "/models")).status_code == 400
    assert requests.get(echo.url("inference", "/ping")).status_code == 400
    good = echo.predict("echo", b"x", "application/octet-stream")
    assert good.status_code == 200 and good.json()["bytes"] == 1


def test_concurrent_requests_are_batched(echo):
    """Two batches' worth sent at once run as two full batches."""
    batches0, requests0 = handler_counters(echo, "echo")
    sent = 2 * BATCH
    answers = send_concurrently(echo, "echo", [(b"y" * (i + 1), "application/octet-stream") for i in range(sent)])
    assert [a.status_code for a in answers] == [200] * sent
    bodies = [a.json() for a in answers]
    assert [b["bytes"] for b in bodies] == list(range(1, sent + 1))  # each answer belongs to its own request
    assert [b["batch_size"] for b in bodies] == [BATCH] * sent
    batches, requests_ = wait_for_requests_metric(echo, "echo", requests0 + sent)
    assert requests_ - requests0 == sent
    assert batches - batches0 == 2


def test_bad_request_gets_its_own_4xx_inside_a_batch(echo):
    bodies = [(b"good", "application/octet-stream")] * 3 + [(b"bad", "application/octet-stream")]
    answers = send_concurrently(echo, "echo", bodies)
    assert [a.status_code for a in answers] == [200, 200, 200, 422]
    assert answers[3].json() == {"error": "bad payload", "status": 422}
    assert answers[3].headers["Content-Type"].startswith("application/json")
    # All four ran as one batch: the bad request did not fail the good ones it was batched with.
    assert [a.json()["batch_size"] for a in answers[:3]] == [4, 4, 4]


def test_form_encoded_body_is_a_client_error(echo):
    answer = echo.request("inference", "POST", "/predictions/echo", data=b"abc",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 400 and "empty request body" in answer.json()["error"]


def test_allowed_urls_refuse_downloads(echo, echo_store):
    for url in (f"file://{echo_store}/echo.mar", "https://example.com/echo.mar"):
        with pytest.raises(TorchServeError) as refused:
            echo.register(url, "elsewhere")
        assert refused.value.status == 404 and "does not match any allowed URL" in str(refused.value)


def test_scale_up_and_down(echo):
    echo.scale("echo", 3, 3)
    workers = ready_workers(echo, "echo", 3)
    assert len(workers) == 3 and {w["status"] for w in workers} == {"READY"}
    answers = send_concurrently(echo, "echo", [(b"z", "application/octet-stream")] * 2 * BATCH)  # full batches
    assert all(a.status_code == 200 for a in answers)
    echo.scale("echo", 1, 1)
    deadline = time.monotonic() + 180  # only ends a wait that would never succeed
    while len(echo.describe("echo")["workers"]) != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(echo.describe("echo")["workers"]) == 1


def test_register_under_another_name_then_unregister(echo):
    echo.register("echo.mar", "echo2", batch_size=2, max_batch_delay=10, initial_workers=1)
    assert echo.predict("echo2", b"abc", "application/octet-stream").json()["batch_size"] == 1
    assert {m["modelName"] for m in echo.list_models()} == {"echo", "echo2"}
    echo.unregister("echo2")
    with pytest.raises(TorchServeError) as gone:
        echo.describe("echo2")
    assert gone.value.status == 404
    assert echo.predict("echo2", b"abc", "application/octet-stream").status_code == 404


def test_cli_and_key_rotation_on_a_second_instance(echo, echo_store, tmp_path, capsys):
    """The lifecycle commands end to end on an instance whose keys expire after 3 s, beside the module's instance."""
    base = tmp_path / "config.properties"
    derive_config(BASE_CONFIG, base, {"token_expiration_min": "0.05"})
    run = ["--run-dir", str(tmp_path / "run")]
    assert main(run + ["start", "--model-store", str(echo_store), "--ports", "free", "--config", str(base)]) == 0
    ts = TorchServe(tmp_path / "run")
    try:
        assert ts.info.management_port != echo.info.management_port
        assert (tmp_path / "run" / "key_file.json").exists()
        first_keys = dict(ts.keys())
        time.sleep(3.5)  # management and inference keys have expired now
        stale = requests.get(ts.url("management", "/models"),
                             headers={"Authorization": f"Bearer {first_keys['management']}"})
        assert stale.status_code == 400 and TOKEN_FAILED in stale.text
        # register rotates the management key itself (with the API key) and retries once
        assert main(run + ["register", "echo.mar", "--batch-size", "4", "--max-batch-delay", "10"]) == 0
        time.sleep(3.5)
        assert main(run + ["describe", "echo"]) == 0
        assert "1 worker(s) [" in capsys.readouterr().out
        answer = ts.predict("echo", b"abcd", "application/octet-stream")  # inference key rotated, then retried
        assert answer.status_code == 200 and answer.json()["bytes"] == 4
        rotated = ts.keys()
        assert rotated["management"] != first_keys["management"] and rotated["inference"] != first_keys["inference"]
        assert rotated["API"] == first_keys["API"]
        assert main(run + ["unregister", "echo"]) == 0
        # the module's instance was untouched by all this
        assert echo.predict("echo", b"q", "application/octet-stream").status_code == 200
    finally:
        pid, port = ts.info.pid, ts.info.inference_port
        assert main(run + ["stop"]) == 0
    assert not pid_alive(pid)
    assert not (tmp_path / "run" / "key_file.json").exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/ping", timeout=2)


def test_start_refuses_busy_ports(echo, tmp_path):
    ts = TorchServe(tmp_path / "run")
    with pytest.raises(TorchServeError, match="already in use"):
        ts.start(echo.info.model_store, ports=(echo.info.inference_port, 1, 2))
    assert not ts.launched


def test_mps_instance_makes_every_worker_a_client_of_its_own_daemon(echo_store, tmp_path, monkeypatch):
    """``start(mps=True)``: a daemon private to the run directory starts first, the workers TorchServe spawns
    carry its client environment, and ``stop`` quits it after the workers are gone. The control program is
    the stand-in of tests/test_mps.py (no NVIDIA driver here); the TorchServe side is real."""
    from torchserve_accel.tools.mps import MpsDaemon
    from tests.test_mps import stand_in

    bin_dir, record = stand_in(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    ts = TorchServe(tmp_path / "run")
    ts.start(echo_store, ports=free_ports(3), mps=True, log=lambda m: None)
    pipe = MpsDaemon(tmp_path / "run").pipe_dir
    try:
        assert ts.info.mps and (pipe / "control").exists()
        ts.register("echo.mar", "echo", batch_size=1, max_batch_delay=10, initial_workers=1)
        assert ts.predict("echo", b"mps", "application/octet-stream").status_code == 200
        environs = [psutil.Process(pid).environ() for pid in ts.worker_pids()]
        assert environs, "no worker process found"
        assert all(env.get("CUDA_MPS_PIPE_DIRECTORY") == str(pipe) for env in environs)
    finally:
        ts.stop(log=lambda m: None)
    assert not (pipe / "control").exists()
    assert record.read_text().splitlines()[-1] == "stdin=quit"


def test_mps_auto_starts_torchserve_without_mps_where_no_gpu_is_listed(echo_store, tmp_path, monkeypatch):
    """The main job's default: the control program is there (stand-in) but nvidia-smi lists no GPU, so TorchServe
    starts as usual and no daemon is left behind; a daemon that refuses to start in auto mode is logged, not fatal."""
    from torchserve_accel.tools.mps import MpsDaemon
    from tests.test_mps import fake_nvidia_smi, stand_in

    bin_dir, record = stand_in(tmp_path, fail=True)
    fake_nvidia_smi(bin_dir, lines="No devices were found\n", rc=6)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    messages = []
    ts = TorchServe(tmp_path / "run")
    ts.start(echo_store, ports=free_ports(3), mps="auto", log=messages.append)
    try:
        assert not ts.info.mps and "MPS off: nvidia-smi lists no GPU" in messages
        assert not record.exists()  # the control program was never called
    finally:
        ts.stop(log=lambda m: None)
    fake_nvidia_smi(bin_dir)  # now a GPU is listed, but the daemon fails to start: logged, TorchServe still starts
    messages.clear()
    ts.start(echo_store, ports=free_ports(3), mps="auto", log=messages.append)
    try:
        assert not ts.info.mps and any(m.startswith("MPS off: the daemon did not start") for m in messages)
        ts.register("echo.mar", "echo", batch_size=1, max_batch_delay=10, initial_workers=1)
        assert ts.predict("echo", b"auto", "application/octet-stream").status_code == 200
        environs = [psutil.Process(pid).environ() for pid in ts.worker_pids()]
        pipe = MpsDaemon(tmp_path / "run").pipe_dir
        assert environs and not any(env.get("CUDA_MPS_PIPE_DIRECTORY") == str(pipe) for env in environs)
    finally:
        ts.stop(log=lambda m: None)


@pytest.mark.skipif(__import__("shutil").which("nvidia-cuda-mps-control", path="/usr/bin:/bin") is not None,
                    reason="this host has the NVIDIA driver's MPS control program")
def test_mps_without_the_driver_tools_fails_before_starting_torchserve(echo_store, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    ts = TorchServe(tmp_path / "run")
    with pytest.raises(TorchServeError, match="--mps: nvidia-cuda-mps-control not found"):
        ts.start(echo_store, ports=free_ports(3), mps=True, log=lambda m: None)
    assert not ts.launched
