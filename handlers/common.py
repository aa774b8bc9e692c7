"""What every handler here shares: reading request bodies, per-request errors, batch metrics.

A bad request must never fail the other requests batched with it: decoding functions raise
``RequestError`` for one item, the handler keeps going, and ``finish_batch`` turns that item into a 4xx
with a JSON body while the rest of the batch answers 200.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence


@dataclass
class ArchiveFiles:
    """What a model module hands the archive builder: ``--serialized-file`` and ``--extra-files``."""

    serialized_file: Path | None
    extra_files: list[Path] = field(default_factory=list)


class RequestError(Exception):
    """One request of a batch is bad; ``status`` is the HTTP code it gets (4xx)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def to_json(self) -> dict:
        return {"error": self.message, "status": self.status}


def request_payload(request: Mapping[str, Any]) -> Any:
    """The payload TorchServe hands over for one request: raw body, multipart ``data``/``file``, or parsed JSON.

    Raises ``RequestError(400)`` for an empty body (which is also what a form-urlencoded POST turns into).
    """
    for key in ("data", "body", "file"):
        value = request.get(key)
        if value is not None:
            if isinstance(value, (bytes, bytearray, str)) and len(value) == 0:
                raise RequestError(400, "empty request body")
            return value
    raise RequestError(
        400,
        "empty request body (send the payload as the raw body with a Content-Type header, "
        "or as a multipart field named 'data')",
    )


def payload_bytes(payload: Any, what: str) -> bytes | bytearray:
    """The payload as bytes (TorchServe's bytearray passes through uncopied); JSON or text where binary was
    expected is a 415."""
    if isinstance(payload, (bytes, bytearray)):
        return payload
    raise RequestError(
        415,
        f"expected {what} as a binary body (e.g. Content-Type: application/octet-stream or image/jpeg), "
        f"got {type(payload).__name__}",
    )


def finish_batch(context: Any, outputs: Sequence[Any]) -> list[str]:
    """Serialize one output per request to JSON; ``RequestError`` items become 4xx for that request alone."""
    responses = []
    for idx, output in enumerate(outputs):
        if isinstance(output, RequestError):
            if context is not None:
                context.set_response_status(output.status, output.message, idx)
            output = output.to_json()
        if context is not None:
            context.set_response_content_type(idx, "application/json")
        responses.append(json.dumps(output))
    return responses


STAGE_METRICS = {"decode": "HandlerDecodeMs", "compute": "HandlerComputeMs", "total": "HandlerTotalMs"}


def record_batch(
    context: Any, batch_size: int, padded_to: int | None = None, stage_seconds: Mapping[str, float] | None = None
) -> None:
    """Emit the batch the handler actually ran as custom metrics.

    ``HandlerBatches`` (+1) and ``HandlerBatchedRequests`` (+batch size) are counters, so the mean batch size
    over any window is the ratio of their increments; ``HandlerBatchSize`` is the last batch as a gauge.
    ``stage_seconds`` (keys of ``STAGE_METRICS``) become millisecond counters: their increments over a window
    divided by the batches give the handler's host time per batch and stage.
    """
    metrics = getattr(context, "metrics", None)
    if metrics is None:
        return
    from ts.metrics.metric_type_enum import MetricTypes

    metrics.add_metric("HandlerBatches", 1, "count", metric_type=MetricTypes.COUNTER)
    metrics.add_metric("HandlerBatchedRequests", batch_size, "count", metric_type=MetricTypes.COUNTER)
    metrics.add_metric("HandlerBatchSize", batch_size, "count", metric_type=MetricTypes.GAUGE)
    if padded_to is not None:
        metrics.add_metric("HandlerPaddedBatchSize", padded_to, "count", metric_type=MetricTypes.GAUGE)
    for stage, seconds in (stage_seconds or {}).items():
        if stage in STAGE_METRICS:
            metrics.add_metric(STAGE_METRICS[stage], round(seconds * 1e3, 3), "ms", metric_type=MetricTypes.COUNTER)


def claim_device(context: Any) -> str:
    """The worker's device (``device_for``), made current for this process when it is a GPU.

    Everything that uses the *current* device (CUDA graph capture streams, pinned staging buffers, TensorRT
    runtimes) then lands on the worker's GPU rather than on cuda:0.
    """
    device = device_for(context)
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)
    return device


def device_for(context: Any, allow_gpu: bool = True) -> str:
    """``cuda:{gpu_id}`` when TorchServe assigned this worker a GPU, else ``cpu``."""
    import torch

    gpu_id = (getattr(context, "system_properties", None) or {}).get("gpu_id")
    if allow_gpu and gpu_id is not None and torch.cuda.is_available():
        return f"cuda:{int(gpu_id)}"
    return "cpu"
