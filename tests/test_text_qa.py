"""Extractive question answering (task qa): span scoring against a brute-force reference, our encoder's start/end
logits against HuggingFace's BertForQuestionAnswering on the same checkpoint, and the handler end to end on CPU
(good and bad requests in one batch)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from torchserve_accel.serving.options import OptionsError
from torchserve_accel.bert.archive import make_random_checkpoint, prepare_archive_files
from torchserve_accel.bert.checkpoint import load_packed_bert
from torchserve_accel.bert.runner import load
from torchserve_accel.serving.requests import RequestError
from torchserve_accel.bert.options import BertOptions
from torchserve_accel.bert.qa import answers as span_answers
from torchserve_accel.bert.qa import best_spans
from torchserve_accel.bert.tokenize import TokenizedPairs, context_windows
from benchmarks.reference import padded_batch
from torchserve_accel.bert.remap import hf_to_packed, packed_to_hf
from tests.fake_context import FakeContext

REPO = Path(__file__).resolve().parent.parent
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
CONTEXT = ("The cat sat on the mat in the kitchen while the dog slept on the sofa. Later the cat went out into "
           "the garden, climbed the old apple tree and watched the birds until dinner time.")
QUESTIONS = ["Where did the cat sit?", "What did the dog do?", "Which tree did the cat climb?"]


def brute_force(start: torch.Tensor, end: torch.Tensor, in_context: torch.Tensor, width: int):
    """HF pipeline's scoring, written out: softmax over context tokens, every (s, e) with s <= e < s + width."""
    if not in_context.any():
        return 0, 0, 0.0
    p_start = torch.softmax(start.masked_fill(~in_context, float("-inf")), -1)
    p_end = torch.softmax(end.masked_fill(~in_context, float("-inf")), -1)
    best = (0, 0, -1.0)
    for s in range(len(start)):
        for e in range(s, min(len(start), s + width)):
            score = float(p_start[s] * p_end[e])
            if score > best[2]:
                best = (s, e, score)
    return best


def test_best_spans_match_the_brute_force_reference():
    gen = torch.Generator().manual_seed(0)
    lengths = [7, 31, 2, 19, 12]
    logits = torch.randn(sum(lengths), 2, generator=gen) * 3
    in_context = torch.rand(sum(lengths), generator=gen) > 0.3
    in_context[7 + 31 : 7 + 31 + 2] = False  # a sequence with no context token at all
    start, end, score = best_spans(logits, lengths, in_context, max_answer_tokens=5)
    offset = 0
    for i, n in enumerate(lengths):
        rows = slice(offset, offset + n)
        s, e, p = brute_force(logits[rows, 0], logits[rows, 1], in_context[rows], 5)
        assert (start[i].item(), end[i].item()) == (s, e), i
        assert score[i].item() == pytest.approx(p, rel=1e-5, abs=1e-7)
        if p > 0:
            assert in_context[rows][s] and in_context[rows][e] and s <= e < s + 5
        offset += n


# ------------------------------------------------------------------------------------------ against HuggingFace


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("qa") / "bert", seed=5, config_overrides=TINY, task="qa")


def test_remap_round_trip_keeps_the_qa_head(checkpoint):
    from safetensors.torch import load_file

    hf_state = load_file(str(checkpoint / "model.safetensors"))
    assert "qa_outputs.weight" in hf_state and not any(k.startswith("bert.pooler") for k in hf_state)
    ours = hf_to_packed(hf_state)
    assert ours["qa_outputs.weight"].shape == (2, TINY["hidden_size"])
    back = packed_to_hf(ours)
    assert set(back) == set(hf_state) - {"bert.embeddings.position_ids"}
    assert all(torch.equal(back[k], hf_state[k]) for k in back)


def test_start_end_logits_and_answers_match_huggingface(checkpoint):
    from transformers import BertForQuestionAnswering

    hf = BertForQuestionAnswering.from_pretrained(str(checkpoint), torch_dtype=torch.float32).eval()
    runner = load(checkpoint, BertOptions(task="qa", max_length=48, doc_stride=8), "cpu", 1)
    contexts = [CONTEXT, CONTEXT[:60], CONTEXT]
    pairs = runner.tokenizer.pairs(QUESTIONS, contexts, doc_stride=8)
    assert pairs.rows.count(1) == 1 and pairs.rows.count(0) > 1 and not pairs.errors and not any(pairs.truncated)
    ours = runner.engine(pairs)  # (tokens, 2) packed
    input_ids, token_types, mask = padded_batch(pairs.ids, pairs.type_ids)
    with torch.inference_mode():
        out = hf(input_ids=input_ids, token_type_ids=token_types, attention_mask=mask)
    hf_logits = torch.stack([out.start_logits, out.end_logits], dim=-1)[mask.bool()]  # (tokens, 2), same order
    assert ours.shape == hf_logits.shape
    assert (ours - hf_logits).abs().max().item() < 1e-4

    answers = runner.answer(QUESTIONS, contexts)
    best: dict[int, tuple] = {}  # pair -> (score, start char, end char) over its windows
    offset = 0
    for row, (index, length) in enumerate(zip(pairs.rows, pairs.lengths)):
        rows = slice(offset, offset + length)
        s, e, p = brute_force(hf_logits[rows, 0], hf_logits[rows, 1], torch.tensor(pairs.in_context[row]), 30)
        if index not in best or p > best[index][0]:
            best[index] = (p, pairs.offsets[row][s][0], pairs.offsets[row][e][1])
        offset += length
    for index, answer in enumerate(answers):
        p, first, last = best[index]
        assert (answer["start"], answer["end"]) == (first, last)
        assert answer["answer"] == contexts[index][first:last] and answer["answer"]
        assert answer["score"] == pytest.approx(p, rel=1e-3)


def test_a_question_too_long_for_max_length_fails_alone(checkpoint):
    runner = load(checkpoint, BertOptions(task="qa", max_length=16), "cpu", 1)
    answers = runner.answer(["short?", "a question far too long " * 5, "where?"], [CONTEXT] * 3)
    assert isinstance(answers[1], RequestError) and answers[1].status == 413 and "max_length=16" in answers[1].message
    assert isinstance(answers[0], dict) and isinstance(answers[2], dict)
    assert answers[0]["truncated"] is False  # 16-token rows: the context runs in windows, none dropped
    capped = load(checkpoint, BertOptions(task="qa", max_length=16, max_windows=2), "cpu", 1)
    (answer,) = capped.answer(["short?"], [CONTEXT])
    assert answer["truncated"] is True and answer["end"] < len(CONTEXT) // 2


def test_context_windows_cover_the_context_with_the_stride_overlap():
    assert context_windows(10, room=20, doc_stride=128, max_windows=16) == ([0], False)
    starts, truncated = context_windows(100, room=20, doc_stride=8, max_windows=16)
    assert starts == [0, 12, 24, 36, 48, 60, 72, 84] and not truncated  # step 20 - 8; last window reaches 104
    assert context_windows(100, room=20, doc_stride=128, max_windows=16)[0][:3] == [0, 10, 20]  # overlap <= room / 2
    assert context_windows(100, room=20, doc_stride=0, max_windows=3) == ([0, 20, 40], True)
    assert context_windows(0, room=5, doc_stride=2, max_windows=4) == ([0], False)


def test_pair_rows_repeat_the_question_and_overlap_the_context(checkpoint):
    from torchserve_accel.bert.tokenize import BatchTokenizer

    tokenizer = BatchTokenizer.from_dir(checkpoint, max_length=24)
    pairs = tokenizer.pairs(["where did the cat sit?"], [CONTEXT], doc_stride=4, max_windows=16)
    whole = tokenizer.pairs(["q"], [CONTEXT], doc_stride=0, max_windows=1_000)
    context_tokens = [t for ids, flags in zip(whole.ids, whole.in_context) for t, f in zip(ids, flags) if f]
    seen: list[int] = []
    for ids, types, flags, offsets in zip(pairs.ids, pairs.type_ids, pairs.in_context, pairs.offsets):
        assert len(ids) <= 24 and len(ids) == len(types) == len(flags) == len(offsets)
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        window = [t for t, f in zip(ids, flags) if f]
        if seen:
            assert window[:4] == seen[-4:]  # 4 tokens of overlap
            seen += window[4:]
        else:
            seen = window
        assert all(types[i] == (1 if f else types[i]) for i, f in enumerate(flags))
        chars = [CONTEXT[a:b] for (a, b), f in zip(offsets, flags) if f]
        assert all(chars)  # every context token maps back to characters of the context
    assert seen == context_tokens and set(pairs.rows) == {0} and len(pairs.rows) > 2


def test_the_best_window_answers():
    """Two windows of one pair ("the cat" and "cat sat"): the answer is the best span of either window."""
    context = "the cat sat"
    pairs = TokenizedPairs(ids=[[1, 2, 3, 4]] * 2, type_ids=[[0, 1, 1, 1]] * 2, truncated=[False, False],
                           offsets=[[(0, 0), (0, 3), (4, 7), (0, 0)], [(0, 0), (4, 7), (8, 11), (0, 0)]],
                           in_context=[[False, True, True, False]] * 2, rows=[0, 0], errors={})
    logits = torch.zeros(8, 2)  # flat: every span of both windows scores 0.25, the first one found wins
    (answer,) = span_answers(pairs, [context], logits, max_answer_tokens=5)
    assert answer == {"answer": "the", "score": 0.25, "start": 0, "end": 3, "truncated": False}
    logits[6] = 5.0  # row 1, token 2 ("sat"): a confident start and end
    (answer,) = span_answers(pairs, [context], logits, max_answer_tokens=5)
    assert (answer["answer"], answer["start"], answer["end"]) == ("sat", 8, 11) and answer["score"] > 0.98


def test_qa_needs_a_qa_checkpoint_and_the_packed_encoder(tmp_path, checkpoint):
    classifier = make_random_checkpoint(tmp_path / "cls", seed=1, config_overrides=TINY)
    with pytest.raises(ValueError, match="BertForQuestionAnswering"):
        load_packed_bert(classifier, "qa", "cpu", torch.float32)
    with pytest.raises(ValueError, match="classifier"):
        load_packed_bert(checkpoint, "classify", "cpu", torch.float32)
    with pytest.raises(OptionsError, match="packed or inductor backend"):
        BertOptions(task="qa", backend="tensorrt").validate()
    with pytest.raises(OptionsError, match="embed only"):
        BertOptions(task="qa", pooling="mean").validate()
    with pytest.raises(OptionsError, match="max_answer_tokens"):
        BertOptions(task="qa", max_answer_tokens=0).validate()


def test_random_archive_for_task_qa_is_a_qa_checkpoint(tmp_path):
    messages = []
    files = prepare_archive_files(tmp_path, None, messages.append, config_overrides=TINY,
                                  handler_options={"task": "qa"})
    config = json.loads(next(p for p in files.extra_files if p.name == "config.json").read_text())
    assert config["architectures"] == ["BertForQuestionAnswering"]
    assert any("BertForQuestionAnswering with RANDOM" in m for m in messages)


# ------------------------------------------------------------------------------------------ the handler


@pytest.fixture(scope="module")
def handler(tmp_path_factory, checkpoint):
    from bert_handler import BertHandler

    model_dir = tmp_path_factory.mktemp("qa-model")
    for path in checkpoint.iterdir():
        shutil.copy(path, model_dir / path.name)
    config = yaml.safe_load((REPO / "archiver_configs/bert_large.yaml").read_text())
    config["handler"].update(task="qa", max_length=32, max_items_per_request=3, max_windows=2)  # CONTEXT needs 3
    context = FakeContext(model_dir, model_yaml_config=config)
    service = BertHandler()
    service.initialize(context)
    return service


def test_handler_answers_good_requests_and_refuses_bad_ones_alone(handler):
    data = [
        {"body": {"question": QUESTIONS[0], "context": CONTEXT}},
        {"body": {"pairs": [{"question": q, "context": CONTEXT} for q in QUESTIONS[1:]]}},
        {"body": {"question": "where?"}},
        {"body": {"question": "", "context": CONTEXT}},
        {"body": {"pairs": [{"question": "q?", "context": "c."}] * 4}},
        {"body": bytearray(b'{"question": "unterminated')},
        {"body": {"pairs": [{"question": "fine?", "context": "fine."}, {"question": "x " * 40, "context": "c"}]}},
        {"body": {"question": "Where is the mat?", "context": "The mat is in the kitchen."}},
        {"body": bytearray(json.dumps({"question": "Where did the dog sleep?", "context": CONTEXT}).encode())},
        {"body": {"pairs": "not a list"}},
    ]
    context = FakeContext("unused")
    answers = [json.loads(a) for a in handler.handle(data, context)]
    codes = [context.statuses.get(i, (200, ""))[0] for i in range(len(data))]
    assert codes == [200, 200, 400, 400, 413, 400, 413, 200, 200, 400], answers
    single, listed = answers[0], answers[1]
    assert single["answer"] == CONTEXT[single["start"]:single["end"]] and 0 < single["score"] <= 1
    assert single["batch_size"] == len(data) and single["truncated"] is True
    assert [r["answer"] == CONTEXT[r["start"]:r["end"]] for r in listed["results"]] == [True, True]
    assert 'exactly the fields "question" and "context"' in answers[2]["error"]
    assert "question is empty" in answers[3]["error"]
    assert "4 items, more than the limit of 3" in answers[4]["error"]
    assert "not valid JSON" in answers[5]["error"]
    assert answers[6]["error"].startswith("pairs[1]: the question has 40 tokens and leaves no room")
    assert answers[7]["truncated"] is False and answers[7]["answer"] in "The mat is in the kitchen."
    assert answers[8]["answer"] == CONTEXT[answers[8]["start"]:answers[8]["end"]]
    assert '"pairs" must be a list' in answers[9]["error"]


def test_same_pair_same_answer_whatever_the_batch(handler):
    body = {"question": QUESTIONS[2], "context": CONTEXT}
    alone = json.loads(handler.handle([{"body": body}], FakeContext("unused"))[0])
    crowd = [{"body": {"question": q, "context": CONTEXT[: 40 + 9 * i]}} for i, q in enumerate(QUESTIONS * 3)]
    batched = json.loads(handler.handle(crowd + [{"body": body}], FakeContext("unused"))[-1])
    assert (alone["start"], alone["end"], alone["answer"]) == (batched["start"], batched["end"], batched["answer"])
    assert alone["score"] == pytest.approx(batched["score"], abs=1e-5)
