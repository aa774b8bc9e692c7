"""The main job, end to end: build the ResNet-101 archive, serve it with TorchServe, classify images
(and, with --bert, BERT-Large on texts beside it).

    bash scripts/run_main.sh [--weights PATH] [--images N] [--workers N] [--ports free] [--bert [--bert-weights DIR]]
    torchserve-accel demo [the same options]

(run_main.sh sets up .venv and Java first, then runs this with the venv's Python.)
Workers: the archives' model-configs are tuned for one H100/H200 (10 ResNet-101 workers, 2 BERT-Large). On a GPU
the job takes as many of those as fit the free memory of the GPUs it finds (WORKER_GIB per worker, workers spread
round-robin over the GPUs) and says why; on the CPU 2 and 1; ``--workers N`` sets them.
Steps: build model_store/resnet101.mar (random weights unless --weights) -> start TorchServe in .run/main ->
register with batching on -> send N synthetic JPEGs concurrently -> print predictions, worker status and the
handler's batch metrics -> the same for bert_large.mar and a few texts with --bert -> stop TorchServe (also on
errors and Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from torchserve_accel.tools import gpu
from torchserve_accel.tools.build import ArchiveError, archive_inputs, build_archive
from torchserve_accel.tools.client import describe_answer, send_all
from torchserve_accel.tools.commands import Commands
from torchserve_accel.tools.images import write_images
from torchserve_accel.tools.launch import TorchServeError, parse_ports
from torchserve_accel.tools.paths import DEFAULT_MODEL_STORE, WORKDIR
from torchserve_accel.tools.polling import wait_until
from torchserve_accel.tools.prometheus import metric_total
from torchserve_accel.tools.torchserve import TorchServe, worker_summary

MODEL = "resnet101"
BERT = "bert_large"
DEFAULT_DEMO_RUN_DIR = WORKDIR / ".run" / "main"
CPU_WORKERS = {MODEL: 2, BERT: 1}  # the archives' worker counts are tuned for a GPU (archiver_configs/)
# GPU memory per worker, with room: benchmarks/results/served_h200.json has 2,416 MiB for one ResNet-101 worker and
# 4,828 for two; a second BERT-Large worker added 2,744 MiB, and batches of 32k tokens take more.
WORKER_GIB = {MODEL: 2.5, BERT: 4.0}
USABLE = 0.9  # of a GPU's free memory: the rest for fragmentation and what else starts on the card
TEXTS = [
    "The new phone arrived a day early and the battery lasts all week.",
    "I waited forty minutes for a cold meal and nobody apologised.",
    "Quarterly revenue grew eleven percent while operating costs stayed flat.",
    "Could you send me the slides from this morning's meeting?",
    "It rained.",
    " ".join(["A very long review that goes on and on about the same small detail."] * 60),  # over 512 tokens
]


def step(message: str) -> None:
    print(f"\n=== {message}", flush=True)


def _sigterm(signum, frame):  # stop the server on `kill` as on Ctrl-C
    raise KeyboardInterrupt(f"signal {signum}")


def handler_batches(ts: TorchServe, model: str, at_least: int, timeout: float = 5) -> tuple[float, float]:
    """(HandlerBatches, HandlerBatchedRequests) of ``model`` once the requests count reaches ``at_least``, or as
    they are after ``timeout`` s: worker metrics reach the frontend a moment after the answers."""
    def counters() -> tuple[float, float]:
        text = ts.metrics()
        return (metric_total(text, "HandlerBatches", ModelName=model),
                metric_total(text, "HandlerBatchedRequests", ModelName=model))

    def arrived() -> tuple[float, float] | None:
        batches, requests_ = counters()
        return (batches, requests_) if requests_ >= at_least else None

    return wait_until(arrived, timeout, interval=0.2) or counters()


def plan_gpu_workers(configured: dict[str, int], free_mib: Sequence[float], card: str = "GPU",
                     worker_gib: dict[str, float] = WORKER_GIB) -> tuple[dict[str, int], str]:
    """Workers per model that fit the GPUs' free memory (``free_mib``, one entry per visible GPU), each at most
    its model-config count (``configured``) and at least 1, and the reason in one line.

    TorchServe spreads a model's workers round-robin over the GPUs, so a GPU holds ceil(workers / GPUs) of each
    model; while they do not fit the emptiest GPU, the model whose workers take the most memory there gives one up.
    """
    gpus, budget = len(free_mib), min(free_mib) * USABLE / 1024

    def per_gpu(plan: dict[str, int], model: str) -> float:
        return math.ceil(plan[model] / gpus) * worker_gib[model]

    plan = dict(configured)
    while sum(per_gpu(plan, m) for m in plan) > budget and any(n > 1 for n in plan.values()):
        plan[max((m for m in plan if plan[m] > 1), key=lambda m: per_gpu(plan, m))] -= 1
    used = sum(per_gpu(plan, m) for m in plan)
    counts = ", ".join(f"{m} {plan[m]} (model-config {configured[m]}, ~{worker_gib[m]:g} GiB each)" for m in plan)
    where = f"{gpus}x {card}, {min(free_mib) / 1024:.1f} GiB free on the emptiest, {USABLE:.0%} of it usable"
    if used > budget:
        why = f"even 1 worker per model needs ~{used:.1f} GiB of {budget:.1f}: they may run out of memory"
    elif plan == configured:
        why = "the model-config's counts fit"
    else:
        why = f"the model-config's counts need more than {budget:.1f} GiB per GPU"
    return plan, f"workers: {counts}: {where}; {why}"


def choose_workers(models: Sequence[str], workers: int | None, on_gpu: bool) -> dict[str, int | None]:
    """Worker count per model (None: the model-config's): ``workers`` when given; on the CPU, CPU_WORKERS; on a GPU,
    as many of the model-config's as fit its free memory (``plan_gpu_workers``, printed with the reason)."""
    if workers is not None:
        return {m: workers for m in models}
    if not on_gpu:
        return {m: CPU_WORKERS[m] for m in models}
    import yaml

    configured = {m: int(yaml.safe_load(archive_inputs(m)[2].read_text())["minWorkers"]) for m in models}
    memory = gpu.memory_mib(gpu.visible_indices())
    if not memory:
        print(f"workers: the model-configs' {configured} (GPU memory not readable: no NVML, no nvidia-smi)")
        return {m: None for m in models}
    names = gpu.card_names()
    plan, why = plan_gpu_workers(configured, [s["memory_free_mib"] for s in memory], names[0] if names else "GPU")
    print(why, flush=True)
    return {m: (plan[m] if plan[m] != configured[m] else None) for m in models}


def serve_and_query(ts: TorchServe, model: str, items: list[tuple[str, bytes | str, str]], what: str,
                    batch_size: int, max_batch_delay: int, concurrency: int) -> int:
    """Register ``model`` with batching, send ``items`` concurrently, print the answers, the workers and the
    handler's batch metrics; returns how many answers were not 200."""
    step(f"registering {model} (batch_size={batch_size}, max_batch_delay={max_batch_delay} ms); "
         "loading the model in the workers ...")
    t0 = time.monotonic()
    print(ts.register(f"{model}.mar", model, batch_size=batch_size, max_batch_delay=max_batch_delay,
                      synchronous=True, response_timeout=300)["status"], f"({time.monotonic() - t0:.0f} s)")
    print(worker_summary(ts.describe(model)))

    step(f"sending {len(items)} {what} to {model}, {concurrency} at a time")
    t0 = time.monotonic()
    answers = send_all(ts, model, items, concurrency)
    elapsed = time.monotonic() - t0
    for answer in answers:
        print(describe_answer(answer))
    ok = sum(a.status == 200 for a in answers)
    print(f"{ok}/{len(answers)} answered 200 in {elapsed:.1f} s ({len(answers) / elapsed:.1f} {what} per second "
          "end to end)")

    step(f"{model}: worker status")
    print(worker_summary(ts.describe(model)))
    batches, requests_ = handler_batches(ts, model, len(answers))
    if batches:
        print(f"handler ran {requests_:.0f} requests in {batches:.0f} batches (mean batch {requests_ / batches:.1f})")
    return len(answers) - ok


def run_demo(args: Any) -> int:
    args.bert = args.bert or args.bert_weights is not None
    signal.signal(signal.SIGTERM, _sigterm)
    # Ctrl-C stops the server even when this was started with SIGINT ignored (a shell's background job inherits
    # that, and Python then installs no KeyboardInterrupt handler): the server must never outlive the job
    signal.signal(signal.SIGINT, signal.default_int_handler)

    import torch

    print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)})" if torch.cuda.is_available()
             else " -> workers run on the CPU"))
    if args.weights is None:
        print("\n" + "!" * 100 + "\n!!! NO --weights GIVEN: the archive gets RANDOM ResNet-101 weights. "
              "Predictions are meaningless;\n!!! this run shows serving, batching and throughput only. "
              "Pass --weights PATH for a trained model.\n" + "!" * 100, flush=True)

    run_dir = getattr(args, "run_dir", DEFAULT_DEMO_RUN_DIR)
    ts = TorchServe(run_dir)
    on_gpu = torch.cuda.is_available()
    try:
        models = [(MODEL, args.weights)] + ([(BERT, args.bert_weights)] if args.bert else [])
        workers = choose_workers([model for model, _ in models], args.workers, on_gpu)
        for model, weights in models:
            step(f"building {args.model_store / (model + '.mar')}")
            count = workers[model]
            overrides = {"minWorkers": count, "maxWorkers": count} if count is not None else None
            build_archive(model, weights, args.model_store, force=True, log=lambda m: print(m, flush=True),
                          config_overrides=overrides, bundle=True)

        step("starting TorchServe")
        ts.start(args.model_store, ports=args.ports, mps="auto")  # MPS where a GPU and the daemon are there

        batching = dict(batch_size=args.batch_size, max_batch_delay=args.max_batch_delay, concurrency=args.concurrency)
        failed = 0
        with tempfile.TemporaryDirectory(prefix="tsa-images-") as tmp:
            paths = write_images(Path(tmp), args.images, "jpeg")
            images = [(p.name, p.read_bytes(), "image/jpeg") for p in paths]
            failed += serve_and_query(ts, MODEL, images, "JPEGs", **batching)
        if args.bert:
            texts = [(f"text[{i}]", json.dumps({"text": t}), "application/json") for i, t in enumerate(TEXTS)]
            failed += serve_and_query(ts, BERT, texts, "texts", **batching)
        return 0 if failed == 0 else 2
    except (ArchiveError, TorchServeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if ts.launched and not args.keep_running:
            step("stopping TorchServe")
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave the server behind
            ts.stop()
        elif ts.launched:
            print(f"\nTorchServe keeps running: torchserve-accel stop --run-dir {run_dir}")


# ---------------------------------------------------------------------------------------------- command line


def add_commands(commands: Commands) -> None:
    p = commands.add("demo", run_demo, "build, serve and query ResNet-101 (the main job)", details=__doc__)
    p.add_argument("--weights", type=Path, default=None,
                   help="torchvision ResNet-101 state_dict (.pth/.safetensors); default: RANDOM weights")
    p.add_argument("--images", type=int, default=16, help="number of JPEGs to send")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batch-delay", type=int, default=100, help="ms")
    p.add_argument("--workers", type=int, default=None,
                   help="workers per model (default: on a GPU, as many of the model-config's as fit its free memory; "
                        "on the CPU 2 for ResNet-101, 1 for BERT-Large)")
    p.add_argument("--ports", type=parse_ports, default=None,
                   help="'free', or INFERENCE,MANAGEMENT,METRICS[,GRPC_INFERENCE,GRPC_MANAGEMENT] "
                        "(default: config.properties: 8080-8082, gRPC 7070-7071)")
    p.add_argument("--model-store", type=Path, default=DEFAULT_MODEL_STORE)
    p.add_argument("--run-dir", type=Path, default=argparse.SUPPRESS,
                   help=f"instance directory (default {DEFAULT_DEMO_RUN_DIR})")
    p.add_argument("--keep-running", action="store_true", help="leave TorchServe up at the end")
    p.add_argument("--bert", action="store_true",
                   help="also build, serve and query BERT-Large (random weights unless --bert-weights)")
    p.add_argument("--bert-weights", type=Path, default=None,
                   help="a HuggingFace BertForSequenceClassification directory (implies --bert)")
