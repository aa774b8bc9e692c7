"""KServe's protocols as TorchServe's frontend hands them to a worker: the Open Inference Protocol (v2) and KServe v1.

TorchServe 0.12 routes ``POST /v2/models/<model>/infer`` and ``POST /v1/models/<model>:predict`` to the model's
workers like ``/predictions/<model>``: the JSON body arrives parsed, and what the handler returns is the response.
Its own KServe envelopes cannot be used with batching (they read the first request of a batch and answer once for
all of it), so the models here read and write these bodies themselves:

    v2 request   {"id"?, "inputs": [{"name", "datatype", "shape", "data"}, ...], "outputs"?, "parameters"?}
    v2 response  {"model_name", "model_version", "id", "outputs": [{"name", "datatype", "shape", "data"}, ...]}
    v1 request   {"instances": [...]}            v1 response  {"predictions": [...]}

A v2 request is answered with v2 tensors or refused as a whole: the protocol has no error per item. Only JSON tensor
data is read (not the binary-data extension): over REST, images travel as base64 strings in BYTES tensors and texts
as strings.

With ``ts_open_inference_protocol=true`` the frontend also serves gRPC ``ModelInfer`` (open_inference_grpc.proto) by
turning the call into the same JSON body, with two differences the models must know (docs/grpc.md): every BYTES
element arrives base64-encoded (texts too), and the handler's status is dropped while the frontend builds the gRPC
answer from the body's ``id``, ``model_name``, ``model_version`` and ``outputs`` — a body without them makes the
frontend kill the worker. So every v2 refusal carries that frame too, the message in an ``error`` output.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from torchserve_accel.serving.requests import Job, Request, RequestError

V2_DATATYPES = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                "FP64", "BYTES"}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list  # flat, row-major


@dataclass(frozen=True)
class V2Request:
    id: str | None
    inputs: dict[str, Tensor]
    by_grpc: bool = False  # came as a gRPC ModelInfer: BYTES elements are base64 of the client's bytes


def is_v2(payload: Any) -> bool:
    """A v2 inference body: an object whose ``inputs`` is a list of tensor objects."""
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    return isinstance(inputs, list) and bool(inputs) and all(isinstance(t, dict) and "datatype" in t for t in inputs)


def is_v1(payload: Any) -> bool:
    return isinstance(payload, dict) and "instances" in payload


def protocol_body(payload: Any) -> Any:
    """A KServe body sent without a JSON Content-Type (tritonclient sends none, so TorchServe hands over raw bytes)
    -> the parsed object; any other payload unchanged."""
    if isinstance(payload, (bytes, bytearray)) and bytes(payload[:64]).lstrip().startswith(b"{"):
        try:
            parsed = json.loads(bytes(payload))
        except (ValueError, RecursionError):
            return payload
        if is_v2(parsed) or is_v1(parsed):
            return parsed
    return payload


def by_model_infer(payload: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
    """Whether the frontend made this v2 body from a gRPC ModelInfer call: it adds ``model_name`` to the body (a REST
    client names the model in the URL) and no HTTP header comes with it (every HTTP/1.1 request has a Host)."""
    return "model_name" in payload and "host" not in headers


def answer_v2(request: Request, payload: Mapping[str, Any], build: Callable[[V2Request], Job]) -> Job:
    """A v2 request (``payload``: its body, as ``protocol_body`` gave it) -> ``build``'s job, with every refusal, at
    parsing or in the answer, framed as a v2 answer."""
    try:
        job = build(parse_v2(payload, by_model_infer(payload, request.headers)))
    except RequestError as err:
        raise refusal(err, payload, request.model) from None

    def reply(outputs: list, batch: dict) -> Any:
        answer = job.reply(outputs, batch)
        return refusal(answer, payload, request.model) if isinstance(answer, RequestError) else answer

    return Job(job.inputs, reply)


def refusal(err: RequestError, payload: Mapping[str, Any], model: tuple[str, str]) -> RequestError:
    """``err`` with the v2 answer frame, its message in a BYTES output named ``error``."""
    request_id = payload.get("id")
    frame = {"model_name": model[0], "model_version": model[1],
             "outputs": [{"name": "error", "datatype": "BYTES", "shape": [1], "data": [err.message]}]}
    if isinstance(request_id, str):
        frame["id"] = request_id
    return RequestError(err.status, err.message, frame)


def parse_v2(payload: Mapping[str, Any], by_grpc: bool = False) -> V2Request:
    """A v2 body -> its tensors by name, each checked (datatype, shape against the data); 400 otherwise."""
    tensors: dict[str, Tensor] = {}
    for index, raw in enumerate(payload["inputs"]):
        where = f"inputs[{index}]"
        name, datatype, shape, data = (raw.get(k) for k in ("name", "datatype", "shape", "data"))
        if not isinstance(name, str) or not name:
            raise RequestError(400, f"{where} has no name")
        if datatype not in V2_DATATYPES:
            raise RequestError(400, f"{where} ({name}): datatype {str(datatype)[:20]!r} is not a v2 datatype")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise RequestError(400, f"{where} ({name}): shape must be a list of sizes")
        if "binary_data_size" in (raw.get("parameters") or {}):
            raise RequestError(400, f"{where} ({name}): the binary data extension is not supported; send JSON data "
                                    "(images as base64 strings)")
        flat = _flatten(data)
        count = 1
        for size in shape:
            count *= size
        if len(flat) != count:
            raise RequestError(400, f"{where} ({name}): shape {shape} holds {count} values, data has {len(flat)}")
        if name in tensors:
            raise RequestError(400, f"{where}: a second input named {name!r}")
        tensors[name] = Tensor(name, datatype, tuple(shape), flat)
    request_id = payload.get("id")
    return V2Request(request_id if isinstance(request_id, str) else None, tensors, by_grpc)


def _flatten(data: Any) -> list:
    if not isinstance(data, list):
        return [data]
    flat: list = []
    for value in data:
        flat.extend(_flatten(value) if isinstance(value, list) else [value])
    return flat


def bytes_tensor(request: V2Request, names: Sequence[str] = ()) -> Tensor:
    """The BYTES input of a one-input request, or the one named among ``names``; a 400 naming what is expected."""
    wanted = [request.inputs[n] for n in names if n in request.inputs] if names else list(request.inputs.values())
    if len(wanted) != 1 or wanted[0].datatype != "BYTES":
        expected = f"one BYTES input named {' or '.join(names)}" if names else "one BYTES input"
        got = ", ".join(f"{t.name} ({t.datatype})" for t in request.inputs.values())
        raise RequestError(400, f"expected {expected}, got {got}")
    return wanted[0]


def element_text(request: V2Request, value: Any, where: str) -> Any:
    """A BYTES element as the client's text: the string itself over REST; over gRPC, its bytes decoded as UTF-8.
    (Anything but a string is left for the model's text check to refuse.)"""
    if not request.by_grpc or not isinstance(value, str):
        return value
    try:
        return decode_base64(value, where).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"{where} is not valid UTF-8 (byte {exc.start})") from None


def v2_response(request: V2Request, model: tuple[str, str], outputs: Sequence[dict]) -> dict:
    """The v2 response body; ``model`` is (name, version)."""
    answer = {"model_name": model[0], "model_version": model[1], "outputs": list(outputs)}
    if request.id is not None:
        answer["id"] = request.id
    return answer


def output(name: str, datatype: str, rows: Sequence) -> dict:
    """A v2 output tensor from rows (a list, or a list of equal-length lists or numpy rows): shape from the
    nesting."""
    rows = list(rows)
    if rows and isinstance(rows[0], np.ndarray):
        stacked = np.stack(rows)
        return {"name": name, "datatype": datatype, "shape": list(stacked.shape), "data": stacked.reshape(-1)}
    if rows and isinstance(rows[0], (list, tuple)):
        width = len(rows[0])
        return {"name": name, "datatype": datatype, "shape": [len(rows), width],
                "data": [value for row in rows for value in row]}
    return {"name": name, "datatype": datatype, "shape": [len(rows)], "data": rows}


def decode_base64(text: Any, where: str) -> bytes:
    """A base64 string (standard or URL-safe alphabet, padding optional) -> bytes; a 400 naming ``where`` otherwise."""
    if not isinstance(text, str):
        raise RequestError(400, f"{where} must be a base64 string, got {type(text).__name__}")
    cleaned = "".join(text.split())
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), altchars=b"-_" if "-" in cleaned or "_" in
                                cleaned else None, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where} is neither an image nor base64 text") from None
