#!/usr/bin/env python3
"""One GPU's ResNet-101 ceiling with JPEG decode on the SMs (nvJPEG, what the handler does) or on the GPU's
hardware JPEG engines (nvImageCodec's hardware backend): several worker-like processes, no TorchServe.

    python3 benchmarks/bench_decode_load.py --out gpu_out/decode_load.json [--procs 1,10] [--seconds 10]

The served runs put ~60-66 us of GPU time on each image (engine plus preprocessing, of which nvJPEG's decode
kernels are ~8.6 us; benchmarks/NOTES.md), so the served targets need less GPU time per image. This measures
whether decoding on the JPEG engines, off the SMs, gives the engine that time back under a served-like load.

Each process loads the archive's engine (random weights; the archive's options with buckets up to --batch, no
correctness gate) and then, phase by phase in step with the others (a barrier), loops for --seconds over one batch
of --batch ~75 KB JPEGs:
  * engine: the preprocessed batch again and again (the ceiling with preprocessing free);
  * nvjpeg: ``classify`` as the handler runs it (header checks, torchvision's nvJPEG decode on the SMs, the
    resize/normalize matmuls, engine, top-k, one host sync);
  * hw: the same with ``handler.jpeg_decoder: hardware`` (resnet/hw_jpeg.py: nvImageCodec's hardware backend).
The processes run under an MPS daemon of their own when nvidia-cuda-mps-control is there (as the served workers
do). Per process count and phase: images/s over all processes, GPU busy (NVML), each process's ms per batch.
First, correctness: each GPU decoder's pixels against PIL's (mean and max |diff| in uint8 levels, share over 8
levels) and the engine's top-1 against nvJPEG's (reported only: random weights make near-ties). Exit 1 when a
decoder's mean difference is over the bound, or a phase serves nothing.
Needs ``nvidia-nvimgcodec-cu13`` and ``nvidia-nvjpeg`` (pip) for the hardware phase; without them, or on a GPU
without JPEG engines, that phase fails and so does the run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHASES = ("engine", "nvjpeg", "hw")
# Against PIL (libjpeg), the decoder of the stock handler and of our CPU path: a decoder's own IDCT and chroma
# upsampling move pixels by a level or two (benchmarks/NOTES.md); a wrong colour conversion or a shifted plane
# moves them by tens.
MEAN_DIFF_BOUND = 4.0


def worker(rank: int, args: argparse.Namespace, model_dir: str, jpegs: list[bytes], barrier, results) -> None:
    import torch

    from torchserve_accel.resnet import runner
    from torchserve_accel.resnet.hw_jpeg import HardwareJpegDecoder
    from torchserve_accel.resnet.images import decode_images, resize_crop_normalize
    from torchserve_accel.resnet.options import ResNetOptions

    report: dict = {"rank": rank, "phases": {}}
    try:
        device = torch.device("cuda:0")
        torch.cuda.set_device(device)
        options = ResNetOptions(batch_buckets=(args.batch,), correctness_gate=False)
        classifier = runner.load(Path(model_dir), options, device, batch_size=args.batch)
        blobs = [bytearray(b) for b in jpegs]
        prepared = resize_crop_normalize(decode_images(blobs, device), classifier.preprocess)

        def classify_with(hardware):  # the handler's path (runner.classify), decoding as jpeg_decoder says
            def run():
                classifier.hardware = hardware
                return classifier.classify(blobs)
            return run

        runs = {"engine": lambda: classifier.top_k(prepared), "nvjpeg": classify_with(None)}
        decoded = {"nvjpeg": decode_images(blobs, device)}
        try:
            hardware = HardwareJpegDecoder(device)
            missing = sum(image is None for image in hardware.decode(blobs))
            if missing:  # decode_images would hand them to nvJPEG: the phase would not measure the engines
                raise RuntimeError(f"the hardware decoder returned nothing for {missing} images")
            runs["hw"] = classify_with(hardware)
            decoded["hw"] = decode_images(blobs, device, hardware=hardware)
            if rank == 0:
                report["correctness"] = correctness(classifier, blobs, decoded)
        except Exception as err:  # noqa: BLE001 - reported; the hw phase is then skipped by every process alike
            report["hw_error"] = f"{type(err).__name__}: {err}"
        for run in runs.values():  # warm-up: graphs, decoders, allocator
            for _ in range(3):
                run()
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001 - a process that cannot start says why; the barrier then breaks for all
        report["error"] = traceback.format_exc()
        results.put(report)
        barrier.abort()
        return
    barrier.wait()
    for phase in PHASES:
        barrier.wait()  # go
        run = runs.get(phase)
        batches, t0 = 0, time.perf_counter()
        if run is not None:
            while time.perf_counter() - t0 < args.seconds:
                run()
                batches += 1
        elapsed = time.perf_counter() - t0
        report["phases"][phase] = {"batches": batches, "images": batches * args.batch, "seconds": round(elapsed, 3),
                                   "ms_per_batch": round(elapsed * 1000 / batches, 2) if batches else None}
        barrier.wait()  # done
    results.put(report)


def correctness(classifier, blobs, decoded: dict) -> dict:
    """Each GPU decoder's pixels against PIL's (the CPU path), and the engine's top-1 against nvJPEG's input.

    The top-1 agreement is reported, not bounded: with random weights the engine's classes are near-ties that a
    level of pixel difference flips; pixels are what the bound judges."""
    import torch

    from torchserve_accel.resnet.images import decode_images, resize_crop_normalize

    reference = decode_images(blobs, torch.device("cpu"))
    result: dict = {"bounds": {"mean_abs_levels_vs_pil": MEAN_DIFF_BOUND}}
    top_ref = classifier.top_k(resize_crop_normalize(decoded["nvjpeg"], classifier.preprocess))[1]
    passed = True
    for name, images in decoded.items():
        same_shape = all(a.shape == b.shape for a, b in zip(reference, images))
        diffs = [(a.int() - b.cpu().int()).abs() for a, b in zip(reference, images)] if same_shape else []
        mean = float(torch.stack([d.float().mean() for d in diffs]).mean()) if same_shape else None
        top = classifier.top_k(resize_crop_normalize(images, classifier.preprocess))[1]
        result[name] = {"same_shapes": same_shape, "mean_abs_levels": None if mean is None else round(mean, 4),
                        "max_abs_levels": max(int(d.max()) for d in diffs) if same_shape else None,
                        "share_over_8_levels": round(float(torch.cat([(d > 8).flatten() for d in diffs]).float()
                                                          .mean()), 6) if same_shape else None,
                        "top1_agreement_with_nvjpeg": sum(a[0] == b[0] for a, b in zip(top_ref, top)) / len(top)}
        passed &= bool(same_shape and mean <= MEAN_DIFF_BOUND)
    result["passed"] = passed
    return result


def run_processes(count: int, args, model_dir: str, jpegs: list[bytes]) -> dict:
    from torchserve_accel.tools.loadgen.probes import GpuUtilization

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(count + 1), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, args, model_dir, jpegs, barrier, results)) for r in range(count)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    row: dict = {"processes": count, "phases": {}}
    try:
        barrier.wait(timeout=args.start_timeout)
        row["start_s"] = round(time.perf_counter() - t0, 1)
        for phase in PHASES:
            with GpuUtilization(interval_ms=100) as gpu:
                barrier.wait(timeout=60)
                start = time.monotonic()
                barrier.wait(timeout=args.seconds + 120)
                end = time.monotonic()
            row["phases"][phase] = {"gpu": (gpu.summary(start, end) or {}).get("util_mean")}
    except Exception as err:  # noqa: BLE001 - a broken barrier: some process failed; its report says why
        row["error"] = f"{type(err).__name__}: {err}"
    reports = []
    deadline = time.time() + 60
    while len(reports) < count and time.time() < deadline:
        try:
            reports.append(results.get(timeout=max(0.1, deadline - time.time())))
        except Exception:  # noqa: BLE001 - queue.Empty: a process died without a report
            break
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.terminate()
    row["reports"] = sorted(reports, key=lambda r: r["rank"])
    for phase in PHASES:
        done = [r["phases"][phase] for r in reports if phase in r.get("phases", {})]
        seconds = max((d["seconds"] for d in done), default=0)
        images = sum(d["images"] for d in done)
        entry = row["phases"].setdefault(phase, {})
        entry.update({"images_per_s": round(images / seconds) if seconds else 0,
                      "ms_per_batch": [d["ms_per_batch"] for d in done]})
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--procs", default="1,10", help="process counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--mps", choices=("auto", "on", "off"), default="auto")
    args = parser.parse_args()

    import torch

    from benchmarks.bench_resnet import photo_jpegs
    from torchserve_accel.resnet.archive import prepare_archive_files
    from torchserve_accel.tools.mps import MpsDaemon, mps_decision

    work = Path(tempfile.mkdtemp(prefix="decode_load_"))
    model_dir = work / "model"
    prepare_archive_files(model_dir, None, log=lambda m: None)
    jpegs = photo_jpegs(args.batch)
    use_mps, why = mps_decision(args.mps)
    daemon = MpsDaemon(work) if use_mps else None
    if daemon is not None:
        os.environ.update(daemon.start())  # before any CUDA context: the spawned processes inherit it
    try:  # not torch.cuda in this process: it stays off the GPU
        card = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        card = f"unknown ({err})"
    report = {"card": card, "versions": {"python": platform.python_version(), "torch": torch.__version__},
              "command": " ".join(sys.argv), "mps": why, "batch": args.batch, "seconds": args.seconds,
              "jpeg_mean_kb": round(sum(map(len, jpegs)) / len(jpegs) / 1024, 1), "rows": []}
    failed = False
    try:
        for count in (int(c) for c in args.procs.split(",")):
            row = run_processes(count, args, str(model_dir), jpegs)
            report["rows"].append(row)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1))
            for phase, entry in row["phases"].items():
                print(f"{count:>3} process(es) {phase:<7} {entry['images_per_s']:>8,} img/s  GPU busy "
                      f"{entry.get('gpu')}%  ms/batch {entry['ms_per_batch']}", flush=True)
            errors = [r.get("error") or r.get("hw_error") for r in row["reports"]
                      if r.get("error") or r.get("hw_error")]
            if row.get("error") or errors:
                print(f"FAILED, {count} process(es): {row.get('error')}; {errors[:1]}", flush=True)
            check = next((r["correctness"] for r in row["reports"] if "correctness" in r), None)
            if check is not None:
                report.setdefault("correctness", check)
                print(f"decoders vs PIL: {check}", flush=True)
            # a phase that served nothing, a process or decoder that failed, or pixels off the bounds: loud
            failed |= (bool(row.get("error") or errors) or len(row["reports"]) < count
                       or any(entry["images_per_s"] == 0 for entry in row["phases"].values())
                       or (check is not None and not check["passed"]))
    finally:
        if daemon is not None:
            daemon.stop()
    report["passed"] = not failed
    args.out.write_text(json.dumps(report, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
