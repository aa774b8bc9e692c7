"""One request -> the texts (or question/context pairs) it carries and how its answer is shaped (a ``Job``), or a
``RequestError`` (4xx) for that request alone.

Requests, task classify / embed:
    text/plain, or any other non-JSON type        the body is one text (UTF-8); with no Content-Type at all (gRPC),
                                                    a body that is a JSON object is read as JSON
    {"text": s} / {"texts": [s, ...]}              one text / 1..max_items texts (answered as a list)
    {"inputs": s | [s, ...], ...}                  HuggingFace pipeline / TEI style; embed takes "normalize" and
                                                    "truncate" (TEI's meaning: false and too long -> 413), classify
                                                    "truncate" and "parameters": {"top_k": k}
Task qa (JSON only; a body of another type is parsed as JSON too):
    {"question": q, "context": c} / {"pairs": [{...}, ...]} / {"inputs": {...} | [{...}, ...]}
Every task: {"instances": [...]} (KServe v1: strings, {"text": s}, or pairs) and an Open Inference Protocol v2 body
(one BYTES tensor of texts; qa: BYTES tensors "question" and "context").
Answers, by ``handler.response_format``:
    native  classify {"label", "probabilities", "truncated"}, embed {"embedding", "truncated"}, qa {"answer", "score",
            "start", "end", "truncated"}, with "batch_size"; a list: {"results": [...], "batch_size"}
    hf      classify [{"label", "score"}, ...] (all labels, best first), embed [[floats], ...] (TEI: a list even for
            one text), qa {"score", "start", "end", "answer"}; a list: a list of those
KServe requests get their protocol's answer. A request is answered whole or refused whole: a bad text among several
refuses its request, naming the text.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from torchserve_accel.bert.options import BertOptions
from torchserve_accel.serving.protocols import (
    Tensor, V2Request, answer_v2, bytes_tensor, element_text, is_v1, is_v2, output, protocol_body, v2_response,
)
from torchserve_accel.serving.requests import Job, Request, RequestError, describe_keys, first_error, parse_json


@dataclass(frozen=True)
class TextRequest:
    texts: list[str]
    as_list: bool  # came as {"texts": [...]}: answer with {"results": [...]}


@dataclass(frozen=True)
class QARequest:
    questions: list[str]
    contexts: list[str]
    as_list: bool  # came as {"pairs": [...]}: answer with {"results": [...]}


def _check_text(text: Any, where: str, max_chars: int) -> str:
    """A string of at most ``max_chars`` characters, valid Unicode, with something visible in it."""
    if not isinstance(text, str):
        raise RequestError(400, f"{where} must be a string, got {type(text).__name__}")
    if len(text) > max_chars:
        raise RequestError(413, f"{where} has {len(text)} characters, more than the limit of {max_chars}")
    try:
        text.encode("utf-8")  # JSON can carry lone surrogates ("\ud800"); the tokenizer cannot
    except UnicodeEncodeError as exc:
        raise RequestError(400, f"{where} is not valid Unicode (a lone surrogate at character {exc.start})") from None
    if not _visible(text):
        raise RequestError(400, f"{where} is empty (nothing but spaces, control or zero-width characters)")
    return text


def _visible(text: str) -> bool:
    """Any character that is not a separator (Z*) or a control, format or unassigned one (C*): NULs and zero-width
    spaces alone make no text. Stops at the first visible character."""
    return any(unicodedata.category(c)[0] not in "CZ" for c in text)


def _check_items(payload: dict, field: str, kind: str, max_items: int) -> list:
    """``payload[field]``: a non-empty list of at most ``max_items`` items (their own checks come after)."""
    items = payload[field]
    if not isinstance(items, list):
        raise RequestError(400, f'"{field}" must be a list of {kind}, got {type(items).__name__}')
    if not items:
        raise RequestError(400, f'"{field}" is empty')
    if len(items) > max_items:
        raise RequestError(413, f'"{field}" has {len(items)} items, more than the limit of {max_items}')
    return items


def parse_text_request(payload: Any, max_items: int, max_chars: int, content_type: str | None = None) -> TextRequest:
    """One request's payload -> ``TextRequest``; raises ``RequestError`` with a 4xx status.

    TorchServe parses application/json bodies itself and forwards the raw bytes when they do not parse: raw
    bytes under ``content_type`` application/json are malformed JSON, not a text.
    """
    if isinstance(payload, (bytes, bytearray)):
        if content_type is not None and content_type.split(";", 1)[0].strip().lower() == "application/json":
            raise RequestError(400, 'body is not valid JSON (Content-Type: application/json); send {"text": ...} '
                                    'or {"texts": [...]}')
        try:
            payload = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(400, f"body is not valid UTF-8 (byte {exc.start})") from None
        if content_type is None:
            payload = _json_object_or_text(payload)
    if isinstance(payload, str):
        return TextRequest([_check_text(payload, "text", max_chars)], as_list=False)
    if not isinstance(payload, dict):
        raise RequestError(
            400, f'expected a text body or a JSON object {{"text": ...}} / {{"texts": [...]}}, got JSON {type(payload).__name__}'
        )
    keys = set(payload)
    if keys == {"text"}:
        return TextRequest([_check_text(payload["text"], "text", max_chars)], as_list=False)
    if keys == {"texts"}:
        texts = _check_items(payload, "texts", "strings", max_items)
        return TextRequest([_check_text(t, f"texts[{i}]", max_chars) for i, t in enumerate(texts)], as_list=True)
    raise RequestError(400, f'expected exactly one of the fields "text" or "texts", got {describe_keys(keys)}')


def _json_object_or_text(text: str) -> Any:
    """A body that came with no Content-Type (gRPC's Predictions passes none): a JSON object is read as JSON, like
    the same body sent as application/json; anything else is a text."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return text
    return parsed if isinstance(parsed, dict) else text


def _check_pair(pair: Any, where: str, max_chars: int) -> tuple[str, str]:
    if not isinstance(pair, dict) or set(pair) != {"question", "context"}:
        got = describe_keys(pair) if isinstance(pair, dict) else f"JSON {type(pair).__name__}"
        label, hint = (where.rstrip("."), "") if where else ("the body", ' (or the one field "pairs")')
        raise RequestError(400, f'{label} must be an object with exactly the fields "question" and "context"{hint}, '
                                f'got {got}')
    return (_check_text(pair["question"], f"{where}question", max_chars),
            _check_text(pair["context"], f"{where}context", max_chars))


def parse_qa_request(payload: Any, max_items: int, max_chars: int) -> QARequest:
    """One request's payload -> ``QARequest``; raises ``RequestError`` with a 4xx status."""
    if isinstance(payload, (bytes, bytearray, str)):  # not parsed by TorchServe: malformed JSON or another type
        payload = parse_json(payload, '{"question": ..., "context": ...} or {"pairs": [...]}')
    if isinstance(payload, dict) and set(payload) == {"pairs"}:
        pairs = _check_items(payload, "pairs", "objects", max_items)
        checked = [_check_pair(p, f"pairs[{i}].", max_chars) for i, p in enumerate(pairs)]
        return QARequest([q for q, _ in checked], [c for _, c in checked], as_list=True)
    question, context = _check_pair(payload, "", max_chars)
    return QARequest([question], [context], as_list=False)


# ---------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class TextInput:
    """One text of a request, with what that request asked for it."""

    text: str
    normalize: bool = False  # embed: L2-normalize its embedding
    truncate: bool = True  # false: a text over max_length tokens is refused (413), not cut


@dataclass(frozen=True)
class Encoded:
    """One text's output row (class probabilities or embedding) and whether it was cut to max_length tokens."""

    row: list[float] | np.ndarray  # embed: a float32 row
    truncated: bool


def parse_request(request: Request, options: BertOptions, labels: list[str]) -> Job:
    """Every accepted form (module docstring) -> a ``Job``; raises ``RequestError`` for a request that cannot be read.
    ``labels``: the checkpoint's class names (task classify)."""
    payload = protocol_body(request.payload)
    if options.task == "qa" and isinstance(payload, (bytes, bytearray, str)):
        payload = parse_json(payload, '{"question": ..., "context": ...} or {"pairs": [...]}')
    if is_v2(payload):
        return answer_v2(request, payload, lambda v2: _v2_job(v2, request.model, options, labels))
    if is_v1(payload):
        return _v1_job(payload, options, labels)
    if isinstance(payload, dict) and "inputs" in payload:
        return _inputs_job(payload, options, labels)
    limits = (options.max_items_per_request, options.max_text_chars)
    if options.task == "qa":
        parsed = parse_qa_request(payload, *limits)
        return _job(list(zip(parsed.questions, parsed.contexts)), parsed.as_list, options, labels, "pairs")
    parsed = parse_text_request(payload, *limits, request.content_type)
    return _job([TextInput(t, options.normalize) for t in parsed.texts], parsed.as_list, options, labels, "texts")


def _job(inputs: list, as_list: bool, options: BertOptions, labels: list[str], field: str,
         top_k: int | None = None) -> Job:
    """Answers in the archive's format: one item, or a list (``field`` names the items in error messages)."""
    item = _item(options, labels, top_k)

    def reply(outputs: list, batch: dict) -> Any:
        failed = first_error(outputs, lambda i: f"{field}[{i}]: " if as_list else "")
        if failed is not None:
            return failed
        items = [item(o) for o in outputs]
        if options.response_format == "hf":
            if options.task == "embed":
                return items  # TEI: a list of embeddings, one text or several
            return items if as_list else items[0]
        return {"results": items, **batch} if as_list else {**items[0], **batch}

    return Job(inputs, reply)


def _item(options: BertOptions, labels: list[str], top_k: int | None = None) -> Callable[[Any], Any]:
    """One text's (pair's) output -> its answer in the archive's format."""
    if options.task == "qa":
        if options.response_format == "hf":
            return lambda a: {"score": a["score"], "start": a["start"], "end": a["end"], "answer": a["answer"]}
        return lambda a: a
    if options.task == "embed":
        if options.response_format == "hf":
            return lambda e: e.row
        return lambda e: {"embedding": e.row, "truncated": e.truncated}
    if options.response_format == "hf":
        return lambda e: sorted(({"label": label, "score": p} for label, p in zip(labels, e.row)),
                                key=lambda x: -x["score"])[:top_k]
    return lambda e: {"label": labels[max(range(len(e.row)), key=e.row.__getitem__)],
                      "probabilities": dict(zip(labels, e.row)), "truncated": e.truncated}


def _inputs_job(payload: dict, options: BertOptions, labels: list[str]) -> Job:
    """{"inputs": ...} with the task's parameters (HuggingFace pipelines, TEI)."""
    allowed = {"qa": {"inputs"}, "embed": {"inputs", "normalize", "truncate"},
               "classify": {"inputs", "truncate", "parameters"}}[options.task]
    extra = set(payload) - allowed
    if extra:
        raise RequestError(400, f'task {options.task} takes the fields {sorted(allowed)}, got {describe_keys(extra)}')
    inputs, as_list = payload["inputs"], isinstance(payload["inputs"], list)
    items = _check_items(payload, "inputs", "objects" if options.task == "qa" else "strings",
                         options.max_items_per_request) if as_list else [inputs]
    where = (lambda i: f"inputs[{i}]") if as_list else (lambda i: "inputs")
    if options.task == "qa":
        pairs = [_check_pair(item, f"{where(i)}.", options.max_text_chars) for i, item in enumerate(items)]
        return _job(pairs, as_list, options, labels, "inputs")
    normalize = _flag(payload, "normalize", options.normalize)
    truncate = _flag(payload, "truncate", True)
    texts = [TextInput(_check_text(t, where(i), options.max_text_chars), normalize, truncate)
             for i, t in enumerate(items)]
    return _job(texts, as_list, options, labels, "inputs", top_k=_top_k(payload.get("parameters")))


def _flag(payload: dict, name: str, default: bool) -> bool:
    value = payload.get(name, default)
    if not isinstance(value, bool):
        raise RequestError(400, f'"{name}" must be true or false, got {type(value).__name__}')
    return value


def _top_k(parameters: Any) -> int | None:
    if parameters is None:
        return None
    if not isinstance(parameters, dict) or set(parameters) - {"top_k"}:
        raise RequestError(400, '"parameters" takes only {"top_k": k}')
    top_k = parameters.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise RequestError(400, '"parameters.top_k" must be a positive integer')
    return top_k


def _v1_job(payload: dict, options: BertOptions, labels: list[str]) -> Job:
    """KServe v1: {"instances": [...]} -> {"predictions": [an answer per instance, in the archive's format]}."""
    instances = _check_items(payload, "instances", "objects" if options.task == "qa" else "texts",
                             options.max_items_per_request)
    if options.task == "qa":
        inputs = [_check_pair(item, f"instances[{i}].", options.max_text_chars) for i, item in enumerate(instances)]
    else:
        inputs = [TextInput(_check_text(item.get("text") if isinstance(item, dict) and set(item) == {"text"} else item,
                                        f"instances[{i}]", options.max_text_chars), options.normalize)
                  for i, item in enumerate(instances)]
    item = _item(options, labels)

    def reply(outputs: list, batch: dict) -> Any:
        failed = first_error(outputs, lambda i: f"instances[{i}]: ")
        return failed if failed is not None else {"predictions": [item(o) for o in outputs]}

    return Job(inputs, reply)


def _v2_job(request: V2Request, model: tuple[str, str], options: BertOptions, labels: list[str]) -> Job:
    """Open Inference Protocol v2: texts in a BYTES tensor (qa: "question" and "context") -> output tensors."""
    if options.task == "qa":
        questions, contexts = (bytes_tensor(request, (name,)) for name in ("question", "context"))
        if questions.shape != contexts.shape:
            raise RequestError(400, f"inputs question and context differ in shape: {list(questions.shape)} and "
                                    f"{list(contexts.shape)}")
        inputs = [(_v2_text(request, q, f"question[{i}]", options), _v2_text(request, c, f"context[{i}]", options))
                  for i, (q, c) in enumerate(zip(_v2_texts(questions, options), contexts.data))]
    else:
        tensor = bytes_tensor(request)
        inputs = [TextInput(_v2_text(request, t, f"input {tensor.name}[{i}]", options), options.normalize)
                  for i, t in enumerate(_v2_texts(tensor, options))]

    def reply(outputs: list, batch: dict) -> Any:
        failed = first_error(outputs, lambda i: f"item {i}: ")
        if failed is not None:
            return failed
        if options.task == "qa":
            tensors = [output("answer", "BYTES", [a["answer"] for a in outputs]),
                       output("score", "FP32", [a["score"] for a in outputs]),
                       output("start", "INT64", [a["start"] for a in outputs]),
                       output("end", "INT64", [a["end"] for a in outputs])]
        elif options.task == "embed":
            tensors = [output("embedding", "FP32", [e.row for e in outputs]),
                       output("truncated", "BOOL", [e.truncated for e in outputs])]
        else:
            tensors = [output("probabilities", "FP32", [e.row for e in outputs]),
                       output("label", "BYTES", [labels[max(range(len(e.row)), key=e.row.__getitem__)]
                                                 for e in outputs]),
                       output("truncated", "BOOL", [e.truncated for e in outputs])]
        return v2_response(request, model, tensors)

    return Job(inputs, reply)


def _v2_text(request: V2Request, value: Any, where: str, options: BertOptions) -> str:
    return _check_text(element_text(request, value, where), where, options.max_text_chars)


def _v2_texts(tensor: Tensor, options: BertOptions) -> list:
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise RequestError(400, f"input {tensor.name}: shape [N] or [N, 1] of texts, got {list(tensor.shape)}")
    if not tensor.data:
        raise RequestError(400, f"input {tensor.name} holds no text")
    if len(tensor.data) > options.max_items_per_request:
        raise RequestError(413, f"input {tensor.name} holds {len(tensor.data)} texts, more than the limit of "
                                f"{options.max_items_per_request}")
    return tensor.data
