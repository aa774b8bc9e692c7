"""torchserve_accel/tools/gpu.py: GPU figures through NVML (a stand-in pynvml here: no GPU or driver on this
machine), through a stand-in nvidia-smi when NVML does not load, and None without either; and what the load
generator, the soak and the BERT floor benchmark make of them."""

from __future__ import annotations

import os
import stat
import sys
import types
from pathlib import Path

import pytest

from torchserve_accel.tools import gpu
from torchserve_accel.tools.polling import wait_until

REPO = Path(__file__).resolve().parent.parent


class NVMLError(Exception):
    pass


def fake_pynvml(names=(b"NVIDIA H200", "NVIDIA H200"), processes=((101, 2048 * 2**20), (102, None)),
                unsupported: int | None = None) -> types.ModuleType:
    """Just the NVML calls the tools make, with fixed figures; device ``unsupported`` cannot report its power."""
    nv = types.ModuleType("pynvml")
    nv.NVMLError, nv.NVML_CLOCK_SM = NVMLError, 1
    nv.calls = []
    nv.nvmlInit = lambda: nv.calls.append("init")
    nv.nvmlShutdown = lambda: nv.calls.append("shutdown")
    nv.nvmlDeviceGetCount = lambda: len(names)
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetName = lambda h: names[h]
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=90 + h, memory=40)
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(1000 + h) * 2**20, total=80 * 2**30)
    nv.nvmlDeviceGetClockInfo = lambda h, clock: 1500
    nv.nvmlDeviceGetMaxClockInfo = lambda h, clock: 1980

    def power(h):
        if h == unsupported:
            raise NVMLError("Not Supported")
        return 692_120  # mW

    nv.nvmlDeviceGetPowerUsage = power
    nv.nvmlDeviceGetPowerManagementLimit = lambda h: 700_000
    nv.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 0x4
    nv.nvmlDeviceGetComputeRunningProcesses = lambda h: [
        types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in processes] if h == 0 else []
    return nv


@pytest.fixture
def no_gpu(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi


def test_nvml_figures_in_the_units_results_use(monkeypatch):
    nv = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    with gpu.gpus() as backend:
        assert isinstance(backend, gpu.Nvml)
        assert backend.names() == ["NVIDIA H200", "NVIDIA H200"]  # bytes from older bindings too
        samples = backend.read(list(gpu.FIELDS))
        assert backend.process_memory_mib() == {101: 2048.0}  # a process without accounting is left out
    assert nv.calls == ["init", "shutdown"]
    assert [s["index"] for s in samples] == [0, 1]
    first = {k: v for k, v in samples[0].items() if k != "t"}
    assert first == {"index": 0, "util": 90.0, "memory_mib": 1000.0, "sm_mhz": 1500.0, "max_sm_mhz": 1980.0,
                     "power_w": 692.12, "power_limit_w": 700.0, "throttle": "0x0000000000000004"}
    assert gpu.card_names() == ["NVIDIA H200", "NVIDIA H200"]


def test_a_gpu_that_cannot_report_a_field_gives_no_sample(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(unsupported=1))
    with gpu.gpus() as backend:
        assert [s["index"] for s in backend.read(["util", "power_w"])] == [0]
        assert [s["index"] for s in backend.read(["util"])] == [0, 1]


def test_sampler_polls_nvml_in_the_background(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    with gpu.GpuSampler(("util", "memory_mib"), interval_ms=10, indices=[1]) as sampler:
        assert sampler.available and sampler.source == "nvml"
        assert wait_until(lambda: len(sampler.samples) >= 3, timeout=30)
    assert {s["index"] for s in sampler.samples} == {1} and sampler.samples[0]["util"] == 91.0


FAKE_SMI = """#!/bin/bash
# nvidia-smi as the tools call it: a listing, per-process memory, --query-gpu once or streamed with -lms
case "$*" in
  *--query-gpu=name*) echo "NVIDIA H100 80GB HBM3"; echo "NVIDIA H100 80GB HBM3" ;;
  *--query-compute-apps*) echo "101, 3000"; echo "[N/A], [N/A]" ;;
  *-lms*) while true; do echo "0, 1504, 1980, 692.12, 700.00, 0x0000000000000004"; echo "0, [N/A], 1980, 1, 1, 0x0"
          sleep 0.05; done ;;
  *--query-gpu=index,memory.used*) echo "0, 1234"; echo "1, 10" ;;
  *) exit 1 ;;
esac
"""


@pytest.fixture
def smi_only(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    program = tmp_path / "nvidia-smi"
    program.write_text(FAKE_SMI)
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_nvidia_smi_is_the_fallback(smi_only):
    with gpu.gpus() as backend:
        assert isinstance(backend, gpu.NvidiaSmi)
        assert backend.process_memory_mib() == {101: 3000.0}
        assert [(s["index"], s["memory_mib"]) for s in backend.read(["memory_mib"])] == [(0, 1234.0), (1, 10.0)]
    assert gpu.card_names() == ["NVIDIA H100 80GB HBM3"] * 2
    fields = ("sm_mhz", "max_sm_mhz", "power_w", "power_limit_w", "throttle")
    assert gpu.NvidiaSmi.sample(fields, ["0", "[N/A]", "1980", "1", "1", "0x0"]) is None
    assert gpu.NvidiaSmi.sample(fields, ["0", "1504"]) is None


def test_sampler_streams_nvidia_smi(smi_only):
    fields = ("sm_mhz", "max_sm_mhz", "power_w", "power_limit_w", "throttle")
    with gpu.GpuSampler(fields, interval_ms=50, indices=[0]) as sampler:
        assert sampler.available and sampler.source == "nvidia-smi"
        assert wait_until(lambda: len(sampler.samples) >= 2, timeout=30)
    sample = {k: v for k, v in sampler.samples[0].items() if k != "t"}
    assert sample == {"index": 0, "sm_mhz": 1504.0, "max_sm_mhz": 1980.0, "power_w": 692.12, "power_limit_w": 700.0,
                      "throttle": "0x0000000000000004"}  # the [N/A] lines are skipped


def test_no_gpu_figures_without_nvml_or_nvidia_smi(no_gpu):
    with gpu.gpus() as backend:
        assert backend is None
    assert gpu.card_names() == []
    with gpu.GpuSampler(("util",)) as sampler:
        pass
    assert not sampler.available and sampler.samples == []


def test_soak_gpu_memory_per_worker_else_whole_gpus(monkeypatch, no_gpu):
    from torchserve_accel.tools.soak import gpu_memory_mib

    assert gpu_memory_mib([101]) is None
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    assert gpu_memory_mib([101, 7]) == {"scope": "worker processes", "total_mib": 2048.0, "per_pid": {"101": 2048.0}}
    whole = gpu_memory_mib([7])  # the workers are not listed (another pid namespace): every GPU's memory in use
    assert whole["total_mib"] == 2001.0 and whole["per_gpu"] == {"0": 1000.0, "1": 1001.0}


def test_bert_floor_card_sampler_summarizes_nvml_samples(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bert_floor = pytest.importorskip("bert_floor")
    with bert_floor.CardSampler(gpu_index=0, interval_ms=10) as card:
        assert wait_until(lambda: len(card.samples) >= 3, timeout=30)
    assert card.summary["power_capped"] is True and card.summary["sm_mhz"] == 1500.0
    assert card.summary["power_w"] == 692.1 and card.summary["throttle_reasons"] == ["0x0000000000000004"]
