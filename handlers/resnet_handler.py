"""TorchServe entry point: ResNet-101 ImageNet classification, batched, decoded and preprocessed on the GPU.

Request: one image per request as the raw body (JPEG, PNG, GIF, WebP, BMP, TIFF; set a Content-Type such as
image/jpeg or application/octet-stream) or a multipart field named ``data``.
Response (200): ``{"predictions": [{"label", "index", "probability"} x top_k], "batch_size": N, "engine": ...}``.
A bad image gets its own 4xx with ``{"error": ..., "status": ...}``; the rest of its batch is unaffected.
Options: the ``handler:`` section of the archive's model-config.yaml (``ResNetOptions``).
"""

import logging
import time

try:
    import torch

    from handlers.common import RequestError, claim_device, finish_batch, payload_bytes, record_batch, request_payload
    from handlers.config import options_from_context
    from handlers.vision.classifier import ImageClassifier, ResNetOptions
except ImportError as err:  # TorchServe would report this as "No module named 'ts.torch_handler...'"
    raise RuntimeError(
        f"torchserve-accel is not importable in the Python that runs TorchServe workers ({err}); "
        "install it there: pip install -e /path/to/torchserve-accel"
    ) from err

log = logging.getLogger(__name__)


class ResNetHandler:
    def __init__(self):
        self.classifier = None

    def initialize(self, context):
        options = options_from_context(ResNetOptions, context)
        device = torch.device(claim_device(context))
        max_batch = int(context.system_properties.get("batch_size") or 1)
        self.classifier = ImageClassifier.load(context.system_properties["model_dir"], options, device, max_batch)

    def handle(self, data, context):
        start = time.perf_counter()
        blobs = [_image_bytes(request) for request in data]
        timings = {}
        results = self.classifier.classify_blobs(blobs, timings)
        served = sum(1 for r in results if not isinstance(r, RequestError))
        for result in results:
            if isinstance(result, dict):
                result.update(batch_size=len(data), images_in_batch=served, engine=self.classifier.engine.name)
        responses = finish_batch(context, results)
        record_batch(context, len(data), stage_seconds={**timings, "total": time.perf_counter() - start})
        return responses


def _image_bytes(request):
    try:
        return payload_bytes(request_payload(request), "an image")
    except RequestError as err:
        return err
