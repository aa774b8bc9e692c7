"""NVIDIA MPS (Multi-Process Service) for the workers of one TorchServe instance.

Without MPS, the CUDA contexts of several worker processes on one GPU are time-sliced: a worker's small
kernels (decode, resize) hold the whole GPU while they run, and no two workers' kernels overlap. Under MPS the
workers' kernels share the GPU concurrently. ``torchserve-accel start --mps`` starts a control daemon private to the
instance (its pipe and log directories live in the run directory, so it never meets another daemon), gives
TorchServe the environment that makes every worker a client of it, and ``stop`` quits it after TorchServe.

Needs ``nvidia-cuda-mps-control`` (the NVIDIA driver's utilities) on PATH and a GPU whose compute mode allows
MPS (benchmarks/BENCHMARKS.md has the figures with and without).

``mps_decision("auto", env)``: MPS when the control program is on PATH and ``nvidia-smi -L`` lists a GPU that
the instance can see (``CUDA_VISIBLE_DEVICES`` not empty); the reason is one readable string. It asks the
nvidia-smi of the instance's PATH, as TorchServe does when it counts GPUs for its workers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from torchserve_accel.tools import Log
from torchserve_accel.tools.polling import wait_until

CONTROL = "nvidia-cuda-mps-control"


class MpsError(RuntimeError):
    pass


def mps_decision(mode: str, env: dict[str, str] | None = None) -> tuple[bool, str]:
    """``mode`` is ``on``, ``off`` or ``auto`` -> (use MPS, why). ``on`` is not checked here: ``start`` fails
    loudly when it cannot run."""
    if mode in ("on", "off"):
        return mode == "on", f"MPS {mode} (asked for)"
    if mode != "auto":
        raise ValueError(f"MPS mode must be on, off or auto, got {mode!r}")
    env = env if env is not None else dict(os.environ)
    path = env.get("PATH")
    if shutil.which(CONTROL, path=path) is None:
        return False, f"MPS off: {CONTROL} is not on PATH"
    if env.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False, "MPS off: CUDA_VISIBLE_DEVICES hides every GPU"
    smi = shutil.which("nvidia-smi", path=path)
    if smi is None:
        return False, "MPS off: no nvidia-smi to list GPUs"
    try:
        listed = subprocess.run([smi, "-L"], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"MPS off: nvidia-smi -L failed ({err})"
    gpus = [line for line in listed.stdout.splitlines() if line.startswith("GPU ")]
    if listed.returncode != 0 or not gpus:
        return False, "MPS off: nvidia-smi lists no GPU"
    return True, f"MPS on (auto): {len(gpus)} GPU(s) and {CONTROL} found"


class MpsDaemon:
    """The MPS control daemon of one run directory: ``start``, ``env`` for its clients, ``stop``."""

    def __init__(self, run_dir: Path) -> None:
        self.pipe_dir = Path(run_dir) / "mps" / "pipe"
        self.log_dir = Path(run_dir) / "mps" / "log"

    def env(self) -> dict[str, str]:
        """Environment that makes CUDA processes clients of this daemon (and the daemon use these dirs)."""
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir), "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir)}

    def running(self) -> bool:
        return (self.pipe_dir / "control").exists()

    def start(self, base_env: dict[str, str] | None = None, timeout: float = 10.0, log: Log = print) -> dict[str, str]:
        """Start the daemon (``-d``) and wait for its control pipe; returns ``base_env`` plus ``env()``."""
        control = shutil.which(CONTROL, path=(base_env or os.environ).get("PATH"))
        if control is None:
            raise MpsError(f"{CONTROL} not found on PATH: MPS needs the NVIDIA driver's utilities")
        if self.running():
            raise MpsError(f"an MPS daemon already serves {self.pipe_dir}; stop it first")
        self.pipe_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**(base_env if base_env is not None else os.environ), **self.env()}
        done = subprocess.run([control, "-d"], env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise MpsError(f"{CONTROL} -d failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()}"
                           f"{self._log_tail()}")
        if not wait_until(self.running, timeout, interval=0.05):
            raise MpsError(f"MPS daemon gave no control pipe in {self.pipe_dir} within {timeout:.0f} s"
                           f"{self._log_tail()}")
        log(f"MPS control daemon up (pipe {self.pipe_dir})")
        return env

    def stop(self, timeout: float = 30.0, log: Log = print) -> None:
        """Ask the daemon to quit (it waits for its clients to exit); nothing to do when none runs."""
        if not self.running():
            return
        control = shutil.which(CONTROL)
        if control is None:
            log(f"cannot stop the MPS daemon of {self.pipe_dir}: {CONTROL} not on PATH")
            return
        env = {**os.environ, **self.env()}
        try:
            subprocess.run([control], input="quit\n", env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"MPS daemon did not quit within {timeout:.0f} s")
            return
        log("MPS control daemon stopped")

    def _log_tail(self, lines: int = 10) -> str:
        path = self.log_dir / "control.log"
        if not path.exists():
            return ""
        return "\n--- " + str(path) + "\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
