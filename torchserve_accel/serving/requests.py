"""One request of a TorchServe batch, the per-request error, and the slots that keep a batch's answers in order.

A bad request must never fail the requests batched with it: a model's ``parse`` raises ``RequestError`` for that
request alone, its ``run`` keeps the error in the request's slot, and the handler answers it with its own 4xx while
the rest of the batch answers 200.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

Item = TypeVar("Item")
Part = TypeVar("Part")
Output = TypeVar("Output")


MAX_MESSAGE_CHARS = 300


class RequestError(Exception):
    """One request of a batch is bad; ``status`` is the HTTP code it gets (4xx, or 503 for a retryable failure).

    TorchServe sends the message as the response's HTTP status line too, so it is kept to one line of at most
    ``MAX_MESSAGE_CHARS`` ASCII characters, whatever client data went into it.
    """

    def __init__(self, status: int, message: str, frame: dict | None = None):
        message = " ".join(message.split()).encode("ascii", "backslashreplace").decode("ascii")
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(message)
        self.status = status
        self.message = message
        self.frame = frame  # fields a protocol wants in every answer, refusals included (``protocols.refusal``)

    def to_json(self) -> dict:
        return {**(self.frame or {}), "error": self.message, "status": self.status}


@dataclass(frozen=True)
class Request:
    """What a model's ``parse`` sees of one request.

    ``payload``: the body as TorchServe hands it over: ``bytearray`` for binary bodies, ``str`` for ``text/*``,
    parsed JSON for ``application/json`` (the raw bytes when that JSON does not parse). ``content_type``: the
    request's Content-Type header, or None. ``parts``: every binary part of a multipart request, in order (one
    part: the payload). ``model``: the archive's (name, version), for protocols whose answers name them.
    ``headers``: the request's headers, names lower-cased (none for gRPC calls).
    """

    payload: Any
    content_type: str | None = None
    parts: tuple[bytes | bytearray, ...] = ()
    model: tuple[str, str] = ("", "")
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Job:
    """One request, parsed: its inputs to the batch's run, and how to answer it from their outputs.

    ``reply(outputs, batch)``: ``outputs`` holds one output per input (a ``RequestError`` for an input that failed),
    ``batch`` the facts about the whole batch a native answer carries (``batch_size``, ...); it returns the JSON-able
    answer, or a ``RequestError`` for the request.
    """

    inputs: list
    reply: Callable[[list, dict], Any]


def binary_parts(request: Mapping[str, Any]) -> tuple[bytes | bytearray, ...]:
    """The binary fields of one of TorchServe's request dicts (a multipart request's parts, the entries of a gRPC
    ``Predictions`` input map), in the order they came; when every one is named by a number ("0", "1", ...), in the
    numbers' order. gRPC needs the names: a protobuf map keeps no order on the wire (Python's client sends 16
    entries shuffled), so several images over gRPC are named by their index."""
    fields = [(name, value) for name, value in request.items()
              if isinstance(value, (bytes, bytearray)) and len(value) > 0]
    if all(_is_index(name) for name, _ in fields):
        fields.sort(key=lambda field: int(field[0]))
    return tuple(value for _, value in fields)


def _is_index(name: Any) -> bool:
    return isinstance(name, str) and name.isascii() and name.isdigit() and len(name) <= 9


def request_payload(request: Mapping[str, Any]) -> Any:
    """The payload of one of TorchServe's request dicts: raw body, multipart ``data``/``file``, or parsed JSON;
    else a field ``0``, the first of several named by their index (``binary_parts``).

    Raises ``RequestError(400)`` for an empty body (which is also what a form-urlencoded POST turns into).
    """
    for key in ("data", "body", "file", "0"):
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


def request_headers(context: Any, idx: int) -> dict[str, str]:
    """The headers of request ``idx`` in the batch, names lower-cased. (TorchServe also files per-field headers of
    a request's parts under the field's name, as dicts: those are not the request's.)"""
    headers_of = getattr(context, "get_all_request_header", None)
    headers = headers_of(idx) if headers_of is not None else None
    return {name.lower(): value for name, value in (headers or {}).items() if isinstance(value, str)}


def parse_json(payload: str | bytes | bytearray, hint: str) -> Any:
    """A body that TorchServe did not parse (not sent as application/json, or malformed) -> JSON, or a 400 saying
    what to send (``hint``). Nesting too deep for Python's parser is malformed too."""
    try:
        text = payload if isinstance(payload, str) else bytes(payload).decode("utf-8")
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"body is not valid UTF-8 (byte {exc.start})") from None
    except (ValueError, RecursionError):
        raise RequestError(400, f"body is not valid JSON; send {hint}") from None


def describe_keys(keys: Iterable[Any], shown: int = 5) -> str:
    """Client-chosen object keys for an error message: how many, and the first few (each cut short)."""
    keys = sorted(str(k) for k in keys)
    listed = ", ".join(repr(k if len(k) <= 24 else k[:21] + "...") for k in keys[:shown])
    return f"{len(keys)} field(s): {listed}{', ...' if len(keys) > shown else ''}"


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


class Slots:
    """The parts of a batch's good items, flattened for one batched run, and the way back to one answer per item.

    ``parts(item)`` lists what an item contributes to the batched run (one image, a request's texts, ...).
    Items that are already ``RequestError`` contribute nothing and keep their slot.
    """

    def __init__(self, items: Sequence[Item | RequestError], parts: Callable[[Item], Sequence[Part]]):
        self.items = list(items)
        self.flat: list[Part] = []
        self.counts: list[int] = []
        for item in self.items:
            own = [] if isinstance(item, RequestError) else list(parts(item))
            self.flat.extend(own)
            self.counts.append(len(own))

    def answers(
        self, outputs: Sequence[Output], answer: Callable[[Item, list[Output]], Any]
    ) -> list[Any | RequestError]:
        """``outputs``: one per flattened part, in order -> ``answer(item, its outputs)`` per good item; error
        items stay as they are."""
        if len(outputs) != len(self.flat):
            raise ValueError(f"{len(outputs)} outputs for {len(self.flat)} parts")
        results: list[Any | RequestError] = []
        cursor = 0
        for item, count in zip(self.items, self.counts):
            if isinstance(item, RequestError):
                results.append(item)
            else:
                results.append(answer(item, list(outputs[cursor : cursor + count])))
            cursor += count
        return results


def first_error(outputs: Sequence[Any], where: Callable[[int], str] = lambda i: "") -> RequestError | None:
    """The first ``RequestError`` among one item's outputs, its message prefixed with ``where(index)``."""
    for index, output in enumerate(outputs):
        if isinstance(output, RequestError):
            return RequestError(output.status, f"{where(index)}{output.message}")
    return None
