"""The GPU fast paths against the eager reference path (skipped without CUDA; benchmarks/bench_bert.py runs the
same checks at BERT-Large size on the device)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.reference import (
    bert_config,
    hf_forward,
    max_error,
    ours_forward,
    packed_batch,
    packed_from_hf,
    padded_batch,
    random_hf_classifier,
    random_sequences,
)

pytestmark = pytest.mark.gpu
TINY = dict(vocab_size=3000, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024,
            max_position_embeddings=512)
LENGTHS = [5, 130, 2, 333, 64]


@pytest.fixture(scope="module")
def models():
    hf = random_hf_classifier(bert_config(num_labels=3, **TINY)).cuda()
    hf16 = random_hf_classifier(bert_config(num_labels=3, **TINY)).cuda().half()
    hf16.load_state_dict(hf.state_dict())
    return hf, hf16


def test_fast_paths_fp16_within_3x_of_huggingface_fp16(models):
    from torchserve_accel.bert.attention import select_attention
    from torchserve_accel.bert.ops import select_ops

    hf, hf16 = models
    device = torch.device("cuda")
    attention, why = select_attention("varlen", device, torch.float16, 64)
    ops, _ = select_ops("triton", device, compiled=False)
    ours = packed_from_hf(hf16, attention=attention, ops=ops)
    ids, types = random_sequences(LENGTHS, 3000)
    inputs = padded_batch(ids, types, device="cuda")
    ref, _ = hf_forward(hf, *inputs)
    base, _ = hf_forward(hf16, *inputs)
    hidden, _ = ours_forward(ours, packed_batch(ids, types, device="cuda"), len(ids))
    assert max_error(hidden, ref, inputs[2]) <= 3 * max_error(base, ref, inputs[2])


def test_cuda_graphs_match_eager(models):
    from torchserve_accel.backends.cuda_graphs import GraphSet
    from torchserve_accel.bert.packing import empty_segment, pack_chunks, plan_chunks, view_segment

    _, hf16 = models
    ours = packed_from_hf(hf16, head="classify")
    from torchserve_accel.bert.attention import select_attention
    from torchserve_accel.bert.ops import select_ops

    ours.attention, _ = select_attention("auto", torch.device("cuda"), torch.float16, 64)
    ours.ops, _ = select_ops("auto", torch.device("cuda"), compiled=False)
    ids, types = random_sequences(LENGTHS, 3000)
    (chunk,) = plan_chunks([len(i) for i in ids], 8, 4096, graph_max_tokens=4096, graph_max_seqlen=512)
    graphs = GraphSet(lambda segment: ours(view_segment(segment, chunk.num_tokens, 8, 512)), torch.device("cuda"))
    graphs.capture(chunk.num_tokens, empty_segment(chunk.num_tokens, 8, 512).cuda())  # captured on no sequences
    out = graphs.replay(chunk.num_tokens, pack_chunks(ids, types, [chunk]).cuda())[: len(ids)].clone()
    with torch.inference_mode():
        eager = ours(packed_batch(ids, types, device="cuda"))
    assert max_error(out, eager) < 1e-3


def test_question_answering_on_gpu_graphs_and_eager_within_3x_of_huggingface_fp16(tmp_path):
    """Task qa as the handler runs it (fp16, Triton epilogues, CUDA graphs for small chunks): start/end logits
    within 3x of HF fp16's error against HF fp32, with and without graphs; answers are spans of their context."""
    from transformers import BertForQuestionAnswering

    from torchserve_accel.bert.archive import make_random_checkpoint
    from torchserve_accel.bert.options import BertOptions
    from torchserve_accel.bert.runner import load

    shape = {k: v for k, v in TINY.items() if k != "vocab_size"}
    checkpoint = make_random_checkpoint(tmp_path / "qa", seed=2, config_overrides=shape, task="qa")
    context = " ".join(f"the cat number {i} sat on mat {i} in room {i % 7}." for i in range(60))
    questions = [f"where did cat {i} sit?" for i in range(0, 60, 7)]
    contexts = [context[: 200 + 90 * i] for i in range(len(questions))]
    graphed = load(checkpoint, BertOptions(task="qa", max_length=384), "cuda", 1)
    eager = load(checkpoint, BertOptions(task="qa", max_length=384, cuda_graphs=False), "cuda", 1)
    pairs = graphed.tokenizer.pairs(questions, contexts)
    ours = graphed.engine(pairs)
    inputs = padded_batch(pairs.ids, pairs.type_ids, device="cuda")
    hf32 = BertForQuestionAnswering.from_pretrained(str(checkpoint), torch_dtype=torch.float32).cuda().eval()
    hf16 = BertForQuestionAnswering.from_pretrained(str(checkpoint), torch_dtype=torch.float16).cuda().eval()

    def logits(model):
        with torch.inference_mode():
            out = model(input_ids=inputs[0], token_type_ids=inputs[1], attention_mask=inputs[2])
        return torch.stack([out.start_logits, out.end_logits], -1)[inputs[2].bool()].float().cpu()

    ref = logits(hf32)
    assert (ours - ref).abs().max() <= 3 * (logits(hf16) - ref).abs().max()
    assert (eager.engine(pairs) - ours).abs().max() <= 3 * (logits(hf16) - ref).abs().max()
    answers = graphed.answer(questions, contexts)
    assert all(x["answer"] and x["answer"] == c[x["start"]:x["end"]] for x, c in zip(answers, contexts))
