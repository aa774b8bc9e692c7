"""torchserve_accel/tools/mps.py: the MPS control daemon's lifecycle and the client environment, with a stand-in for
nvidia-cuda-mps-control (no GPU or NVIDIA driver here). What the stand-in does is what NVIDIA documents for the
real program: ``-d`` starts the daemon, which creates ``control`` in CUDA_MPS_PIPE_DIRECTORY; ``quit`` on its
standard input stops it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from torchserve_accel.tools.mps import MpsDaemon, MpsError, mps_decision

STAND_IN = """#!/bin/bash
echo "$* pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY" >> "{record}"
if [ "$1" = "-d" ]; then
  [ -n "{fail}" ] && {{ echo "no CUDA-capable device" >&2; exit 1; }}
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" && touch "$CUDA_MPS_PIPE_DIRECTORY/control"; exit 0
fi
read -r command
echo "stdin=$command" >> "{record}"
[ "$command" = "quit" ] && rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"
"""


def stand_in(tmp_path: Path, fail: bool = False) -> tuple[Path, Path]:
    bin_dir, record = tmp_path / "bin", tmp_path / "record.txt"
    bin_dir.mkdir()
    program = bin_dir / "nvidia-cuda-mps-control"
    program.write_text(STAND_IN.format(record=record, fail="yes" if fail else ""))
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return bin_dir, record


def test_daemon_starts_in_the_run_directory_gives_its_clients_the_environment_and_quits(tmp_path, monkeypatch):
    bin_dir, record = stand_in(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    daemon = MpsDaemon(tmp_path / "run")
    env = daemon.start(dict(os.environ), log=lambda m: None)
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(tmp_path / "run" / "mps" / "pipe")
    assert env["CUDA_MPS_LOG_DIRECTORY"] == str(tmp_path / "run" / "mps" / "log")
    assert env["PATH"] == os.environ["PATH"]  # the rest of the environment is kept
    assert daemon.running()
    with pytest.raises(MpsError, match="already serves"):
        daemon.start(dict(os.environ), log=lambda m: None)
    daemon.stop(log=lambda m: None)
    assert not daemon.running()
    calls = record.read_text().splitlines()
    assert calls[0] == f"-d pipe={env['CUDA_MPS_PIPE_DIRECTORY']} log={env['CUDA_MPS_LOG_DIRECTORY']}"
    assert calls[-1] == "stdin=quit"
    daemon.stop(log=lambda m: None)  # nothing runs: no call
    assert record.read_text().splitlines() == calls


def test_missing_control_program_is_a_clear_error(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}
    with pytest.raises(MpsError, match="nvidia-cuda-mps-control not found"):
        MpsDaemon(tmp_path / "run").start(env, log=lambda m: None)


def test_a_daemon_that_refuses_to_start_says_why(tmp_path, monkeypatch):
    bin_dir, _ = stand_in(tmp_path, fail=True)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    with pytest.raises(MpsError, match="no CUDA-capable device"):
        MpsDaemon(tmp_path / "run").start(env, log=lambda m: None)


FAKE_SMI = """#!/bin/bash
[ "$1" = "-L" ] && {{ printf '{lines}'; exit {rc}; }}
exit 1
"""


def fake_nvidia_smi(bin_dir: Path, lines: str = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)\\n", rc: int = 0) -> None:
    program = bin_dir / "nvidia-smi"
    program.write_text(FAKE_SMI.format(lines=lines, rc=rc))
    program.chmod(program.stat().st_mode | stat.S_IXUSR)


def test_auto_mode_uses_mps_only_with_the_control_program_and_a_visible_gpu(tmp_path):
    bare = {"PATH": str(tmp_path)}
    assert mps_decision("auto", bare) == (False, "MPS off: nvidia-cuda-mps-control is not on PATH")
    bin_dir, _ = stand_in(tmp_path)
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}
    if not (Path("/usr/bin/nvidia-smi").exists() or Path("/bin/nvidia-smi").exists()):
        use, why = mps_decision("auto", env)
        assert not use and "no nvidia-smi" in why
    fake_nvidia_smi(bin_dir)
    use, why = mps_decision("auto", env)
    assert use and "1 GPU(s)" in why
    assert mps_decision("auto", {**env, "CUDA_VISIBLE_DEVICES": ""})[0] is False
    fake_nvidia_smi(bin_dir, lines="No devices were found\\n", rc=6)
    assert mps_decision("auto", env) == (False, "MPS off: nvidia-smi lists no GPU")
    assert mps_decision("on", bare) == (True, "MPS on (asked for)")
    assert mps_decision("off", env) == (False, "MPS off (asked for)")
    with pytest.raises(ValueError, match="on, off or auto"):
        mps_decision("yes", env)
