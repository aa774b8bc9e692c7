"""Load generator for a TorchServe model's inference API (REST, or gRPC ``Predictions``): real payloads, closed or
open loop, many processes.

    torchserve-accel bench resnet101 --concurrency 512 --duration 20 --out r.json        # closed loop
    torchserve-accel bench resnet101 --rate 8000 --duration 20 --out r.json              # open loop (Poisson)
    torchserve-accel bench bert_large --texts 512 --concurrency 256                      # JSON {"text": ...}
    torchserve-accel bench resnet101 --image-dir photos/ --processes 8                   # your own images
    torchserve-accel bench resnet101 --per-request 16 --concurrency 96                   # 16 JPEGs per request
    torchserve-accel bench resnet101 --per-request 16 --transport grpc                   # the same as gRPC calls
(``python scripts/loadgen.py ...`` runs the same)

Payloads (payloads.py): ImageNet-like 500x375 JPEGs at quality 90 (``images.make_image`` plus grain) or files from
a folder; for text models, texts of 4..100 common words, each fitting a 128-token sequence. ``--per-request N``
puts N of them in each request (images as multipart parts, texts as ``{"texts": [...]}``); results then also give
``ok_items_per_s``.

Load (loops.py, http.py): ``--processes`` OS processes, each an asyncio event loop with its own keep-alive
HTTP/1.1 connections (loopback only unless ``--allow-remote``; plain HTTP), so the client is not the bottleneck
(each process reports its CPU use). Closed loop: ``--concurrency`` requests always in flight, split over the
processes. Open loop: Poisson arrivals at ``--rate`` requests/s in total; latency counts from the scheduled
arrival, so a client-side wait for a free connection is part of it (no coordinated omission). ``--transport grpc``
(grpc_client.py, ``--run-dir`` only): ``Predictions`` calls on a few channels per process, an image per input entry.

Timeline (driver.py): ``--warmup`` seconds of load that are not measured, then ``--duration`` seconds measured; no
new request after that, and each request is bounded by ``--timeout``. ``--max-requests`` caps the total count (the
window then ends when the first process reaches its share).

Figures (JSON with ``--out``; stats.py, probes.py): throughput (all answers and 200s only, completed inside the
window), latency p50/p90/p99/max of requests started inside the window, errors by HTTP status ("timeout",
"connection_error" for client-side failures, "grpc_internal" and the like for failed gRPC calls), the mean batch
size the handlers ran (the increments of the Prometheus counters HandlerBatches and HandlerBatchedRequests over the
window), TorchServe's mean queue and inference latency per request (ts_* counters), GPU utilization sampled through
NVML or nvidia-smi (null without either), host and TorchServe CPU time, the card, software versions and the command.
Keys come from the instance's key_file.json (``--run-dir``). Any other TorchServe: ``--url``, ``--token-file``, and
``--management-url`` (the model's batching and workers in the result) and ``--metrics-url`` (batch sizes, queue
times) where they can be reached (endpoints.py); the GPU and CPU figures are this machine's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from torchserve_accel.tools.commands import Commands
from torchserve_accel.tools.loadgen.driver import (
    SCHEMA, TRANSPORTS, LoadConfig, default_processes, one_line, run_and_record, run_load,
)
from torchserve_accel.tools.loadgen.payloads import Payload, build_payloads
from torchserve_accel.tools.torchserve import TorchServe

__all__ = ["SCHEMA", "LoadConfig", "Payload", "build_payloads", "default_processes", "one_line", "run_and_record",
           "run_load"]


# ---------------------------------------------------------------------------------------------- command line


def add_payload_arguments(parser: argparse.ArgumentParser) -> None:
    """The payload options shared by bench and soak: images or texts, their source and sizes."""
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--images", type=int, default=None, help="synthetic JPEGs to cycle through (default 64)")
    what.add_argument("--texts", type=int, default=None, help="texts to cycle through (default for BERT: 256)")
    parser.add_argument("--image-dir", type=Path, default=None, help="send the images of this folder")
    parser.add_argument("--min-words", type=int, default=4)
    parser.add_argument("--max-words", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-request", type=int, default=1, metavar="N",
                        help="images (one multipart part each) or texts ({\"texts\": [...]}) per request (default 1)")
    parser.add_argument("--per-request-format", choices=("multipart", "json"), default="multipart",
                        help="several images as multipart parts (binary) or a JSON list of base64 strings")


def payloads_from(args: Any, model: str) -> tuple[list[Payload], dict[str, Any]]:
    if args.image_dir is not None and args.texts is not None:
        args.parser.error("--image-dir and --texts exclude each other")
    return build_payloads(model, texts=args.texts, images=args.images, image_dir=args.image_dir,
                          min_words=args.min_words, max_words=args.max_words, seed=args.seed,
                          items_per_request=args.per_request, image_format=args.per_request_format)


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_commands(commands: Commands) -> None:
    p = commands.add("bench", _bench, "drive a registered model with real payloads (closed or open loop)",
                     instance=True, details=__doc__, target="inference", also=("management", "metrics"))
    p.add_argument("model", help="registered model name")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, default=64, help="closed loop: requests in flight (default 64)")
    load.add_argument("--rate", type=positive, default=None, help="open loop: Poisson arrivals per second in total")
    p.add_argument("--processes", type=int, default=default_processes(),
                   help=f"load processes (default {default_processes()}: half the cores, at most 8)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the window (default 5)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds (default 20)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    p.add_argument("--max-requests", type=int, default=0, help="cap on requests sent in total (0: none)")
    p.add_argument("--max-connections", type=int, default=0, help="open loop: connections per process")
    p.add_argument("--transport", choices=TRANSPORTS, default="http",
                   help="REST over HTTP/1.1 (default), or gRPC Predictions calls (an image per input entry)")
    add_payload_arguments(p)
    p.add_argument("--label", default=None, help="name of this run in tables and plots")
    p.add_argument("--out", type=Path, default=None, help="write the result JSON here")


def _bench(ts: TorchServe, args: Any) -> int:
    payloads, desc = payloads_from(args, args.model)
    config = LoadConfig(concurrency=args.concurrency, rate=args.rate, processes=args.processes, warmup_s=args.warmup,
                        duration_s=args.duration, timeout_s=args.timeout, max_requests=args.max_requests,
                        max_connections=args.max_connections, seed=args.seed, transport=args.transport)
    ts.url("inference")  # fails early without an instance
    document = run_and_record(ts, args.model, payloads, config, desc, label=args.label, command=args.command_line,
                              log=lambda m: print(m, flush=True))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=1) + "\n")
        print(f"[loadgen] wrote {args.out}")
    print(one_line(document), flush=True)
    return 0 if "results" in document else 1
