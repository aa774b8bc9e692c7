"""GPU figures for the tools: NVIDIA's NVML (``pynvml``, from the nvidia-ml-py package) where it loads, the
``nvidia-smi`` program where it does not, and None where there is neither (no NVIDIA GPU or driver).

Sampled fields, by the names result documents use: ``util`` (GPU busy, %), ``memory_mib`` (memory in use),
``sm_mhz`` / ``max_sm_mhz`` (SM clock), ``power_w`` / ``power_limit_w``, ``throttle`` (active clock-throttle
reasons, the bit mask as nvidia-smi prints it: ``0x0000000000000004`` is the software power cap). Read once:
``memory_free_mib`` / ``memory_total_mib`` (``memory_mib()``, for choosing how many workers fit).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence


class GpuError(RuntimeError):
    """NVML or nvidia-smi could not answer."""


@dataclass(frozen=True)
class Field:
    smi: str  # the nvidia-smi --query-gpu name
    nvml: Callable[[Any, Any], Any]  # (pynvml, device handle) -> value
    text: bool = False  # nvidia-smi prints it as is (else a number)


FIELDS = {
    "util": Field("utilization.gpu", lambda nv, h: float(nv.nvmlDeviceGetUtilizationRates(h).gpu)),
    "memory_mib": Field("memory.used", lambda nv, h: nv.nvmlDeviceGetMemoryInfo(h).used / 2**20),
    "sm_mhz": Field("clocks.sm", lambda nv, h: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))),
    "max_sm_mhz": Field("clocks.max.sm", lambda nv, h: float(nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM))),
    "power_w": Field("power.draw", lambda nv, h: nv.nvmlDeviceGetPowerUsage(h) / 1000),
    "power_limit_w": Field("power.limit", lambda nv, h: nv.nvmlDeviceGetPowerManagementLimit(h) / 1000),
    "throttle": Field("clocks_throttle_reasons.active",
                      lambda nv, h: f"0x{nv.nvmlDeviceGetCurrentClocksEventReasons(h):016x}", text=True),
}


# Read once rather than sampled: how much memory each GPU has, and has free (memory_mib).
CAPACITY = {
    "memory_free_mib": Field("memory.free", lambda nv, h: nv.nvmlDeviceGetMemoryInfo(h).free / 2**20),
    "memory_total_mib": Field("memory.total", lambda nv, h: nv.nvmlDeviceGetMemoryInfo(h).total / 2**20),
}
ALL_FIELDS = {**FIELDS, **CAPACITY}


class Nvml:
    """The GPUs through NVML, between ``open`` and ``close``."""

    name = "nvml"

    def __init__(self, nv: Any):
        self.nv = nv
        self.handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]

    @classmethod
    def open(cls) -> Nvml | None:
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            return None
        try:
            return cls(pynvml)
        except pynvml.NVMLError:
            pynvml.nvmlShutdown()
            return None

    def close(self) -> None:
        self.nv.nvmlShutdown()

    def names(self) -> list[str]:
        try:
            names = [self.nv.nvmlDeviceGetName(h) for h in self.handles]
        except self.nv.NVMLError as err:
            raise GpuError(f"NVML: {err}") from None
        return [n.decode() if isinstance(n, bytes) else n for n in names]

    def read(self, fields: Sequence[str], indices: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """One sample per GPU: ``{"t": monotonic s, "index": i, field: value, ...}``; a GPU that cannot report
        every field (NVML's "not supported") gives no sample."""
        samples = []
        for i in range(len(self.handles)) if indices is None else [i for i in indices if i < len(self.handles)]:
            try:
                values = {f: ALL_FIELDS[f].nvml(self.nv, self.handles[i]) for f in fields}
            except self.nv.NVMLError:
                continue
            samples.append({"t": time.monotonic(), "index": i, **values})
        return samples

    def process_memory_mib(self) -> dict[int, float]:
        used: dict[int, float] = {}
        try:
            processes = [p for h in self.handles for p in self.nv.nvmlDeviceGetComputeRunningProcesses(h)]
        except self.nv.NVMLError as err:
            raise GpuError(f"NVML: {err}") from None
        for process in processes:
            if process.usedGpuMemory is not None:  # None where the driver does not account per process
                used[process.pid] = used.get(process.pid, 0.0) + process.usedGpuMemory / 2**20
        return used


class NvidiaSmi:
    """The same figures from the ``nvidia-smi`` program (one run per call, or a stream for the sampler)."""

    name = "nvidia-smi"

    def close(self) -> None:
        pass

    @staticmethod
    def query(*args: str) -> list[list[str]]:
        try:
            out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired) as err:
            raise GpuError(f"nvidia-smi: {err}") from None
        return [[f.strip() for f in line.split(",")] for line in out.splitlines() if line.strip()]

    def names(self) -> list[str]:
        return [row[0] for row in self.query("--query-gpu=name")]

    @staticmethod
    def sample(fields: Sequence[str], row: list[str]) -> dict[str, Any] | None:
        """One ``index,<fields>`` line of ``--query-gpu`` as a sample, or None ("[N/A]" and the like)."""
        if len(row) != len(fields) + 1:
            return None
        try:
            values = {f: v if ALL_FIELDS[f].text else float(v) for f, v in zip(fields, row[1:])}
            return {"t": time.monotonic(), "index": int(row[0]), **values}
        except ValueError:
            return None

    def read(self, fields: Sequence[str], indices: Sequence[int] | None = None) -> list[dict[str, Any]]:
        rows = self.query("--query-gpu=" + ",".join(["index", *(ALL_FIELDS[f].smi for f in fields)]))
        samples = [self.sample(fields, row) for row in rows]
        return [s for s in samples if s is not None and (indices is None or s["index"] in indices)]

    def process_memory_mib(self) -> dict[int, float]:
        used: dict[int, float] = {}
        for pid, mib in self.query("--query-compute-apps=pid,used_memory"):
            try:
                used[int(pid)] = used.get(int(pid), 0.0) + float(mib)
            except ValueError:
                continue
        return used


@contextlib.contextmanager
def gpus() -> Iterator[Nvml | NvidiaSmi | None]:
    """NVML, else nvidia-smi, else None, for the length of the block."""
    backend = Nvml.open() or (NvidiaSmi() if shutil.which("nvidia-smi") else None)
    try:
        yield backend
    finally:
        if backend is not None:
            backend.close()


def card_names() -> list[str]:
    """The GPUs' names ([] without a GPU)."""
    with gpus() as backend:
        try:
            return backend.names() if backend else []
        except GpuError:
            return []


def visible_indices(env: dict[str, str] | None = None) -> list[int] | None:
    """The GPUs ``CUDA_VISIBLE_DEVICES`` leaves to CUDA, as NVML indices (TorchServe counts them the same way);
    None when it is not set, or names GPUs otherwise than by index (then: all)."""
    value = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        return None


def memory_mib(indices: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Each GPU's (of ``indices``, default all) ``memory_free_mib`` and ``memory_total_mib`` now ([] without a
    GPU, or where neither NVML nor nvidia-smi answers)."""
    with gpus() as backend:
        try:
            return backend.read(["memory_free_mib", "memory_total_mib"], indices) if backend else []
        except GpuError:
            return []


class GpuSampler:
    """Samples ``fields`` of every GPU (or of ``indices``) every ``interval_ms`` in a background thread while the
    block runs; ``samples`` is a list of ``NvidiaSmi.sample``-shaped dicts, ``available`` False (and no samples)
    without a GPU. nvidia-smi, when it is the source, streams its own samples (``-lms``) instead of starting once
    per sample."""

    def __init__(self, fields: Sequence[str], interval_ms: int = 200, indices: Sequence[int] | None = None):
        self.fields, self.interval_ms, self.indices = tuple(fields), interval_ms, indices
        self.samples: list[dict[str, Any]] = []
        self.available = False
        self.source: str | None = None
        self._stack = contextlib.ExitStack()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> GpuSampler:
        backend = self._stack.enter_context(gpus())
        if isinstance(backend, Nvml):
            self._thread = threading.Thread(target=self._poll_nvml, args=(backend,), daemon=True)
        elif isinstance(backend, NvidiaSmi):
            args = ["nvidia-smi", *([f"--id={','.join(map(str, self.indices))}"] if self.indices else []),
                    "--query-gpu=" + ",".join(["index", *(ALL_FIELDS[f].smi for f in self.fields)]),
                    "--format=csv,noheader,nounits", "-lms", str(self.interval_ms)]
            try:
                self._proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            except OSError:
                return self
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        if self._thread is not None:
            self.available, self.source = True, backend.name
            self._thread.start()
        return self

    def _poll_nvml(self, nvml: Nvml) -> None:
        while True:
            self.samples += nvml.read(self.fields, self.indices)
            if self._stop.wait(self.interval_ms / 1000):
                return

    def _read_smi(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            sample = NvidiaSmi.sample(self.fields, [f.strip() for f in line.split(",")])
            if sample is not None:
                self.samples.append(sample)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._stack.close()
