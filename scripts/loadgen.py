#!/usr/bin/env python3
"""Load generator for a TorchServe model's REST inference API: real payloads, closed or open loop, many processes.

    python scripts/loadgen.py resnet101 --concurrency 512 --duration 20 --out r.json        # closed loop
    python scripts/loadgen.py resnet101 --rate 8000 --duration 20 --out r.json              # open loop (Poisson)
    python scripts/loadgen.py bert_large --texts 512 --concurrency 256                      # JSON {"text": ...}
    python scripts/loadgen.py resnet101 --image-dir photos/ --processes 8                   # your own images

Payloads: ImageNet-like JPEGs (500x375, quality 90, ~75 KB, made here from scripts/sample_images.py plus grain)
or files from a folder; for text models, texts of 4..100 common words (6..~120 tokens, median ~60).

Load: ``--processes`` OS processes, each an asyncio event loop with its own keep-alive HTTP/1.1 connections
to 127.0.0.1 (loopback only), so the client is not the bottleneck (each process reports its CPU use).
Closed loop: ``--concurrency`` requests always in flight, split over the processes. Open loop: Poisson
arrivals at ``--rate`` requests/s in total; latency counts from the scheduled arrival, so a client-side wait
for a free connection is part of it (no coordinated omission).

Timeline: ``--warmup`` seconds of load that are not measured, then ``--duration`` seconds measured; no new
request after that, and each request is bounded by ``--timeout``. ``--max-requests`` caps the total count
(the window then ends when the first process reaches its share).

Figures (JSON with ``--out``): throughput (all answers and 200s only, completed inside the window), latency
p50/p90/p99/max of requests started inside the window, errors by HTTP status ("timeout",
"connection_error" for client-side failures), the mean batch size the handlers ran (the increments of the
Prometheus counters HandlerBatches and HandlerBatchedRequests over the window), TorchServe's mean queue and
inference latency per request (ts_* counters), GPU utilization sampled by ``nvidia-smi`` (null without
one), the card, software versions and the command. Keys come from the instance's key_file.json
(``--run-dir``, see scripts/tsctl.py).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import io
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handlers.common import STAGE_METRICS  # noqa: E402
from scripts.smi import SmiStream  # noqa: E402
from scripts.tsctl import DEFAULT_RUN_DIR, TorchServe, TorchServeError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCHEMA = "torchserve-accel/loadgen/1"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_AUTO_CONNECTIONS = 512  # per open-loop process unless --max-connections says otherwise
STATUS_TIMEOUT = -1  # client-side outcomes recorded in place of an HTTP status
STATUS_CONNECTION = -2
STATUS_NAMES = {STATUS_TIMEOUT: "timeout", STATUS_CONNECTION: "connection_error"}
WORDS_FILE = REPO / "handlers" / "text" / "common_words.txt"

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------- payloads


@dataclass(frozen=True)
class Payload:
    body: bytes
    content_type: str
    name: str = ""


def photo_like_jpeg(seed: int, size: tuple[int, int] = (500, 375), quality: int = 90, grain: float = 0.17) -> bytes:
    """A synthetic photo (scripts/sample_images.py) with colour grain, JPEG-encoded.

    The grain brings the file to the size of a real ImageNet photo of that shape: at 500x375 q90 about
    75 KB (sample_images alone gives ~44 KB), so decode work per request is realistic.
    """
    from PIL import Image

    from scripts.sample_images import make_image

    image = Image.open(io.BytesIO(make_image(seed, size=size, fmt="PNG"))).convert("RGB")
    noise = Image.frombytes("RGB", image.size, random.Random(seed + 7_919).randbytes(size[0] * size[1] * 3))
    out = io.BytesIO()
    Image.blend(image, noise, grain).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def image_payloads(count: int = 64, size: tuple[int, int] = (500, 375), quality: int = 90,
                   seed: int = 0) -> list[Payload]:
    return [Payload(photo_like_jpeg(seed + i, size, quality), "image/jpeg", f"synthetic_{seed + i:04d}.jpg")
            for i in range(count)]


def folder_payloads(folder: Path, limit: int | None = None) -> list[Payload]:
    """Image files from ``folder`` (sorted by name), each with the Content-Type of its suffix."""
    types = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
             ".bmp": "image/bmp", ".gif": "image/gif", ".tif": "image/tiff", ".tiff": "image/tiff"}
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in types)
    if not files:
        raise ValueError(f"no image files ({', '.join(sorted(types))}) in {folder}")
    return [Payload(p.read_bytes(), types[p.suffix.lower()], p.name) for p in files[:limit]]


def common_words() -> list[str]:
    words = [w for line in WORDS_FILE.read_text().splitlines() if not line.startswith("#") for w in line.split()]
    return [w for w in words if w.isalpha()] or ["the", "quick", "brown", "fox"]


def make_text(rng: random.Random, words: Sequence[str], n_words: int) -> str:
    """``n_words`` words in sentences of 5..14 words, a comma now and then; first word capitalized."""
    parts, sentence = [], 0
    for i in range(n_words):
        word = rng.choice(words)
        parts.append(word.capitalize() if sentence == 0 else word)
        sentence += 1
        last = i == n_words - 1
        if last or (sentence >= 5 and rng.random() < 0.12):
            parts[-1] += "."
            sentence = 0
        elif sentence >= 3 and rng.random() < 0.06:
            parts[-1] += ","
    return " ".join(parts)


def text_payloads(count: int = 256, min_words: int = 4, max_words: int = 100, seed: int = 0) -> list[Payload]:
    """JSON bodies ``{"text": ...}`` of ``min_words..max_words`` common words, lengths spread uniformly.

    Every word is in the vocabulary, so a text costs about one token per word and punctuation mark plus
    [CLS]/[SEP]: 6..~121 tokens with the defaults, median ~60 (2026-11: checked with the random-weight
    archive's WordPiece tokenizer), so every text fits a 128-token sequence.
    """
    rng, words = random.Random(seed), common_words()
    payloads = []
    for i in range(count):
        text = make_text(rng, words, rng.randint(min_words, max_words))
        payloads.append(Payload(json.dumps({"text": text}).encode(), "application/json", f"text_{i:04d}"))
    return payloads


def approx_tokens(text: str) -> int:
    """Upper estimate of WordPiece tokens for ``make_text`` output: words + punctuation + [CLS] + [SEP]."""
    return len(re.findall(r"\w+|[^\w\s]", text)) + 2


# ---------------------------------------------------------------------------------------------- HTTP client


def raw_request(host: str, port: int, path: str, key: str | None, payload: Payload) -> bytes:
    """One complete HTTP/1.1 POST (head and body), built once and re-sent as is."""
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Type: {payload.content_type}",
            f"Content-Length: {len(payload.body)}", "Connection: keep-alive"]
    if key:
        head.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload.body


def parse_response_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """Status line and headers -> (status, content_length or None, chunked, server_closes)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP status line: {lines[0]!r}")
    status, length, chunked, close = int(parts[1]), None, False, parts[0] == "HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value
        elif name == "connection":
            close = value == "close"
    return status, length, chunked, close


class Connection:
    """One keep-alive HTTP/1.1 connection; (re)connects lazily; one request at a time."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def _exchange(self, raw: bytes) -> int:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, length, chunked, close = parse_response_head(head)
        if chunked:
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        elif length is None and not chunked:
            close = True  # body runs until the server closes: read it all
            await self.reader.read()
        if close:
            self.close()
        return status

    async def send(self, raw: bytes, timeout: float) -> int:
        """HTTP status, or STATUS_TIMEOUT / STATUS_CONNECTION (the connection is then dropped)."""
        try:
            return await asyncio.wait_for(self._exchange(raw), timeout=max(timeout, 0.001))
        except (asyncio.TimeoutError, TimeoutError):
            self.close()
            return STATUS_TIMEOUT
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.close()
            return STATUS_CONNECTION


# ---------------------------------------------------------------------------------------------- one process


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


@dataclass
class Records:
    """Requests of one process: start (monotonic s; scheduled arrival in open loop), latency (s), status."""

    start: array.array = field(default_factory=lambda: array.array("d"))
    latency: array.array = field(default_factory=lambda: array.array("d"))
    status: array.array = field(default_factory=lambda: array.array("i"))

    def add(self, start: float, latency: float, status: int) -> None:
        self.start.append(start)
        self.latency.append(latency)
        self.status.append(status)

    def extend(self, other: "Records") -> None:
        self.start.extend(other.start)
        self.latency.extend(other.latency)
        self.status.extend(other.status)

    def __len__(self) -> int:
        return len(self.start)


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
            k = (k + 1) % n
            if ended >= window_start:
                records.add(began, ended - began, status)

    delay = start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    await asyncio.gather(*(user(i, c) for i, c in enumerate(conns)))


async def _open_loop(spec: ProcessSpec, conns: list[Connection], start_at: float, records: Records,
                     counters: dict) -> None:
    stop_at = start_at + spec.warmup_s + spec.duration_s
    window_start = start_at + spec.warmup_s
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for conn in conns:
        idle.put_nowait(conn)
    opened = len(conns)
    rng = random.Random(spec.seed * 1_000_003 + spec.index)
    lags = counters["lags"]
    in_flight: set[asyncio.Task] = set()

    async def one(scheduled: float, raw: bytes) -> None:
        nonlocal opened
        if idle.empty() and opened < spec.max_connections:
            opened += 1
            conn = Connection(spec.host, spec.port)
        else:
            conn = await idle.get()  # waits while every connection is busy: counted in the latency
        try:
            status = await conn.send(raw, spec.timeout_s - (time.monotonic() - scheduled))
        finally:
            idle.put_nowait(conn)
        ended = time.monotonic()
        if ended >= window_start:
            records.add(scheduled, ended - scheduled, status)

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
        task = asyncio.ensure_future(one(t, spec.requests[k]))
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
    preopen = spec.concurrency if spec.concurrency else min(spec.max_connections, 16)
    conns = [Connection(spec.host, spec.port) for _ in range(preopen)]
    failed = 0
    for result in await asyncio.gather(*(c.connect() for c in conns), return_exceptions=True):
        failed += isinstance(result, BaseException)  # those reconnect (or fail) on first use
    ready.put(spec.index)
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, go.wait, 120.0):
        return {"index": spec.index, "error": "no start signal within 120 s"}
    start_at = start_value.value
    records = Records()
    counters: dict[str, Any] = {"sent": 0, "stopped_at": math.inf, "lags": array.array("d"),
                                "connections": len(conns)}
    usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    if spec.concurrency:
        await _closed_loop(spec, conns, start_at, records, counters)
    else:
        await _open_loop(spec, conns, start_at, records, counters)
    usage1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    for conn in conns:
        conn.close()
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


# ---------------------------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of ascending ``sorted_values``, linear interpolation (numpy's default)."""
    n = len(sorted_values)
    if n == 0:
        return None
    pos = (n - 1) * min(max(q, 0.0), 100.0) / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_summary(latencies_s: Iterable[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p99, max in milliseconds (None where there is no sample)."""
    values = sorted(latencies_s)
    ms = lambda v: None if v is None else round(v * 1000.0, 3)  # noqa: E731
    return {"count": len(values), "mean": ms(sum(values) / len(values)) if values else None,
            "p50": ms(percentile(values, 50)), "p90": ms(percentile(values, 90)),
            "p99": ms(percentile(values, 99)), "max": ms(values[-1] if values else None)}


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, str(status))


def summarize(records: Records, window_start: float, window_end: float) -> dict[str, Any]:
    """Figures over the window [window_start, window_end] (monotonic seconds).

    Throughput counts answers that arrived inside the window (``throughput_rps``: every answer;
    ``ok_rps``: 200s). Latency and errors cover the requests started inside the window, followed to their end.
    """
    window = window_end - window_start
    if window <= 0:
        raise ValueError(f"empty measurement window ({window:.3f} s): --max-requests ran out during the warm-up?")
    started_latency, started_ok_latency, errors = [], [], {}
    completed = completed_ok = started = 0
    for start, latency, status in zip(records.start, records.latency, records.status):
        end = start + latency
        if window_start <= end <= window_end:
            completed += 1
            completed_ok += status == 200
        if window_start <= start <= window_end:
            started += 1
            started_latency.append(latency)
            if status == 200:
                started_ok_latency.append(latency)
            else:
                name = status_name(status)
                errors[name] = errors.get(name, 0) + 1
    return {
        "window_s": round(window, 3),
        "throughput_rps": round(completed / window, 2),
        "ok_rps": round(completed_ok / window, 2),
        "completed": completed,
        "started": started,
        "errors": dict(sorted(errors.items())),
        "error_rate": round(sum(errors.values()) / started, 6) if started else None,
        "latency_ms": latency_summary(started_latency),
        "latency_ok_ms": latency_summary(started_ok_latency),
    }


# ---------------------------------------------------------------------------------------------- Prometheus


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse_prometheus(text: str) -> list[Sample]:
    """Samples of Prometheus text format 0.0.4 (comments skipped; label escapes undone; NaN/+Inf parsed).

    TorchServe writes labels with a trailing comma (``{ModelName="m",Level="Model",}``): accepted.
    """
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, label_text, value = match.groups()
        labels, pos = {}, 0
        label_text = (label_text or "").strip()
        while pos < len(label_text):
            found = _LABEL.match(label_text, pos)
            if not found:
                break
            raw = found.group(2)
            labels[found.group(1)] = re.sub(r'\\(.)', lambda m: "\n" if m.group(1) == "n" else m.group(1), raw)
            pos = found.end()
        try:
            samples.append(Sample(name, labels, float(value)))
        except ValueError:
            continue
    return samples


def metric_sum(samples: Iterable[Sample], name: str, **labels: str) -> float | None:
    """Sum of ``name`` (or ``name_total``, as some exporters name counters) over samples whose labels include
    ``labels``; None when no sample matches."""
    total, found = 0.0, False
    for sample in samples:
        if sample.name in (name, f"{name}_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
            total += sample.value
            found = True
    return total if found else None


def counter_deltas(before: list[Sample] | None, after: list[Sample] | None, model: str) -> dict[str, Any]:
    """What the server saw between two scrapes: mean handler batch size, requests, mean queue/inference ms."""
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


# ---------------------------------------------------------------------------------------------- GPU sampler


class GpuSampler(SmiStream):
    """``nvidia-smi --query-gpu=index,utilization.gpu,memory.used -lms N`` in the background; null without it."""

    def __init__(self, interval_ms: int = 200):
        # samples: (monotonic, gpu index, util %, memory MiB)
        super().__init__("index,utilization.gpu,memory.used", self._sample, interval_ms)

    @staticmethod
    def _sample(fields: list[str]) -> tuple[float, int, float, float]:
        return time.monotonic(), int(fields[0]), float(fields[1]), float(fields[2])

    def summary(self, start: float, end: float) -> dict[str, Any] | None:
        if not self.available:
            return None
        per_gpu: dict[int, list[tuple[float, float]]] = {}
        for t, gpu, util, mem in self.samples:
            if start <= t <= end:
                per_gpu.setdefault(gpu, []).append((util, mem))
        gpus = {str(g): {"util_mean": round(sum(u for u, _ in v) / len(v), 1),
                         "util_p50": percentile(sorted(u for u, _ in v), 50),
                         "memory_max_mib": max(m for _, m in v), "samples": len(v)} for g, v in sorted(per_gpu.items())}
        means = [g["util_mean"] for g in gpus.values()]
        return {"util_mean": round(sum(means) / len(means), 1) if means else None, "per_gpu": gpus,
                "interval_ms": self.interval_ms}


class HostCpu:
    """CPU time of the whole host and of TorchServe's processes (frontend JVM, Python workers) between two
    snapshots of /proc (Linux; null elsewhere). Says whether the host's cores, not the GPU, set the pace."""

    WORKER_MARK = "model_service_worker"
    FRONTEND_MARK = "org.pytorch.serve.ModelServer"

    def __init__(self):
        self.available = Path("/proc/stat").exists()
        self.tick = os.sysconf("SC_CLK_TCK") if self.available else 100

    def snapshot(self) -> dict[str, Any] | None:
        if not self.available:
            return None
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        procs: dict[str, tuple[str, float]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if self.WORKER_MARK in cmdline:
                    kind = "worker"
                elif self.FRONTEND_MARK in cmdline:
                    kind = "frontend"
                else:
                    continue
                stat = (entry / "stat").read_text()
                ticks = stat[stat.rindex(")") + 2:].split()
                procs[entry.name] = (kind, (int(ticks[11]) + int(ticks[12])) / self.tick)  # utime + stime
            except (OSError, ValueError, IndexError):
                continue
        return {"t": time.monotonic(), "total": sum(fields) / self.tick, "idle": idle / self.tick, "procs": procs}

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
    if shutil.which("nvidia-smi"):
        try:
            names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                   text=True, timeout=30).stdout.split("\n")
            names = [n.strip() for n in names if n.strip()]
            if names:
                return f"{len(names)}x {names[0]}" if len(set(names)) == 1 else ", ".join(names)
        except (OSError, subprocess.TimeoutExpired):
            pass
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
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        versions["repo_commit"] = (commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")) or None
    except (OSError, subprocess.TimeoutExpired):
        versions["repo_commit"] = None
    return versions


# ---------------------------------------------------------------------------------------------- driver


@dataclass
class LoadConfig:
    concurrency: int = 64  # closed loop: requests in flight in total (ignored when rate is set)
    rate: float | None = None  # open loop: arrivals/s in total
    processes: int = 4
    warmup_s: float = 5.0
    duration_s: float = 20.0
    timeout_s: float = 60.0
    max_requests: int = 0  # 0: bounded by time only
    max_connections: int = 0  # open loop, per process; 0: enough for 2 s of arrivals at the rate, >= 64
    seed: int = 0

    @property
    def mode(self) -> str:
        return "open" if self.rate else "closed"


def default_processes() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal non-negative integers (earlier parts get the remainder)."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def scrape(ts: TorchServe) -> list[Sample] | None:
    try:
        return parse_prometheus(ts.metrics())
    except (TorchServeError, OSError, ValueError):
        return None


def run_load(ts: TorchServe, model: str, payloads: Sequence[Payload], config: LoadConfig, log: Log = print,
             probe: bool = True) -> dict[str, Any]:
    """Drive ``model`` with ``payloads`` as ``config`` says; the figures as a dict (see the module doc)."""
    host, port = ts.info.host, ts.info.inference_port
    if host not in LOOPBACK:
        raise ValueError(f"loadgen only drives loopback servers, not {host}")
    if not payloads:
        raise ValueError("no payloads")
    processes = max(1, config.processes)
    if config.rate is not None and config.rate <= 0:
        raise ValueError(f"open-loop rate must be > 0, got {config.rate}")
    if config.mode == "closed" and config.concurrency < 1:
        raise ValueError(f"closed-loop concurrency must be >= 1, got {config.concurrency}")
    if config.mode == "closed":
        processes = min(processes, max(1, config.concurrency))
    result: dict[str, Any] = {"model": model, "mode": config.mode}
    if probe:  # checks model, payload and key (tsctl rotates a refused key) before any process starts
        answer = ts.predict(model, payloads[0].body, payloads[0].content_type, timeout=max(config.timeout_s, 60))
        result["probe"] = {"status": answer.status_code, "body": answer.text[:300]}
        if answer.status_code != 200:
            raise TorchServeError(f"probe request to {model} answered {answer.status_code}: {answer.text[:300]}",
                                  answer.status_code, answer.text)
    key = ts.keys().get("inference")
    path = f"/predictions/{model}"
    raws = [raw_request(host, port, path, key, p) for p in payloads]

    # fork: children share the payloads without pickling them. (spawn would pickle each process's copy into a
    # pipe that the parent itself keeps open, so a child dying at import would hang the parent.) No thread of
    # ours runs yet: the GPU sampler starts after the fork.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_value = ctx.Value("d", 0.0)
    concurrencies = split(config.concurrency, processes) if config.mode == "closed" else [0] * processes
    caps = split(config.max_requests, processes) if config.max_requests else [0] * processes
    per_rate = (config.rate or 0.0) / processes
    max_conns = config.max_connections or min(MAX_AUTO_CONNECTIONS, max(64, int(2 * per_rate)))
    specs = [ProcessSpec(i, host, port, raws, concurrencies[i], per_rate, max_conns, config.warmup_s,
                         config.duration_s, config.timeout_s, caps[i], config.seed) for i in range(processes)]
    workers = [ctx.Process(target=_process_main, args=(s, ready, go, start_value, results), daemon=True)
               for s in specs]
    load_desc = (f"{config.concurrency} in flight" if config.mode == "closed" else f"{config.rate:.0f} req/s Poisson")
    log(f"[loadgen] {model}: {config.mode} loop, {load_desc}, {processes} process(es), {len(payloads)} payloads "
        f"(mean {sum(len(p.body) for p in payloads) / len(payloads) / 1000:.1f} KB), warm-up {config.warmup_s:g} s, "
        f"measured {config.duration_s:g} s")
    outputs: dict[int, dict] = {}
    before = after = cpu_before = cpu_after = None
    host_cpu = HostCpu()
    for w in workers:
        w.start()
    with GpuSampler() as gpu:
        try:
            deadline = time.monotonic() + 120
            arrived = 0
            while arrived < processes:
                try:
                    ready.get(timeout=max(0.1, deadline - time.monotonic()))
                    arrived += 1
                except queue.Empty:
                    early = _drain(results, outputs)
                    if time.monotonic() > deadline or (early and all(not w.is_alive() for w in workers)):
                        raise TorchServeError(f"only {arrived}/{processes} load processes started: "
                                              f"{[o.get('error') for o in outputs.values()]}") from None
            start_at = time.monotonic() + 0.2
            start_value.value = start_at
            go.set()
            window_start = start_at + config.warmup_s
            window_end = window_start + config.duration_s
            _sleep_until(window_start)
            cpu_before = host_cpu.snapshot()
            before = scrape(ts)
            # Wait for the window to close (or every process to finish early through max_requests).
            while time.monotonic() < window_end and len(outputs) < processes:
                _drain(results, outputs, timeout=min(0.25, max(0.0, window_end - time.monotonic())))
            cpu_after = host_cpu.snapshot()
            after = scrape(ts)
            scraped_at = time.monotonic()
            hard_stop = window_end + config.timeout_s + 30
            while len(outputs) < processes and time.monotonic() < hard_stop:
                _drain(results, outputs, timeout=0.5)
                if len(outputs) < processes and not any(w.is_alive() for w in workers):
                    _drain(results, outputs, timeout=1.0)
                    break
        finally:
            go.set()
            for w in workers:
                w.join(timeout=5)
                if w.is_alive():
                    w.terminate()
                    w.join(timeout=5)
    records, lags, failures = Records(), [], []
    stopped_at = math.inf
    client = []
    for i in range(processes):
        out = outputs.get(i)
        if out is None or "error" in out:
            failures.append({"process": i, "error": (out or {}).get("error", "no result (killed or timed out)")})
            continue
        records.extend(out["records"])
        lags.extend(out["lags"])
        stopped_at = min(stopped_at, out["stopped_at"])
        client.append({"process": i, "sent": out["sent"], "connections": out["connections"],
                       "cpu_busy": round(out["cpu_s"] / max(out["wall_s"], 1e-9), 3)})
    if config.max_requests and stopped_at < window_end:
        window_end = max(window_start, stopped_at)  # a process ran out of its request share: the window ends there
    result.update(summarize(records, window_start, window_end))
    result["server"] = counter_deltas(before, after, model)
    result["gpu"] = gpu.summary(window_start, min(window_end, scraped_at))
    result["host_cpu"] = HostCpu.summary(cpu_before, cpu_after)
    busiest = max((c["cpu_busy"] for c in client), default=None)
    result["client"] = {
        "processes": processes, "busiest_process_cpu": busiest, "per_process": client, "failures": failures,
        "connect_failures": sum(o.get("connect_failures", 0) for o in outputs.values() if "error" not in o),
        "dispatch_lag_ms": latency_summary(lags) if config.mode == "open" else None,
        "note": ("a load process used > 85% of a core: the client may limit throughput; use more --processes"
                 if busiest is not None and busiest > 0.85 else None),
    }
    return result


def _sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


def _drain(results: Any, outputs: dict[int, dict], timeout: float = 0.0) -> bool:
    """Move every result waiting in ``results`` into ``outputs`` (blocking up to ``timeout`` for the first)."""
    got = False
    while True:
        try:
            out = results.get(timeout=timeout) if timeout > 0 and not got else results.get_nowait()
        except queue.Empty:
            return got
        outputs[out["index"]] = out
        got = True


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


def run_and_record(ts: TorchServe, model: str, payloads: Sequence[Payload], config: LoadConfig,
                   payload_desc: dict[str, Any], label: str | None = None, command: list[str] | None = None,
                   log: Log = print) -> dict[str, Any]:
    """``run_load`` plus what a result file needs to stand alone: card, versions, command, configuration."""
    document: dict[str, Any] = {
        "schema": SCHEMA, "label": label or f"{model}-{config.mode}",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "card": describe_card(), "versions": software_versions(),
        "command": command if command is not None else [sys.executable, *sys.argv],
        "config": {"model": model, "mode": config.mode, "load": asdict(config), "payload": payload_desc,
                   "server": describe_server(ts, model)},
    }
    try:
        document["results"] = run_load(ts, model, payloads, config, log=log)
    except (TorchServeError, OSError, ValueError) as exc:
        document["error"] = f"{type(exc).__name__}: {exc}"
        log(f"[loadgen] {model}: FAILED: {document['error']}")
    return document


def one_line(document: dict[str, Any]) -> str:
    """A short human summary of a result document."""
    r = document.get("results")
    if not r:
        return f"{document.get('label')}: error: {document.get('error')}"
    lat, srv, gpu = r["latency_ms"], r["server"], r.get("gpu")
    errors = ", ".join(f"{k}:{v}" for k, v in r["errors"].items()) or "none"
    return (f"{document.get('label')}: {r['ok_rps']:.0f} ok/s ({r['throughput_rps']:.0f} answers/s), "
            f"p50 {_fmt(lat['p50'])} p90 {_fmt(lat['p90'])} p99 {_fmt(lat['p99'])} ms, errors {errors}, "
            f"mean batch {_fmt(srv.get('mean_batch_size'))}, GPU busy "
            f"{_fmt(gpu.get('util_mean')) + '%' if gpu else 'n/a'}, client CPU max "
            f"{_fmt(r['client']['busiest_process_cpu'])}{_host_cpu_text(r.get('host_cpu'))}{_stages_text(srv)}")


def _host_cpu_text(host: dict[str, Any] | None) -> str:
    if not host:
        return ""
    workers = host["worker_cores"]
    return (f", host CPU {host['host_busy']:.0%} of {host['cores']} cores (frontend {host['frontend_cores']:.1f}, "
            f"workers {sum(workers):.1f}, busiest {max(workers, default=0):.2f})")


def _stages_text(server: dict[str, Any]) -> str:
    stages = server.get("handler_ms_per_batch")
    if not stages:
        return ""
    return ", handler ms/batch " + " ".join(f"{k} {v:.1f}" for k, v in stages.items())


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def build_payloads(model: str, args: argparse.Namespace) -> tuple[list[Payload], dict[str, Any]]:
    text = args.texts is not None or (args.image_dir is None and args.images is None and "bert" in model.lower())
    if text:
        count = args.texts or 256
        payloads = text_payloads(count, args.min_words, args.max_words, seed=args.seed)
        tokens = sorted(approx_tokens(json.loads(p.body)["text"]) for p in payloads)
        desc = {"kind": "text", "count": count, "words": [args.min_words, args.max_words],
                "approx_tokens": {"min": tokens[0], "p50": percentile(tokens, 50), "max": tokens[-1]}}
    elif args.image_dir is not None:
        payloads = folder_payloads(args.image_dir, args.images)
        desc = {"kind": "images", "source": str(args.image_dir), "count": len(payloads)}
    else:
        count = args.images or 64
        payloads = image_payloads(count, seed=args.seed)
        desc = {"kind": "images", "source": "synthetic 500x375 JPEG q90 with grain", "count": count}
    sizes = sorted(len(p.body) for p in payloads)
    desc["bytes"] = {"mean": round(sum(sizes) / len(sizes)), "min": sizes[0], "max": sizes[-1]}
    return payloads, desc


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def exit_on_sigterm() -> None:
    """SIGTERM (e.g. from `timeout`) ends the process like Ctrl-C would, so load processes are stopped too."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def add_payload_arguments(parser) -> None:
    """The payload options shared by loadgen and soak: images or texts, their source and sizes."""
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--images", type=int, default=None, help="synthetic JPEGs to cycle through (default 64)")
    what.add_argument("--texts", type=int, default=None, help="texts to cycle through (default for BERT: 256)")
    parser.add_argument("--image-dir", type=Path, default=None, help="send the images of this folder")
    parser.add_argument("--min-words", type=int, default=4)
    parser.add_argument("--max-words", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="registered model name")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="TorchServe instance (scripts/tsctl.py)")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, default=64, help="closed loop: requests in flight (default 64)")
    load.add_argument("--rate", type=_positive, default=None, help="open loop: Poisson arrivals per second in total")
    parser.add_argument("--processes", type=int, default=default_processes(),
                        help=f"load processes (default {default_processes()}: half the cores, at most 8)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the window (default 5)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds (default 20)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--max-requests", type=int, default=0, help="cap on requests sent in total (0: none)")
    parser.add_argument("--max-connections", type=int, default=0, help="open loop: connections per process")
    add_payload_arguments(parser)
    parser.add_argument("--label", default=None, help="name of this run in tables and plots")
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args(argv)
    if args.image_dir is not None and args.texts is not None:
        parser.error("--image-dir and --texts exclude each other")

    payloads, desc = build_payloads(args.model, args)
    config = LoadConfig(concurrency=args.concurrency, rate=args.rate, processes=args.processes, warmup_s=args.warmup,
                        duration_s=args.duration, timeout_s=args.timeout, max_requests=args.max_requests,
                        max_connections=args.max_connections, seed=args.seed)
    try:
        ts = TorchServe(args.run_dir)
        ts.info  # noqa: B018  (fails early without an instance)
    except TorchServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    command = ["python", "scripts/loadgen.py", *(sys.argv[1:] if argv is None else argv)]
    document = run_and_record(ts, args.model, payloads, config, desc, label=args.label, command=command,
                              log=lambda m: print(m, flush=True))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=1) + "\n")
        print(f"[loadgen] wrote {args.out}")
    print(one_line(document), flush=True)
    return 0 if "results" in document else 1


if __name__ == "__main__":
    sys.exit(main())
