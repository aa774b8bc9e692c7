#!/usr/bin/env python3
"""BERT-Large on one GPU: HuggingFace baselines and our padding-free encoder in the same run, plus the
correctness gate, printed as a short table and written as JSON.

    python benchmarks/bench_bert.py --out gpu_out/bert.json [--no-compile] [--tiny]
    python benchmarks/bench_bert.py --handler --out FILE   # the handler end to end (archive files -> handle)
    python benchmarks/bench_bert.py --profile --out FILE   # kernel breakdown, GEMM/epilogue microbenchmarks

Variants (random seeded BertForSequenceClassification weights, classify head, batches already on the GPU):
    hf-fp32-eager      HF fp32, eager attention, TF32 off (batch 32; also the correctness reference)
    hf-fp16-sdpa       HF fp16, SDPA attention, padded batch + attention_mask (the baseline of the targets)
    ours-eager         our encoder on packed tokens, Triton epilogues; varlen_attn, or dense SDPA on views when
                       all lengths are equal (the fixed-length scenarios)
    ours-eager-varlen  the same forcing varlen_attn on the fixed-length scenarios
    ours-eager-fused-ffn / ours-eager-unfused-ffn  ours-eager with the FFN choice the load-time pick did not take
                       (the fused Triton GEMM + bias + GELU, or cuBLAS + the separate bias+GELU kernel; sm90+,
                       torchserve_accel/bert/triton_gemm.py), timed beside it and gated for correctness like the others
    ours-graphs        the whole batch replayed from one CUDA graph (token bucket, 256 slots, max_seqlen 512)
    ours-e2e           the packed engine with the archive's defaults: host packing, one H2D copy, graphs only
                       for chunks <= 8192 tokens, one D2H copy (what the handler pays after tokenizing)
    ours-compiled      torch.compile(dynamic=True) of the encoder (Inductor fuses the epilogues) in CUDA graphs
Scenarios: fixed length 128 x batch 256, fixed 384 x 64, uniform lengths 16..128 x 256.
Correctness (mixed-length and fixed-length padded batches): max and mean |ours fp16 - HF fp32| over valid
tokens of the last hidden state must be <= 3x the same for HF fp16; class probabilities likewise; the CUDA-graph
layout (pad tokens, empty slots) must agree with the exact layout. JSON is rewritten after every section, so a
run cut short still leaves its results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from torchserve_accel.bert.attention import select_attention  # noqa: E402
from torchserve_accel.bert.engines import PackedEngine  # noqa: E402
from torchserve_accel.bert.ops import TorchOps, select_ops  # noqa: E402
from torchserve_accel.bert.options import BertOptions  # noqa: E402
from torchserve_accel.bert.packing import pack_chunks, plan_chunks  # noqa: E402
from torchserve_accel.bert.tokenize import Tokenized  # noqa: E402
from benchmarks.reference import (  # noqa: E402
    bert_config,
    hf_forward,
    max_error,
    ours_forward,
    packed_batch,
    packed_from_hf,
    padded_batch,
    random_hf_classifier,
    random_sequences,
    scenario_lengths,
)

SEQ_SLOTS, MAX_TOKENS, MAX_SEQLEN = 256, 32768, 512  # the handler's defaults (archiver_configs/bert_large.yaml)
TINY = dict(vocab_size=3000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
TARGETS = {"fixed128x256": 7000.0, "fixed384x64": 2200.0}  # seq/s; mixed: 2.5x hf-fp16-sdpa
MIXED_TARGET_SPEEDUP = 2.5


def log(msg: str) -> None:
    print(f"[bench_bert {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, fn, iters: int, warmup: int = 3) -> float:
        """Mean milliseconds per call over ``iters`` calls after ``warmup`` calls (events on GPU)."""
        for _ in range(warmup):
            fn()
        self.sync()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / iters
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) * 1000 / iters

    def wall_ms(self, fn, iters: int, warmup: int = 2) -> float:
        """Wall-clock ms per call, for calls that end in their own host sync."""
        for _ in range(warmup):
            fn()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) * 1000 / iters


def graph_segment(ids, types, device):
    """The whole batch as one CUDA-graph chunk (whatever its size, unlike the handler's graph_max_tokens)."""
    (chunk,) = plan_chunks([len(i) for i in ids], SEQ_SLOTS, MAX_TOKENS, graph_max_tokens=MAX_TOKENS,
                           graph_max_seqlen=MAX_SEQLEN)
    return pack_chunks(ids, types, [chunk]).to(device), chunk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--tiny", action="store_true", help="a tiny config (CPU smoke test of this script)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="kernel breakdown and GEMM/epilogue microbenchmarks only")
    parser.add_argument("--handler", action="store_true",
                        help="only the handler end to end: random BERT-Large archive files, initialize, handle batches")
    args = parser.parse_args()
    if args.profile:
        return profile_main(args)
    if args.handler:
        return handler_main(args)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.tiny:
        log("no CUDA device: use --tiny for a CPU smoke run")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # a true fp32 reference
    torch.backends.cudnn.allow_tf32 = False
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    timer = Timer(device)
    iters = 2 if args.tiny else args.iters

    import transformers

    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "config": "tiny" if args.tiny else "bert-large (24x1024, 16 heads, vocab 30522), random weights seed 0",
        "results": [],
        "correctness": [],
    }
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))

    # ------------------------------------------------------------------------------------------ models
    t0 = time.time()
    config = bert_config(num_labels=2, **(TINY if args.tiny else {}))
    hf32 = random_hf_classifier(config, seed=0, attn_implementation="eager").to(device)
    from transformers import AutoModelForSequenceClassification

    with torch.device(device):
        hf16 = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    hf16.load_state_dict(hf32.state_dict())
    hf16 = hf16.to(dtype).eval()
    head_dim = config.hidden_size // config.num_attention_heads
    attention, why_attention = select_attention("auto", device, dtype, head_dim)
    ops, why_ops = select_ops("auto", device, compiled=False)
    ours = packed_from_hf(hf16, head="classify", attention=attention, ops=ops)
    other_ops = None  # the FFN choice the load-time pick did not take, timed beside it
    if ops.name == "triton":  # as the handler does (bert.engines): the fused FFN GEMM if it is faster here
        from torchserve_accel.bert.triton_gemm import FusedGemmOps, pick_ffn_ops, unavailable_reason

        with torch.inference_mode():
            ours.ops, why_gemm = pick_ffn_ops(ours.layers[0].ffn_in, 16384)
        why_ops = f"{why_ops}; FFN: {why_gemm}"
        w = ours.layers[0].ffn_in.weight
        if unavailable_reason(device, dtype, w.shape[1], w.shape[0]) is None:
            other_ops = ops if ours.ops.name != ops.name else FusedGemmOps()
    engine = PackedEngine("packed", ours, ours, BertOptions(max_batch_sequences=SEQ_SLOTS), device, MAX_SEQLEN, 0, {})
    graphs = engine.replay if engine.graphs is not None else None
    report["ours"] = {"attention": why_attention, "fusion": why_ops, "cuda_graphs": graphs is not None}
    log(f"models ready in {time.time() - t0:.1f} s on {report['device']}: {report['ours']}")
    save()

    # ------------------------------------------------------------------------------------------ correctness
    def check(name: str, lengths: list[int], variants: dict) -> None:
        ids, types = random_sequences(lengths, config.vocab_size, seed=len(lengths))
        input_ids, token_types, mask = padded_batch(ids, types, device=device)
        ref_hidden, ref_probs = hf_forward(hf32, input_ids, token_types, mask)
        hf_hidden, hf_probs = hf_forward(hf16, input_ids, token_types, mask)
        hidden, probs = ours_forward(ours, packed_batch(ids, types, device=device), len(ids))
        valid = mask.bool()

        def mean_err(a, b):
            return float((a.float() - b.float()).abs()[valid].mean())

        row = {
            "batch": name,
            "lengths": f"{min(lengths)}..{max(lengths)} x {len(lengths)}",
            "hf_fp16_hidden_max_err": max_error(hf_hidden, ref_hidden, mask),
            "hf_fp16_hidden_mean_err": mean_err(hf_hidden, ref_hidden),
            "hf_fp16_probs_max_err": max_error(hf_probs, ref_probs),
            "ours_hidden_max_err": max_error(hidden, ref_hidden, mask),
            "ours_hidden_mean_err": mean_err(hidden, ref_hidden),
            "ours_probs_max_err": max_error(probs, ref_probs),
            "ours_padding_is_zero": bool(torch.all(hidden[~valid] == 0)),
        }
        floor = 1e-4  # probabilities of random weights sit near 1/labels: don't gate on fp16 noise below this
        ok = (
            row["ours_hidden_max_err"] <= 3 * row["hf_fp16_hidden_max_err"]
            and row["ours_hidden_mean_err"] <= 3 * row["hf_fp16_hidden_mean_err"]
            and row["ours_probs_max_err"] <= 3 * max(row["hf_fp16_probs_max_err"], floor)
            and row["ours_padding_is_zero"]
        )
        for variant, fn in variants.items():
            other = fn(ids, types)
            if isinstance(other, tuple):  # (padded hidden, probs): gate the hidden states too
                other_hidden, other = other
                row[f"{variant}_hidden_max_err"] = max_error(other_hidden, ref_hidden, mask)
                ok = ok and row[f"{variant}_hidden_max_err"] <= 3 * row["hf_fp16_hidden_max_err"]
            other = other[: len(ids)]
            row[f"{variant}_probs_max_err"] = max_error(other, ref_probs)
            row[f"{variant}_vs_eager_probs"] = max_error(other, probs)
            ok = ok and row[f"{variant}_probs_max_err"] <= 3 * max(row["hf_fp16_probs_max_err"], floor)
        alone = ours_forward(ours, packed_batch([ids[1]], [types[1]], device=device), 1)[1]
        row["alone_vs_batched_probs"] = max_error(alone[0], probs[1])
        row["pass"] = bool(ok)
        report["correctness"].append(row)
        log(f"correctness {name}: {json.dumps(row)}")
        save()

    def run_graphs(runner):
        def fn(ids, types):
            segment, chunk = graph_segment(ids, types, device)
            return runner(segment, chunk.num_tokens).clone()

        return fn

    rng = random.Random(1)
    correctness_batches = {
        "mixed16-128x64": [rng.randint(16, 128) for _ in range(64)],
        "mixed32-384x16": [rng.randint(32, 384) for _ in range(16)],
        "fixed128x32 (dense path)": [128] * 32,
    }
    if graphs is not None:
        try:  # a failing capture must not cost the rest of the run
            run_graphs(graphs)(*random_sequences([5, 9], config.vocab_size))
        except Exception as exc:  # noqa: BLE001
            report["ours"]["cuda_graphs"] = f"failed: {type(exc).__name__}: {exc}"
            log(f"CUDA graphs disabled: {report['ours']['cuda_graphs']}")
            graphs = None
    graph_variants = {"ours-graphs": run_graphs(graphs)} if graphs else {}
    if other_ops is not None:
        def run_other(ids, types):
            picked, ours.ops = ours.ops, other_ops
            try:
                return ours_forward(ours, packed_batch(ids, types, device=device), len(ids))
            finally:
                ours.ops = picked

        graph_variants["ours-fused-ffn" if other_ops.name != "triton" else "ours-unfused-ffn"] = run_other
    for name, lengths in correctness_batches.items():
        if args.tiny:
            lengths = [min(n, 64) for n in lengths[:8]]
        check(name, lengths, graph_variants)

    # ------------------------------------------------------------------------------------------ throughput
    hf_fp16_ms: dict[str, float] = {}

    def record(variant: str, scenario: str, lengths: list[int], ms: float, padded_to: int | None = None):
        row = {
            "variant": variant,
            "scenario": scenario,
            "batch": len(lengths),
            "lengths": f"{min(lengths)}..{max(lengths)}" if min(lengths) != max(lengths) else str(lengths[0]),
            "tokens": sum(lengths),
            "padded_tokens": padded_to,
            "ms_per_batch": round(ms, 3),
            "seq_per_s": round(len(lengths) / ms * 1000, 1),
        }
        if scenario in hf_fp16_ms and variant != "hf-fp16-sdpa":
            row["speedup_vs_hf_fp16_sdpa"] = round(hf_fp16_ms[scenario] / ms, 3)
        report["results"].append(row)
        log(f"{variant:18s} {scenario:16s} {row['seq_per_s']:>9.1f} seq/s  {ms:8.2f} ms/batch")
        save()

    scenarios = ["fixed128x256", "fixed384x64", "mixed16-128x256"]
    batches = {}
    for scenario in scenarios:
        lengths = scenario_lengths(scenario)
        if args.tiny:
            lengths = [min(n, 64) for n in lengths[:16]]
        ids, types = random_sequences(lengths, config.vocab_size, seed=7)
        batches[scenario] = (lengths, ids, types)

    with torch.inference_mode():
        for scenario in ("fixed128x256", "mixed16-128x256"):  # fp32 eager at batch 32 (memory and time)
            lengths, ids, types = batches[scenario]
            small = padded_batch(ids[:32], types[:32], device=device)
            ms = timer.ms(lambda: hf32(input_ids=small[0], token_type_ids=small[1], attention_mask=small[2]), max(2, iters // 4), 1)
            record("hf-fp32-eager", scenario, lengths[:32], ms, small[0].numel())
        for scenario in scenarios:
            lengths, ids, types = batches[scenario]
            inputs = padded_batch(ids, types, device=device)
            ms = timer.ms(lambda: hf16(input_ids=inputs[0], token_type_ids=inputs[1], attention_mask=inputs[2]), iters)
            hf_fp16_ms[scenario] = ms
            record("hf-fp16-sdpa", scenario, lengths, ms, inputs[0].numel())
            exact = packed_batch(ids, types, device=device)
            record("ours-eager", scenario, lengths, timer.ms(lambda: ours(exact), iters), exact.num_tokens)
            if other_ops is not None:  # the same with the FFN choice the pick did not take
                picked, ours.ops = ours.ops, other_ops
                label = "ours-eager-unfused-ffn" if other_ops.name == "triton" else "ours-eager-fused-ffn"
                record(label, scenario, lengths, timer.ms(lambda: ours(exact), iters), exact.num_tokens)
                ours.ops = picked
            if exact.uniform:  # the same batch through varlen_attn instead of dense SDPA
                ragged = dataclasses.replace(exact, uniform=False)
                record("ours-eager-varlen", scenario, lengths, timer.ms(lambda: ours(ragged), iters), exact.num_tokens)
            if graphs is not None:
                segment, chunk = graph_segment(ids, types, device)
                ms = timer.ms(lambda: graphs(segment, chunk.num_tokens), iters)
                record("ours-graphs", scenario, lengths, ms, chunk.num_tokens)
            # What the handler runs after tokenizing: the packed engine with the archive's default options
            # (host packing, one H2D copy, eager for chunks over graph_max_tokens, one D2H copy).
            tokenized = Tokenized(ids, types, [False] * len(ids))
            record("ours-e2e", scenario, lengths, timer.wall_ms(lambda: engine(tokenized), iters), sum(lengths))
        report["tokenize_ms_256_texts"] = tokenize_ms(args.tiny)
        log(f"tokenizing 256 texts of ~90 words (made-up WordPiece vocab): {report['tokenize_ms_256_texts']} ms")
        report["targets"] = targets(report)
        save()
        print_table(report)

        # -------------------------------------------------------------------------------------- compiled
        if args.no_compile or graphs is None:
            return 0 if args.tiny or all(r["pass"] for r in report["correctness"]) else 1  # tiny: fp32 on CPU, no fp16 gate
        t0 = time.time()
        ours_c = packed_from_hf(hf16, head="classify", attention=attention, ops=TorchOps())
        compiled = torch.compile(ours_c, dynamic=True)
        graphs_c = PackedEngine("inductor", ours_c, compiled, BertOptions(max_batch_sequences=SEQ_SLOTS), device,
                                MAX_SEQLEN, 0, {}).replay
        lengths, ids, types = batches["fixed128x256"]
        segment, chunk = graph_segment(ids, types, device)
        try:
            graphs_c(segment, chunk.num_tokens)
        except Exception as exc:  # noqa: BLE001
            report["compile_error"] = f"{type(exc).__name__}: {exc}"[:2000]
            log(f"compiled variant failed: {report['compile_error']}")
            save()
            return 0 if args.tiny or all(r["pass"] for r in report["correctness"]) else 1  # tiny: fp32 on CPU, no fp16 gate
        report["compile_s"] = round(time.time() - t0, 1)
        log(f"torch.compile + first graph capture: {report['compile_s']} s")
        save()
        for name, lengths_c in correctness_batches.items():
            check(f"{name} (compiled)", lengths_c, {"ours-compiled": run_graphs(graphs_c)})
        for scenario in scenarios:
            lengths, ids, types = batches[scenario]
            segment, chunk = graph_segment(ids, types, device)
            record("ours-compiled", scenario, lengths, timer.ms(lambda: graphs_c(segment, chunk.num_tokens), iters), chunk.num_tokens)
    report["targets"] = targets(report)
    save()
    print_table(report)
    return 0 if args.tiny or all(r["pass"] for r in report["correctness"]) else 1  # tiny: fp32 on CPU, no fp16 gate


def tokenize_ms(tiny: bool) -> float:
    """The handler's BatchTokenizer (fast tokenizer, one call per batch) over 256 English-like texts."""
    import tempfile

    from torchserve_accel.bert.tokenize import BatchTokenizer
    from torchserve_accel.bert.vocab import build_vocab, save_wordpiece_tokenizer

    vocab = build_vocab()
    words = [w for w in vocab[200:1200] if w.isalpha()]
    rng = random.Random(0)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(10, 110))) for _ in range(256)]
    with tempfile.TemporaryDirectory() as tmp:
        save_wordpiece_tokenizer(Path(tmp), vocab)
        tokenizer = BatchTokenizer.from_dir(Path(tmp), MAX_SEQLEN)
    tokenizer(texts)
    t0 = time.perf_counter()
    for _ in range(3 if tiny else 10):
        tokenizer(texts)
    return round((time.perf_counter() - t0) * 1000 / (3 if tiny else 10), 2)


class _Context:
    """The parts of TorchServe's Context the handler touches (no metrics: TorchServe is not installed here)."""

    def __init__(self, model_dir: Path, yaml_config: dict, gpu_id):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id, "batch_size": 64}
        self.model_yaml_config = yaml_config
        self.metrics = None
        self.statuses: dict = {}

    def set_response_status(self, code=200, phrase="", idx=0):
        self.statuses[idx] = code

    def set_response_content_type(self, idx, value):
        pass


def handler_main(args) -> int:
    """What a worker does: archive files for a random BERT-Large, initialize with archiver_configs/bert_large.yaml,
    then batches of 64 requests x 4 texts (mixed lengths, one bad request) through ``handle``."""
    import shutil
    import tempfile

    import yaml

    sys.path.insert(0, str(REPO / "handlers"))  # as TorchServe puts the archive root on sys.path
    from bert_handler import BertHandler

    from torchserve_accel.bert.archive import prepare_archive_files
    from torchserve_accel.bert.vocab import build_vocab

    report: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                    "torch": torch.__version__}
    config = yaml.safe_load((REPO / "archiver_configs/bert_large.yaml").read_text())
    overrides = TINY if args.tiny else None
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        files = prepare_archive_files(Path(tmp) / "staging", None, log, config_overrides=overrides)
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        for path in [files.serialized_file, *files.extra_files]:
            shutil.move(str(path), model_dir / path.name)
        report["prepare_s"] = round(time.time() - t0, 1)
        t0 = time.time()
        handler = BertHandler()
        context = _Context(model_dir, config, 0 if torch.cuda.is_available() else None)
        handler.initialize(context)
        report["initialize_s"] = round(time.time() - t0, 1)
        report["runner"] = handler.runner.description
        log(f"prepared in {report['prepare_s']} s, initialized in {report['initialize_s']} s: {report['runner']}")
        words = [w for w in build_vocab()[200:1200] if w.isalpha()]
        rng = random.Random(0)
        requests = [{"body": {"texts": [" ".join(rng.choice(words) for _ in range(rng.randint(12, 110)))
                                        for _ in range(4)]}} for _ in range(64)]
        requests[5] = {"body": {"texts": []}}
        handler.handle(requests, context)
        iters = 2 if args.tiny else 10
        t0 = time.perf_counter()
        for _ in range(iters):
            context.statuses.clear()
            responses = handler.handle(requests, context)
        ms = (time.perf_counter() - t0) * 1000 / iters
        first = json.loads(responses[0])
        report["handle_ms_per_batch"] = round(ms, 2)
        report["texts_per_batch"] = 63 * 4
        report["texts_per_s"] = round(63 * 4 / ms * 1000, 1)
        report["bad_request_status"] = context.statuses
        report["sample_response"] = {"batch_size": first["batch_size"], "first": first["results"][0]}
        ok = context.statuses == {5: 400} and first["batch_size"] == 64 and len(responses) == 64
        report["pass"] = ok
        log(f"handler: {ms:.1f} ms per batch of 64 requests (252 texts): {report['texts_per_s']} texts/s; pass={ok}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


def profile_main(args) -> int:
    """Where the time goes: per-kernel breakdown of one forward, GEMM and epilogue microbenchmarks, options."""
    from torchserve_accel.bert.encoder import EncoderConfig, PackedBert
    from torchserve_accel.bert.triton_gemm import CANDIDATES as GEMM_CANDIDATES
    from torchserve_accel.bert.triton_gemm import FusedGemmOps
    from torchserve_accel.bert.triton_gemm import linear_gelu as fused_linear_gelu
    from torchserve_accel.bert.triton_ops import TritonOps

    device = torch.device("cuda")
    report: dict = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "profile": {}}
    timer = Timer(device)

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))

    cfg = EncoderConfig(30522, 1024, 24, 16, 4096, 512, 2, 1e-12, num_labels=2)
    attention, _ = select_attention("auto", device, torch.float16, 64)
    with torch.device(device):
        model = PackedBert(cfg, attention=attention, ops=TritonOps(), head="classify").half().eval()
    lengths = scenario_lengths("fixed128x256")
    ids, types = random_sequences(lengths, cfg.vocab_size, seed=7)
    batch = packed_batch(ids, types, device=device)
    mixed = scenario_lengths("mixed16-128x256")
    mids, mtypes = random_sequences(mixed, cfg.vocab_size, seed=7)
    mbatch = packed_batch(mids, mtypes, device=device)
    ids384, types384 = random_sequences(scenario_lengths("fixed384x64"), cfg.vocab_size, seed=7)
    batch384 = packed_batch(ids384, types384, device=device)
    prof = report["profile"]

    with torch.inference_mode():
        # 1. kernel breakdown of one forward (fixed 128 x 256), Triton epilogues, then the fused FFN GEMM
        from torch.profiler import ProfilerActivity, profile

        def kernel_table(key: str, title: str) -> None:
            for _ in range(3):
                model(batch)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as p:
                model(batch)
                torch.cuda.synchronize()
            rows = []
            for e in p.key_averages():
                t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
                if t > 0:
                    rows.append((t / 1000, e.count, e.key[:110]))
            rows.sort(reverse=True)
            total = sum(r[0] for r in rows)
            prof[key] = {"total_ms": round(total, 3),
                         "kernels": [{"ms": round(t, 3), "count": c, "kernel": k} for t, c, k in rows[:25]]}
            print(f"\nkernel breakdown, {title} (total {total:.2f} ms of kernels):")
            for t, c, k in rows[:25]:
                print(f"  {t:8.3f} ms  {c:4d}x  {k}")
            save()

        kernel_table("kernels_fixed128x256", "one forward fixed 128x256")
        model.ops = FusedGemmOps()
        try:
            kernel_table("kernels_fixed128x256_fused_gemm", "one forward fixed 128x256, fused FFN GEMM")
        except Exception as exc:  # noqa: BLE001 - record and go on
            prof["kernels_fixed128x256_fused_gemm"] = f"{type(exc).__name__}: {exc}"[:500]
            print("fused GEMM failed:", prof["kernels_fixed128x256_fused_gemm"])
        model.ops = TritonOps()

        # 2. GEMMs at the encoder's shapes
        def tflops(m, n, k, ms):
            return round(2 * m * n * k / ms / 1e9, 1)

        gemms = []
        for m in (32768, 18432):
            x1 = torch.randn(m, 1024, device=device, dtype=torch.float16)
            x4 = torch.randn(m, 4096, device=device, dtype=torch.float16)
            for n, k in ((3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)):
                x = x1 if k == 1024 else x4
                w = torch.randn(n, k, device=device, dtype=torch.float16) / 32
                b = torch.randn(n, device=device, dtype=torch.float16)
                row = {"m": m, "n": n, "k": k}
                row["cublas_ms"] = timer.ms(lambda: torch.nn.functional.linear(x, w), 20)
                row["cublas_bias_ms"] = timer.ms(lambda: torch.nn.functional.linear(x, w, b), 20)
                if n == 4096:
                    row["cublas_then_triton_gelu_ms"] = timer.ms(lambda: TritonOps.bias_gelu(torch.nn.functional.linear(x, w), b), 20)
                    ref = torch.nn.functional.gelu(torch.nn.functional.linear(x[:512].float(), w.float(), b.float()))
                    for cfg in GEMM_CANDIDATES:
                        try:
                            got = fused_linear_gelu(x[:512], w, b, cfg)
                            row[f"fused_gemm_gelu[{cfg.label()}]_ms"] = timer.ms(lambda: fused_linear_gelu(x, w, b, cfg), 20)
                            row[f"fused_gemm_gelu[{cfg.label()}]_max_err"] = (got.float() - ref).abs().max().item()
                        except Exception as exc:  # noqa: BLE001 - record and go on
                            row[f"fused_gemm_gelu[{cfg.label()}]_error"] = f"{type(exc).__name__}: {exc}"[:300]
                    # Reference only (a private op, not used by the encoder): cuBLASLt's own GELU epilogue.
                    if hasattr(torch, "_addmm_activation"):
                        wt = w.t()
                        row["reference_cublaslt_gelu_epilogue_ms"] = timer.ms(lambda: torch._addmm_activation(b, x, wt, use_gelu=True), 20)
                row = {k2: (round(v, 4) if isinstance(v, float) else v) for k2, v in row.items()}
                row["cublas_tflops"] = tflops(m, n, k, row["cublas_ms"])
                gemms.append(row)
                print("gemm", row)
        prof["gemms"] = gemms
        save()

        # 3. epilogues and attention, per layer call
        h = torch.randn(32768, 4096, device=device, dtype=torch.float16)
        bias4 = torch.randn(4096, device=device, dtype=torch.float16)
        x = torch.randn(32768, 1024, device=device, dtype=torch.float16)
        res = torch.randn_like(x)
        norm = model.layers[0].attn_norm
        epi = {
            "triton_bias_gelu_32768x4096_ms": timer.ms(lambda: TritonOps.bias_gelu(h, bias4), 20),
            "torch_gelu_32768x4096_ms": timer.ms(lambda: torch.nn.functional.gelu(h), 20),
            "triton_bias_res_ln_32768x1024_ms": timer.ms(lambda: TritonOps.bias_residual_layernorm(x, bias4[:1024], res, norm), 20),
            "torch_ln_32768x1024_ms": timer.ms(lambda: torch.nn.functional.layer_norm(x, (1024,), norm.weight, norm.bias), 20),
        }
        qkv = torch.randn(32768, 3, 16, 64, device=device, dtype=torch.float16)
        meta = attention.prepare(dataclasses.replace(batch, uniform=False))
        epi["varlen_attn_fixed128_ms"] = timer.ms(lambda: attention(qkv, meta), 20)
        dense_meta = attention.prepare(batch)  # uniform lengths: plain SDPA on views
        epi["uniform_dense_attn_fixed128_ms"] = timer.ms(lambda: attention(qkv, dense_meta), 20)
        q = torch.randn(256, 16, 128, 64, device=device, dtype=torch.float16)
        epi["sdpa_dense_256x128_ms"] = timer.ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q), 20)
        big = packed_batch(ids, types, device=device, bucketed=True, seq_slots=256, max_seqlen=512)
        meta512 = attention.prepare(big)
        epi["varlen_attn_fixed128_maxseqlen512_slots256_ms"] = timer.ms(lambda: attention(qkv, meta512), 20)
        prof["epilogues_attention"] = {k: round(v, 4) for k, v in epi.items()}
        print("epilogues/attention", prof["epilogues_attention"])
        save()

        # 4. whole forward under options
        forward = {}
        forward["triton_ops_fixed128"] = timer.ms(lambda: model(batch), 10)
        forward["triton_ops_mixed"] = timer.ms(lambda: model(mbatch), 10)
        model.ops = TorchOps()
        forward["torch_ops_fixed128"] = timer.ms(lambda: model(batch), 10)
        model.ops = TritonOps()
        try:
            torch.backends.cuda.preferred_blas_library("cublaslt")
            forward["cublaslt_triton_ops_fixed128"] = timer.ms(lambda: model(batch), 10)
            torch.backends.cuda.preferred_blas_library("cublas")
        except Exception as exc:  # noqa: BLE001
            forward["cublaslt_error"] = f"{type(exc).__name__}: {exc}"[:300]
        fused = FusedGemmOps()
        ref_out = model(batch)
        model.ops = fused
        forward["fused_gemm_max_abs_diff_vs_triton_ops"] = (model(batch) - ref_out).abs().max().item()
        forward["fused_gemm_fixed128"] = timer.ms(lambda: model(batch), 10)
        forward["fused_gemm_mixed"] = timer.ms(lambda: model(mbatch), 10)
        forward["fused_gemm_fixed384x64"] = timer.ms(lambda: model(batch384), 10)
        model.ops = TritonOps()
        forward["triton_ops_fixed384x64"] = timer.ms(lambda: model(batch384), 10)
        for slots, seqlen in ((256, 128), (256, 512)):
            g = PackedEngine("packed", model, model, BertOptions(max_batch_sequences=slots), device, seqlen, 0, {}).replay
            (chunk,) = plan_chunks(mixed, slots, MAX_TOKENS, graph_max_tokens=MAX_TOKENS, graph_max_seqlen=seqlen)
            seg = pack_chunks(mids, mtypes, [chunk]).to(device)
            forward[f"graphs_mixed_slots{slots}_maxseqlen{seqlen}_tokens{chunk.num_tokens}"] = timer.ms(lambda: g(seg, chunk.num_tokens), 10)
        prof["forward_ms"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in forward.items()}
        print("forward", json.dumps(prof["forward_ms"], indent=1))
        save()

        # 5. what Inductor's max-autotune makes of GELU(linear(x)) (Triton templates with the epilogue fused)
        x = torch.randn(32768, 1024, device=device, dtype=torch.float16)
        w = torch.randn(4096, 1024, device=device, dtype=torch.float16) / 32
        b = torch.randn(4096, device=device, dtype=torch.float16)
        try:
            t0 = time.perf_counter()
            fn = torch.compile(lambda x: torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b)),
                               mode="max-autotune-no-cudagraphs", dynamic=False)
            fn(x)
            prof["max_autotune_linear_gelu"] = {"compile_s": round(time.perf_counter() - t0, 1),
                                                "ms_32768x4096x1024": round(timer.ms(lambda: fn(x), 20), 4)}
        except Exception as exc:  # noqa: BLE001
            prof["max_autotune_linear_gelu"] = f"{type(exc).__name__}: {exc}"[:500]
        print("max-autotune linear+gelu", prof["max_autotune_linear_gelu"])
        save()
    return 0


def targets(report: dict) -> dict:
    if report["config"] == "tiny":
        return {}
    best: dict[str, float] = {}
    hf: dict[str, float] = {}
    for row in report["results"]:
        if row["variant"].startswith("ours") and row["variant"] != "ours-e2e":
            best[row["scenario"]] = max(best.get(row["scenario"], 0.0), row["seq_per_s"])
        if row["variant"] == "hf-fp16-sdpa":
            hf[row["scenario"]] = row["seq_per_s"]
    out = {}
    for scenario, goal in TARGETS.items():
        if scenario in best:
            out[scenario] = {"best_seq_per_s": best[scenario], "target": goal, "met": best[scenario] >= goal}
    mixed = "mixed16-128x256"
    if mixed in best and mixed in hf:
        speedup = best[mixed] / hf[mixed]
        out[mixed] = {"best_speedup_vs_hf_fp16": round(speedup, 3), "target": MIXED_TARGET_SPEEDUP,
                      "met": speedup >= MIXED_TARGET_SPEEDUP}
    return out


def print_table(report: dict) -> None:
    print(f"\nBERT on {report['device']} (torch {report['torch']}, transformers {report['transformers']})")
    print(f"ours: {report.get('ours')}")
    print(f"{'variant':18s} {'scenario':16s} {'batch':>5s} {'seq/s':>9s} {'ms/batch':>9s} {'vs HF fp16':>10s}")
    for r in report["results"]:
        speedup = r.get("speedup_vs_hf_fp16_sdpa")
        print(f"{r['variant']:18s} {r['scenario']:16s} {r['batch']:5d} {r['seq_per_s']:9.1f} {r['ms_per_batch']:9.2f} "
              f"{(f'{speedup:.2f}x' if speedup else ''):>10s}")
    for c in report["correctness"]:
        print(f"correctness {c['batch']:28s} pass={c['pass']}  ours max/mean {c['ours_hidden_max_err']:.2e}/"
              f"{c['ours_hidden_mean_err']:.2e}  hf16 max/mean {c['hf_fp16_hidden_max_err']:.2e}/{c['hf_fp16_hidden_mean_err']:.2e}")
    for scenario, t in report.get("targets", {}).items():
        print(f"target {scenario}: {t}")


if __name__ == "__main__":
    sys.exit(main())
