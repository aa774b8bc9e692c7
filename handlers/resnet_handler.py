"""TorchServe entry point: ResNet-101 ImageNet classification, batched, decoded and preprocessed on the GPU.

Request: one image per request as the raw body (JPEG, PNG, GIF, WebP, BMP, TIFF; set a Content-Type such as
image/jpeg or application/octet-stream) or a multipart field named ``data``.
Response (200): ``{"predictions": [{"label", "index", "probability"} x top_k], "batch_size": N,
"images_in_batch": M, "engine": ...}``. A bad image gets its own 4xx with ``{"error": ..., "status": ...}``; the rest
of its batch is unaffected.
Options: the ``handler:`` section of the archive's model-config.yaml (``torchserve_accel/resnet/options.py``).
Everything else lives in the installed ``torchserve_accel`` library: ``torchserve_accel/resnet/runner.py``.
"""

try:
    from torchserve_accel.resnet import runner
    from torchserve_accel.resnet.options import ResNetOptions
    from torchserve_accel.serving.handler import ModelHandler
except ImportError as err:  # TorchServe would report this as "No module named 'ts.torch_handler...'"
    raise RuntimeError(
        f"torchserve-accel is not importable in the Python that runs TorchServe workers ({err}); "
        "install it there (pip install torchserve-accel) or build the archive with the library inside"
    ) from err


class ResNetHandler(ModelHandler):
    options = ResNetOptions
    load = runner.load
