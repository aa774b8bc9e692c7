"""Soak test: one registered model under steady open-loop load for N minutes, against a running TorchServe.

    torchserve-accel soak --model resnet101 --minutes 10 --rate 2000 --out soak_resnet.json
    torchserve-accel soak --model bert_large --minutes 10 --out soak_bert.json     # rate: 80% of a measured max
    torchserve-accel soak --model resnet101 --bad-fraction 0.01 --kill-worker --out soak_resnet.json
    torchserve-accel soak-combine soak_resnet.json soak_bert.json --out soak_combined.json
(``python scripts/soak.py ...`` runs the same)

Passes when: no good request failed (any non-200, client timeout or connection error, warm-up included); every
bad input (``--bad-fraction``) was answered with a 4xx; every worker still runs with the pid it had at the start
(no restart); and the workers' host memory (RSS, their child processes included) and GPU memory (when there is a
GPU) do not trend up: the median of the last third of the memory samples is less than ``--max-growth`` (5%) over
the median of the middle third (``trend_growth``; judged from 6 samples, one per segment plus the first, so a soak
of fewer segments reports its memory unjudged). A leak grows all the time and shows; a one-off step (an
allocator reaching a new high-water mark after a rare bigger batch, timings shifted by other work on the machine)
does not, unless it comes late and stays. The growth from the first sample to the last is reported beside it.
Memory is judged only when the workers kept up with the rate (90% of the good requests answered within their
segment): a soak whose workers fall behind builds a backlog, and memory under it is no steady state; its memory is
reported "not judged", and failures and restarts still are.

Load: the load generator's Poisson open loop (latency from the scheduled arrival) in segments of ``--segment-s``
seconds; memory is sampled between segments, so the load processes never fork from a process running a sampler
thread. Warm-up first: a closed loop (concurrency: twice batchSize times the worker count) so every worker has run
full batches (an allocator's high-water mark is reached then, not mistaken for growth later), then ``--warmup-s``
at the soak's rate; only then the first memory sample. Without ``--rate``, that closed loop runs ``--measure-s``
seconds and measures the maximum, and the soak runs at ``--rate-fraction`` (0.8) of it; with ``--rate``, it runs
``--burst-s`` seconds. The closed loop sends good inputs only.

Bad inputs (``--bad-fraction F``): every ``round(1/F)``-th payload of the list the load processes cycle through is
a malformed one of the payloads' kind (``payloads.bad_inputs``: for images, bytes that are no image and a
truncated JPEG; for texts, invalid JSON and an empty text). They are counted apart: latency, throughput and
``failed`` are about the good requests; a bad one answered 200 or 5xx fails the soak. Each segment's p99 (one a
minute with the default ``--segment-s``) is in the JSON and the summary line.

Worker kill (``--kill-worker``), after the soak and its restart check, at the same rate: ``kill_one_worker``.
Several models at once: run one soak per model, concurrently, against the same TorchServe, each with
``--alongside`` naming the others (recorded: each maximum was then measured while the others were loaded too),
and ``soak-combine`` their JSON files into one verdict (``combine``; exit status 1 when any soak failed). With
``--kill-turns DIR`` (the same directory for every soak) the kills take turns (``KillTurns``): one model's kill
window and recovery never overlap another's, so each is judged on its own kill, and every model keeps its load
at its rate until all kills are done, so each kill happens under every model's load; what the waiting model's
requests got meanwhile is judged too (``beside_kills``).

Host memory comes from psutil. GPU memory is per worker process where NVML (or nvidia-smi) lists the workers'
pids, else (another pid namespace, e.g. a container, or MPS clients the driver does not list) the memory in use
on the whole GPU. A TorchServe on another machine (``--url``, ``--management-url``, ``--token-file``:
endpoints.py) is judged on failures and restarts only: its workers' memory cannot be read (nor a worker killed)
from here. The JSON (``--out``) holds the configuration, each segment's figures, the memory series, the kill
and the verdict; the exit status is 0 when the soak passed.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import psutil

from torchserve_accel.tools import Log
from torchserve_accel.tools.commands import Commands
from torchserve_accel.tools.gpu import GpuError, gpus
from torchserve_accel.tools.launch import TorchServeError
from torchserve_accel.tools.loadgen import LoadConfig, Payload, add_payload_arguments, payloads_from, run_load
from torchserve_accel.tools.loadgen.driver import default_processes
from torchserve_accel.tools.loadgen.payloads import bad_inputs, interleave_bad
from torchserve_accel.tools.loadgen.probes import HostCpu, describe_card, describe_server, software_versions
from torchserve_accel.tools.loadgen.stats import cell, is_4xx
from torchserve_accel.tools.polling import wait_until
from torchserve_accel.tools.torchserve import TorchServe

SCHEMA = "torchserve-accel/soak/1"
COMBINED_SCHEMA = "torchserve-accel/soak-combined/1"
NOT_LOCAL = "not measured: the workers are not processes of this machine (failures and restarts are still judged)"
ALONGSIDE = ("soaked at the same time as these models on the same TorchServe: this model's maximum (and so its "
             "rate) was measured while they were loaded too")
MIN_TREND_SAMPLES = 6  # memory samples a trend is judged on: at least two in each third
# The share of the good requests that must be answered within their segment for memory to be judged: below it the
# workers fell behind the rate and a backlog built up, and memory under a growing backlog is no steady state
# (docs/reliability.md, the soak section).
MIN_KEPT_UP = 0.9
READY_WAIT_S = 60.0  # a worker that has just started can show its previous state for a moment after register
LOST = ("500", "507", "timeout", "connection_error")  # a killed worker's requests: its batch answered 500 or 507
# ("Worker died."; 500 seen on a GPU machine, 507 on the CPU), or never answered


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
    bad_fraction: float = 0.0  # share of requests carrying a bad input, each to be answered 4xx
    kill_worker: bool = False  # after the soak: SIGKILL one worker under the same load (kill_one_worker)
    kill_after_s: float = 5.0  # load before the kill, inside the kill window
    kill_window_s: float = 60.0  # load seconds of the kill phase
    recovery_timeout_s: float = 300.0  # from the kill; polled past the window when the worker is not back by then
    alongside: tuple[str, ...] = ()  # models soaked at the same time on this TorchServe (recorded, not driven)
    kill_turns: str | None = None  # a directory shared by the soaks run together: their kills take turns
    turn_segment_s: float = 5.0  # load seconds per segment while waiting for a turn or for the others' kills


def workers_of(ts: TorchServe, model: str) -> dict[str, dict[str, Any]]:
    return {w["id"]: {"pid": w["pid"], "status": w["status"]} for w in ts.describe(model).get("workers", [])}


def wait_ready(ts: TorchServe, model: str, timeout: float = READY_WAIT_S) -> dict[str, dict[str, Any]]:
    """The model's workers once all are READY (there must be some); raises after ``timeout`` seconds."""
    workers = wait_until(lambda: _all_ready(workers_of(ts, model)), timeout, interval=0.5)
    if not workers:
        raise TorchServeError(f"{model} has no READY workers to soak: {workers_of(ts, model)}")
    return workers


def _all_ready(workers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    return workers if workers and all(w["status"] == "READY" for w in workers.values()) else None


def rotated(payloads: Sequence[Payload], offset: int) -> list[Payload]:
    """``payloads`` starting at ``offset``: each segment goes on where the one before stopped, so a short segment
    does not send the same first entries (and miss the bad ones) every time."""
    k = offset % len(payloads)
    return [*payloads[k:], *payloads[:k]]


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
             config: SoakConfig, seed: int, log: Log, probe: bool = False,
             during: Callable[[float, float], Any] | None = None) -> dict[str, Any]:
    load = LoadConfig(rate=rate, processes=config.processes, warmup_s=0.0, duration_s=seconds,
                      timeout_s=config.timeout_s, seed=seed)
    result = run_load(ts, model, payloads, load, log=lambda m: None, probe=probe, during=during)
    failed = sum(result["errors"].values()) + len(result["client"]["failures"])
    bad = result.get("bad_inputs")
    log(f"[soak]   {seconds:5.0f} s at {rate:.1f}/s: {result['started']} sent, {result['ok_rps']:.1f} ok/s, "
        f"p99 {result['latency_ms']['p99']} ms, failed {failed}" + (f" {result['errors']}" if result["errors"] else "")
        + (f"; bad inputs {bad['started']} {bad['answers']}" if bad else ""))
    keep = ("window_s", "started", "completed", "ok_rps", "errors", "latency_ms", "bad_inputs", "during")
    return {**{k: result[k] for k in keep if k in result}, "client_failures": result["client"]["failures"],
            "failed": failed}


def _sent(segment: dict[str, Any]) -> int:
    """Requests of a segment started in its window, good and bad."""
    return segment["started"] + segment.get("bad_inputs", {}).get("started", 0)


def run_soak(ts: TorchServe, model: str, payloads: Sequence[Payload], config: SoakConfig, log: Log = print,
             bad_payloads: Sequence[Payload] = ()) -> dict[str, Any]:
    """Warm up, then run ``config.minutes`` of load in segments (``bad_payloads`` mixed in at
    ``config.bad_fraction``), then the worker kill if asked; the figures and the verdict as a dict."""
    doc: dict[str, Any] = {"model": model, "config": asdict(config)}
    if config.alongside:
        doc["alongside"] = {"models": list(config.alongside), "note": ALONGSIDE}
    before = wait_ready(ts, model)
    doc["workers_before"] = before
    pids = {worker_id: w["pid"] for worker_id, w in before.items()}
    local = workers_are_local(pids.values())
    if config.kill_worker and not local:
        raise TorchServeError(f"--kill-worker: the workers of {model} are not processes of this machine")
    mixed = interleave_bad(payloads, bad_payloads, config.bad_fraction)
    if config.bad_fraction:
        doc["bad_inputs"] = {"fraction": round(sum(p.bad for p in mixed) / len(mixed), 5),
                             "kinds": [p.name for p in bad_payloads], "payloads_in_cycle": len(mixed)}

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
        f"after {config.warmup_s:g} s of warm-up"
        + (f", bad inputs {doc['bad_inputs']['fraction']:g} of the requests" if config.bad_fraction else ""))

    frontend = (ts.frontend_pid() or frontend_of(pids.values())) if local else None
    if not local:
        log(f"[soak] {model}: memory {NOT_LOCAL}")

    doc["warmup"] = _segment(ts, model, mixed, rate, config.warmup_s, config, seed=0, log=log, probe=True)
    offset = _sent(doc["warmup"])
    time.sleep(config.settle_s)
    t0, started_at = time.monotonic(), time.time()
    samples = [sample_memory(pids, frontend, t0)] if local else []
    segments = []
    left = config.minutes * 60.0
    while left > 0.5:
        seconds = min(config.segment_s, left)
        segments.append(_segment(ts, model, rotated(mixed, offset), rate, seconds, config, seed=len(segments) + 1,
                                 log=log))
        offset += _sent(segments[-1])
        left -= seconds
        time.sleep(config.settle_s)
        if local:
            samples.append(sample_memory(pids, frontend, t0))
    doc["phases"] = {"soak": [round(started_at, 3), round(time.time(), 3)]}  # wall clock, to line up with others
    after = workers_of(ts, model)

    memory, memory_failures = (judge_memory(samples, config.max_growth, kept_up_share(segments)) if local
                               else ({"judged": NOT_LOCAL}, []))
    doc.update(totals=soak_totals(doc, segments), segments=segments, memory=memory, workers_after=after)
    totals = doc["totals"]
    failures = []
    if totals["failed"]:
        failures.append(f"{totals['failed']} failed good request(s)")
    if totals["bad_not_4xx"]:
        failures.append(f"{totals['bad_not_4xx']} bad request(s) not answered 4xx: {totals['bad_answers']}")
    if {k: v["pid"] for k, v in after.items()} != pids or any(w["status"] != "READY" for w in after.values()):
        failures.append(f"workers changed (restart?): before {before}, after {after}")
    failures += memory_failures
    if config.kill_worker:
        max_rps = (doc.get("max_rate") or doc.get("burst") or {}).get("ok_rps")
        turns = KillTurns(config.kill_turns, model, config.alongside) if config.kill_turns else None
        beside: list[dict[str, Any]] = []

        def keep_load() -> None:  # one short segment at the rate while another model's kill runs
            nonlocal offset
            beside.append(_segment(ts, model, rotated(mixed, offset), rate, config.turn_segment_s, config,
                                   seed=len(segments) + 2 + len(beside), log=log))
            offset += _sent(beside[-1])

        if turns:
            turns.wait_turn(keep_load, log)
        try:
            doc["kill"] = kill_one_worker(ts, model, rotated(mixed, offset), rate, config, len(segments) + 1,
                                          max_rps, log)
        finally:
            if turns:
                turns.done()
        doc["phases"]["kill"] = doc["kill"]["killed_at"]
        failures += [f"kill: {why}" for why in doc["kill"]["failures"]]
        if turns:
            turns.wait_others(keep_load, config.recovery_timeout_s + config.kill_window_s + 60.0, log)
            doc["beside_kills"] = beside_kills(beside)
            failures += doc["beside_kills"]["failures"]
    doc["passed"], doc["failures"] = not failures, failures
    return doc


def bad_answers_of(phases: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The bad inputs' answers of these phases, counted by status name."""
    answers: dict[str, int] = {}
    for phase in phases:
        for name, n in phase.get("bad_inputs", {}).get("answers", {}).items():
            answers[name] = answers.get(name, 0) + n
    return answers


def soak_totals(doc: dict[str, Any], segments: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sums over the soak's segments; failures and bad inputs over every phase before them too."""
    sent = sum(_sent(s) for s in segments)
    window = sum(s["window_s"] for s in segments)
    phases = [s for s in [*segments, doc["warmup"], doc.get("max_rate", {}), doc.get("burst", {})] if s]
    bad_answers = bad_answers_of(phases)
    p99s = [s["latency_ms"]["p99"] for s in segments]
    return {"sent": sent, "good_sent": sum(s["started"] for s in segments),
            "failed": sum(s["failed"] for s in phases),
            "bad_sent": sum(bad_answers.values()),
            "bad_not_4xx": sum(n for name, n in bad_answers.items() if not is_4xx(name)),
            "bad_answers": dict(sorted(bad_answers.items())),
            "mean_rate": round(sent / window, 2) if window else None,
            "p99_ms_per_segment": p99s,
            "p99_ms_worst_segment": max((p or 0.0 for p in p99s), default=None)}


# ---------------------------------------------------------------------------------------------- worker kill


def kill_one_worker(ts: TorchServe, model: str, payloads: Sequence[Payload], rate: float, config: SoakConfig,
                    seed: int, max_rps: float | None, log: Log = print) -> dict[str, Any]:
    """SIGKILL one READY worker of ``model`` ``config.kill_after_s`` into ``config.kill_window_s`` seconds of load
    at ``rate``, and measure its recovery: from the kill until describe shows the worker count of before, all
    READY, the killed pid gone (polled every 0.25 s, past the window when needed, up to
    ``config.recovery_timeout_s``). The kill window's figures and ``judge_kill``'s verdict, as a dict."""
    before = wait_ready(ts, model)
    batch_size = int(ts.describe(model).get("batchSize") or 1)
    victim = sorted(before)[0]
    pid = int(before[victim]["pid"])

    def kill_and_watch(window_start: float, window_end: float) -> dict[str, Any]:
        time.sleep(max(0.0, window_start + config.kill_after_s - time.monotonic()))
        os.kill(pid, signal.SIGKILL)
        killed, killed_at = time.monotonic(), time.time()
        log(f"[soak] {model}: SIGKILL worker {victim} (pid {pid}) under load at {rate:g} req/s")
        back = wait_until(lambda: _replaced(ts, model, len(before), pid), config.recovery_timeout_s, interval=0.25)
        recovery = time.monotonic() - killed
        log(f"[soak] {model}: " + (f"{len(back)} worker(s) READY again {recovery:.1f} s after the kill" if back
                                   else f"not recovered {recovery:.0f} s after the kill"))
        return {"killed_after_s": round(killed - window_start, 3), "killed_at": round(killed_at, 3),
                "recovery_s": round(recovery, 2) if back else None, "workers_after": back or workers_of(ts, model)}

    segment = _segment(ts, model, payloads, rate, config.kill_window_s, config, seed, log, during=kill_and_watch)
    watch = segment.pop("during")
    unexpected = dict(segment["errors"])  # good requests not answered 200, and below bad ones not answered 4xx
    for name, n in segment.get("bad_inputs", {}).get("answers", {}).items():
        if not is_4xx(name):
            unexpected[name] = unexpected.get(name, 0) + n
    old_pids = {int(w["pid"]) for w in before.values()}
    kill = {"worker": victim, "pid": pid, "batch_size": batch_size, "workers": len(before), "rate": rate,
            **watch, "new_pids": sorted({int(w["pid"]) for w in watch["workers_after"].values()} - old_pids),
            "sent": _sent(segment), "unexpected": dict(sorted(unexpected.items())), "window": segment}
    kill.update(judge_kill(unexpected, batch_size, len(before), rate, max_rps, watch["recovery_s"] is not None,
                           restarted=len(kill["new_pids"])))
    if segment["client_failures"]:
        kill["failures"].append(f"load processes failed: {segment['client_failures']}")
    return kill


class KillTurns:
    """Kills of several soaks, one at a time: a lock file in a shared directory is held from the kill window's
    start until the killed worker is back, and ``<model>.killed`` marks each model's kill done. While waiting
    (for the turn, then for the other models' kills) the caller keeps its model's load going."""

    def __init__(self, directory: str, model: str, others: Sequence[str]):
        self.dir, self.model, self.others = Path(directory), model, tuple(others)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = None

    def wait_turn(self, keep_load: Callable[[], None], log: Log) -> None:
        self._lock = open(self.dir / "kill.lock", "w")
        waited = False
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if not waited:
                    log(f"[soak] {self.model}: another model's kill is running; load goes on until its turn")
                    waited = True
                keep_load()

    def done(self) -> None:
        (self.dir / f"{self.model}.killed").touch()
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None

    def wait_others(self, keep_load: Callable[[], None], timeout_s: float, log: Log) -> None:
        """Load goes on until every other model's kill is done (or ``timeout_s``: a soak that failed early)."""
        deadline = time.monotonic() + timeout_s
        pending = [m for m in self.others if not (self.dir / f"{m}.killed").exists()]
        if pending:
            log(f"[soak] {self.model}: load goes on until the kills of {', '.join(pending)} are done")
        while pending and time.monotonic() < deadline:
            keep_load()
            pending = [m for m in pending if not (self.dir / f"{m}.killed").exists()]


def beside_kills(segments: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What this model's requests got while other models' workers were killed: judged like the soak (no good
    request failed, every bad one 4xx)."""
    failed = sum(s["failed"] for s in segments)
    bad_answers = bad_answers_of(segments)
    bad_not_4xx = sum(n for name, n in bad_answers.items() if not is_4xx(name))
    failures = []
    if failed:
        failures.append(f"beside the other models' kills: {failed} failed good request(s)")
    if bad_not_4xx:
        failures.append(f"beside the other models' kills: {bad_not_4xx} bad request(s) not answered 4xx: "
                        f"{dict(sorted(bad_answers.items()))}")
    p99s = [s["latency_ms"]["p99"] for s in segments]
    return {"seconds": sum(s["window_s"] for s in segments), "sent": sum(_sent(s) for s in segments),
            "failed": failed, "bad_answers": dict(sorted(bad_answers.items())),
            "p99_ms_worst_segment": max((p or 0.0 for p in p99s), default=None), "segments": list(segments),
            "failures": failures}


def _replaced(ts: TorchServe, model: str, count: int, killed_pid: int) -> dict[str, dict[str, Any]] | None:
    """The workers once there are ``count``, all READY, none with ``killed_pid``; None before (or unreachable)."""
    try:
        workers = workers_of(ts, model)
    except (TorchServeError, OSError):
        return None
    back = len(workers) == count and killed_pid not in {int(w["pid"]) for w in workers.values()}
    return _all_ready(workers) if back else None


def judge_kill(unexpected: dict[str, int], batch_size: int, workers: int, rate: float, max_rps: float | None,
               recovered: bool, restarted: int = 1) -> dict[str, Any]:
    """What a worker kill may cost, from the kill window's unexpected answers (by status name).

    Lost (500 or 507 "Worker died.", timeouts, dropped connections): at most two batches, the one the killed worker
    was running (500/507) and the one its aggregator was collecting (never answered: TorchServe 0.12,
    docs/reliability.md); so at most 2 x batchSize. Refused (503, the queue full): allowed only when the
    remaining workers cannot carry the rate (``max_rps`` x (workers - 1) / workers below it), as with two workers
    at 80% of their maximum; then it is a matter of capacity, not of the kill. Any other answer fails, and so does
    a worker not back within the recovery timeout, or more than one worker with a new pid (``restarted``: under
    MPS a client's death must not take the others with it).
    """
    lost = sum(unexpected.get(name, 0) for name in LOST)
    refused = unexpected.get("503", 0)
    other = {name: n for name, n in unexpected.items() if name not in LOST and name != "503"}
    capacity = None if max_rps is None else round(max_rps * (workers - 1) / workers, 2)
    overloaded = capacity is not None and rate > capacity
    failures = []
    if not recovered:
        failures.append(f"not {workers} READY worker(s) with a new pid within the recovery timeout")
    if lost > 2 * batch_size:
        failures.append(f"{lost} request(s) lost, more than 2 x batchSize ({2 * batch_size})")
    if refused and not overloaded:
        failures.append(f"{refused} request(s) refused 503 while the other workers could carry the rate "
                        f"({capacity} req/s without one worker, rate {rate:g})")
    if other:
        failures.append(f"unexpected answers {other}")
    if restarted > 1:
        failures.append(f"{restarted} workers have a new pid; one was killed")
    return {"lost": lost, "lost_limit": 2 * batch_size, "refused_503": refused,
            "capacity_without_one_worker_rps": capacity, "overloaded_without_one_worker": overloaded,
            "other": other, "failures": failures}


def kept_up_share(segments: Sequence[dict[str, Any]]) -> float | None:
    """The share of the soak's good requests answered 200 within their segment's window (None: nothing sent)."""
    answered = sum(s["ok_rps"] * s["window_s"] for s in segments)
    good = sum(s["started"] for s in segments)
    return round(answered / good, 4) if good else None


def judge_memory(samples: Sequence[MemorySample], max_growth: float, kept_up: float | None = None
                 ) -> tuple[dict[str, Any], list[str]]:
    """The memory figures of a soak and what fails it: worker RSS or GPU memory trending up by ``max_growth``,
    judged when there are enough samples and the workers kept up with the rate (``kept_up``: ``kept_up_share``)."""
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
              "kept_up": kept_up,
              "judged": "median of the last third of the samples over the median of the middle third"}
    failures = []
    # the soak's shape first (the same on any machine), then how the machine kept up with it
    if len(samples) < MIN_TREND_SAMPLES:
        # thirds of fewer samples are one or two samples each: a worker reaching a new high-water mark in a slow
        # batch reads as a trend (+6.6% over 4 samples on a loaded 2-core machine, no leak)
        memory["judged"] = (f"not judged: {len(samples)} samples, a trend needs {MIN_TREND_SAMPLES} (a longer "
                            "--minutes or a shorter --segment-s)")
        return memory, failures
    if kept_up is not None and kept_up < MIN_KEPT_UP:
        memory["judged"] = (f"not judged: the workers fell behind the rate ({kept_up:.0%} of the good requests "
                            f"answered in their segment, under {MIN_KEPT_UP:.0%}): a backlog, not a steady state")
        return memory, failures
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
        if m.get("judged", "").startswith("not judged"):
            memory += f", memory {m['judged'].split(' (')[0]}"
    bad = (f", bad inputs {t['bad_sent']} (warm-up included), {t['bad_not_4xx']} not answered 4xx"
           if "bad_inputs" in doc else "")
    p99s = " ".join(cell(p) for p in t["p99_ms_per_segment"])
    return (f"soak {doc['model']}: {t['sent']} requests at {t['mean_rate']}/s{bad}, {t['failed']} failed, p99 per "
            f"segment {p99s} ms, {memory}{kill_text(doc.get('kill'))}{beside_text(doc.get('beside_kills'))}: "
            f"{verdict}")


def kill_text(kill: dict[str, Any] | None) -> str:
    if not kill:
        return ""
    back = (f"back in {kill['recovery_s']} s (new pid {', '.join(map(str, kill['new_pids']))})"
            if kill["recovery_s"] is not None else "NOT back")
    return (f"; worker {kill['worker']} killed: {back}, {kill['lost']} lost (limit {kill['lost_limit']}), "
            f"{kill['refused_503']} refused 503")


def beside_text(beside: dict[str, Any] | None) -> str:
    if not beside or not beside["seconds"]:
        return ""
    return (f"; beside the other kills {beside['seconds']:g} s: {beside['failed']} failed, "
            f"worst p99 {cell(beside['p99_ms_worst_segment'])} ms")


# ---------------------------------------------------------------------------------------------- several models


def combine(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One document for soaks run at the same time against one TorchServe: every soak whole, each verdict, how
    long their soak phases ran together (negative: the gap between them), and whether every kill came after all
    of them had ended (a kill during another model's soak would be part of that model's figures). Passed when
    every soak passed."""
    spans = [d["phases"]["soak"] for d in docs if "soak" in d.get("phases", {})]
    kills = [d["phases"]["kill"] for d in docs if "kill" in d.get("phases", {})]
    together = round(min(end for _, end in spans) - max(start for start, _ in spans), 1) if spans else None
    failures = [f"{d.get('model')}: {why}" for d in docs if not d.get("passed")
                for why in (d.get("failures") or [d.get("error") or "did not pass"])]
    return {"schema": COMBINED_SCHEMA, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "card": next((d["card"] for d in docs if d.get("card")), None),
            "models": [d.get("model") for d in docs],
            "verdicts": [{"model": d.get("model"), "passed": bool(d.get("passed")), "summary": one_line(d)}
                         for d in docs],
            "soak_phases_together_s": together,
            "kills_after_every_soak": (all(k >= max(end for _, end in spans) for k in kills)
                                       if kills and spans else None),
            "kills_one_at_a_time": kills_apart([d["kill"] for d in docs if d.get("kill")]),
            "passed": bool(docs) and not failures, "failures": failures, "soaks": list(docs)}


def kills_apart(kills: Sequence[dict[str, Any]]) -> bool | None:
    """Whether no two kills overlapped, each from its window's start until its worker was back (or its window's
    end, when later); None for fewer than two kills (or kills recorded without their times)."""
    if len(kills) < 2 or not all({"killed_at", "killed_after_s", "window"} <= k.keys() for k in kills):
        return None
    spans = sorted((k["killed_at"] - k["killed_after_s"],
                    k["killed_at"] + max(k.get("recovery_s") or float("inf"),
                                         k["window"]["window_s"] - k["killed_after_s"])) for k in kills)
    return all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))


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
    p.add_argument("--bad-fraction", type=float, default=0.0,
                   help="share of requests with a bad input, each to be answered 4xx (default 0; at most 0.5)")
    p.add_argument("--kill-worker", action="store_true",
                   help="after the soak, SIGKILL one worker under the same load and measure its recovery")
    p.add_argument("--kill-after-s", type=float, default=5.0, help="load before the kill (default 5)")
    p.add_argument("--kill-window-s", type=float, default=60.0, help="load seconds of the kill phase (default 60)")
    p.add_argument("--recovery-timeout-s", type=float, default=300.0,
                   help="seconds from the kill for the worker to be back (default 300)")
    p.add_argument("--alongside", action="append", default=[], metavar="MODEL",
                   help="a model soaked at the same time on this TorchServe (recorded in the result; repeatable)")
    p.add_argument("--kill-turns", default=None, metavar="DIR",
                   help="a directory shared by soaks run together (with --alongside): their kills take turns, "
                        "each under every model's load")
    add_payload_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="write the result JSON here")

    p = commands.add("soak-combine", _combine, "one verdict for soaks run together (exit 1 when any failed)",
                     details=combine.__doc__)
    p.add_argument("inputs", nargs="+", type=Path, help="soak result JSON files")
    p.add_argument("--out", type=Path, required=True, help="write the combined JSON here")


def _soak(ts: TorchServe, args: Any) -> int:
    if args.rate is not None and args.rate <= 0:
        args.parser.error("--rate must be > 0")
    if args.minutes <= 0 or args.segment_s <= 0:
        args.parser.error("--minutes and --segment-s must be > 0")
    if not 0 <= args.bad_fraction <= 0.5:
        args.parser.error("--bad-fraction must be within [0, 0.5]")
    if args.kill_worker and not 0 <= args.kill_after_s < args.kill_window_s:
        args.parser.error("--kill-after-s must be >= 0 and less than --kill-window-s")
    payloads, payload_desc = payloads_from(args, args.model)
    bad = bad_inputs(payload_desc["kind"]) if args.bad_fraction else []
    config = SoakConfig(minutes=args.minutes, rate=args.rate, rate_fraction=args.rate_fraction,
                        measure_s=args.measure_s, burst_s=args.burst_s, warmup_s=args.warmup_s,
                        segment_s=args.segment_s, processes=args.processes, timeout_s=args.timeout,
                        max_growth=args.max_growth, bad_fraction=args.bad_fraction, kill_worker=args.kill_worker,
                        kill_after_s=args.kill_after_s, kill_window_s=args.kill_window_s,
                        recovery_timeout_s=args.recovery_timeout_s, alongside=tuple(args.alongside),
                        kill_turns=args.kill_turns)
    doc: dict[str, Any] = {"schema": SCHEMA, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "card": describe_card(),
                           "versions": software_versions(), "command": args.command_line, "payload": payload_desc}
    try:
        doc["mps"] = ts.info.mps  # workers as clients of an MPS daemon (torchserve-accel start --mps)
    except (TorchServeError, OSError):
        doc["mps"] = None  # a TorchServe given by its URLs: not known here
    try:
        doc["server"] = describe_server(ts, args.model)
        doc.update(run_soak(ts, args.model, payloads, config, log=lambda m: print(m, flush=True), bad_payloads=bad))
    except (TorchServeError, OSError, ValueError) as exc:
        doc.update(model=args.model, error=f"{type(exc).__name__}: {exc}", passed=False)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"[soak] wrote {args.out}")
    print(one_line(doc), flush=True)
    return 0 if doc.get("passed") else 1


def _combine(args: Any) -> int:
    docs = []
    for path in args.inputs:
        try:
            docs.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            docs.append({"model": str(path), "passed": False, "error": f"unreadable: {type(exc).__name__}: {exc}"})
    document = combine(docs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    for verdict in document["verdicts"]:
        print(verdict["summary"], flush=True)
    print(f"[soak-combine] {len(docs)} soak(s), together {document['soak_phases_together_s']} s, kills after every "
          f"soak: {document['kills_after_every_soak']}: {'PASSED' if document['passed'] else 'FAILED'} -> {args.out}",
          flush=True)
    return 0 if document["passed"] else 1
