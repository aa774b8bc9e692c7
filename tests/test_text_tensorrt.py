"""The optional TensorRT backend: its ONNX export checked against eager under onnxruntime (CPU); the engine
build itself needs ``tensorrt`` and a GPU."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from benchmarks.reference import bert_config, packed_from_hf, random_hf_classifier, random_sequences
from torchserve_accel.bert.engines import ONNX_INPUTS, ONNX_OUTPUT, PaddedBertForExport, export_onnx, pad_batch

TINY = dict(vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def hf():
    return random_hf_classifier(bert_config(num_labels=3, **TINY), seed=5)


@pytest.mark.parametrize("head", ["classify", "embed_mean", "embed_cls"])
def test_padded_export_module_matches_packed_encoder(hf, head):
    model = packed_from_hf(hf, head=head)
    ids, types = random_sequences([3, 17, 9], 400)
    padded = pad_batch(ids, types, pad_token_id=0)
    from benchmarks.reference import packed_batch

    with torch.inference_mode():
        expected = model(packed_batch(ids, types))
        got = PaddedBertForExport(model)(*padded)
    assert (got - expected).abs().max() < 2e-5


def test_onnx_export_matches_eager_under_onnxruntime(hf, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    pytest.importorskip("onnx", reason="onnx is not installed")
    model = packed_from_hf(hf, head="classify")
    session = ort.InferenceSession(export_onnx(model), providers=["CPUExecutionProvider"])
    for lengths in ([3, 17, 9], [40]):  # other batch sizes and lengths than the export example
        ids, types = random_sequences(lengths, 400, seed=len(lengths))
        padded = pad_batch(ids, types, pad_token_id=0)
        with torch.inference_mode():
            expected = PaddedBertForExport(model)(*padded).numpy()
        feeds = dict(zip(["input_ids", "token_type_ids", "attention_mask"], (t.numpy() for t in padded)))
        (got,) = session.run(["output"], feeds)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-5


@pytest.mark.skipif(not HAS_TENSORRT, reason="tensorrt does not import here (TensorRT is not installed)")
@pytest.mark.gpu
def test_tensorrt_engine_matches_eager(hf):
    from torchserve_accel.backends import tensorrt

    model = packed_from_hf(hf, head="classify")
    profile = {name: ((1, 1), (4, 32), (8, 64)) for name in ONNX_INPUTS}
    engine = tensorrt.TensorRTEngine(tensorrt.build_plan(export_onnx(model), profile, torch.float16), torch.device("cuda"))
    ids, types = random_sequences([3, 17, 9], 400)
    padded = pad_batch(ids, types, pad_token_id=0)
    with torch.inference_mode():
        expected = PaddedBertForExport(model)(*padded)
        got = engine(dict(zip(ONNX_INPUTS, (t.cuda() for t in padded))))[ONNX_OUTPUT].cpu()
    assert (got - expected).abs().max() < 1e-2  # fp16 engine


def test_tensorrt_backend_fails_loudly_where_it_cannot_run(tmp_path):
    from torchserve_accel.backends.registry import BackendUnavailable
    from torchserve_accel.bert.engines import REGISTRY
    from torchserve_accel.bert.options import BertOptions

    with pytest.raises(BackendUnavailable, match="the tensorrt backend needs"):
        REGISTRY["tensorrt"].build(torch.device("cpu"), tmp_path, BertOptions(backend="tensorrt"),
                                   torch.device("cpu"), None, "classify")
