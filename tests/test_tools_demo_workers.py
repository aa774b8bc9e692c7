"""The main job's worker counts (torchserve_accel/tools/demo.py): on a GPU, as many of the model-config's workers
as fit the free memory of the GPUs it finds, said with the reason; on the CPU, as before; ``--workers`` wins. And
the GPU memory figures they come from (torchserve_accel/tools/gpu.py), through a stand-in NVML."""

from __future__ import annotations

import sys
import types

import pytest
import yaml

from torchserve_accel.tools import demo, gpu
from torchserve_accel.tools.build import archive_inputs

GIB = 1024  # MiB


def configured() -> dict[str, int]:
    return {m: int(yaml.safe_load(archive_inputs(m)[2].read_text())["minWorkers"]) for m in (demo.MODEL, demo.BERT)}


def test_a_big_card_keeps_the_model_config_counts():
    plan, why = demo.plan_gpu_workers({"resnet101": 10, "bert_large": 2}, [139 * GIB], "NVIDIA H200")
    assert plan == {"resnet101": 10, "bert_large": 2}
    assert "1x NVIDIA H200" in why and "the model-config's counts fit" in why and "resnet101 10 (model-config 10" in why


def test_a_smaller_card_gets_fewer_workers_and_says_why():
    plan, why = demo.plan_gpu_workers({"resnet101": 10}, [22 * GIB], "NVIDIA L4")
    assert plan == {"resnet101": 7}  # 7 x 2.5 GiB fit 90% of 22 GiB, 8 do not
    assert "resnet101 7 (model-config 10, ~2.5 GiB each)" in why and "22.0 GiB free" in why
    assert "need more than 19.8 GiB per GPU" in why


def test_two_models_share_the_card_and_the_bigger_share_gives_way():
    plan, _ = demo.plan_gpu_workers({"resnet101": 10, "bert_large": 2}, [22 * GIB])
    assert plan == {"resnet101": 4, "bert_large": 2}  # 4 x 2.5 + 2 x 4 = 18 GiB <= 19.8
    plan, _ = demo.plan_gpu_workers({"resnet101": 10, "bert_large": 2}, [10 * GIB])
    assert plan == {"resnet101": 2, "bert_large": 1}  # 5 + 4 <= 9


def test_workers_spread_over_gpus_and_the_emptiest_gpu_counts():
    plan, why = demo.plan_gpu_workers({"resnet101": 10, "bert_large": 2}, [22 * GIB, 22 * GIB])
    assert plan == {"resnet101": 10, "bert_large": 2} and "2x GPU" in why  # 5 + 1 per GPU: 16.5 GiB each
    plan, _ = demo.plan_gpu_workers({"resnet101": 10}, [80 * GIB, 12 * GIB])
    assert plan == {"resnet101": 8}  # ceil(8 / 2) = 4 per GPU x 2.5 = 10 GiB <= 10.8 on the 12 GiB one


def test_never_below_one_worker_per_model():
    plan, why = demo.plan_gpu_workers({"resnet101": 10, "bert_large": 2}, [3 * GIB], "small")
    assert plan == {"resnet101": 1, "bert_large": 1}
    assert "even 1 worker per model needs ~6.5 GiB of 2.7: they may run out of memory" in why


def test_choose_workers_on_cpu_gpu_and_by_hand(monkeypatch, capsys):
    models = [demo.MODEL, demo.BERT]
    assert demo.choose_workers(models, 3, on_gpu=True) == {demo.MODEL: 3, demo.BERT: 3}
    assert demo.choose_workers(models, None, on_gpu=False) == demo.CPU_WORKERS  # unchanged on the CPU
    assert capsys.readouterr().out == ""

    memory = {"value": [{"index": 0, "memory_free_mib": 22 * GIB, "memory_total_mib": 23 * GIB}]}
    monkeypatch.setattr(gpu, "memory_mib", lambda indices=None: memory["value"])
    monkeypatch.setattr(gpu, "card_names", lambda: ["NVIDIA L4"])
    chosen = demo.choose_workers(models, None, on_gpu=True)
    expected, _ = demo.plan_gpu_workers(configured(), [22 * GIB])
    assert chosen == {m: (n if n != configured()[m] else None) for m, n in expected.items()}
    assert chosen[demo.MODEL] is not None and chosen[demo.MODEL] < configured()[demo.MODEL]
    assert "1x NVIDIA L4" in capsys.readouterr().out

    memory["value"] = [{"index": 0, "memory_free_mib": 139 * GIB, "memory_total_mib": 140 * GIB}]
    assert demo.choose_workers(models, None, on_gpu=True) == {demo.MODEL: None, demo.BERT: None}  # as configured
    memory["value"] = []
    assert demo.choose_workers([demo.MODEL], None, on_gpu=True) == {demo.MODEL: None}
    assert "GPU memory not readable" in capsys.readouterr().out


def test_gpu_memory_through_nvml_and_cuda_visible_devices(monkeypatch):
    nv = types.ModuleType("pynvml")
    nv.NVMLError = type("NVMLError", (Exception,), {})
    nv.nvmlInit = nv.nvmlShutdown = lambda: None
    nv.nvmlDeviceGetCount = lambda: 3
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(free=(10 + h) * 2**30, total=24 * 2**30,
                                                                 used=(14 - h) * 2**30)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    memory = gpu.memory_mib([2, 0])
    assert [(s["index"], s["memory_free_mib"], s["memory_total_mib"]) for s in memory] == [
        (2, 12 * GIB, 24 * GIB), (0, 10 * GIB, 24 * GIB)]
    assert [s["index"] for s in gpu.memory_mib()] == [0, 1, 2]
    assert gpu.visible_indices({"CUDA_VISIBLE_DEVICES": "2,0"}) == [2, 0]
    assert gpu.visible_indices({"CUDA_VISIBLE_DEVICES": "GPU-1f2e,GPU-99"}) is None  # by UUID: all of them
    assert gpu.visible_indices({}) is None
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("PATH", "/nonexistent")  # neither NVML nor nvidia-smi
    assert gpu.memory_mib() == []


@pytest.mark.parametrize("model", [demo.MODEL, demo.BERT])
def test_every_model_of_the_job_has_a_worker_size(model):
    assert demo.WORKER_GIB[model] > 0 and configured()[model] >= 1
