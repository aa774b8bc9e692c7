"""The load processes: each an asyncio event loop with its own keep-alive connections (HTTP/1.1, or calls on a few
gRPC channels), started together by the parent on one signal, running a closed or an open (Poisson) loop, and
sending back its records."""

from __future__ import annotations

import array
import asyncio
import math
import multiprocessing as mp
import queue
import random
import resource
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from torchserve_accel.tools.launch import TorchServeError
from torchserve_accel.tools.loadgen.http import Connection
from torchserve_accel.tools.loadgen.stats import Records

if TYPE_CHECKING:
    from torchserve_accel.tools.loadgen.grpc_client import GrpcTarget


@dataclass
class ProcessSpec:
    index: int
    host: str
    port: int
    requests: list[bytes]  # prebuilt raw requests, used round-robin
    concurrency: int  # closed loop: connections kept busy; 0 in open loop
    rate: float  # open loop: mean arrivals/s of this process; 0 in closed loop
    max_connections: int  # open loop: connections this process may open
    warmup_s: float
    duration_s: float
    timeout_s: float
    max_requests: int  # this process's share; 0 = unbounded
    seed: int
    grpc: GrpcTarget | None = None  # requests are gRPC Predictions calls (grpc_client.py); None: HTTP/1.1


# ---------------------------------------------------------------------------------------------- inside a process


async def _closed_loop(spec: ProcessSpec, conns: list[Connection], start_at: float, records: Records,
                       counters: dict) -> None:
    stop_at = start_at + spec.warmup_s + spec.duration_s
    window_start = start_at + spec.warmup_s
    n = len(spec.requests)

    async def user(slot: int, conn: Connection) -> None:
        k = (spec.index * 7_919 + slot * 131) % n  # each connection walks the payloads from its own offset
        while True:
            began = time.monotonic()
            if began >= stop_at or (spec.max_requests and counters["sent"] >= spec.max_requests):
                counters["stopped_at"] = min(counters["stopped_at"], began)
                return
            counters["sent"] += 1
            status = await conn.send(spec.requests[k], spec.timeout_s)
            ended = time.monotonic()
            if ended >= window_start:
                records.add(began, ended - began, status, k)
            k = (k + 1) % n

    delay = start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    await asyncio.gather(*(user(i, c) for i, c in enumerate(conns)))


async def _open_loop(spec: ProcessSpec, conns: list[Connection], start_at: float, records: Records,
                     counters: dict, new_connection: Callable[[], Connection]) -> None:
    stop_at = start_at + spec.warmup_s + spec.duration_s
    window_start = start_at + spec.warmup_s
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for conn in conns:
        idle.put_nowait(conn)
    opened = len(conns)
    rng = random.Random(spec.seed * 1_000_003 + spec.index)
    lags = counters["lags"]
    in_flight: set[asyncio.Task] = set()

    async def one(scheduled: float, k: int) -> None:
        nonlocal opened
        if idle.empty() and opened < spec.max_connections:
            opened += 1
            conn = new_connection()
        else:
            conn = await idle.get()  # waits while every connection is busy: counted in the latency
        try:
            status = await conn.send(spec.requests[k], spec.timeout_s - (time.monotonic() - scheduled))
        finally:
            idle.put_nowait(conn)
        ended = time.monotonic()
        if ended >= window_start:
            records.add(scheduled, ended - scheduled, status, k)

    t, k = start_at, (spec.index * 7_919) % len(spec.requests)
    while True:
        t += rng.expovariate(spec.rate)
        if t >= stop_at or (spec.max_requests and counters["sent"] >= spec.max_requests):
            counters["stopped_at"] = min(counters["stopped_at"], max(time.monotonic(), min(t, stop_at)))
            break
        wait = t - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if t >= window_start:
            lags.append(time.monotonic() - t)  # how late this arrival left: the client's own delay
        counters["sent"] += 1
        task = asyncio.ensure_future(one(t, k))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        k = (k + 1) % len(spec.requests)
    if in_flight:
        await asyncio.gather(*in_flight)
    counters["connections"] = opened
    while not idle.empty():  # the connections opened on demand (the first ones are closed by the caller)
        idle.get_nowait().close()


def _raise_open_files_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


async def _run_process(spec: ProcessSpec, ready: Any, go: Any, start_value: Any) -> dict:
    _raise_open_files_limit(max(spec.concurrency, spec.max_connections) + 256)
    channels = None
    new_connection: Callable[[], Any] = lambda: Connection(spec.host, spec.port)  # noqa: E731
    if spec.grpc is not None:  # connections are calls on the process's few channels
        from torchserve_accel.tools.loadgen.grpc_client import GrpcChannels

        channels = GrpcChannels(spec.host, spec.port, spec.grpc)
        new_connection = channels.connection
    preopen = spec.concurrency if spec.concurrency else min(spec.max_connections, 16)
    conns = [new_connection() for _ in range(preopen)]
    failed = 0
    for result in await asyncio.gather(*(c.connect() for c in conns), return_exceptions=True):
        failed += isinstance(result, BaseException)  # those reconnect (or fail) on first use
    ready.put(spec.index)
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, go.wait, 120.0):
        if channels is not None:
            await channels.close()
        return {"index": spec.index, "error": "no start signal within 120 s"}
    start_at = start_value.value
    records = Records()
    counters: dict[str, Any] = {"sent": 0, "stopped_at": math.inf, "lags": array.array("d"),
                                "connections": len(conns)}
    usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    if spec.concurrency:
        await _closed_loop(spec, conns, start_at, records, counters)
    else:
        await _open_loop(spec, conns, start_at, records, counters, new_connection)
    usage1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    for conn in conns:
        conn.close()
    if channels is not None:
        await channels.close()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return {"index": spec.index, "records": records, "sent": counters["sent"],
            "stopped_at": counters["stopped_at"], "lags": counters["lags"], "connections": counters["connections"],
            "connect_failures": failed, "cpu_s": cpu, "wall_s": wall1 - wall0}


def _process_main(spec: ProcessSpec, ready: Any, go: Any, start_value: Any, results: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's terminate() ends a load process at once
    try:
        results.put(asyncio.run(_run_process(spec, ready, go, start_value)))
    except BaseException as exc:  # the parent must hear from every process
        results.put({"index": spec.index, "error": f"{type(exc).__name__}: {exc}"})


# ---------------------------------------------------------------------------------------------- the parent's side


class LoadProcesses:
    """The load processes of one run, as a context manager: started (forked) on entry, each connects and says it
    is ready; ``go`` starts them all at one moment; ``collect`` gathers what they send back; exit stops them.

    fork: children share the payloads without pickling them. (spawn would pickle each process's copy into a pipe
    that the parent itself keeps open, so a child dying at import would hang the parent.) Start these before any
    thread of the parent (a GPU sampler): a fork copies no thread but can copy a lock one holds. For the same
    reason the parent opens no gRPC channel before forking (its probe goes over REST); each child opens its own.
    """

    def __init__(self, specs: Sequence[ProcessSpec]):
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.ready, self.results, self.go_event = ctx.Queue(), ctx.Queue(), ctx.Event()
        self.start_value = ctx.Value("d", 0.0)
        self.processes = [ctx.Process(target=_process_main, daemon=True,
                                      args=(s, self.ready, self.go_event, self.start_value, self.results))
                          for s in specs]
        self.outputs: dict[int, dict] = {}  # process index -> what it sent back

    def __enter__(self) -> LoadProcesses:
        for process in self.processes:
            process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.go_event.set()
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)

    def go(self, ready_timeout: float = 120.0) -> float:
        """Wait until every process is connected, then start them all 0.2 s from now; returns that moment."""
        deadline = time.monotonic() + ready_timeout
        arrived = 0
        while arrived < len(self.processes):
            try:
                self.ready.get(timeout=max(0.1, deadline - time.monotonic()))
                arrived += 1
            except queue.Empty:
                early = self._drain()
                if time.monotonic() > deadline or (early and not any(p.is_alive() for p in self.processes)):
                    raise TorchServeError(f"only {arrived}/{len(self.processes)} load processes started: "
                                          f"{[o.get('error') for o in self.outputs.values()]}") from None
        start_at = time.monotonic() + 0.2
        self.start_value.value = start_at
        self.go_event.set()
        return start_at

    @property
    def done(self) -> bool:
        return len(self.outputs) == len(self.processes)

    def collect(self, until: float) -> None:
        """Gather results until every process has answered or the clock passes ``until``."""
        while not self.done and time.monotonic() < until:
            self._drain(timeout=min(0.25, max(0.0, until - time.monotonic())))

    def finish(self, hard_stop: float) -> None:
        """Gather the remaining results, up to ``hard_stop`` or until no process is left to send one."""
        while not self.done and time.monotonic() < hard_stop:
            self._drain(timeout=0.5)
            if not self.done and not any(p.is_alive() for p in self.processes):
                self._drain(timeout=1.0)
                return

    def _drain(self, timeout: float = 0.0) -> bool:
        """Move every result waiting into ``outputs`` (blocking up to ``timeout`` for the first)."""
        got = False
        while True:
            try:
                out = self.results.get(timeout=timeout) if timeout > 0 and not got else self.results.get_nowait()
            except queue.Empty:
                return got
            self.outputs[out["index"]] = out
            got = True
