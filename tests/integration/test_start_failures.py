"""A TorchServe that fails to start leaves nothing running: the tool raises with the log's tail, no frontend
process or worker is left, and the same run directory starts cleanly afterwards."""

from __future__ import annotations

import psutil
import pytest

from tests.integration.serving import log
from torchserve_accel.tools.launch import free_ports
from torchserve_accel.tools.torchserve import TorchServe, TorchServeError

pytestmark = pytest.mark.integration


def frontends_of(run_dir) -> list[psutil.Process]:
    """Running TorchServe frontends (Java) whose command line names this run directory's config."""
    config = str(run_dir / "config.properties")
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if any("java" in part for part in cmdline[:1]) and any(config in part for part in cmdline):
            found.append(process)
    return found


def test_a_frontend_that_exits_during_start_up_is_reported_and_leaves_nothing(tmp_path, echo_store):
    run_dir = tmp_path / "run"
    ts = TorchServe(run_dir)
    with pytest.raises(TorchServeError) as failed:
        # An address no host has: the frontend cannot bind it and exits.
        ts.start(echo_store, ports=free_ports(5), config_overrides={"inference_address": "http://256.0.0.1:8080"},
                 timeout=180, log=log)
    assert str(failed.value).startswith("TorchServe exited during start-up")
    assert frontends_of(run_dir) == []
    ts = TorchServe(run_dir)
    ts.start(echo_store, ports=free_ports(5), timeout=180, log=log)
    try:
        assert ts.pid_alive() and len(frontends_of(run_dir)) == 1
    finally:
        ts.stop(log=log)
    assert frontends_of(run_dir) == []


def test_a_frontend_that_never_answers_in_time_is_stopped(tmp_path, echo_store):
    run_dir = tmp_path / "run"
    ts = TorchServe(run_dir)
    with pytest.raises(TorchServeError, match="did not answer /ping within 0 s"):
        ts.start(echo_store, ports=free_ports(5), timeout=0.01, log=log)
    assert not ts.pid_alive() and frontends_of(run_dir) == []
