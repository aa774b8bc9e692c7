#!/usr/bin/env python3
"""Would FP8 pay for ResNet-101's 1x1 convolutions? Every convolution of torchvision's ResNet-101 (224 x 224
inputs) at one batch, timed on the GPU and summed over the network (each distinct shape times its count):

    fp16           cuDNN, fp16, channels_last: what the engine runs for it (BatchNorm folded: a plain conv)
    fp8-gemm       1x1 only: the same product as ``torch._scaled_mm`` on e4m3 operands already quantized
                   (row-wise activation scales, one scale per output channel), bf16 out: the FP8 ceiling
    quantize       1x1 only: our Triton per-row quantizer on the fp16 input, the pass an FP8 path adds unless
                   the BatchNorm+ReLU before it writes e4m3

    python benchmarks/resnet_conv1x1_fp8.py --out gpu_out/resnet_conv1x1_fp8.json [--batch 64] [--iters 30]

Each FP8 product is checked against the fp16 convolution (relative Frobenius error). The table and JSON give
ms per batch per shape and in total, and what the network's convolutions would take with FP8 1x1s (with and
without the quantizing passes). Exit status 1 without a GPU that runs ``torch._scaled_mm``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from torchserve_accel.bert import fp8  # noqa: E402
from benchmarks.bench_bert import Timer  # noqa: E402


def conv_shapes(image: int = 224) -> list[dict]:
    """The distinct convolutions of torchvision's ResNet-101 (in and out channels, kernel, stride, padding, input
    height and width) with how many times each runs per image, from one CPU forward of a 1-image batch."""
    import torchvision

    model = torchvision.models.resnet101().eval()
    seen: dict[tuple, int] = {}

    def hook(conv, inputs, _output):
        h, w = inputs[0].shape[-2:]
        key = (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0], h, w)
        seen[key] = seen.get(key, 0) + 1

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, image, image))
    names = ("cin", "cout", "k", "stride", "pad", "h", "w")
    return [dict(zip(names, key), count=count) for key, count in seen.items()]


def time_shape(shape: dict, batch: int, timer: Timer, iters: int) -> dict:
    """fp16 cuDNN time of one shape; for a 1x1 also FP8 GEMM and quantizer times and the FP8 product's error."""
    from torchserve_accel.bert.triton_ops import quantize_rows

    device = torch.device("cuda")
    x = torch.randn(batch, shape["cin"], shape["h"], shape["w"], device=device, dtype=torch.float16)
    x = x.relu().contiguous(memory_format=torch.channels_last)  # post-ReLU activations, as in the network
    weight = torch.randn(shape["cout"], shape["cin"], shape["k"], shape["k"], device=device, dtype=torch.float16)
    weight = (weight / (shape["cin"] * shape["k"] ** 2) ** 0.5).contiguous(memory_format=torch.channels_last)

    def conv():
        return F.conv2d(x, weight, stride=shape["stride"], padding=shape["pad"])

    result = dict(shape, fp16_ms=timer.ms(conv, iters))
    if shape["k"] != 1:
        return result
    # A 1x1 convolution in channels_last is a GEMM: (N*H*W, Cin) x (Cin, Cout); stride 2 reads every other pixel.
    strided = x[:, :, ::shape["stride"], ::shape["stride"]].contiguous(memory_format=torch.channels_last)
    a = strided.permute(0, 2, 3, 1).reshape(-1, shape["cin"])
    q, q_scale = quantize_rows(a)
    w_q, w_scale = fp8.quantize_rows_reference(weight.reshape(shape["cout"], shape["cin"]).float())
    w_t, w_scale = w_q.t(), w_scale.reshape(1, -1).float().contiguous()

    def gemm():
        return torch._scaled_mm(q, w_t, scale_a=q_scale, scale_b=w_scale, out_dtype=torch.bfloat16)

    reference = conv().permute(0, 2, 3, 1).reshape(-1, shape["cout"]).float()
    error = ((gemm().float() - reference).norm() / reference.norm()).item()
    result.update(fp8_gemm_ms=timer.ms(gemm, iters), quantize_ms=timer.ms(lambda: quantize_rows(a), iters),
                  fp8_rel_err=error, gemm_mnk=[a.shape[0], shape["cout"], shape["cin"]])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args()
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if reason := fp8.unavailable_reason(device):
        print(f"resnet_conv1x1_fp8: cannot run here: {reason}", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    timer = Timer(device)
    rows = []
    with torch.inference_mode():
        for shape in conv_shapes():
            rows.append(time_shape(shape, args.batch, timer, args.iters))
            r = rows[-1]
            extra = (f"  fp8 {r['fp8_gemm_ms']:.3f} + quantize {r['quantize_ms']:.3f} ms, err {r['fp8_rel_err']:.4f}"
                     if "fp8_gemm_ms" in r else "")
            print(f"{r['cin']:>4}->{r['cout']:<4} k{r['k']} s{r['stride']} {r['h']:>3}x{r['w']:<3} x{r['count']:<2}"
                  f" fp16 {r['fp16_ms']:.3f} ms{extra}", flush=True)

    def total(key: str, kernel: int | None = None) -> float:
        return sum(r[key] * r["count"] for r in rows if key in r and (kernel is None or r["k"] == kernel))

    others = total("fp16_ms") - total("fp16_ms", 1)
    totals = {
        "fp16_all_convs_ms": total("fp16_ms"),
        "fp16_1x1_ms": total("fp16_ms", 1),
        "fp16_other_convs_ms": others,
        "fp8_1x1_gemm_ms": total("fp8_gemm_ms"),
        "fp8_1x1_quantize_ms": total("quantize_ms"),
        "convs_with_fp8_1x1_ms": others + total("fp8_gemm_ms"),
        "convs_with_fp8_1x1_and_quantize_ms": others + total("fp8_gemm_ms") + total("quantize_ms"),
        "fp8_max_rel_err": max(r["fp8_rel_err"] for r in rows if "fp8_rel_err" in r),
    }
    for key, value in totals.items():
        print(f"{key:>36}: {value:.4f}")
    document = {
        "schema": "resnet-conv1x1-fp8/1", "card": torch.cuda.get_device_name(device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "variant": "fp16 cuDNN channels_last vs torch._scaled_mm e4m3 row-wise", "scenario": "ResNet-101 224x224",
        "batch": args.batch, "iters": args.iters, "totals": totals, "shapes": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
