"""The handler skeleton every model's TorchServe entry file subclasses.

``initialize``: the model's typed options from model-config.yaml, the worker's device, then the model's
``load(model_dir, options, device, batch_size) -> Runner``. ``handle``: each request of TorchServe's batch becomes an
item (``Runner.parse``, or a ``RequestError`` in its slot), ``Runner.run(items, timings)`` answers them all at once
(a run that raises answers each good request of the batch 503, the bad ones keep their 4xx; the worker lives on),
and the answers become JSON responses with a status per request and the batch's metrics.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence

try:  # JSON many times faster than the standard library's for lists of floats (benchmarks/NOTES.md)
    import orjson
except ImportError:  # an environment without it answers the same JSON, slower
    orjson = None

from torchserve_accel.serving.device import claim_device
from torchserve_accel.serving.metrics import record_batch
from torchserve_accel.serving.options import options_from_context
from torchserve_accel.serving.requests import (
    Request, RequestError, binary_parts, request_headers, request_payload,
)

log = logging.getLogger(__name__)


class Runner(Protocol):
    def parse(self, request: Request) -> Any:
        """One request -> the item ``run`` takes; raises ``RequestError`` (4xx) for a bad request."""

    def run(self, items: Sequence[Any], timings: dict[str, float]) -> list[Any]:
        """Items (``RequestError`` for the bad ones) -> one JSON-able answer or ``RequestError`` per item, in order.
        ``timings`` accumulates host seconds per stage (``serving.metrics.STAGE_METRICS``)."""


class ModelHandler:
    """Subclasses name the model's ``options`` dataclass and its ``load`` function; nothing else."""

    options: ClassVar[type]
    load: ClassVar[Callable[..., Runner]]

    runner: Runner | None = None

    def initialize(self, context: Any) -> None:
        options = options_from_context(self.options, context)
        device = claim_device(context, getattr(options, "cuda_wait", "auto"))  # a model without it: CUDA's default
        properties = context.system_properties
        load = type(self).load  # a plain function stored on the class: call it unbound
        self.runner = load(Path(properties["model_dir"]), options, device, int(properties.get("batch_size") or 1))

    def handle(self, data: list[dict], context: Any) -> list[str]:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        model = model_of(context)
        items = [self._parse(request, context, idx, model) for idx, request in enumerate(data)]
        try:
            answers = self.runner.run(items, timings)
        except Exception:  # a fault of the engine or the runner, not of any one request
            log.exception("a batch of %d request(s) failed", len(data))
            failed = RequestError(503, "the model failed while running this request's batch (the worker log has "
                                       "the traceback); retry")
            answers = [item if isinstance(item, RequestError) else failed for item in items]
        timings["total"] = time.perf_counter() - started
        responses = encode_responses(context, answers)
        record_batch(context, len(data), timings)
        return responses

    def _parse(self, request: dict, context: Any, idx: int, model: tuple[str, str]) -> Any:
        try:
            parts = binary_parts(request)
            try:
                payload = request_payload(request)
            except RequestError:
                if len(parts) < 2:  # a multipart request of several parts may name them as it likes
                    raise
                payload = parts[0]
            headers = request_headers(context, idx)
            return self.runner.parse(Request(payload, headers.get("content-type"), parts, model, headers))
        except RequestError as err:
            return err


def model_of(context: Any) -> tuple[str, str]:
    """The archive's (name, version) from TorchServe's manifest."""
    model = (getattr(context, "manifest", None) or {}).get("model") or {}
    return str(model.get("modelName", "")), str(model.get("modelVersion", ""))


def encode_responses(context: Any, answers: Sequence[Any]) -> list[bytes | str]:
    """One JSON body per request; a ``RequestError`` becomes that request's status and ``{"error", "status"}``.

    Bodies are UTF-8 bytes from orjson where it is installed (numpy values allowed; NaN becomes null), else
    ``json.dumps`` strings; TorchServe sends either as it is."""
    responses = []
    for idx, answer in enumerate(answers):
        if isinstance(answer, RequestError):
            if context is not None:
                context.set_response_status(answer.status, answer.message, idx)
            answer = answer.to_json()
        if context is not None:
            context.set_response_content_type(idx, "application/json")
        responses.append(to_json(answer))
    return responses


def to_json(answer: Any) -> bytes | str:
    if orjson is not None:
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    return json.dumps(answer, default=_plain)


def _plain(value: Any) -> Any:
    """numpy arrays and scalars (BERT's embedding rows) for the standard library's json."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
