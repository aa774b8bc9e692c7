"""One request -> the images it carries and how its answer is shaped (a ``Job``), for every wire format clients speak.

Requests (each image gets its own result or error):
    a raw body, or a multipart field data/body/file      one image (TorchServe's stock VisionHandler takes these too)
    a base64 string: a JSON string, or text/plain         one image (as the stock VisionHandler)
    a JSON list of base64 strings                         several images, answered as a list
    a multipart request with several parts                several images, in part order, answered as a list
    gRPC Predictions with input entries "0", "1", ...      several images, in the numbers' order (binary_parts)
    {"instances": [b64 | {"b64": b64} | {"data": b64}]}  KServe v1 -> {"predictions": [...]}
    {"inputs": [one BYTES tensor of base64 images]}       Open Inference Protocol v2 -> FP32/INT64/BYTES tensors
Answers, by ``handler.response_format``:
    native      {"predictions": [{"label", "index", "probability"} x top_k], "batch_size", "images_in_batch",
                "engine"}; for several images {"results": [{"predictions": ...} or {"error", "status"}], <the same>}
    torchserve  TorchServe's stock image_classifier: {"<label>": probability, ...} (top_k); for several images a list
KServe v1 and v2 requests are answered in their protocol, and refused as a whole when one of their images is bad
(neither protocol has an error per item). Over gRPC ModelInfer, images come in the same BYTES tensor (as raw bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchserve_accel.resnet.options import ResNetOptions
from torchserve_accel.serving.protocols import (
    V2Request, answer_v2, bytes_tensor, decode_base64, is_v1, is_v2, output, protocol_body, v2_response,
)
from torchserve_accel.serving.requests import Job, Request, RequestError, first_error, payload_bytes


@dataclass(frozen=True)
class Classified:
    """One image's top-k, best first."""

    probabilities: list[float]
    indices: list[int]
    labels: list[str]


def parse_request(request: Request, options: ResNetOptions) -> Job:
    """Raises ``RequestError`` for a request that cannot be read at all; a bad image among several keeps its slot."""
    payload, fmt = protocol_body(request.payload), options.response_format
    if is_v2(payload):
        return answer_v2(request, payload, lambda v2: _v2_job(v2, request.model, options))
    if is_v1(payload):
        return _v1_job(payload, options)
    if len(request.parts) > 1:
        return _list_job(_counted(list(request.parts), "parts", options), fmt)
    if isinstance(payload, str):
        return _single_job(decode_base64(payload, "the body"), fmt)
    if isinstance(payload, list):
        images = _counted(payload, "the list", options)
        return _list_job([_or_error(decode_base64, item, f"[{i}]") for i, item in enumerate(images)], fmt)
    return _single_job(payload_bytes(payload, "an image"), fmt)


def _counted(items: list, what: str, options: ResNetOptions) -> list:
    if not items:
        raise RequestError(400, f"{what} holds no image")
    if len(items) > options.max_items_per_request:
        raise RequestError(413, f"{what} holds {len(items)} images, more than the limit of "
                                f"{options.max_items_per_request}")
    return items


def _or_error(decode, value: Any, where: str) -> bytes | RequestError:
    try:
        return decode(value, where)
    except RequestError as err:
        return err


def _native(result: Classified) -> dict:
    return {"predictions": [{"label": label, "index": index, "probability": p}
                            for p, index, label in zip(result.probabilities, result.indices, result.labels)]}


def _stock(result: Classified) -> dict:
    """TorchServe's stock image_classifier answer: top-k labels to probabilities."""
    return dict(zip(result.labels, result.probabilities))


def _single_job(blob: bytes | bytearray, fmt: str) -> Job:
    def reply(outputs: list, batch: dict) -> Any:
        (result,) = outputs
        if isinstance(result, RequestError):
            return result
        return {**_native(result), **batch} if fmt == "native" else _stock(result)

    return Job([blob], reply)


def _list_job(blobs: list, fmt: str) -> Job:
    def reply(outputs: list, batch: dict) -> Any:
        one = _native if fmt == "native" else _stock
        results = [r.to_json() if isinstance(r, RequestError) else one(r) for r in outputs]
        return {"results": results, **batch} if fmt == "native" else results

    return Job(blobs, reply)


def _v1_job(payload: dict, options: ResNetOptions) -> Job:
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise RequestError(400, '"instances" must be a list')
    blobs = [decode_base64(_v1_image(item), f"instances[{i}]")
             for i, item in enumerate(_counted(instances, '"instances"', options))]
    # A native prediction is the image's top-k list; a stock one its {label: probability}.
    one = (lambda r: _native(r)["predictions"]) if options.response_format == "native" else _stock

    def reply(outputs: list, batch: dict) -> Any:
        failed = first_error(outputs, lambda i: f"instances[{i}]: ")
        return failed if failed is not None else {"predictions": [one(r) for r in outputs]}

    return Job(blobs, reply)


def _v1_image(item: Any) -> Any:
    """An instance is a base64 string, or {"b64": ...} (TensorFlow Serving's convention) or {"data": ...}."""
    if isinstance(item, dict) and len(item) == 1 and ("b64" in item or "data" in item):
        return next(iter(item.values()))
    return item


def _v2_job(request: V2Request, model: tuple[str, str], options: ResNetOptions) -> Job:
    tensor = bytes_tensor(request)
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise RequestError(400, f"input {tensor.name}: shape [N] or [N, 1] of base64 images, got {list(tensor.shape)}")
    images = _counted(tensor.data, f"input {tensor.name}", options)
    blobs = [decode_base64(item, f"input {tensor.name}[{i}]") for i, item in enumerate(images)]

    def reply(outputs: list, batch: dict) -> Any:
        failed = first_error(outputs, lambda i: f"input {tensor.name}[{i}]: ")
        if failed is not None:
            return failed
        return v2_response(request, model, [
            output("probabilities", "FP32", [r.probabilities for r in outputs]),
            output("indices", "INT64", [r.indices for r in outputs]),
            output("labels", "BYTES", [r.labels for r in outputs]),
        ])

    return Job(blobs, reply)
