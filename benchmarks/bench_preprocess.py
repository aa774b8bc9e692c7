"""GPU preprocessing of ImageNet-sized JPEGs, stage by stage: where the time goes, and the old path beside the new.

    python3 benchmarks/bench_preprocess.py --out benchmarks/results/preprocess_<card>.json

For batches of ~500x375 JPEGs (~75 KB, made here), each a median of wall-clock timings (synchronized) after
warm-up:
  * ``nvjpeg``: torchvision's batched GPU decode alone (the floor for anything built on it);
  * ``decode_images``: ours (header checks, then that decode);
  * ``resize interpolate fp32``: the previous resize path (``F.interpolate(antialias=True)`` on float32, crop,
    normalize, fp16 channels_last), on images already decoded;
  * ``resize matmul``: ours (two matmuls per size group, one multiply-add), on the same images;
  * ``full``: ``resize_crop_normalize(decode_images(...))``, bytes to the engine's input: the figure the
    15,000 img/s target at batch 64 is about. Timed first and again after the stages, to show the spread;
  * ``nvjpeg in calls of N``: the same decode split into calls of N images (does a smaller call decode faster?).
Accuracy: ours (fp16 on the GPU) against the fp32 interpolate path on the same decoded pixels, in normalized
units (max and mean absolute difference), with a pass/fail bound: the script exits 1 when it is broken.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_resnet import median_wall_ms, photo_jpegs  # noqa: E402
# fp16 holds values near the normalized range's ends (|x| <= 2.7) to ~0.002; measured: max 0.0058, mean 0.0006
# (benchmarks/NOTES.md). A real preprocessing bug (a half-pixel shift, a wrong channel's mean) is 0.1 and more.
MAX_ABS_BOUND, MEAN_ABS_BOUND = 0.02, 0.002

from torchserve_accel.resnet.images import (  # noqa: E402
    ImageReadMode, PreprocessSpec, decode_images, decode_jpeg, resize_crop_normalize, resized_size,
)


def interpolate_path(images, spec: PreprocessSpec) -> torch.Tensor:
    """The previous implementation: float32 copy, antialiased interpolate of the whole image, crop, normalize."""
    h, w = images[0].shape[-2:]
    new_h, new_w = resized_size(h, w, spec.resize)
    batch = F.interpolate(torch.stack(images).float(), size=(new_h, new_w), mode="bilinear", antialias=True,
                          align_corners=False)
    top, left = int(round((new_h - spec.crop) / 2.0)), int(round((new_w - spec.crop) / 2.0))
    cropped = batch[:, :, top : top + spec.crop, left : left + spec.crop]
    mean = torch.tensor(spec.mean, device=batch.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std, device=batch.device).view(1, 3, 1, 1) * 255
    return ((cropped - mean) / std).to(dtype=spec.dtype, memory_format=torch.channels_last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="64,128,256")
    parser.add_argument("--warm-s", type=float, default=5.0, help="seconds of untimed full preprocessing first")
    parser.add_argument("--out", type=Path, default=ROOT / "gpu_out" / "preprocess.json")
    args = parser.parse_args()
    device = torch.device("cuda:0")
    torch.cuda.set_device(device)
    spec = PreprocessSpec()
    report = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "command": "python3 benchmarks/bench_preprocess.py", "rows": []}
    jpegs_all = photo_jpegs(max(int(b) for b in args.batches.split(",")))
    report["jpeg_mean_kb"] = round(sum(map(len, jpegs_all)) / len(jpegs_all) / 1024, 1)
    # Warm the GPU clocks and the decoder for a few seconds first: the first rows must not pay for it.
    t_end = time.perf_counter() + args.warm_s
    while time.perf_counter() < t_end:
        resize_crop_normalize(decode_images(jpegs_all[:64], device), spec)
    torch.cuda.synchronize()
    for batch in (int(b) for b in args.batches.split(",")):
        jpegs = jpegs_all[:batch]
        bodies = [bytearray(b) for b in jpegs]
        encoded = [torch.frombuffer(b, dtype=torch.uint8) for b in bodies]
        decoded = decode_images(jpegs, device)

        def full():
            return resize_crop_normalize(decode_images(jpegs, device), spec)

        def nvjpeg_calls(size: int):
            return [img for k in range(0, batch, size)
                    for img in decode_jpeg(encoded[k : k + size], mode=ImageReadMode.RGB, device=device)]

        timings = {"full (first)": median_wall_ms(full)}
        timings["nvjpeg"] = median_wall_ms(lambda: decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
        for size in (16, 32):
            if size < batch:
                timings[f"nvjpeg in calls of {size}"] = median_wall_ms(lambda size=size: nvjpeg_calls(size))
        timings["decode_images"] = median_wall_ms(lambda: decode_images(jpegs, device))
        timings["resize interpolate fp32"] = median_wall_ms(lambda: interpolate_path(decoded, spec))
        timings["resize matmul"] = median_wall_ms(lambda: resize_crop_normalize(decoded, spec))
        timings["full"] = median_wall_ms(full)
        timings["full, bytearray bodies (as TorchServe hands them)"] = median_wall_ms(
            lambda: resize_crop_normalize(decode_images(bodies, device), spec))
        ours = resize_crop_normalize(decoded, spec).float()
        reference = interpolate_path(decoded, PreprocessSpec(dtype=torch.float32)).float()
        diff = (ours - reference).abs()
        for name, ms in timings.items():
            row = {"batch": batch, "stage": name, "ms": round(ms, 3), "img_per_s": round(batch * 1000 / ms)}
            report["rows"].append(row)
            print(f"bs{batch:<4d} {name:52s} {ms:8.3f} ms  {row['img_per_s']:>8d} img/s", flush=True)
        passed = diff.max().item() <= MAX_ABS_BOUND and diff.mean().item() <= MEAN_ABS_BOUND
        report.setdefault("accuracy_vs_fp32_interpolate", {})[batch] = {
            "max_abs": round(diff.max().item(), 5), "mean_abs": round(diff.mean().item(), 6),
            "bounds": {"max_abs": MAX_ABS_BOUND, "mean_abs": MEAN_ABS_BOUND}, "passed": passed}
        print(f"bs{batch:<4d} ours fp16 vs fp32 interpolate: max |diff| {diff.max().item():.4f}, "
              f"mean {diff.mean().item():.5f} (normalized units; bounds {MAX_ABS_BOUND} / {MEAN_ABS_BOUND}): "
              f"{'passed' if passed else 'FAILED'}", flush=True)
    # Where the time of one batch-64 pass goes: host (CPU) and GPU time per operator.
    from torch.profiler import ProfilerActivity, profile

    jpegs = jpegs_all[:64]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            resize_crop_normalize(decode_images(jpegs, device), spec)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=25)
    print("profile, 5 passes of batch 64 (bytes -> fp16 input):\n" + table, flush=True)
    report["profile_batch64_x5"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    if not all(a["passed"] for a in report["accuracy_vs_fp32_interpolate"].values()):
        sys.exit("FAILED: GPU preprocessing is off the fp32 reference by more than its bound")


if __name__ == "__main__":
    main()
