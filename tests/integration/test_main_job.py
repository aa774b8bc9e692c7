"""The main job (scripts/main.py: torchserve-accel demo, what scripts/run_main.sh runs after set-up) as a user
runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchserve_accel.tools.torchserve import pid_alive

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def main_command(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "main.py"), "--ports", "free",
            "--model-store", str(tmp_path / "model_store"), "--run-dir", str(tmp_path / "run"), *extra]


@pytest.fixture(autouse=True)
def drop_archives(tmp_path):
    yield
    shutil.rmtree(tmp_path / "model_store", ignore_errors=True)  # 170 MB per run otherwise


def java_gone(run_dir: Path, pid: int | None) -> bool:
    if (run_dir / "instance.json").exists():
        return False
    return pid is None or not pid_alive(pid)


def test_main_job_end_to_end(tmp_path, java_home):
    done = subprocess.run(main_command(tmp_path, "--images", "8", "--concurrency", "8"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "RANDOM" in out  # said loudly
    assert "8/8 answered 200" in out
    assert out.count("200 ") >= 8 and "(batch " in out
    assert "worker(s) [" in out and "READY" in out
    assert "TorchServe stopped" in out
    assert (tmp_path / "model_store" / "resnet101.mar").exists()
    assert not (tmp_path / "run" / "instance.json").exists() and not (tmp_path / "run" / "key_file.json").exists()


def test_main_job_stops_the_server_on_ctrl_c(tmp_path, java_home):
    proc = subprocess.Popen(main_command(tmp_path, "--images", "4"), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    lines = []
    try:
        deadline = time.monotonic() + 600
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("TorchServe is up") or time.monotonic() > deadline:
                break
        assert lines and lines[-1].startswith("TorchServe is up"), "".join(lines)
        pid = json.loads((tmp_path / "run" / "instance.json").read_text())["pid"]
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    assert "TorchServe stopped" in out
    deadline = time.monotonic() + 10
    while not java_gone(tmp_path / "run", pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert java_gone(tmp_path / "run", pid), out
    assert os.path.exists(tmp_path / "run" / "torchserve.out")


def test_main_job_with_bert_serves_both_models(tmp_path, java_home):
    """``--bert-weights DIR``: BERT beside ResNet-101 in the same TorchServe, texts answered with labels, the
    over-long one truncated and flagged. A tiny random checkpoint in the real HF layout keeps this fast on CPU."""
    from torchserve_accel.bert.archive import make_random_checkpoint
    from tests.integration.test_bad_inputs import TINY_BERT

    checkpoint = make_random_checkpoint(tmp_path / "bert-checkpoint", seed=5, config_overrides=TINY_BERT)
    done = subprocess.run(main_command(tmp_path, "--images", "4", "--bert-weights", str(checkpoint)), cwd=tmp_path,
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "4/4 answered 200" in out and "6/6 answered 200" in out
    assert "bert_large: worker status" in out
    assert out.count("text[") >= 6 and ("positive" in out or "negative" in out)
    assert out.count("(truncated)") == 1  # the over-long text alone
    assert (tmp_path / "model_store" / "bert_large.mar").exists()
    assert "TorchServe stopped" in out
