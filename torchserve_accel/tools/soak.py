"""Soak test: one registered model under steady open-loop load for N minutes, against a running TorchServe.

    torchserve-accel soak --model resnet101 --minutes 10 --rate 2000 --out soak_resnet.json
    torchserve-accel soak --model bert_large --minutes 10 --out soak_bert.json     # rate: 80% of a measured max
(``python scripts/soak.py ...`` runs the same)

Passes when: no request failed (any non-200, client timeout or connection error, warm-up included); every worker
still runs with the pid it had at the start (no restart); and the workers' host memory (RSS, their child
processes included) and GPU memory (when there is a GPU) do not trend up: the median of the last third of the
memory samples is less than ``--max-growth`` (5%) over the median of the middle third (``trend_growth``). A leak
grows all the time and shows; a one-off step (an allocator reaching a new high-water mark after a rare bigger
batch, timings shifted by other work on the machine) does not, unless it comes late and stays. The growth from the
first sample to the last is reported beside it.

Load: the load generator's Poisson open loop (latency from the scheduled arrival) in segments of ``--segment-s``
seconds; memory is sampled between segments, so the load processes never fork from a process running a sampler
thread. Warm-up first: a closed loop (concurrency: twice batchSize times the worker count) so every worker has run
full batches (an allocator's high-water mark is reached then, not mistaken for growth later), then ``--warmup-s``
at the soak's rate; only then the first memory sample. Without ``--rate``, that closed loop runs ``--measure-s``
seconds and measures the maximum, and the soak runs at ``--rate-fraction`` (0.8) of it; with ``--rate``, it runs
``--burst-s`` seconds.

Host memory comes from psutil. GPU memory is per worker process where NVML (or nvidia-smi) lists the workers'
pids, else (another pid namespace, e.g. a container) the memory in use on the whole GPU. A TorchServe on another
machine (``--url``, ``--management-url``, ``--token-file``: endpoints.py) is judged on failures and restarts
only: its workers' memory cannot be read from here. The JSON (``--out``)
holds the configuration, each segment's figures, the memory series and the verdict; the exit status is 0 when
the soak passed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import psutil

from torchserve_accel.tools import Log
from torchserve_accel.tools.commands import Commands
from torchserve_accel.tools.gpu import GpuError, gpus
from torchserve_accel.tools.launch import TorchServeError
from torchserve_accel.tools.loadgen import LoadConfig, Payload, add_payload_arguments, payloads_from, run_load
from torchserve_accel.tools.loadgen.driver import default_processes
from torchserve_accel.tools.loadgen.probes import HostCpu, describe_card, describe_server, software_versions
from torchserve_accel.tools.torchserve import TorchServe

SCHEMA = "torchserve-accel/soak/1"
NOT_LOCAL = "not measured: the workers are not processes of this machine (failures and restarts are still judged)"


# ---------------------------------------------------------------------------------------------- memory


def process_tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (compile workers and the like); 0 when it is gone."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in tree:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


def process_rss(pid: int) -> int:
    """Resident bytes of one process (0 when it is gone)."""
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def gpu_memory_mib(pids: Sequence[int]) -> dict[str, Any] | None:
    """GPU memory of ``pids`` (MiB, per process), or of all GPUs when none of them is listed; None without a GPU."""
    with gpus() as backend:
        if backend is None:
            return None
        try:
            wanted = {int(p) for p in pids}
            mine = {pid: mib for pid, mib in backend.process_memory_mib().items() if pid in wanted}
            if mine:
                return {"scope": "worker processes", "total_mib": sum(mine.values()),
                        "per_pid": {str(k): v for k, v in sorted(mine.items())}}
            used = {str(s["index"]): s["memory_mib"] for s in backend.read(["memory_mib"])}
        except GpuError:
            return None
    return {"scope": "whole GPUs (worker pids not visible to the driver)", "total_mib": sum(used.values()),
            "per_gpu": used}


@dataclass
class MemorySample:
    t_s: float  # seconds since the end of the warm-up
    rss_bytes: int  # the workers (and their descendants): what the verdict is about
    rss_per_worker: dict[str, int]
    frontend_rss_bytes: int  # the Java frontend alone, for information (its heap grows until a GC)
    gpu: dict[str, Any] | None


def workers_are_local(pids: Iterable[int]) -> bool:
    """True when every pid is a TorchServe worker process of this machine (a remote TorchServe's are not)."""
    for pid in pids:
        try:
            if HostCpu.WORKER_MARK not in " ".join(psutil.Process(int(pid)).cmdline()):
                return False
        except (psutil.Error, ValueError, TypeError):
            return False
    return True


def frontend_of(pids: Iterable[int]) -> int | None:
    """The parent of the first worker that is still there: the Java frontend."""
    for pid in pids:
        try:
            return psutil.Process(int(pid)).ppid()
        except (psutil.Error, ValueError, TypeError):
            continue
    return None


def sample_memory(pids: dict[str, int], frontend_pid: int | None, t0: float) -> MemorySample:
    per_worker = {worker_id: process_tree_rss(pid) for worker_id, pid in pids.items()}
    return MemorySample(round(time.monotonic() - t0, 1), sum(per_worker.values()), per_worker,
                        process_rss(frontend_pid) if frontend_pid else 0, gpu_memory_mib(list(pids.values())))


def growth(start: float, end: float) -> float | None:
    return None if start <= 0 else (end - start) / start


def trend_growth(values: Sequence[float]) -> float | None:
    """Growth of the median of the last third of ``values`` over the median of the middle third (the first third
    settles); the plain first-to-last growth when there are fewer than 3 values."""
    n = len(values)
    if n < 3:
        return growth(values[0], values[-1]) if values else None
    middle, last = sorted(values[n // 3 : 2 * n // 3]), sorted(values[2 * n // 3 :])
    return growth(middle[len(middle) // 2], last[len(last) // 2])


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

    local = workers_are_local(pids.values())
    frontend = (ts.frontend_pid() or frontend_of(pids.values())) if local else None
    if not local:
        log(f"[soak] {model}: memory {NOT_LOCAL}")

    doc["warmup"] = _segment(ts, model, payloads, rate, config.warmup_s, config, seed=0, log=log, probe=True)
    time.sleep(config.settle_s)
    t0 = time.monotonic()
    samples = [sample_memory(pids, frontend, t0)] if local else []
    segments = []
    left = config.minutes * 60.0
    while left > 0.5:
        seconds = min(config.segment_s, left)
        segments.append(_segment(ts, model, payloads, rate, seconds, config, seed=len(segments) + 1, log=log))
        left -= seconds
        time.sleep(config.settle_s)
        if local:
            samples.append(sample_memory(pids, frontend, t0))
    after = workers_of(ts, model)

    memory, memory_failures = judge_memory(samples, config.max_growth) if local else ({"judged": NOT_LOCAL}, [])
    sent = sum(s["started"] for s in segments)
    window = sum(s["window_s"] for s in segments)
    doc.update(
        segments=segments,
        totals={"sent": sent, "failed": sum(s["failed"] for s in [*segments, doc["warmup"], doc.get("max_rate", {}),
                                                                    doc.get("burst", {})] if s),
                "mean_rate": round(sent / window, 2) if window else None,
                "p99_ms_worst_segment": max((s["latency_ms"]["p99"] or 0.0 for s in segments), default=None)},
        memory=memory,
        workers_after=after,
    )
    failures = []
    if doc["totals"]["failed"]:
        failures.append(f"{doc['totals']['failed']} failed request(s)")
    if {k: v["pid"] for k, v in after.items()} != pids or any(w["status"] != "READY" for w in after.values()):
        failures.append(f"workers changed (restart?): before {before}, after {after}")
    failures += memory_failures
    doc["passed"], doc["failures"] = not failures, failures
    return doc


def judge_memory(samples: Sequence[MemorySample], max_growth: float) -> tuple[dict[str, Any], list[str]]:
    """The memory figures of a soak and what fails it: worker RSS or GPU memory trending up by ``max_growth``."""
    start, end = samples[0], samples[-1]
    rss_growth = trend_growth([s.rss_bytes for s in samples])
    gpu_series = [s.gpu["total_mib"] for s in samples if s.gpu]
    gpu_growth = trend_growth(gpu_series) if len(gpu_series) == len(samples) else None
    memory = {"samples": [asdict(s) for s in samples], "rss_start_mb": round(start.rss_bytes / 2**20, 1),
              "rss_end_mb": round(end.rss_bytes / 2**20, 1),
              "rss_max_mb": round(max(s.rss_bytes for s in samples) / 2**20, 1),
              "frontend_rss_mb": [round(s.frontend_rss_bytes / 2**20, 1) for s in samples],
              "rss_growth": None if rss_growth is None else round(rss_growth, 5),
              "rss_growth_first_to_last": _round(growth(start.rss_bytes, end.rss_bytes)),
              "gpu_start_mib": start.gpu["total_mib"] if start.gpu else None,
              "gpu_end_mib": end.gpu["total_mib"] if end.gpu else None,
              "gpu_growth": None if gpu_growth is None else round(gpu_growth, 5),
              "judged": "median of the last third of the samples over the median of the middle third"}
    failures = []
    if rss_growth is None or rss_growth >= max_growth:
        failures.append(f"worker RSS trends up {_pct(rss_growth)} (last third over middle third of "
                        f"{len(samples)} samples; {memory['rss_start_mb']} -> {memory['rss_end_mb']} MB "
                        f"first to last; limit {max_growth:.0%})")
    if gpu_growth is not None and gpu_growth >= max_growth:
        failures.append(f"GPU memory trends up {_pct(gpu_growth)} ({memory['gpu_start_mib']} -> "
                        f"{memory['gpu_end_mib']} MiB first to last; limit {max_growth:.0%})")
    return memory, failures


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 5)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2%}"


def one_line(doc: dict[str, Any]) -> str:
    if "error" in doc:
        return f"soak {doc.get('model')}: ERROR {doc['error']}"
    m, t = doc["memory"], doc["totals"]
    verdict = "PASSED" if doc["passed"] else "FAILED: " + "; ".join(doc["failures"])
    if "rss_start_mb" not in m:
        memory = "memory not measured (the workers are not on this machine)"
    else:
        memory = f"RSS {m['rss_start_mb']} -> {m['rss_end_mb']} MB ({_pct(m['rss_growth'])})"
        if m["gpu_growth"] is not None:
            memory += f", GPU {m['gpu_start_mib']} -> {m['gpu_end_mib']} MiB ({_pct(m['gpu_growth'])})"
    return (f"soak {doc['model']}: {t['sent']} requests at {t['mean_rate']}/s, {t['failed']} failed, worst p99 "
            f"{t['p99_ms_worst_segment']} ms, {memory}: {verdict}")


# ---------------------------------------------------------------------------------------------- command line


def add_commands(commands: Commands) -> None:
    p = commands.add("soak", _soak, "steady load for N minutes: no failure, no restart, bounded memory",
                     instance=True, details=__doc__, target="inference", also=("management", "metrics"))
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--minutes", type=float, default=10.0, help="soak length after the warm-up (default 10)")
    p.add_argument("--rate", type=float, default=None,
                   help="Poisson arrivals per second (default: --rate-fraction of a measured maximum)")
    p.add_argument("--rate-fraction", type=float, default=0.8)
    p.add_argument("--measure-s", type=float, default=20.0, help="closed-loop seconds to measure the maximum")
    p.add_argument("--burst-s", type=float, default=10.0,
                   help="with --rate: closed-loop seconds of full batches before the warm-up (0: none)")
    p.add_argument("--warmup-s", type=float, default=30.0, help="load at the rate before the first memory sample")
    p.add_argument("--segment-s", type=float, default=60.0, help="load seconds between memory samples")
    p.add_argument("--processes", type=int, default=default_processes(), help="load processes")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--max-growth", type=float, default=0.05, help="allowed memory growth (default 0.05)")
    add_payload_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="write the result JSON here")


def _soak(ts: TorchServe, args: Any) -> int:
    if args.rate is not None and args.rate <= 0:
        args.parser.error("--rate must be > 0")
    if args.minutes <= 0 or args.segment_s <= 0:
        args.parser.error("--minutes and --segment-s must be > 0")
    payloads, payload_desc = payloads_from(args, args.model)
    config = SoakConfig(minutes=args.minutes, rate=args.rate, rate_fraction=args.rate_fraction,
                        measure_s=args.measure_s, burst_s=args.burst_s, warmup_s=args.warmup_s,
                        segment_s=args.segment_s, processes=args.processes, timeout_s=args.timeout,
                        max_growth=args.max_growth)
    doc: dict[str, Any] = {"schema": SCHEMA, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "card": describe_card(),
                           "versions": software_versions(), "command": args.command_line, "payload": payload_desc}
    try:
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
