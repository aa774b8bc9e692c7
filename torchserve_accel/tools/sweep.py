"""Served-performance tooling around the load generator: benchmark archives, worker waits, sweeps, reports.

    torchserve-accel sweep archives STORE resnet101 resnet101_baseline bert_large
    torchserve-accel sweep wait resnet101 --workers 1 --timeout 300          # until N workers are READY
    torchserve-accel sweep scale resnet101 4 --timeout 300                   # scale, then wait
    torchserve-accel sweep up resnet101 6 --batch-size 64 --max-batch-delay 20   # register, first worker, scale
    torchserve-accel sweep run resnet101 --archive resnet101.mar --workers 1,2,4,8 --batch-sizes 32,64 \\
        --delays 5,20 --p99-bound-ms 100 --out-dir benchmarks/results/sweep [--budget-s 300]
    torchserve-accel sweep combine OUT.json DIR_OR_FILES... [--steps steps.tsv] [--ratio NAME=A/B]
    torchserve-accel sweep table OUT.json                                    # markdown table
(``python scripts/sweep.py ...`` runs the same)

``archives`` builds, into STORE: ``resnet101`` (our archive, its model-config set to start one worker, so a
cold engine cache is filled by one worker before scaling up), ``resnet101_baseline`` (the stock-style handler
of benchmarks/baseline_handler/ with the same ``resnet101.safetensors``, taken from STORE/resnet101.mar when
it exists) and ``bert_large``.

``run`` sweeps one model: for each (batchSize, maxBatchDelay) it registers the archive, then for each worker
count (ascending) scales, drives closed-loop load and writes one JSON per point; last it writes
``<model>-sweep.json`` with every point and the best one: the most 200s/s with p99 <= the bound and
< 0.1% errors. Instance: ``--run-dir``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

from torchserve_accel.tools import Log
from torchserve_accel.tools.build import ArchiveError, build_archive, parse_overrides
from torchserve_accel.tools.commands import Commands
from torchserve_accel.tools.launch import TorchServeError
from torchserve_accel.tools.loadgen import SCHEMA as LOADGEN_SCHEMA
from torchserve_accel.tools.loadgen import LoadConfig, Payload, build_payloads, one_line, run_and_record
from torchserve_accel.tools.loadgen.driver import TRANSPORTS, default_processes
from torchserve_accel.tools.loadgen.probes import describe_card
from torchserve_accel.tools.loadgen.stats import cell
from torchserve_accel.tools.paths import WORKDIR, data_file
from torchserve_accel.tools.polling import wait_until
from torchserve_accel.tools.torchserve import TorchServe

BASELINE_HANDLER = "benchmarks/baseline_handler/baseline_handler.py"
BASELINE_CONFIG = "benchmarks/baseline_handler/model-config.yaml"
BENCH_ARCHIVES = ("resnet101", "resnet101_baseline", "resnet101_baseline_tuned", "bert_large", "bert_large_fp8")
# Variants of our archives: (model, model-config changes).
VARIANTS = {"bert_large_fp8": ("bert_large", {"handler.precision": "fp8"})}
MAX_ERROR_RATE = 0.001
# A benchmark run (not a sweep point) that answers nothing, or errs on more than this share of its requests, failed:
# the check says so in its table and exits non-zero instead of printing "n/a".
FAILED_ERROR_RATE = 0.01
SWEEP_SCHEMA = "torchserve-accel/sweep/1"
COMBINED_SCHEMA = "torchserve-accel/serve-check/1"


# ---------------------------------------------------------------------------------------------- archives


def build_bench_archive(name: str, store: Path, weights: Path | None = None, workers: int | None = None,
                        log: Log = print, overrides: dict[str, Any] | None = None,
                        baseline_workers: int = 10) -> Path:
    """Build ``store/<name>.mar`` for a benchmark (overwriting it); ``name`` is one of BENCH_ARCHIVES.

    ``workers``: our archives' minWorkers/maxWorkers in model-config (None keeps the repository's values).
    ``overrides``: more model-config changes for our archives (``build.parse_overrides``). Our archives carry the
    library, as ``torchserve-accel build`` makes them; the stock-style baseline does not import it, and its tuned
    variant caps each worker's CPU threads at this host's cores over ``baseline_workers``.
    """
    if name.startswith("resnet101_baseline"):
        from importlib import resources

        labels = Path(str(resources.files("torchserve_accel.resnet") / "imagenet_classes.json"))
        threads = max(1, (os.cpu_count() or 1) // max(1, baseline_workers))
        tuned = {"handler.torch_threads": threads} if name.endswith("_tuned") else None
        return build_archive("resnet101", weights, store, force=True, log=log, name=name,
                             handler=data_file(BASELINE_HANDLER), config=data_file(BASELINE_CONFIG),
                             weights_from=Path(store) / "resnet101.mar", extra_files=[labels],
                             config_overrides=tuned)
    model, changes = VARIANTS.get(name, (name, {}))
    changes = {**changes, **(overrides or {})}
    if workers is not None:
        changes.update(minWorkers=workers, maxWorkers=workers)
    return build_archive(model, weights, store, force=True, log=log, config_overrides=changes or None, bundle=True,
                         name=name)


# ---------------------------------------------------------------------------------------------- workers


def worker_states(statuses: list[str | None]) -> str:
    """``["READY", "UNLOADING", ...]`` -> "1 READY, 1 not ready": TorchServe's describe says UNLOADING for every worker
    that is not running, those still loading their model included, so the word would mislead while a model starts."""
    ready = sum(s == "READY" for s in statuses)
    return f"{ready} READY, {len(statuses) - ready} not ready" if statuses else "none"


def wait_workers(ts: TorchServe, model: str, workers: int | None, timeout: float, log: Log = print) -> dict:
    """Poll describe until ``model`` has exactly ``workers`` workers (None: its minWorkers, as its archive or the last
    scale set them), all READY; the description, or raise."""
    state = "not described yet"

    def ready() -> dict | None:
        nonlocal state
        try:
            description = ts.describe(model)
        except (TorchServeError, OSError) as exc:
            state = str(exc).splitlines()[0]
            return None
        statuses = [w.get("status") for w in description.get("workers", [])]
        wanted = workers if workers is not None else description.get("minWorkers")
        state = f"{len(statuses)} of {wanted} worker(s), {worker_states(statuses)}"
        return description if len(statuses) == wanted and all(s == "READY" for s in statuses) else None

    started = time.monotonic()
    description = wait_until(ready, timeout, interval=0.5, every=15,
                             on_wait=lambda s: log(f"[wait] {model}: {state} ({s:.0f} s)"))
    if description is None:
        raise TorchServeError(f"{model}: not all workers READY within {timeout:.0f} s ({state})")
    log(f"[wait] {model}: {len(description['workers'])} worker(s) READY after {time.monotonic() - started:.0f} s "
        f"(batchSize {description.get('batchSize')}, maxBatchDelay {description.get('maxBatchDelay')} ms)")
    return description


def scale_and_wait(ts: TorchServe, model: str, workers: int, timeout: float, log: Log = print) -> dict:
    ts.scale(model, workers, workers, synchronous=False)
    return wait_workers(ts, model, workers, timeout, log)


def registered(ts: TorchServe) -> set[str]:
    return {m.get("modelName") for m in ts.list_models()}


def unregister_and_wait(ts: TorchServe, model: str, timeout: float = 120, log: Log = print) -> None:
    """Unregister ``model`` if registered and wait until it is gone from the model list."""
    if model not in registered(ts):
        return
    ts.unregister(model, log)
    if not wait_until(lambda: model not in registered(ts), timeout, interval=0.5):
        raise TorchServeError(f"{model} still registered {timeout:.0f} s after unregister")
    log(f"[sweep] unregistered {model}")


def register_and_wait(ts: TorchServe, archive: str, model: str, batch_size: int, max_batch_delay: int,
                      timeout: float, log: Log = print) -> dict:
    """(Re)register ``archive`` as ``model`` with this batching; waits for its first READY worker.

    The archive's model-config minWorkers/maxWorkers win over initial_workers (TorchServe); the workers it
    starts are awaited, whatever their count.
    """
    unregister_and_wait(ts, model, log=log)
    log(f"[sweep] registering {archive} as {model}: batchSize {batch_size}, maxBatchDelay {max_batch_delay} ms")
    ts.register(archive, model, batch_size=batch_size, max_batch_delay=max_batch_delay, initial_workers=1,
                synchronous=False)
    deadline = time.monotonic() + timeout
    last_error: TorchServeError | None = None

    def described() -> dict | None:
        nonlocal last_error
        try:
            return ts.describe(model)
        except TorchServeError as exc:
            last_error = exc
            return None

    description = wait_until(described, timeout, interval=0.5)
    if description is None:
        raise last_error or TorchServeError(f"{model} not described within {timeout:.0f} s")
    started = description.get("minWorkers") or 1
    return wait_workers(ts, model, started, max(1.0, deadline - time.monotonic()), log)


# ---------------------------------------------------------------------------------------------- sweep


def sweep_label(model: str, workers: int, batch_size: int, delay: int) -> str:
    return f"{model}-w{workers}-bs{batch_size}-d{delay}"


def auto_concurrency(workers: int, batch_size: int, per_slot: float) -> int:
    """Requests in flight for a point: ``per_slot`` x workers x batchSize (enough to fill every batch), >= 8."""
    return max(8, math.ceil(per_slot * workers * batch_size))


def point_summary(document: dict) -> dict:
    """The figures of one result document that tables, plots and the best-point choice use."""
    r = document.get("results") or {}
    server = (document.get("config") or {}).get("server") or {}
    point = document.get("sweep_point") or {}
    load = (document.get("config") or {}).get("load") or {}
    return {
        "label": document.get("label"),
        "model": (document.get("config") or {}).get("model"),
        "mode": (document.get("config") or {}).get("mode"),
        "workers": point.get("workers", server.get("workers")),
        "batch_size": point.get("batch_size", server.get("batchSize")),
        "max_batch_delay": point.get("max_batch_delay", server.get("maxBatchDelay")),
        "concurrency": load.get("concurrency") if not load.get("rate") else None,
        "rate": load.get("rate") or None,
        "transport": load.get("transport", "http"),
        "ok_rps": r.get("ok_rps"),
        "items_per_request": ((document.get("config") or {}).get("payload") or {}).get("items_per_request", 1),
        "ok_items_per_s": r.get("ok_items_per_s", r.get("ok_rps")),
        "throughput_rps": r.get("throughput_rps"),
        "p50_ms": (r.get("latency_ms") or {}).get("p50"),
        "p90_ms": (r.get("latency_ms") or {}).get("p90"),
        "p99_ms": (r.get("latency_ms") or {}).get("p99"),
        "error_rate": r.get("error_rate"),
        "errors": r.get("errors"),
        "mean_batch_size": (r.get("server") or {}).get("mean_batch_size"),
        "gpu_util": (r.get("gpu") or {}).get("util_mean"),
        "gpu_series": next(iter(((r.get("gpu") or {}).get("per_gpu") or {}).values()), {}).get("series"),
        "client_cpu_max": (r.get("client") or {}).get("busiest_process_cpu"),
        "error": document.get("error"),
    }


def pick_best(points: Iterable[dict], p99_bound_ms: float, max_error_rate: float = MAX_ERROR_RATE) -> dict | None:
    """The point (a ``point_summary``) with the most 200s/s among those with p99 <= bound and few errors."""
    feasible = [p for p in points if p.get("ok_rps") is not None and p.get("p99_ms") is not None
                and p["p99_ms"] <= p99_bound_ms and (p.get("error_rate") or 0.0) <= max_error_rate]
    return max(feasible, key=lambda p: p["ok_rps"], default=None)


def run_sweep(ts: TorchServe, model: str, archive: str, workers_list: list[int], batch_sizes: list[int],
              delays: list[int], payloads: list[Payload], payload_desc: dict, base: LoadConfig,
              concurrency: int | None, per_slot: float, p99_bound_ms: float, out_dir: Path,
              budget_s: float | None = None, start_timeout: float = 600, log: Log = print) -> dict:
    """Every (batchSize, maxBatchDelay, workers) point that fits the budget; one JSON each, plus the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    point_cost = base.warmup_s + base.duration_s + 15  # load plus scaling with a warm engine cache (estimate)
    points, skipped = [], []
    for batch_size in batch_sizes:
        for delay in delays:
            combos = [(w, batch_size, delay) for w in sorted(workers_list)]
            if budget_s is not None and time.monotonic() - started + point_cost + 20 > budget_s:
                skipped += combos
                continue
            try:
                register_and_wait(ts, archive, model, batch_size, delay, start_timeout, log)
            except (TorchServeError, OSError) as exc:
                log(f"[sweep] {model} bs{batch_size} d{delay}: registration failed: {exc}")
                points += [{"label": sweep_label(model, *c), "workers": c[0], "batch_size": c[1],
                            "max_batch_delay": c[2], "error": f"registration failed: {exc}"} for c in combos]
                continue
            for workers, _, _ in combos:
                label = sweep_label(model, workers, batch_size, delay)
                if budget_s is not None and time.monotonic() - started + point_cost > budget_s:
                    skipped.append((workers, batch_size, delay))
                    continue
                try:
                    scale_and_wait(ts, model, workers, start_timeout, log)
                except (TorchServeError, OSError) as exc:
                    log(f"[sweep] {label}: scaling failed: {exc}")
                    points.append({"label": label, "workers": workers, "batch_size": batch_size,
                                   "max_batch_delay": delay, "error": f"scaling failed: {exc}"})
                    continue
                in_flight = concurrency or auto_concurrency(workers, batch_size, per_slot)
                config = LoadConfig(**{**base.__dict__, "concurrency": in_flight, "rate": None})
                document = run_and_record(ts, model, payloads, config, payload_desc, label=label, log=log)
                document["sweep_point"] = {"workers": workers, "batch_size": batch_size, "max_batch_delay": delay,
                                           "concurrency": in_flight}
                (out_dir / f"{label}.json").write_text(json.dumps(document, indent=1) + "\n")
                points.append(point_summary(document))
                log(f"[sweep] {one_line(document)}")
    best = pick_best(points, p99_bound_ms)
    summary = {
        "schema": SWEEP_SCHEMA, "model": model, "archive": archive, "card": describe_card(),
        "p99_bound_ms": p99_bound_ms, "max_error_rate": MAX_ERROR_RATE, "points": points,
        "skipped": [{"workers": w, "batch_size": b, "max_batch_delay": d} for w, b, d in skipped],
        "best": best, "seconds": round(time.monotonic() - started, 1),
        "note": None if best else f"no point met p99 <= {p99_bound_ms} ms with < {MAX_ERROR_RATE:.1%} errors",
    }
    (out_dir / f"{model}-sweep.json").write_text(json.dumps(summary, indent=1) + "\n")
    if skipped:
        log(f"[sweep] {len(skipped)} point(s) skipped: out of the {budget_s:.0f} s budget")
    log(f"[sweep] best under p99 <= {p99_bound_ms:g} ms: "
        + (f"{best['label']} {best['ok_rps']:.0f}/s p99 {best['p99_ms']:.1f} ms" if best else "none"))
    return summary


# ---------------------------------------------------------------------------------------------- reports


def load_documents(paths: Iterable[Path]) -> tuple[list[dict], list[dict]]:
    """(loadgen result documents, sweep summaries) from files and folders of JSON (folders: *.json inside)."""
    runs, sweeps = [], []
    for path in paths:
        path = Path(path)
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            try:
                data = json.loads(file.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if data.get("schema") == COMBINED_SCHEMA:
                runs += data.get("runs", [])
                sweeps += data.get("sweeps", [])
            elif data.get("schema") == SWEEP_SCHEMA:
                sweeps.append(data)
            elif data.get("schema") == LOADGEN_SCHEMA:
                runs.append(data)
    return runs, sweeps


def read_steps(path: Path | None) -> list[dict]:
    """Lines "name<TAB>exit status<TAB>seconds" (written by scripts/gpu_serve_check.sh)."""
    if path is None or not Path(path).exists():
        return []
    steps = []
    for line in Path(path).read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            steps.append({"step": parts[0], "rc": int(parts[1]) if parts[1].lstrip("-").isdigit() else parts[1],
                          "seconds": float(parts[2]) if parts[2].replace(".", "", 1).isdigit() else parts[2]})
    return steps


def ratios(runs: list[dict], specs: list[str]) -> dict[str, float | None]:
    """``NAME=LABEL_A/LABEL_B`` -> NAME: ok_rps of run A over run B (None when either is missing)."""
    by_label = {r.get("label"): (r.get("results") or {}).get("ok_rps") for r in runs}
    out = {}
    for spec in specs:
        name, _, pair = spec.partition("=")
        a, _, b = pair.partition("/")
        num, den = by_label.get(a), by_label.get(b)
        out[name] = round(num / den, 2) if num and den else None
    return out


def combine(out: Path, inputs: list[Path], steps: Path | None = None, ratio_specs: list[str] | None = None,
            extra: dict | None = None) -> dict:
    runs, sweeps = load_documents(inputs)
    sweep_labels = {p.get("label") for s in sweeps for p in s.get("points", [])}
    first = runs[0] if runs else {}
    document = {
        "schema": COMBINED_SCHEMA, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "card": first.get("card") or describe_card(), "versions": first.get("versions"),
        "steps": read_steps(steps), "ratios": ratios(runs, ratio_specs or []),
        # in the order they ran (time has whole seconds; the label breaks ties), sweep points last
        "runs": sorted(runs, key=lambda r: (r.get("label") in sweep_labels or "sweep_point" in r, r.get("time") or "",
                                            r.get("label") or "")),
        "sweeps": sweeps, **(extra or {}),
    }
    document["failed_runs"] = failed_runs([r for r in document["runs"] if r.get("label") not in sweep_labels
                                           and "sweep_point" not in r])
    Path(out).write_text(json.dumps(document, indent=1) + "\n")
    return document


def failed_runs(runs: list[dict]) -> list[str]:
    """"label: why" for each run that served nothing or erred on more than FAILED_ERROR_RATE of its requests."""
    failed = []
    for run in runs:
        results = run.get("results") or {}
        ok, error_rate = results.get("ok_rps"), results.get("error_rate")
        if not ok:
            failed.append(f"{run.get('label')}: served nothing in its {results.get('window_s', '?')} s window")
        elif error_rate is not None and error_rate > FAILED_ERROR_RATE:
            failed.append(f"{run.get('label')}: {error_rate:.1%} of requests failed")
    return failed


def markdown_table(points: list[dict]) -> str:
    header = ("| run | workers | batch | delay ms | load | 200s/s | items/s | p50 ms | p90 ms | p99 ms | errors | mean batch "
              "| GPU busy % | client CPU max |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for p in points:
        if p.get("ok_rps") is None:
            lines.append(f"| {p.get('label')} | {cell(p.get('workers'))} | {cell(p.get('batch_size'))} | "
                         f"{cell(p.get('max_batch_delay'))} | | error: {str(p.get('error'))[:80]} ||||||||")
            continue
        load = f"{p['rate']:.0f}/s open" if p.get("rate") else f"{p.get('concurrency')} in flight"
        load += " gRPC" if p.get("transport") == "grpc" else ""
        errors = ", ".join(f"{k}:{v}" for k, v in (p.get("errors") or {}).items()) or "0"
        per = p.get("items_per_request") or 1
        items = f"{p['ok_items_per_s']:.0f}" + (f" ({per}/req)" if per > 1 else "")
        lines.append(f"| {p['label']} | {cell(p.get('workers'))} | {cell(p.get('batch_size'))} | "
                     f"{cell(p.get('max_batch_delay'))} | {load} | {p['ok_rps']:.0f} | {items} | {cell(p.get('p50_ms'))} | "
                     f"{cell(p.get('p90_ms'))} | {cell(p.get('p99_ms'))} | {errors} | "
                     f"{cell(p.get('mean_batch_size'))} | {cell(p.get('gpu_util'))} | "
                     f"{cell(p.get('client_cpu_max'))} |")
    return "\n".join(lines)


def report(document: dict) -> str:
    """The short text printed last on a GPU run: card, table of every run, ratios, best sweep points."""
    lines = [f"card: {document.get('card')}"]
    lines.append(markdown_table([point_summary(r) for r in document.get("runs", [])]))
    for name, value in (document.get("ratios") or {}).items():
        lines.append(f"{name}: {value if value is not None else 'n/a'}x")
    for sweep in document.get("sweeps", []):
        best = sweep.get("best")
        lines.append(f"sweep {sweep.get('model')}: best under p99 <= {sweep.get('p99_bound_ms')} ms: "
                     + (f"{best['label']} {best['ok_rps']:.0f}/s p99 {best['p99_ms']:.1f} ms" if best else "none")
                     + (f" ({len(sweep['skipped'])} point(s) skipped for time)" if sweep.get("skipped") else ""))
    steps = document.get("steps", [])
    failed = [s for s in steps if s.get("rc") not in (0, "0", "skipped")]
    if failed:
        lines.append("failed steps: " + ", ".join(f"{s['step']} (rc {s['rc']})" for s in failed))
    skipped = [s["step"] for s in steps if s.get("rc") == "skipped"]
    if skipped:
        lines.append("skipped steps: " + ", ".join(skipped))
    for why in document.get("failed_runs") or []:
        lines.append(f"FAILED run {why}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- command line


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def add_commands(commands: Commands) -> None:
    sweep = commands.group("sweep", "benchmark archives, worker waits, sweeps and reports", instance=True,
                           details=__doc__)

    p = sweep.add("archives", _archives, "build benchmark archives into a model store")
    p.add_argument("store", type=Path)
    p.add_argument("names", nargs="+", choices=BENCH_ARCHIVES)
    p.add_argument("--weights", type=Path, default=None, help="trained weights (see torchserve-accel build)")
    p.add_argument("--workers", type=int, default=None,
                   help="minWorkers/maxWorkers in our archives' model-config (default: archiver_configs/*.yaml's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another model-config change for our archives, e.g. handler.blocking_sync=true")
    p.add_argument("--baseline-workers", type=int, default=10,
                   help="the tuned baseline's worker count: each worker gets the host's cores / N CPU threads")

    p = sweep.add("wait", _wait, "wait until a model has N READY workers", instance=True)
    p.add_argument("model")
    p.add_argument("--workers", type=int, default=None, help="default: the model's minWorkers")
    p.add_argument("--timeout", type=float, default=300)

    p = sweep.add("scale", _scale, "scale a model and wait for its workers", instance=True)
    p.add_argument("model")
    p.add_argument("workers", type=int)
    p.add_argument("--timeout", type=float, default=300)

    p = sweep.add("up", _up, "register an archive with batching, wait for its first worker, scale to N", instance=True)
    p.add_argument("model")
    p.add_argument("workers", type=int)
    p.add_argument("--archive", default=None, help="archive in the model store (default MODEL.mar)")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--max-batch-delay", type=int, required=True, help="ms")
    p.add_argument("--timeout", type=float, default=300, help="seconds for each wait")

    p = sweep.add("unregister", lambda ts, a: unregister_and_wait(ts, a.model, log=_log),
                  "unregister a model (if registered) and wait until it is gone", instance=True)
    p.add_argument("model")

    p = sweep.add("run", _run, "sweep workers x batchSize x maxBatchDelay for one model", instance=True)
    p.add_argument("model")
    p.add_argument("--archive", default=None, help="archive in the model store (default MODEL.mar)")
    p.add_argument("--workers", type=_ints, default=[1, 2, 4, 8])
    p.add_argument("--batch-sizes", type=_ints, default=[64])
    p.add_argument("--delays", type=_ints, default=[5, 20], help="maxBatchDelay values, ms")
    p.add_argument("--concurrency", type=int, default=None,
                   help="requests in flight at every point (default: --per-slot x workers x batchSize)")
    p.add_argument("--per-slot", type=float, default=1.5)
    p.add_argument("--p99-bound-ms", type=float, default=100.0)
    p.add_argument("--processes", type=int, default=default_processes())
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--texts", type=int, default=None, help="send texts (BERT) instead of images")
    p.add_argument("--per-request", type=int, default=1, metavar="N", help="images or texts per request")
    p.add_argument("--per-request-format", choices=("multipart", "json"), default="multipart",
                   help="several images as multipart parts or a JSON list of base64 strings")
    p.add_argument("--transport", choices=TRANSPORTS, default="http",
                   help="REST over HTTP/1.1, or gRPC Predictions calls (each image an entry of the input map)")
    p.add_argument("--budget-s", type=float, default=None, help="skip points that would end after this")
    p.add_argument("--start-timeout", type=float, default=600, help="seconds for workers to become READY")
    p.add_argument("--out-dir", type=Path, default=WORKDIR / "benchmarks" / "results" / "sweep")

    p = sweep.add("combine", _combine, "merge result JSON files (and folders of them) into one")
    p.add_argument("out", type=Path)
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--steps", type=Path, default=None)
    p.add_argument("--ratio", action="append", default=[], help="NAME=LABEL_A/LABEL_B (200s/s of A over B)")

    p = sweep.add("table", _table, "print the report of result files")
    p.add_argument("inputs", nargs="+", type=Path)


def _log(message: str) -> None:
    print(message, flush=True)


def _archives(args: Any) -> int:
    failed = 0
    for name in args.names:
        try:
            build_bench_archive(name, args.store, args.weights, args.workers, _log, parse_overrides(args.set),
                                args.baseline_workers)
        except (ArchiveError, OSError, ImportError, ValueError) as exc:
            _log(f"[{name}] archive FAILED: {exc}")
            failed += 1
    return 1 if failed else 0


def _wait(ts: TorchServe, args: Any) -> None:
    wait_workers(ts, args.model, args.workers, args.timeout, _log)


def _scale(ts: TorchServe, args: Any) -> None:
    scale_and_wait(ts, args.model, args.workers, args.timeout, _log)


def _up(ts: TorchServe, args: Any) -> None:
    register_and_wait(ts, args.archive or f"{args.model}.mar", args.model, args.batch_size, args.max_batch_delay,
                      args.timeout, _log)
    scale_and_wait(ts, args.model, args.workers, args.timeout, _log)


def _run(ts: TorchServe, args: Any) -> int:
    payloads, desc = build_payloads(args.model, texts=args.texts, images=None if args.texts else args.images,
                                    items_per_request=args.per_request, image_format=args.per_request_format)
    base = LoadConfig(processes=args.processes, warmup_s=args.warmup, duration_s=args.duration, timeout_s=args.timeout,
                      transport=args.transport)
    summary = run_sweep(ts, args.model, args.archive or f"{args.model}.mar", args.workers, args.batch_sizes,
                        args.delays, payloads, desc, base, args.concurrency, args.per_slot, args.p99_bound_ms,
                        args.out_dir, args.budget_s, args.start_timeout, _log)
    return 0 if summary["points"] else 1


def _combine(args: Any) -> int:
    document = combine(args.out, args.inputs, args.steps, args.ratio)
    _log(f"[combine] {len(document['runs'])} run(s), {len(document['sweeps'])} sweep(s) -> {args.out}")
    for why in document["failed_runs"]:
        _log(f"[combine] FAILED run {why}")
    return 1 if document["failed_runs"] else 0


def _table(args: Any) -> None:
    if len(args.inputs) == 1 and args.inputs[0].is_file():
        document = json.loads(args.inputs[0].read_text())
        if document.get("schema") == COMBINED_SCHEMA:  # as combined: with its ratios and steps
            print(report(document))
            return
    runs, sweeps = load_documents(args.inputs)
    print(report({"card": runs[0].get("card") if runs else None, "runs": runs, "sweeps": sweeps}))
