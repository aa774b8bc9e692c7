"""One host, several GPUs: which GPU each worker uses, checked on a machine without one.

TorchServe gives every worker a ``gpu_id`` (round-robin over the GPUs it counts, or over the model-config's
``deviceIds``); every worker process still sees all GPUs, so the handlers must put everything on
``cuda:{gpu_id}`` themselves (``torchserve_accel.serving.device.device_for``). Compiled engines are cached per GPU *type*: the
cache key must not depend on the device index, so the workers on GPU 0 and GPU 1 of one host share an entry.

The only thing mocked is what cannot exist here: ``torch.cuda.is_available`` (True) and
``torch.cuda.get_device_properties`` (a card's name and compute capability). The integration test runs the real
TorchServe frontend with ``CUDA_VISIBLE_DEVICES=0,1``, which is how it counts GPUs, so its real assignment of
``gpu_id`` is observed even though the workers then find no CUDA and run on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import bert_handler
import resnet_handler
from tests.fake_context import FakeContext
from torchserve_accel.backends.engine_cache import EngineCache
from torchserve_accel.resnet import runner as resnet_runner
from torchserve_accel.resnet.model import WEIGHTS_FILE
from torchserve_accel.resnet.options import ResNetOptions
from torchserve_accel.serving.device import device_for

H100 = SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0)
A100 = SimpleNamespace(name="NVIDIA A100-SXM4-80GB", major=8, minor=0)


@pytest.fixture
def cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


# ---------------------------------------------------------------------------------------------- device_for


@pytest.mark.parametrize("gpu_id", [0, 1, 3, "2"])  # TorchServe sends an int; its own test context uses strings
def test_a_worker_runs_on_the_gpu_torchserve_gave_it(cuda_is_available, tmp_path, gpu_id):
    assert device_for(FakeContext(tmp_path, gpu_id=gpu_id)) == f"cuda:{int(gpu_id)}"


def test_a_worker_without_a_gpu_id_or_cuda_runs_on_the_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_for(FakeContext(tmp_path, gpu_id=None)) == "cpu"  # deviceType cpu, or no GPU counted
    assert device_for(SimpleNamespace()) == "cpu"  # a context without system_properties
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_for(FakeContext(tmp_path, gpu_id=1)) == "cpu"  # counted a GPU, but this process has no CUDA


# ---------------------------------------------------------------------------------------------- the handlers


def record_load(monkeypatch, handler_class) -> list[dict]:
    """Replace the model's ``load``; record its device, batch size and the CUDA device made current before it ran."""
    calls = []
    current = {"device": None}
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.update(device=torch.device(device)))

    def load(model_dir, options, device, batch_size):
        calls.append({"device": device, "current": current["device"], "batch_size": batch_size})
        return SimpleNamespace()

    monkeypatch.setattr(handler_class, "load", load)
    return calls


@pytest.mark.parametrize("gpu_id", [0, 1])
def test_each_handler_loads_onto_its_workers_gpu(cuda_is_available, monkeypatch, tmp_path, gpu_id):
    resnet_calls = record_load(monkeypatch, resnet_handler.ResNetHandler)
    resnet_handler.ResNetHandler().initialize(FakeContext(tmp_path, gpu_id=gpu_id, batch_size=64))
    assert [(c["device"], c["batch_size"]) for c in resnet_calls] == [(torch.device(f"cuda:{gpu_id}"), 64)]

    bert_calls = record_load(monkeypatch, bert_handler.BertHandler)
    bert_handler.BertHandler().initialize(FakeContext(tmp_path, gpu_id=gpu_id))
    assert bert_calls[0]["device"] == torch.device(f"cuda:{gpu_id}")


@pytest.mark.parametrize("handler", ["resnet", "bert"])
def test_initialize_makes_the_workers_gpu_current_before_loading(cuda_is_available, monkeypatch, tmp_path, handler):
    handler_class = resnet_handler.ResNetHandler if handler == "resnet" else bert_handler.BertHandler
    calls = record_load(monkeypatch, handler_class)
    handler_class().initialize(FakeContext(tmp_path, gpu_id=1, batch_size=8))
    assert calls[0]["current"] == torch.device("cuda:1")


# ---------------------------------------------------------------------------------------------- engine cache


def load_classifier(monkeypatch, tmp_path: Path, gpu_id: int, card: SimpleNamespace, backend: str) -> dict:
    """Run the ResNet ``load`` as a GPU worker would, up to the engine build; return the spec and cache it used.

    Mocked: the card's properties, the weights loader (no 170 MB ResNet-101 here) and the engine build itself.
    The cache key is built by the real code in resnet/runner.py and backends/engine_cache.py.
    """
    model_dir = tmp_path / "model_dir"
    model_dir.mkdir(exist_ok=True)
    (model_dir / WEIGHTS_FILE).write_bytes(b"stand-in weights: only their hash enters the key")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: card)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored after
    monkeypatch.setattr(torch.backends.cudnn, "benchmark_limit", torch.backends.cudnn.benchmark_limit)
    monkeypatch.setattr(resnet_runner, "load_resnet101", lambda path: torch.nn.Identity())
    built = {}

    def build_engine(model, spec, cache, progress):
        built.update(spec=spec, cache=cache)
        return SimpleNamespace(spec=spec, name=spec.backend)

    monkeypatch.setattr(resnet_runner, "build_engine", build_engine)
    options = ResNetOptions(backend=backend, correctness_gate=False, engine_cache_dir=str(tmp_path / "engines"))
    resnet_runner.load(model_dir, options, torch.device(f"cuda:{gpu_id}"), batch_size=64)
    return built


@pytest.mark.parametrize("backend", ["inductor", "tensorrt"])
def test_workers_on_two_gpus_of_one_type_share_one_engine_cache_entry(monkeypatch, tmp_path, backend):
    on_gpu0 = load_classifier(monkeypatch, tmp_path, 0, H100, backend)
    on_gpu1 = load_classifier(monkeypatch, tmp_path, 1, H100, backend)
    assert on_gpu0["spec"].device == torch.device("cuda:0") and on_gpu1["spec"].device == torch.device("cuda:1")
    assert on_gpu0["cache"].key == on_gpu1["cache"].key and on_gpu0["cache"].dir == on_gpu1["cache"].dir
    fields = on_gpu1["cache"].key_fields
    assert fields["gpu"] == H100.name and fields["capability"] == "9.0" and fields["device_type"] == "cuda"
    assert "cuda:" not in json.dumps(fields, default=str)  # no device index anywhere in the key


def test_another_gpu_type_gets_its_own_entry(monkeypatch, tmp_path):
    h100 = load_classifier(monkeypatch, tmp_path, 0, H100, "inductor")
    a100 = load_classifier(monkeypatch, tmp_path, 0, A100, "inductor")
    assert h100["cache"].key != a100["cache"].key


def test_an_engine_cache_entry_shares_compiled_kernels_across_device_indices(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "before"))  # building() overwrites; restored after
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    cache = EngineCache(tmp_path / "engines", {"gpu": H100.name})
    with cache.building(progress=lambda message: None):
        assert Path(os.environ.get("TRITON_CACHE_DIR", "/unset")).is_relative_to(cache.dir)


# ---------------------------------------------------------------------------------------------- TorchServe


PLACEMENT_HANDLER = '''
import json, os
from pathlib import Path

import torch

from torchserve_accel.serving.device import device_for


class PlacementHandler:
    """Writes, per worker, the gpu_id TorchServe assigned and the device the handlers would use."""

    def initialize(self, context):
        out = Path(context.model_yaml_config["handler"]["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        model = context.manifest["model"]["modelName"]
        (out / f"{model}-{os.getpid()}.json").write_text(json.dumps({
            "model": model, "gpu_id": context.system_properties.get("gpu_id"), "device": device_for(context),
            "cuda": torch.cuda.is_available()}))

    def handle(self, data, context):
        return ["{}" for _ in data]
'''


def build_placement_archive(store: Path, work: Path, name: str, config: str) -> None:
    handler = work / "placement_handler.py"
    handler.write_text(PLACEMENT_HANDLER)
    config_file = work / f"{name}.yaml"
    config_file.write_text(config)
    subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name, "--version", "1.0",
                    "--handler", str(handler), "--config-file", str(config_file), "--export-path", str(store),
                    "--force"], check=True, capture_output=True, text=True)


@pytest.mark.integration
def test_torchserve_spreads_workers_round_robin_and_pins_them_with_device_ids(monkeypatch, tmp_path):
    """Real TorchServe 0.12 counting two GPUs: four workers of a model without deviceIds get GPUs 0 and 1 twice
    each; deviceIds [1] puts every worker of that model on GPU 1; each worker's device follows its gpu_id."""
    from torchserve_accel.tools.launch import find_java_home, free_ports
    from torchserve_accel.tools.torchserve import TorchServe

    find_java_home()  # fails (does not skip) without Java 17+, like the other integration tests
    store, out = tmp_path / "store", tmp_path / "out"
    store.mkdir()
    common = f"deviceType: gpu\nhandler:\n  out_dir: {out}\n"
    build_placement_archive(store, tmp_path, "spread", "minWorkers: 4\nmaxWorkers: 4\n" + common)
    build_placement_archive(store, tmp_path, "pinned", "minWorkers: 2\nmaxWorkers: 2\ndeviceIds: [1]\n" + common)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # TorchServe counts GPUs from this (else nvidia-smi)
    ts = TorchServe(tmp_path / "run")
    ts.start(store, ports=free_ports(5), timeout=180, log=lambda message: None)
    try:
        ts.register("spread.mar")
        ts.register("pinned.mar")
    except BaseException:
        print(ts.log_tail())
        raise
    finally:
        ts.stop(log=lambda message: None)
    workers = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    gpus = {model: Counter(w["gpu_id"] for w in workers if w["model"] == model) for model in ("spread", "pinned")}
    assert gpus == {"spread": {0: 2, 1: 2}, "pinned": {1: 2}}
    for w in workers:
        assert w["device"] == (f"cuda:{w['gpu_id']}" if w["cuda"] else "cpu"), w
