"""What TorchServe's Java frontend spends per request for each way of sending images, with no model in the way.

    python3 benchmarks/frontend_cost.py --out benchmarks/results/frontend_cost_<host>.json

A real TorchServe (the shipped config.properties, token auth on) serves a model whose handler only counts the
bytes of each request (no torch, no decode), so the workers never set the pace. Each case runs the load
generator's closed loop (``--concurrency``, ``--seconds``) with the same synthetic ~75 KB JPEGs the served
benchmarks send, and reads the frontend JVM's CPU time over the window (``HostCpu``): CPU ms per request and per
image, beside the answers per second. Cases: one JPEG as the raw body (REST) and as a gRPC ``Predictions`` entry;
``--per-request`` JPEGs as multipart parts, as a JSON list of base64 strings, and as gRPC entries "0".."N-1".
Each case first runs ``--warmup`` seconds unmeasured, so the JVM has compiled its hot paths. The machine's cores
are shared with the load processes: the figure is the frontend's own CPU time, not the throughput, that carries
to other hosts. Exits 1 when a case is answered with anything but 200 or serves nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchserve_accel.tools.launch import free_ports  # noqa: E402
from torchserve_accel.tools.loadgen import LoadConfig, run_load  # noqa: E402
from torchserve_accel.tools.loadgen.payloads import image_payloads, per_request  # noqa: E402
from torchserve_accel.tools.loadgen.probes import describe_card, software_versions  # noqa: E402
from torchserve_accel.tools.torchserve import TorchServe  # noqa: E402

MODEL = "bytes_counter"
# TorchServe's function-handler form: the module's handle(data, context), one answer per request of the batch.
HANDLER = '''import json


def handle(data, context):
    if data is None:
        return None
    return [json.dumps({"fields": len(r), "bytes": sum(len(v) for v in r.values()
                                                       if isinstance(v, (bytes, bytearray)))})
            for r in data]
'''


def build_archive(store: Path) -> None:
    handler = store.parent / "bytes_counter.py"
    handler.write_text(HANDLER)
    subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", MODEL, "--version", "1.0",
                    "--handler", str(handler), "--export-path", str(store), "--force"], check=True)


def cases(per: int, count: int) -> list[tuple[str, str, list, int]]:
    """(name, transport, payloads, images per request)."""
    single = image_payloads(count)
    return [("raw body, 1 image", "http", single, 1),
            ("gRPC entry, 1 image", "grpc", single, 1),
            (f"multipart, {per} parts", "http", per_request(single, per), per),
            (f"JSON base64 list, {per}", "http", per_request(single, per, image_format="json"), per),
            (f"gRPC entries 0..{per - 1}", "grpc", per_request(single, per), per)]


def measure(ts: TorchServe, name: str, transport: str, payloads: list, per: int, args: argparse.Namespace) -> dict:
    config = LoadConfig(concurrency=args.concurrency, processes=args.processes, warmup_s=args.warmup,
                        duration_s=args.seconds, timeout_s=60.0, transport=transport)
    result = run_load(ts, MODEL, payloads, config, log=lambda m: None)
    host = result.get("host_cpu") or {}
    rps = result["ok_rps"]
    frontend_ms = 1000.0 * host["frontend_cores"] / rps if rps and host.get("frontend_cores") is not None else None
    row = {"case": name, "transport": transport, "images_per_request": per, "ok_rps": rps,
           "images_per_s": round(rps * per, 1), "errors": result["errors"],
           "frontend_cores": host.get("frontend_cores"), "worker_cores": host.get("worker_cores"),
           "frontend_cpu_ms_per_request": None if frontend_ms is None else round(frontend_ms, 3),
           "frontend_cpu_ms_per_image": None if frontend_ms is None else round(frontend_ms / per, 3),
           "latency_ms": result["latency_ms"], "bytes_per_request": round(sum(len(p.body) for p in payloads)
                                                                          / len(payloads))}
    print(f"{name:28s} {rps:8.1f} req/s {row['images_per_s']:9.1f} img/s  frontend "
          f"{row['frontend_cpu_ms_per_request']} ms/request {row['frontend_cpu_ms_per_image']} ms/image  "
          f"errors {result['errors'] or 'none'}", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-request", type=int, default=16)
    parser.add_argument("--images", type=int, default=32, help="distinct synthetic JPEGs")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    failures, rows = [], []
    with tempfile.TemporaryDirectory(prefix="frontend-cost-") as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        build_archive(store)
        ts = TorchServe(Path(tmp) / "run")
        ts.start(store, ports=free_ports(5), timeout=180)
        try:
            ts.register(f"{MODEL}.mar", MODEL, batch_size=8, max_batch_delay=5, initial_workers=args.workers)
            for name, transport, payloads, per in cases(args.per_request, args.images):
                row = measure(ts, name, transport, payloads, per, args)
                rows.append(row)
                if row["errors"] or not row["ok_rps"]:
                    failures.append(f"{name}: {row['ok_rps']} ok/s, errors {row['errors']}")
        finally:
            ts.stop()
    document = {"schema": "torchserve-accel/frontend-cost/1", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "card": describe_card(), "versions": software_versions(), "command": sys.argv,
                "config": vars(args) | {"out": str(args.out)}, "cases": rows, "failures": failures}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=1) + "\n")
        print(f"wrote {args.out}")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
