"""One request's payload -> its texts (or question/context pairs), or a ``RequestError`` (4xx) for that request
alone.

Accepted bodies, task classify / embed:
    text/plain                    the body is one text (TorchServe hands it over as str)
    application/json {"text": s}  one text
    application/json {"texts": [s, ...]}  1..max_items texts (answered as a list)
    any other content type        raw bytes, decoded as UTF-8 into one text
Task qa (JSON only; a body sent as another content type is parsed as JSON too):
    {"question": q, "context": c}                    one pair
    {"pairs": [{"question": q, "context": c}, ...]}  1..max_items pairs (answered as a list)
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from torchserve_accel.serving.requests import RequestError, describe_keys, parse_json


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
