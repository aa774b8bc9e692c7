"""torchserve-accel: TorchServe handlers that keep the GPU busy.

    serving/    the TorchServe side shared by every model: requests, the handler skeleton, typed options, metrics
    backends/   engine registry, on-disk engine cache, CUDA graphs, TensorRT (optional)
    resnet/     ResNet-101 image classification: options, load -> runner, image ops, engines, archive files
    bert/       BERT on a fused, padding-free encoder: options, load -> runner, encoder, kernels, archive files
    tools/      the ``torchserve-accel`` command: build, start, register, predict, bench, soak, sweep

Every model has the same four parts, in the same files: ``options.py`` (its typed ``handler:`` section),
``runner.py`` (``load(model_dir, options, device, batch_size) -> Runner`` and ``Runner.parse`` / ``Runner.run``),
and ``archive.py`` (the files torch-model-archiver packs; build time only, never imported by a worker).
"""

__version__ = "0.2.0"
