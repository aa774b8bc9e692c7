"""One load run from the parent's side: check the target, probe it once, prebuild the requests (HTTP/1.1, or gRPC
``Predictions`` calls), start the load processes, measure the window (metrics, host CPU, GPUs), combine what the
processes recorded, and the result document around it."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal, Sequence, get_args
from urllib.parse import urlsplit

from torchserve_accel.tools import Log
from torchserve_accel.tools.endpoints import TorchServeAt, check_loopback
from torchserve_accel.tools.launch import TorchServeError
from torchserve_accel.tools.loadgen.http import raw_request
from torchserve_accel.tools.loadgen.loops import LoadProcesses, ProcessSpec
from torchserve_accel.tools.loadgen.payloads import Payload
from torchserve_accel.tools.loadgen.probes import (
    GpuUtilization, HostCpu, counter_deltas, describe_card, describe_server, scrape, software_versions,
)
from torchserve_accel.tools.loadgen.stats import Records, cell, latency_summary, split, summarize
from torchserve_accel.tools.torchserve import TorchServe

SCHEMA = "torchserve-accel/loadgen/1"
MAX_AUTO_CONNECTIONS = 512  # per open-loop process unless max_connections says otherwise
Transport = Literal["http", "grpc"]  # REST over HTTP/1.1 (http.py), or gRPC Predictions calls (grpc_client.py)
TRANSPORTS: tuple[str, ...] = get_args(Transport)


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
    transport: Transport = "http"

    @property
    def mode(self) -> str:
        return "open" if self.rate else "closed"


def default_processes() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def run_load(ts: TorchServe, model: str, payloads: Sequence[Payload], config: LoadConfig, log: Log = print,
             probe: bool = True, during: Callable[[float, float], Any] | None = None) -> dict[str, Any]:
    """Drive ``model`` with ``payloads`` as ``config`` says; the figures as a dict (see ``loadgen``'s doc).

    Payloads marked ``bad`` are counted apart (``stats.summarize``). ``during(window_start, window_end)``, when
    given, runs in this process once the window has opened, while the load processes keep sending (it may outlast
    the window); what it returns is the result's ``during``.
    """
    processes = _check(ts, payloads, config)
    result: dict[str, Any] = {"model": model, "mode": config.mode}
    if probe:  # checks model, payload and key (a refused key is rotated) before any process starts
        result["probe"] = probe_model(ts, model, next((p for p in payloads if not p.bad), payloads[0]),
                                      config.timeout_s)
    specs = _process_specs(ts, model, payloads, config, processes)
    log(f"[loadgen] {model}: {config.mode} loop{' over gRPC' if config.transport == 'grpc' else ''}, "
        + (f"{config.concurrency} in flight" if config.mode == "closed" else f"{config.rate:.0f} req/s Poisson")
        + f", {processes} process(es), {len(payloads)} payloads (mean "
        f"{sum(len(p.body) for p in payloads) / len(payloads) / 1000:.1f} KB), warm-up {config.warmup_s:g} s, "
        f"measured {config.duration_s:g} s")
    with LoadProcesses(specs) as load, GpuUtilization() as gpu:
        window_start = load.go() + config.warmup_s
        window_end = window_start + config.duration_s
        _sleep_until(window_start)
        cpu_before, before = HostCpu.snapshot(), scrape(ts)
        if during is not None:
            result["during"] = during(window_start, window_end)
        load.collect(until=window_end)  # the window closes (or every process ran out of max_requests)
        cpu_after, after = HostCpu.snapshot(), scrape(ts)
        scraped_at = time.monotonic()
        load.finish(hard_stop=max(window_end + config.timeout_s, scraped_at) + 30)
    records, stopped_at, client = _combine(load.outputs, processes, open_loop=config.mode == "open")
    if config.max_requests and stopped_at < window_end:
        window_end = max(window_start, stopped_at)  # a process ran out of its request share: the window ends there
    result.update(summarize(records, window_start, window_end, bad=[p.bad for p in payloads]))
    result["server"] = counter_deltas(before, after, model)
    result["gpu"] = gpu.summary(window_start, min(window_end, scraped_at))
    result["host_cpu"] = HostCpu.summary(cpu_before, cpu_after)
    result["client"] = client
    return result


def _check(ts: TorchServe, payloads: Sequence[Payload], config: LoadConfig) -> int:
    """Refuses what this load generator does not do; the number of load processes to run."""
    if config.transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {config.transport!r}")
    if config.transport == "grpc":
        grpc_address(ts)
    else:
        inference_address(ts)
    if not payloads:
        raise ValueError("no payloads")
    if config.rate is not None and config.rate <= 0:
        raise ValueError(f"open-loop rate must be > 0, got {config.rate}")
    if config.mode == "closed" and config.concurrency < 1:
        raise ValueError(f"closed-loop concurrency must be >= 1, got {config.concurrency}")
    processes = max(1, config.processes)
    return min(processes, config.concurrency) if config.mode == "closed" else processes


def probe_model(ts: TorchServe, model: str, payload: Payload, timeout_s: float) -> dict[str, Any]:
    """One request through the ordinary client; anything but 200 stops the run before it starts."""
    answer = ts.predict(model, payload.body, payload.content_type, timeout=max(timeout_s, 60))
    if answer.status_code != 200:
        raise TorchServeError(f"probe request to {model} answered {answer.status_code}: {answer.text[:300]}",
                              answer.status_code, answer.text)
    return {"status": answer.status_code, "body": answer.text[:300]}


def inference_address(ts: TorchServe) -> tuple[str, int, str]:
    """(host, port, path prefix) of the inference API: loopback unless the instance allows remote addresses; plain
    HTTP, which is all the load processes speak."""
    url = ts.url("inference")
    check_loopback(url, ts.remote_allowed)
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"the load generator speaks plain HTTP, not {parts.scheme} ({url})")
    return parts.hostname or "127.0.0.1", parts.port or 80, parts.path.rstrip("/")


def grpc_address(ts: TorchServe) -> tuple[str, int]:
    """(host, port) of the gRPC inference API: the instance's inference host (the same loopback check) and its
    gRPC port, which only an instance of a run directory knows."""
    if isinstance(ts, TorchServeAt):
        raise TorchServeError("--transport grpc needs the instance of a run directory (--run-dir): the gRPC port of "
                              "a TorchServe given by URL is not known")
    host, _, _ = inference_address(ts)
    return host, int(ts.info.grpc_ports[0])


def _process_specs(ts: TorchServe, model: str, payloads: Sequence[Payload], config: LoadConfig,
                   processes: int) -> list[ProcessSpec]:
    key = ts.keys().get("inference")
    grpc = None
    if config.transport == "grpc":
        from torchserve_accel.tools.grpc_stubs import bearer, compile_stubs
        from torchserve_accel.tools.loadgen.grpc_client import GrpcTarget, prebuilt_requests

        host, port = grpc_address(ts)
        stubs_dir = ts.run_dir / "grpc_stubs"  # from the installed TorchServe's jar, so they match its protos
        raws = prebuilt_requests(compile_stubs(stubs_dir), model, payloads)
        grpc = GrpcTarget(str(stubs_dir), bearer(key) if key else ())
    else:
        host, port, prefix = inference_address(ts)
        raws = [raw_request(host, port, f"{prefix}/predictions/{model}", key, p) for p in payloads]
    concurrencies = split(config.concurrency, processes) if config.mode == "closed" else [0] * processes
    caps = split(config.max_requests, processes) if config.max_requests else [0] * processes
    per_rate = (config.rate or 0.0) / processes
    max_conns = config.max_connections or min(MAX_AUTO_CONNECTIONS, max(64, int(2 * per_rate)))
    return [ProcessSpec(i, host, port, raws, concurrencies[i], per_rate, max_conns, config.warmup_s,
                        config.duration_s, config.timeout_s, caps[i], config.seed, grpc) for i in range(processes)]


def _sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


def _combine(outputs: dict[int, dict], processes: int, open_loop: bool) -> tuple[Records, float, dict[str, Any]]:
    """Every process's records together, the moment the first one stopped early, and the client's own figures
    (per-process CPU, failures, how late open-loop arrivals left)."""
    records, lags, failures, per_process = Records(), [], [], []
    stopped_at = math.inf
    for i in range(processes):
        out = outputs.get(i)
        if out is None or "error" in out:
            failures.append({"process": i, "error": (out or {}).get("error", "no result (killed or timed out)")})
            continue
        records.extend(out["records"])
        lags.extend(out["lags"])
        stopped_at = min(stopped_at, out["stopped_at"])
        per_process.append({"process": i, "sent": out["sent"], "connections": out["connections"],
                            "cpu_busy": round(out["cpu_s"] / max(out["wall_s"], 1e-9), 3)})
    busiest = max((c["cpu_busy"] for c in per_process), default=None)
    client = {
        "processes": processes, "busiest_process_cpu": busiest, "per_process": per_process, "failures": failures,
        "connect_failures": sum(o.get("connect_failures", 0) for o in outputs.values() if "error" not in o),
        "dispatch_lag_ms": latency_summary(lags) if open_loop else None,
        "note": ("a load process used > 85% of a core: the client may limit throughput; use more --processes"
                 if busiest is not None and busiest > 0.85 else None),
    }
    return records, stopped_at, client


# ---------------------------------------------------------------------------------------------- result documents


def run_and_record(ts: TorchServe, model: str, payloads: Sequence[Payload], config: LoadConfig,
                   payload_desc: dict[str, Any], label: str | None = None, command: list[str] | None = None,
                   log: Log = print) -> dict[str, Any]:
    """``run_load`` plus what a result file needs to stand alone: card, versions, command, configuration."""
    document: dict[str, Any] = {
        "schema": SCHEMA, "label": label or f"{model}-{config.mode}" + ("-grpc" if config.transport == "grpc" else ""),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "card": describe_card(), "versions": software_versions(),
        "command": command if command is not None else [sys.executable, *sys.argv],
        "config": {"model": model, "mode": config.mode, "load": asdict(config),
                   "payload": sent_as(payload_desc, config.transport), "server": describe_server(ts, model)},
    }
    try:
        document["results"] = results = run_load(ts, model, payloads, config, log=log)
        # images or texts answered per second (several per request with --per-request)
        results["ok_items_per_s"] = round(results["ok_rps"] * payload_desc.get("items_per_request", 1), 2)
    except (TorchServeError, OSError, ValueError) as exc:
        document["error"] = f"{type(exc).__name__}: {exc}"
        log(f"[loadgen] {model}: FAILED: {document['error']}")
    return document


def sent_as(payload_desc: dict[str, Any], transport: str) -> dict[str, Any]:
    """The payload description with the transport; over gRPC several images travel as entries of the input map,
    whatever format their REST body had."""
    desc = {**payload_desc, "transport": transport}
    if transport == "grpc" and "image_format" in desc:
        desc["image_format"] = "grpc input entries"
    return desc


def one_line(document: dict[str, Any]) -> str:
    """A short human summary of a result document."""
    r = document.get("results")
    if not r:
        return f"{document.get('label')}: error: {document.get('error')}"
    lat, srv, gpu = r["latency_ms"], r["server"], r.get("gpu")
    errors = ", ".join(f"{k}:{v}" for k, v in r["errors"].items()) or "none"
    per_request = document["config"]["payload"].get("items_per_request", 1)
    items = f" = {r['ok_items_per_s']:.0f} items/s ({per_request} per request)" if per_request > 1 else ""
    grpc = " over gRPC" if document["config"]["payload"].get("transport") == "grpc" else ""
    return (f"{document.get('label')}: {r['ok_rps']:.0f} ok/s{items}{grpc} ({r['throughput_rps']:.0f} answers/s), "
            f"p50 {cell(lat['p50'])} p90 {cell(lat['p90'])} p99 {cell(lat['p99'])} ms, errors {errors}, "
            f"mean batch {cell(srv.get('mean_batch_size'))}, GPU busy "
            f"{cell(gpu.get('util_mean')) + '%' if gpu else 'n/a'}, client CPU max "
            f"{cell(r['client']['busiest_process_cpu'])}{host_cpu_text(r.get('host_cpu'))}{stages_text(srv)}")


def host_cpu_text(host: dict[str, Any] | None) -> str:
    if not host:
        return ""
    workers = host["worker_cores"]
    return (f", host CPU {host['host_busy']:.0%} of {host['cores']} cores (frontend {host['frontend_cores']:.1f}, "
            f"workers {sum(workers):.1f}, busiest {max(workers, default=0):.2f})")


def stages_text(server: dict[str, Any]) -> str:
    stages = server.get("handler_ms_per_batch")
    if not stages:
        return ""
    return ", handler ms/batch " + " ".join(f"{k} {v:.1f}" for k, v in stages.items())
