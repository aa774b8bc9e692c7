"""What the load generator watches besides its own requests: TorchServe's metrics (scraped at both ends of the
window), the GPUs (sampled through it), the host's and TorchServe's CPU time, and the machine and software."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from torchserve_accel.serving.metrics import STAGE_METRICS
from torchserve_accel.tools.gpu import GpuSampler, card_names
from torchserve_accel.tools.launch import TorchServeError
from torchserve_accel.tools.loadgen.stats import percentile
from torchserve_accel.tools.paths import CHECKOUT
from torchserve_accel.tools.prometheus import Sample, metric_sum, parse_samples
from torchserve_accel.tools.torchserve import TorchServe

# ---------------------------------------------------------------------------------------------- TorchServe


def scrape(ts: TorchServe) -> list[Sample] | None:
    """The instance's metrics now, or None when the endpoint does not answer with Prometheus text."""
    try:
        return parse_samples(ts.metrics())
    except (TorchServeError, OSError, ValueError):
        return None


def counter_deltas(before: list[Sample] | None, after: list[Sample] | None, model: str) -> dict[str, Any]:
    """What the server saw between two scrapes: mean handler batch size, requests, mean queue/inference ms, and the
    handler's host time per batch and stage."""
    if before is None or after is None:
        return {"mean_batch_size": None, "note": "metrics endpoint not readable"}

    def delta(name: str, **labels: str) -> float | None:
        a, b = metric_sum(before, name, **labels), metric_sum(after, name, **labels)
        if b is None:
            return None
        return b - (a or 0.0)

    batches = delta("HandlerBatches", ModelName=model)
    batched = delta("HandlerBatchedRequests", ModelName=model)
    served = delta("ts_inference_requests_total", model_name=model)
    queue_us = delta("ts_queue_latency_microseconds", model_name=model)
    infer_us = delta("ts_inference_latency_microseconds", model_name=model)
    out: dict[str, Any] = {
        "mean_batch_size": round(batched / batches, 3) if batches and batched is not None else None,
        "handler_batches": batches, "handler_batched_requests": batched, "server_requests": served,
        "mean_queue_ms": round(queue_us / served / 1000, 3) if served and queue_us is not None else None,
        "mean_server_latency_ms": round(infer_us / served / 1000, 3) if served and infer_us is not None else None,
    }
    stages = {}
    for stage, name in STAGE_METRICS.items():
        ms = delta(name, ModelName=model)
        if ms is not None and batches:
            stages[stage] = round(ms / batches, 3)
    if stages:
        out["handler_ms_per_batch"] = stages
    if batches is None:
        out["note"] = ("no HandlerBatches samples for this model: the handler does not call record_batch, "
                       "or model_metrics_auto_detect is off")
    return out


def describe_server(ts: TorchServe, model: str) -> dict[str, Any] | None:
    try:
        d = ts.describe(model)
    except (TorchServeError, OSError):
        return None
    workers = d.get("workers", [])
    return {"batchSize": d.get("batchSize"), "maxBatchDelay": d.get("maxBatchDelay"), "workers": len(workers),
            "workers_ready": sum(w.get("status") == "READY" for w in workers),
            "gpu_workers": sum(bool(w.get("gpu")) for w in workers), "minWorkers": d.get("minWorkers"),
            "maxWorkers": d.get("maxWorkers"), "modelVersion": d.get("modelVersion")}


# ---------------------------------------------------------------------------------------------- GPU


class GpuUtilization(GpuSampler):
    """Every GPU's busy % and memory in use, sampled while the block runs; ``summary`` is None without a GPU."""

    def __init__(self, interval_ms: int = 200):
        super().__init__(("util", "memory_mib"), interval_ms)

    def summary(self, start: float, end: float) -> dict[str, Any] | None:
        if not self.available:
            return None
        per_gpu: dict[int, list[dict[str, Any]]] = {}
        for sample in self.samples:
            if start <= sample["t"] <= end:
                per_gpu.setdefault(sample["index"], []).append(sample)
        gpus = {str(g): {"util_mean": round(sum(s["util"] for s in v) / len(v), 1),
                         "util_p50": percentile(sorted(s["util"] for s in v), 50),
                         "memory_max_mib": max(s["memory_mib"] for s in v), "samples": len(v),
                         # [seconds into the window, busy %]: the GPU-busy-over-time plot
                         "series": [[round(s["t"] - start, 2), s["util"]] for s in v]}
                for g, v in sorted(per_gpu.items())}
        means = [g["util_mean"] for g in gpus.values()]
        return {"util_mean": round(sum(means) / len(means), 1) if means else None, "per_gpu": gpus,
                "interval_ms": self.interval_ms}


# ---------------------------------------------------------------------------------------------- host CPU


class HostCpu:
    """CPU time of the whole host and of TorchServe's processes (frontend JVM, Python workers) between two
    snapshots. Says whether the host's cores, not the GPU, set the pace."""

    WORKER_MARK = "model_service_worker"
    FRONTEND_MARK = "org.pytorch.serve.ModelServer"

    @classmethod
    def snapshot(cls) -> dict[str, Any]:
        times = psutil.cpu_times()
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)  # guest is in user
        procs: dict[str, tuple[str, float]] = {}
        for process in psutil.process_iter(["cmdline", "cpu_times"]):
            cmdline = " ".join(process.info["cmdline"] or ())
            kind = "worker" if cls.WORKER_MARK in cmdline else "frontend" if cls.FRONTEND_MARK in cmdline else None
            if kind is not None and process.info["cpu_times"] is not None:
                cpu = process.info["cpu_times"]
                procs[str(process.pid)] = (kind, cpu.user + cpu.system)
        idle = times.idle + getattr(times, "iowait", 0.0)
        return {"t": time.monotonic(), "total": total, "idle": idle, "procs": procs}

    @staticmethod
    def summary(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
        if not before or not after or after["t"] <= before["t"]:
            return None
        wall = after["t"] - before["t"]
        total = after["total"] - before["total"]
        busy = total - (after["idle"] - before["idle"])
        workers, frontend = [], 0.0
        for pid, (kind, cpu) in after["procs"].items():
            if pid not in before["procs"]:
                continue
            used = (cpu - before["procs"][pid][1]) / wall  # cores
            if kind == "worker":
                workers.append(round(used, 2))
            else:
                frontend += used
        return {"cores": os.cpu_count(), "host_busy": round(busy / total, 3) if total > 0 else None,
                "frontend_cores": round(frontend, 2), "worker_cores": sorted(workers, reverse=True),
                "note": "cores = CPU seconds per second; a worker near 1.0 is bound by its own host code"}


# ---------------------------------------------------------------------------------------------- environment


def describe_card() -> str:
    names = card_names()
    if names:
        return f"{len(names)}x {names[0]}" if len(set(names)) == 1 else ", ".join(names)
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU only: {model} ({os.cpu_count()} cores)"


def software_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "torchserve", "transformers", "triton"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["repo_commit"] = _commit()
    return versions


def _commit() -> str | None:
    """The checkout's commit, "+dirty" with uncommitted changes; None for an installed package."""
    if CHECKOUT is None:
        return None
    try:
        commit = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(CHECKOUT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")) or None
