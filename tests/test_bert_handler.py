"""The BERT handler end to end on CPU: archive files -> model_dir -> initialize -> handle a mixed batch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from bert_handler import BertHandler
from tests.fake_context import FakeContext
from torchserve_accel.bert.archive import prepare_archive_files
from torchserve_accel.serving.options import OptionsError

REPO = Path(__file__).resolve().parent.parent
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """What TorchServe unpacks: serialized file and extra files flat in one directory."""
    root = tmp_path_factory.mktemp("bert")
    files = prepare_archive_files(root / "staging", None, lambda msg: None, config_overrides=TINY)
    target = root / "model"
    target.mkdir()
    for path in [files.serialized_file, *files.extra_files]:
        shutil.copy(path, target / path.name)
    return target


def make_handler(model_dir, **options):
    config = yaml.safe_load((REPO / "archiver_configs/bert_large.yaml").read_text())
    config["handler"].update(options)
    context = FakeContext(model_dir, model_yaml_config=config)
    handler = BertHandler()
    handler.initialize(context)
    return handler, context


def test_archive_files_are_flat_and_loud_about_random_weights(tmp_path):
    messages = []
    files = prepare_archive_files(tmp_path, None, messages.append, config_overrides=TINY)
    assert files.serialized_file.name == "model.safetensors"
    names = {p.name for p in files.extra_files}
    assert {"config.json", "tokenizer.json", "RANDOM_WEIGHTS.txt"} <= names
    assert len(names) == len(files.extra_files)
    assert any("RANDOM" in m for m in messages)


def test_mixed_batch_good_and_bad_requests(model_dir):
    handler, context = make_handler(model_dir, max_length=16, max_items_per_request=4)
    long_text = "the cat sat on the mat " * 20
    data = [
        {"body": "I loved this movie"},
        {"body": {"texts": ["great", long_text]}},
        {"body": bytearray(b"\xc3\x28 broken utf8")},
        {"body": {"txt": "wrong field"}},
        {"body": {"texts": ["a"] * 5}},
        {"body": {"text": "  "}},
        {},
        {"body": bytearray("raw bytes text".encode())},
    ]
    responses = [json.loads(r) for r in handler.handle(data, context)]
    assert len(responses) == len(data)
    single = responses[0]
    assert single["label"] in ("negative", "positive") and single["batch_size"] == len(data)
    assert set(single["probabilities"]) == {"negative", "positive"}
    assert abs(sum(single["probabilities"].values()) - 1) < 1e-5 and single["truncated"] is False
    listed = responses[1]
    assert [r["truncated"] for r in listed["results"]] == [False, True] and listed["batch_size"] == len(data)
    assert responses[7]["truncated"] is False and "label" in responses[7]
    assert {i: code for i, (code, _) in context.statuses.items()} == {2: 400, 3: 400, 4: 413, 5: 400, 6: 400}
    assert "UTF-8" in responses[2]["error"] and responses[4]["status"] == 413
    assert set(context.content_types.values()) == {"application/json"}
    assert ("HandlerBatchedRequests", len(data), "count") in context.metrics.records


def test_same_text_same_answer_whatever_the_batch(model_dir):
    handler, context = make_handler(model_dir)
    alone = json.loads(handler.handle([{"body": "hello world"}], context)[0])
    batched = json.loads(handler.handle([{"body": "x " * 40}, {"body": "hello world"}, {"body": "a b"}], context)[1])
    for label, p in alone["probabilities"].items():
        assert abs(p - batched["probabilities"][label]) < 1e-5


def test_all_requests_bad(model_dir):
    handler, context = make_handler(model_dir)
    responses = handler.handle([{"body": ""}, {"body": {"texts": 3}}], context)
    assert [json.loads(r)["status"] for r in responses] == [400, 400]


def test_embedding_task_mean_pooled_and_normalized(model_dir):
    handler, context = make_handler(model_dir, task="embed", pooling="mean", normalize=True)
    out = json.loads(handler.handle([{"body": {"texts": ["one text", "another"]}}], context)[0])
    vectors = [r["embedding"] for r in out["results"]]
    assert [len(v) for v in vectors] == [32, 32]
    assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in vectors)


def test_bad_options_fail_initialize(model_dir):
    with pytest.raises(OptionsError):
        make_handler(model_dir, max_batch_size=3)
    with pytest.raises(OptionsError):
        make_handler(model_dir, task="classify", pooling="mean")
    with pytest.raises(RuntimeError, match="varlen"):
        make_handler(model_dir, attention="varlen")


def test_options_of_earlier_releases_still_work_with_a_warning(model_dir, caplog):
    """dtype, compile and backend: torch were renamed (precision, backend: inductor / packed); old archives load."""
    from torchserve_accel.bert.options import BertOptions
    from torchserve_accel.serving.options import parse_options

    with caplog.at_level("WARNING"):
        options = parse_options(BertOptions, {"dtype": "float32", "backend": "torch", "compile": False,
                                              "tensorrt_engine": ""})
    assert (options.precision, options.backend) == ("fp32", "packed")
    assert parse_options(BertOptions, {"compile": True}).backend == "inductor"
    assert parse_options(BertOptions, {"dtype": "auto"}).precision == "fp16"
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "handler.dtype" in warned and "handler.compile" in warned and "handler.tensorrt_engine" in warned
    with pytest.raises(OptionsError, match="set only precision"):
        parse_options(BertOptions, {"dtype": "float16", "precision": "fp16"})
    old_archive = {"handler": {"dtype": "float32", "backend": "torch", "compile": False, "max_length": 32}}
    context = FakeContext(model_dir, model_yaml_config=old_archive)
    handler = BertHandler()
    handler.initialize(context)
    assert json.loads(handler.handle([{"body": "fine"}], context)[0])["batch_size"] == 1


@pytest.mark.gpu
def test_gpu_worker_answers_like_the_cpu_worker(model_dir):
    """fp16 packed engine (Triton epilogues, CUDA graphs) on a GPU worker vs the fp32 CPU worker, one mixed batch."""
    cpu, cpu_context = make_handler(model_dir)
    config = yaml.safe_load((REPO / "archiver_configs/bert_large.yaml").read_text())
    gpu_context = FakeContext(model_dir, model_yaml_config=config, gpu_id=0)
    gpu_context.metrics = cpu_context.metrics = None  # TorchServe's metric types: not on a GPU machine without it
    gpu = BertHandler()
    gpu.initialize(gpu_context)
    assert gpu.runner.engine.name == "packed" and gpu.runner.description["dtype"] == "float16"
    data = [{"body": "I loved this movie"}, {"body": {"texts": ["great", "the cat sat on the mat " * 20]}},
            {"body": {"texts": []}}]
    on_gpu = [json.loads(r) for r in gpu.handle(data, gpu_context)]
    on_cpu = [json.loads(r) for r in cpu.handle(data, cpu_context)]
    assert gpu_context.statuses == cpu_context.statuses and set(gpu_context.statuses) == {2}
    pairs = [(on_gpu[0], on_cpu[0]), *zip(on_gpu[1]["results"], on_cpu[1]["results"])]
    for g, c in pairs:
        assert max(abs(g["probabilities"][k] - c["probabilities"][k]) for k in c["probabilities"]) < 1e-2


def test_a_batch_out_of_gpu_memory_is_split_and_a_text_alone_gets_a_503(model_dir):
    """Out of memory above two texts, and always for one huge text: the batch splits until what fits runs, the huge
    text alone is answered 503, its batch-mates 200 with the answers they get alone."""
    import torch

    handler, context = make_handler(model_dir)
    real_engine, seen = handler.runner.engine, []

    def engine(tokenized):
        seen.append(len(tokenized.ids))
        if len(tokenized.ids) > 2 or any(len(ids) > 40 for ids in tokenized.ids):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_engine(tokenized)

    handler.runner.engine = engine
    data = [{"body": "first text"}, {"body": {"texts": ["second", "huge " * 60]}}, {"body": "third"}]
    try:
        answers = [json.loads(r) for r in handler.handle(data, context)]
    finally:
        handler.runner.engine = real_engine
    assert seen[0] == 4 and {i: code for i, (code, _) in context.statuses.items()} == {1: 503}
    assert "out of GPU memory for this text" in answers[1]["error"]
    alone = json.loads(handler.handle([{"body": "third"}], context)[0])
    assert answers[2]["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-6)


def test_an_encoder_that_raises_mid_batch_costs_that_batch_only(model_dir, caplog):
    """A fault of the engine (not of a request): each good request of the batch gets a 503 saying so, the bad one
    keeps its own 4xx, the traceback goes to the worker log, and the next batch is served."""
    handler, _ = make_handler(model_dir, max_length=16)
    engine = handler.runner.engine
    calls = []

    def failing(batch):
        calls.append(batch)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    handler.runner.engine = failing
    context = FakeContext("unused")
    data = [{"body": "a good film"}, {"body": {"txt": "wrong field"}}, {"body": {"texts": ["fine", "bad"]}}]
    answers = [json.loads(r) for r in handler.handle(data, context)]
    assert calls, "the engine was not reached"
    assert {i: status for i, (status, _) in context.statuses.items()} == {0: 503, 1: 400, 2: 503}
    assert "the model failed while running this request's batch" in answers[0]["error"] and answers[0] == answers[2]
    assert "illegal memory access" in caplog.text  # the traceback is logged, not sent to the client
    assert "illegal memory access" not in json.dumps(answers)
    handler.runner.engine = engine
    context = FakeContext("unused")
    (again,) = [json.loads(r) for r in handler.handle([{"body": "a good film"}], context)]
    assert context.statuses == {} and again["label"] in ("negative", "positive")
