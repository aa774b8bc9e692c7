#!/usr/bin/env python3
"""How close the BERT-Large encoder is to what the card can do: sustained throughput of HF fp16 SDPA, our
encoder, and two floors built from our encoder's own weights, with the SM clock, power draw and throttle
reasons sampled during each run.

    python benchmarks/bert_floor.py --out gpu_out/bert_floor.json [--seconds 5] [--tiny]

Each variant runs back to back for ``--seconds`` (the card reaches its steady power state; short bursts at a
cool card overstate what a server sustains), on batches already on the GPU:

    hf-fp16-sdpa           HF fp16, SDPA, the padded batch with its attention mask (the targets' baseline)
    ours                   our packed encoder as the handler runs it (Triton epilogues, cuBLAS FFN GEMM)
    ours-fused-ffn         the same with the fused Triton FFN GEMM + bias + GELU (sm90+)
    floor-gemms            only the 4 GEMMs of each of the 24 layers, at the batch's packed token count, on
                           fixed random activations: no attention, no epilogue, no LayerNorm, no embeddings.
                           No encoder can run these FLOPs in fp16 with cuBLAS faster than this.
    floor-gemms-attention  the same plus each layer's attention call (the backend ours uses)

For each scenario the report says what the target needs in ms per batch, and how much of that is left for
everything that is not a GEMM (or attention) once the floor is paid: ``budget_left_ms`` < 0 means the
target cannot be met by any fp16 encoder that runs these GEMMs. Targets (issue #4): fixed 128 x 256 at
7,000 seq/s, fixed 384 x 64 at 2,200 seq/s, mixed lengths 16..128 x 256 at 2.5x HF fp16 SDPA on the same
padded batch (measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torchserve_accel.bert.attention import select_attention  # noqa: E402
from torchserve_accel.bert.ops import select_ops  # noqa: E402
from benchmarks.reference import (  # noqa: E402
    bert_config,
    packed_batch,
    packed_from_hf,
    padded_batch,
    random_hf_classifier,
    random_sequences,
    scenario_lengths,
)
from torchserve_accel.tools.gpu import GpuSampler  # noqa: E402

TINY = dict(vocab_size=3000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
SCENARIOS = ("fixed128x256", "mixed16-128x256", "fixed384x64")
TARGET_SEQ_PER_S = {"fixed128x256": 7000.0, "fixed384x64": 2200.0}
TARGET_SPEEDUP = {"mixed16-128x256": 2.5}  # x hf-fp16-sdpa, same run
CARD_FIELDS = ("sm_mhz", "max_sm_mhz", "power_w", "power_limit_w", "throttle")  # torchserve_accel.tools.gpu.FIELDS


def log(msg: str) -> None:
    print(f"[bert_floor] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ card state


def summarize_samples(samples: list[dict]) -> dict | None:
    """Means over the steady part (the first third of the samples, the ramp-up, is dropped)."""
    steady = samples[len(samples) // 3:]
    if not steady:
        return None

    def mean(key: str) -> float:
        return round(sum(s[key] for s in steady) / len(steady), 1)

    reasons = sorted({s["throttle"] for s in steady})
    power_capped = any(int(r, 16) & 0x4 for r in reasons if r.startswith("0x"))  # SW power cap
    return {"sm_mhz": mean("sm_mhz"), "max_sm_mhz": mean("max_sm_mhz"), "power_w": mean("power_w"),
            "power_limit_w": mean("power_limit_w"), "throttle_reasons": reasons, "power_capped": power_capped,
            "samples": len(steady)}


class CardSampler(GpuSampler):
    """SM clock, power and throttle reasons every ``interval_ms`` while the block runs (``summary`` None without
    NVML or nvidia-smi)."""

    def __init__(self, gpu_index: int = 0, interval_ms: int = 100):
        super().__init__(CARD_FIELDS, interval_ms, indices=[gpu_index])
        self.summary: dict | None = None

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.summary = summarize_samples(self.samples)


def sustained(fn: Callable[[], object], seconds: float, device: torch.device) -> dict:
    """Calls ``fn`` back to back for ``seconds`` (a sync every 4 calls keeps the queue short) -> ms per call and
    the card's state meanwhile."""
    cuda = device.type == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    with CardSampler(device.index or 0) as card:
        start, calls = time.perf_counter(), 0
        while time.perf_counter() - start < seconds or calls < 2:
            fn()
            calls += 1
            if cuda and calls % 4 == 0:
                torch.cuda.synchronize(device)
        if cuda:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
    return {"ms_per_batch": round(elapsed * 1000 / calls, 3), "calls": calls, "card": card.summary}


# ------------------------------------------------------------------------------------------ floors


def floor_stack(model, batch, with_attention: bool) -> Callable[[], None]:
    """The encoder's GEMMs (and attention) alone, at ``batch``'s packed token count, on fixed random activations.

    Unchained on purpose: feeding each GEMM the previous one's output without the LayerNorms would shrink the
    activations layer after layer towards zero, and zeros draw less power than real activations."""
    cfg = model.cfg
    tokens = batch.input_ids.shape[0]
    dtype, device = model.layers[0].qkv.weight.dtype, model.layers[0].qkv.weight.device
    gen = torch.Generator(device=device).manual_seed(1)
    hidden = torch.randn(tokens, cfg.hidden_size, device=device, dtype=dtype, generator=gen)
    inner = F.gelu(torch.randn(tokens, cfg.intermediate_size, device=device, dtype=dtype, generator=gen))
    qkv = torch.randn(tokens, 3, cfg.num_heads, cfg.head_dim, device=device, dtype=dtype, generator=gen)
    meta = model.attention.prepare(batch)

    def run() -> None:
        for layer in model.layers:
            F.linear(hidden, layer.qkv.weight)
            if with_attention:
                model.attention(qkv, meta)
            F.linear(hidden, layer.attn_out.weight)
            F.linear(hidden, layer.ffn_in.weight)
            F.linear(inner, layer.ffn_out.weight)

    return run


def budget(scenario: str, rows: dict) -> dict:
    """What the scenario's target needs in ms per batch, and what is left of it once a floor is paid."""
    sequences = rows["sequences"]
    if scenario in TARGET_SEQ_PER_S:
        target = {"target_seq_per_s": TARGET_SEQ_PER_S[scenario]}
        needed_ms = sequences * 1000 / TARGET_SEQ_PER_S[scenario]
    else:
        speedup = TARGET_SPEEDUP[scenario]
        target = {"target_speedup_vs_hf_fp16": speedup}
        needed_ms = rows["hf-fp16-sdpa"]["ms_per_batch"] / speedup
    out = {**target, "needed_ms_per_batch": round(needed_ms, 3)}
    for floor in ("floor-gemms", "floor-gemms-attention"):
        if floor in rows:
            out[f"budget_left_ms_after_{floor}"] = round(needed_ms - rows[floor]["ms_per_batch"], 3)
    for variant in ("ours", "ours-fused-ffn"):
        if variant in rows and "floor-gemms-attention" in rows:
            out[f"{variant}_ms_beyond_floor"] = round(
                rows[variant]["ms_per_batch"] - rows["floor-gemms-attention"]["ms_per_batch"], 3)
    best = min((rows[v]["ms_per_batch"] for v in ("ours", "ours-fused-ffn") if v in rows), default=None)
    if best is not None:
        out["best_ours_ms_per_batch"] = best
        out["met"] = best <= needed_ms
    return out


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=5.0, help="sustained run per variant")
    parser.add_argument("--tiny", action="store_true", help="a tiny config on CPU (smoke test of this script)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type != "cuda" and not args.tiny:
        log("no CUDA device: use --tiny for a CPU smoke run")
        return 2
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "config": "tiny" if args.tiny else "bert-large (24x1024, 16 heads, vocab 30522), random weights seed 0",
        "seconds_per_variant": args.seconds,
        "command": "bash scripts/gpu_check.sh bert-floor",
        "scenarios": {},
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))

    config = bert_config(num_labels=2, **(TINY if args.tiny else {}))
    hf = random_hf_classifier(config, seed=0, attn_implementation="sdpa").to(device=device, dtype=dtype)
    head_dim = config.hidden_size // config.num_attention_heads
    attention, why_attention = select_attention("auto", device, dtype, head_dim)
    ops, why_ops = select_ops("auto", device, compiled=False)
    ours = packed_from_hf(hf, head="classify", attention=attention, ops=ops)
    fused_ops = None
    if device.type == "cuda":
        from torchserve_accel.bert.triton_gemm import FusedGemmOps, unavailable_reason

        weight = ours.layers[0].ffn_in.weight
        if ops.name == "triton" and unavailable_reason(device, dtype, weight.shape[1], weight.shape[0]) is None:
            fused_ops = FusedGemmOps()
    report["ours"] = {"attention": why_attention, "fusion": why_ops, "fused_ffn_gemm": fused_ops is not None}
    log(f"{report['device']}: {report['ours']}")

    with torch.inference_mode():
        # The card alone: a square fp16 GEMM back to back (8192^3: 640 TFLOP/s on a power-capped H200, 2026-11-27)
        size = 256 if args.tiny else 8192
        a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
        row = sustained(lambda: a @ b, args.seconds, device)
        row["tflops"] = round(2 * size**3 / row["ms_per_batch"] / 1e9, 1)
        report["reference_gemm"] = {"shape": f"{size}^3", **row}
        log(f"reference GEMM {size}^3: {row['tflops']} TFLOP/s sustained, card {row['card']}")
        del a, b
        for scenario in SCENARIOS:
            lengths = scenario_lengths(scenario)
            if args.tiny:
                lengths = [max(2, n // 16) for n in lengths[:8]]
            ids, types = random_sequences(lengths, config.vocab_size, seed=7)
            batch = packed_batch(ids, types, device=device)
            input_ids, token_type_ids, attention_mask = padded_batch(ids, types, device=device)
            rows: dict = {"sequences": len(lengths), "tokens": sum(lengths), "padded_tokens": len(lengths) * max(lengths)}
            variants: list[tuple[str, Callable[[], object]]] = [
                ("hf-fp16-sdpa" if dtype == torch.float16 else "hf-sdpa", lambda: hf(input_ids=input_ids, token_type_ids=token_type_ids,
                                                                             attention_mask=attention_mask)),
                ("ours", lambda: ours(batch)),
            ]
            if fused_ops is not None:
                variants.append(("ours-fused-ffn", lambda: _with_ops(ours, fused_ops, batch)))
            variants += [("floor-gemms", floor_stack(ours, batch, with_attention=False)),
                         ("floor-gemms-attention", floor_stack(ours, batch, with_attention=True))]
            for name, fn in variants:
                row = sustained(fn, args.seconds, device)
                row["seq_per_s"] = round(len(lengths) * 1000 / row["ms_per_batch"], 1)
                rows[name] = row
                card = row["card"] or {}
                log(f"{scenario} {name}: {row['ms_per_batch']:.2f} ms/batch, {row['seq_per_s']:,.0f} seq/s, "
                    f"SM {card.get('sm_mhz')} MHz, {card.get('power_w')} W")
            if "hf-sdpa" in rows:
                rows["hf-fp16-sdpa"] = rows["hf-sdpa"]  # CPU smoke run: the same arithmetic on the fp32 baseline
            rows["budget"] = budget(scenario, rows)
            report["scenarios"][scenario] = rows
            save()
    print_table(report)
    return 0


def _with_ops(model, ops, batch):
    saved, model.ops = model.ops, ops
    try:
        return model(batch)
    finally:
        model.ops = saved


def print_table(report: dict) -> None:
    print(f"\n{report['device']}, torch {report['torch']}, {report['seconds_per_variant']} s sustained per variant; "
          f"reference GEMM {report['reference_gemm']['shape']}: {report['reference_gemm']['tflops']} TFLOP/s")
    print(f"{'scenario':18s} {'variant':22s} {'ms/batch':>9s} {'seq/s':>9s} {'SM MHz':>7s} {'W':>5s}")
    for scenario, rows in report["scenarios"].items():
        for name, row in rows.items():
            if not isinstance(row, dict) or "ms_per_batch" not in row or name == "hf-sdpa":
                continue
            card = row["card"] or {}
            print(f"{scenario:18s} {name:22s} {row['ms_per_batch']:9.2f} {row['seq_per_s']:9,.0f} "
                  f"{card.get('sm_mhz') or '-':>7} {card.get('power_w') or '-':>5}")
        b = rows["budget"]
        left = b.get("budget_left_ms_after_floor-gemms-attention")
        print(f"{'':18s} target needs {b['needed_ms_per_batch']:.2f} ms/batch; left after the GEMM+attention floor: "
              f"{left} ms; met: {b.get('met')}")


if __name__ == "__main__":
    sys.exit(main())
