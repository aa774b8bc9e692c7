"""ResNet-101 loading, BatchNorm folding, engines, engine cache and the correctness gate (CPU)."""

import copy
import threading
import time

import pytest
import torch

from torchserve_accel.backends.engine_cache import EngineCache
from torchserve_accel.backends.tensorrt import unavailable_reason as tensorrt_unavailable_reason
from torchserve_accel.resnet.archive import prepare_archive_files, random_resnet101
from torchserve_accel.resnet.engines import REGISTRY, EagerEngine, EngineSpec
from torchserve_accel.resnet.gate import correctness_gate, synthetic_images
from torchserve_accel.resnet.model import WEIGHTS_FILE, fold_batchnorm, load_resnet101

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return random_resnet101(seed=0)


@pytest.fixture(scope="module")
def sample():
    return synthetic_images(4, generator=torch.Generator().manual_seed(7))


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def test_random_weights_have_calibrated_batchnorm(model, sample):
    with torch.no_grad():
        logits = model(sample)
    assert torch.isfinite(logits).all()
    # Calibrated statistics keep activations O(1): fp16 (max 65504) cannot overflow.
    assert logits.abs().max() < 1e3
    bn = model.layer4[-1].bn3
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


def test_archive_files_roundtrip_safetensors(tmp_path, model, sample):
    files = prepare_archive_files(tmp_path, None, log=lambda msg: None)
    assert files.serialized_file.name == WEIGHTS_FILE and files.extra_files == []
    loaded = load_resnet101(files.serialized_file)
    with torch.no_grad():
        assert torch.equal(loaded(sample), model(sample))  # seed 0 both times: same weights


def test_torchvision_pth_state_dict_is_accepted(tmp_path, model, sample):
    pth = tmp_path / "resnet101.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, pth)
    files = prepare_archive_files(tmp_path / "staging", pth, log=lambda msg: None)
    with torch.no_grad():
        assert torch.equal(load_resnet101(files.serialized_file)(sample), model(sample))


def test_wrong_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="does not fit torchvision's resnet101"):
        load_resnet101(path)


def test_fold_batchnorm_preserves_outputs(model, sample):
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert rel_err(folded(sample), model(sample)) < 5e-4  # fp32 rounding through 104 layers


def test_gate_passes_eager_and_catches_a_wrong_engine(model, sample):
    spec = EngineSpec(backend="eager", device=CPU, dtype=torch.float32, buckets=(4,))
    good = correctness_gate(EagerEngine(copy.deepcopy(model), spec), model, sample, 1e-2, 0.99)
    assert good.passed and good.rel_err < 1e-3 and good.top1_agreement == 1.0
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.fc.weight.mul_(-1.0)  # a "compiled" engine that computes the wrong function
    bad = correctness_gate(EagerEngine(broken, spec), model, sample, 1e-2, 0.99)
    assert not bad.passed and "relative error" in bad.detail


def test_auto_backend_on_cpu_says_why():
    backend, reasons = REGISTRY.choose("auto", CPU)
    assert backend.name == "eager"
    assert [r.split(":")[0] for r in reasons] == ["cudnn not taken"] and "needs a GPU worker" in reasons[0]
    backend, reasons = REGISTRY.choose("inductor", CPU)
    assert backend.name == "inductor" and reasons == []  # asked for: its build says why it cannot run here


def test_engine_cache_key_and_single_builder(tmp_path):
    a = EngineCache(tmp_path, {"gpu": "H100", "weights": "abc"})
    assert a.key == EngineCache(tmp_path, {"weights": "abc", "gpu": "H100"}).key
    assert a.key != EngineCache(tmp_path, {"gpu": "H200", "weights": "abc"}).key
    events, messages = [], []

    def worker(name):
        with EngineCache(tmp_path, {"gpu": "H100", "weights": "abc"}).building(messages.append) as entry:
            events.append((name, "start", entry.ready))
            time.sleep(0.3)
            events.append((name, "end"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The second worker starts only after the first finished, and then finds the entry READY.
    assert events[1][1] == "end" and events[2][2] is True
    assert a.ready and any("miss" in m for m in messages) and any("hit" in m for m in messages)


def test_onnx_export_matches_eager_under_onnxruntime(model, sample):
    ort = pytest.importorskip("onnxruntime")
    from torchserve_accel.resnet.engines import export_onnx

    onnx_bytes = export_onnx(copy.deepcopy(model))
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": sample[:3].numpy()})  # a batch size other than the export's
    with torch.no_grad():
        assert rel_err(torch.from_numpy(out), model(sample[:3])) < 1e-3


@pytest.mark.skipif(tensorrt_unavailable_reason(torch.device("cuda:0")) is not None,
                    reason=f"TensorRT backend not testable here: {tensorrt_unavailable_reason(torch.device('cuda:0'))}")
def test_tensorrt_engine_matches_fp32(model, sample, tmp_path):
    from torchserve_accel.resnet.engines import build_engine

    spec = EngineSpec(backend="tensorrt", device=torch.device("cuda:0"), dtype=torch.float16, buckets=(1, 4, 8))
    cache = EngineCache(tmp_path, {"test": 1})
    engine = build_engine(copy.deepcopy(model), spec, cache, progress=print)
    gate = correctness_gate(engine, model, sample, 1e-2, 0.99)
    assert gate.passed, gate.detail
    assert cache.path("engine.plan").exists()


def test_cudnn_fused_resnet_reference_path_matches(model, sample):
    """The fused module's structure (CPU runs its unfused reference ops) computes the same function."""
    from torchserve_accel.resnet.cudnn_fused import FusedResNet

    fused = FusedResNet(fold_batchnorm(copy.deepcopy(model)), fused=False).eval()
    with torch.no_grad():
        assert rel_err(fused(sample), model(sample)) < 5e-4


def test_cudnn_fused_conv_needs_folded_weights():
    from torchserve_accel.resnet.cudnn_fused import FusedConv

    with pytest.raises(ValueError, match="folded"):
        FusedConv(torch.nn.Conv2d(3, 4, 3, bias=False), relu=True, fused=False)


def test_gate_counts_near_ties_but_not_real_disagreement(model, sample):
    spec = EngineSpec(backend="eager", device=CPU, dtype=torch.float32, buckets=(4,))

    class Shifted(EagerEngine):
        """Flips each row's top-1 by raising the runner-up just past the best: a near-tie flip."""

        def _run_chunk(self, x):
            out = super()._run_chunk(x).clone()
            top2 = out.topk(2, dim=1)
            gap = top2.values[:, 0] - top2.values[:, 1]
            out.scatter_add_(1, top2.indices[:, 1:], (gap + 1e-4)[:, None])
            return out

    gate = correctness_gate(Shifted(copy.deepcopy(model), spec), model, sample, 1e-1, 0.99)
    assert gate.top1_agreement == 0.0
    # Passing depends on the runner-up being within 10% of RMS logit of the best: check the rule, not luck.
    with torch.no_grad():
        ref = model(sample)
    top2 = ref.topk(2, dim=1).values
    within = ((top2[:, 0] - top2[:, 1]) <= 0.1 * ref.pow(2).mean(1).sqrt()).float().mean().item()
    assert gate.top1_agreement_ties == pytest.approx(within)
