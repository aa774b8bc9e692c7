#!/usr/bin/env python3
"""Soak test: one registered model under steady open-loop load for N minutes, against a running TorchServe.

    python scripts/soak.py --model resnet101 --minutes 10 --rate 2000 --out soak_resnet.json
    python scripts/soak.py --model bert_large --minutes 10 --out soak_bert.json     # rate: 80% of a measured max

Passes when: no request failed (any non-200, client timeout or connection error, warm-up included); every worker
still runs with the pid it had at the start (no restart); and the workers' host memory (RSS, their child
processes included) and GPU memory (``nvidia-smi``, when present) grew less than ``--max-growth`` (5%) from the
end of the warm-up to the end of the run.

Load: ``scripts/loadgen.py``'s Poisson open loop (latency from the scheduled arrival) in segments of
``--segment-s`` seconds; memory is sampled between segments, so the load processes never fork from a process
running a sampler thread. Warm-up first: a closed loop (concurrency: twice batchSize times the worker count) so
every worker has run full batches, then ``--warmup-s`` at the soak's rate; only then the first memory sample.
(2026-11: without full batches first, the CPU workers' RSS stepped up 5-10% the first time a bigger batch came,
then stayed flat: the allocator's high-water mark, not a leak.) Without ``--rate``, that closed loop runs
``--measure-s`` seconds and measures the maximum, and the soak runs at ``--rate-fraction`` (0.8) of it;
with ``--rate``, it runs ``--burst-s`` seconds.

Host memory comes from psutil when it is installed, else /proc. GPU memory is per worker process where
``nvidia-smi --query-compute-apps`` lists the workers' pids, else (another pid namespace, e.g. a container) the
memory in use on the whole GPU. The JSON (``--out``) holds the configuration, each segment's figures, the memory
series and the verdict; the exit status is 0 when the soak passed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.loadgen import (  # noqa: E402
    LoadConfig, Payload, add_payload_arguments, build_payloads, default_processes, describe_card, describe_server, run_load,
    software_versions,
)
from scripts.tsctl import DEFAULT_RUN_DIR, TorchServe, TorchServeError  # noqa: E402

SCHEMA = "torchserve-accel/soak/1"
Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------- memory


def _children(pid: int) -> list[int]:
    """Descendants of ``pid``, from /proc."""
    by_parent: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        by_parent.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_rss(pid: int) -> int:
    """Resident bytes of one process (0 when it is gone): psutil when installed, else /proc."""
    try:
        import psutil
    except ImportError:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def process_tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (compile workers and the like)."""
    return sum(process_rss(p) for p in [pid, *_children(pid)])


def gpu_memory_mib(pids: Sequence[int]) -> dict[str, Any] | None:
    """GPU memory of ``pids`` (MiB, per process from nvidia-smi), or of all GPUs when none of them is listed."""
    if shutil.which("nvidia-smi") is None:
        return None

    def query(*args: str) -> list[list[str]]:
        out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=60).stdout
        return [[f.strip() for f in line.split(",")] for line in out.splitlines() if line.strip()]

    try:
        apps = query("--query-compute-apps=pid,used_memory")
        wanted = {int(p) for p in pids}
        mine = {int(pid): float(mem) for pid, mem in apps if pid.isdigit() and int(pid) in wanted}
        if mine:
            return {"scope": "worker processes", "total_mib": sum(mine.values()),
                    "per_pid": {str(k): v for k, v in sorted(mine.items())}}
        gpus = query("--query-gpu=index,memory.used")
        return {"scope": "whole GPUs (worker pids not visible to nvidia-smi)",
                "total_mib": sum(float(mem) for _, mem in gpus), "per_gpu": {i: float(mem) for i, mem in gpus}}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


@dataclass
class MemorySample:
    t_s: float  # seconds since the end of the warm-up
    rss_bytes: int  # the workers (and their descendants): what the verdict is about
    rss_per_worker: dict[str, int]
    frontend_rss_bytes: int  # the Java frontend alone, for information (its heap grows until a GC)
    gpu: dict[str, Any] | None


def sample_memory(pids: dict[str, int], frontend_pid: int | None, t0: float) -> MemorySample:
    per_worker = {worker_id: process_tree_rss(pid) for worker_id, pid in pids.items()}
    return MemorySample(round(time.monotonic() - t0, 1), sum(per_worker.values()), per_worker,
                        process_rss(frontend_pid) if frontend_pid else 0, gpu_memory_mib(list(pids.values())))


def growth(start: float, end: float) -> float | None:
    return None if start <= 0 else (end - start) / start


# ---------------------------------------------------------------------------------------------- soak


@dataclass
class SoakConfig:
    minutes: float = 10.0
    rate: float | None = None  # arrivals/s; None: rate_fraction of a measured maximum
    rate_fraction: float = 0.8
    measure_s: float = 20.0
    burst_s: float = 10.0  # with a given rate: closed-loop seconds of full batches before the warm-up
    warmup_s: float = 30.0
    segment_s: float = 60.0
    processes: int = field(default_factory=default_processes)
    timeout_s: float = 60.0
    max_growth: float = 0.05
    settle_s: float = 1.0  # idle before each memory sample: answers in flight are done, buffers freed


def workers_of(ts: TorchServe, model: str) -> dict[str, dict[str, Any]]:
    return {w["id"]: {"pid": w["pid"], "status": w["status"]} for w in ts.describe(model).get("workers", [])}


def full_batches(ts: TorchServe, model: str, payloads: Sequence[Payload], seconds: float, config: SoakConfig,
                 log: Log) -> dict[str, Any]:
    """A closed loop that keeps every worker's batches full for ``seconds``: the maximum throughput."""
    description = ts.describe(model)
    workers = max(1, len(description.get("workers", [])))
    concurrency = max(4, 2 * int(description.get("batchSize") or 1) * workers)
    load = LoadConfig(concurrency=concurrency, processes=config.processes, warmup_s=min(5.0, seconds / 4),
                      duration_s=seconds, timeout_s=config.timeout_s)
    log(f"[soak] {model}: full batches, closed loop, {concurrency} in flight, {seconds:g} s")
    result = run_load(ts, model, payloads, load, log=log)
    failed = sum(result["errors"].values()) + len(result["client"]["failures"])
    return {"concurrency": concurrency, "seconds": seconds, "ok_rps": result["ok_rps"], "errors": result["errors"],
            "latency_ms": result["latency_ms"], "failed": failed}


def _segment(ts: TorchServe, model: str, payloads: Sequence[Payload], rate: float, seconds: float,
             config: SoakConfig, seed: int, log: Log, probe: bool = False) -> dict[str, Any]:
    load = LoadConfig(rate=rate, processes=config.processes, warmup_s=0.0, duration_s=seconds,
                      timeout_s=config.timeout_s, seed=seed)
    result = run_load(ts, model, payloads, load, log=lambda m: None, probe=probe)
    failed = sum(result["errors"].values()) + len(result["client"]["failures"])
    log(f"[soak]   {seconds:5.0f} s at {rate:.1f}/s: {result['started']} sent, {result['ok_rps']:.1f} ok/s, "
        f"p99 {result['latency_ms']['p99']} ms, failed {failed} {result['errors'] or ''}")
    keep = ("window_s", "started", "completed", "ok_rps", "errors", "latency_ms")
    return {**{k: result[k] for k in keep}, "client_failures": result["client"]["failures"], "failed": failed}


def run_soak(ts: TorchServe, model: str, payloads: Sequence[Payload], config: SoakConfig,
             log: Log = print) -> dict[str, Any]:
    """Warm up, then run ``config.minutes`` of load in segments; the figures and the verdict as a dict."""
    doc: dict[str, Any] = {"model": model, "config": asdict(config)}
    before = workers_of(ts, model)
    doc["workers_before"] = before
    if not before or any(w["status"] != "READY" for w in before.values()):
        raise TorchServeError(f"{model} has no READY workers to soak: {before}")
    pids = {worker_id: w["pid"] for worker_id, w in before.items()}

    rate = config.rate
    if rate is None:
        doc["max_rate"] = full_batches(ts, model, payloads, config.measure_s, config, log)
        rate = round(config.rate_fraction * doc["max_rate"]["ok_rps"], 2)
        if rate <= 0:
            raise TorchServeError(f"measured maximum of {model} is {doc['max_rate']['ok_rps']} ok/s: nothing to soak")
    elif config.burst_s > 0:
        doc["burst"] = full_batches(ts, model, payloads, config.burst_s, config, log)
    doc["rate"] = rate
    log(f"[soak] {model}: {config.minutes:g} min at {rate:g} req/s ({len(pids)} worker(s)), "
        f"after {config.warmup_s:g} s of warm-up")

    doc["warmup"] = _segment(ts, model, payloads, rate, config.warmup_s, config, seed=0, log=log, probe=True)
    time.sleep(config.settle_s)
    t0 = time.monotonic()
    samples = [sample_memory(pids, ts.info.pid, t0)]
    segments = []
    left = config.minutes * 60.0
    while left > 0.5:
        seconds = min(config.segment_s, left)
        segments.append(_segment(ts, model, payloads, rate, seconds, config, seed=len(segments) + 1, log=log))
        left -= seconds
        time.sleep(config.settle_s)
        samples.append(sample_memory(pids, ts.info.pid, t0))
    after = workers_of(ts, model)

    start, end = samples[0], samples[-1]
    rss_growth = growth(start.rss_bytes, end.rss_bytes)
    gpu_growth = growth(start.gpu["total_mib"], end.gpu["total_mib"]) if start.gpu and end.gpu else None
    sent = sum(s["started"] for s in segments)
    window = sum(s["window_s"] for s in segments)
    doc.update(
        segments=segments,
        totals={"sent": sent, "failed": sum(s["failed"] for s in [*segments, doc["warmup"], doc.get("max_rate", {}),
                                                                    doc.get("burst", {})] if s),
                "mean_rate": round(sent / window, 2) if window else None,
                "p99_ms_worst_segment": max((s["latency_ms"]["p99"] or 0.0 for s in segments), default=None)},
        memory={"samples": [asdict(s) for s in samples], "rss_start_mb": round(start.rss_bytes / 2**20, 1),
                "rss_end_mb": round(end.rss_bytes / 2**20, 1),
                "rss_max_mb": round(max(s.rss_bytes for s in samples) / 2**20, 1),
                "frontend_rss_mb": [round(s.frontend_rss_bytes / 2**20, 1) for s in samples],
                "rss_growth": None if rss_growth is None else round(rss_growth, 5),
                "gpu_start_mib": start.gpu["total_mib"] if start.gpu else None,
                "gpu_end_mib": end.gpu["total_mib"] if end.gpu else None,
                "gpu_growth": None if gpu_growth is None else round(gpu_growth, 5)},
        workers_after=after,
    )
    failures = []
    if doc["totals"]["failed"]:
        failures.append(f"{doc['totals']['failed']} failed request(s)")
    if {k: v["pid"] for k, v in after.items()} != pids or any(w["status"] != "READY" for w in after.values()):
        failures.append(f"workers changed (restart?): before {before}, after {after}")
    if rss_growth is None or rss_growth >= config.max_growth:
        failures.append(f"worker RSS grew {doc['memory']['rss_start_mb']} -> {doc['memory']['rss_end_mb']} MB "
                        f"({_pct(rss_growth)}, limit {config.max_growth:.0%})")
    if gpu_growth is not None and gpu_growth >= config.max_growth:
        failures.append(f"GPU memory grew {doc['memory']['gpu_start_mib']} -> {doc['memory']['gpu_end_mib']} MiB "
                        f"({_pct(gpu_growth)}, limit {config.max_growth:.0%})")
    doc["passed"], doc["failures"] = not failures, failures
    return doc


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2%}"


def one_line(doc: dict[str, Any]) -> str:
    if "error" in doc:
        return f"soak {doc.get('model')}: ERROR {doc['error']}"
    m, t = doc["memory"], doc["totals"]
    verdict = "PASSED" if doc["passed"] else "FAILED: " + "; ".join(doc["failures"])
    gpu = ""
    if m["gpu_growth"] is not None:
        gpu = f", GPU {m['gpu_start_mib']} -> {m['gpu_end_mib']} MiB ({_pct(m['gpu_growth'])})"
    return (f"soak {doc['model']}: {t['sent']} requests at {t['mean_rate']}/s, {t['failed']} failed, worst p99 "
            f"{t['p99_ms_worst_segment']} ms, RSS {m['rss_start_mb']} -> {m['rss_end_mb']} MB "
            f"({_pct(m['rss_growth'])}){gpu}: {verdict}")


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="registered model name")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="TorchServe instance (scripts/tsctl.py)")
    parser.add_argument("--minutes", type=float, default=10.0, help="soak length after the warm-up (default 10)")
    parser.add_argument("--rate", type=float, default=None,
                        help="Poisson arrivals per second (default: --rate-fraction of a measured maximum)")
    parser.add_argument("--rate-fraction", type=float, default=0.8)
    parser.add_argument("--measure-s", type=float, default=20.0, help="closed-loop seconds to measure the maximum")
    parser.add_argument("--burst-s", type=float, default=10.0,
                        help="with --rate: closed-loop seconds of full batches before the warm-up (0: none)")
    parser.add_argument("--warmup-s", type=float, default=30.0, help="load at the rate before the first memory sample")
    parser.add_argument("--segment-s", type=float, default=60.0, help="load seconds between memory samples")
    parser.add_argument("--processes", type=int, default=default_processes(), help="load processes")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--max-growth", type=float, default=0.05, help="allowed memory growth (default 0.05)")
    add_payload_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args(argv)
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be > 0")
    if args.minutes <= 0 or args.segment_s <= 0:
        parser.error("--minutes and --segment-s must be > 0")

    payloads, payload_desc = build_payloads(args.model, args)
    config = SoakConfig(minutes=args.minutes, rate=args.rate, rate_fraction=args.rate_fraction,
                        measure_s=args.measure_s, burst_s=args.burst_s, warmup_s=args.warmup_s,
                        segment_s=args.segment_s,
                        processes=args.processes, timeout_s=args.timeout, max_growth=args.max_growth)
    doc: dict[str, Any] = {"schema": SCHEMA, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "card": describe_card(),
                           "versions": software_versions(), "command": [sys.executable, *sys.argv],
                           "payload": payload_desc}
    try:
        ts = TorchServe(args.run_dir)
        doc["server"] = describe_server(ts, args.model)
        doc.update(run_soak(ts, args.model, payloads, config, log=lambda m: print(m, flush=True)))
    except (TorchServeError, OSError, ValueError) as exc:
        doc.update(model=args.model, error=f"{type(exc).__name__}: {exc}", passed=False)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"[soak] wrote {args.out}")
    print(one_line(doc), flush=True)
    return 0 if doc.get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
