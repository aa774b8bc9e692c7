"""Turning one TorchServe request into texts, or a ``RequestError`` (4xx) for that request alone.

Accepted bodies:
    text/plain                    the body is one text (TorchServe hands it over as str)
    application/json {"text": s}  one text
    application/json {"texts": [s, ...]}  1..max_items texts (answered as a list)
    any other content type        raw bytes, decoded as UTF-8 into one text
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from handlers.common import RequestError, request_payload


@dataclass(frozen=True)
class TextRequest:
    texts: list[str]
    as_list: bool  # came as {"texts": [...]}: answer with {"results": [...]}


def _check_text(text: Any, where: str, max_chars: int) -> str:
    if not isinstance(text, str):
        raise RequestError(400, f"{where} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise RequestError(400, f"{where} is empty")
    if len(text) > max_chars:
        raise RequestError(413, f"{where} has {len(text)} characters, more than the limit of {max_chars}")
    return text


def request_content_type(context: Any, idx: int) -> str | None:
    """The Content-Type header of request ``idx`` in the batch (any letter case), or None."""
    headers_of = getattr(context, "get_all_request_header", None)
    headers = headers_of(idx) if headers_of is not None else None
    for name, value in (headers or {}).items():
        if isinstance(value, str) and name.lower() == "content-type":
            return value
    return None


def parse_text_request(
    request: Mapping[str, Any], max_items: int, max_chars: int, content_type: str | None = None
) -> TextRequest:
    """One request dict from TorchServe -> ``TextRequest``; raises ``RequestError`` with a 4xx status.

    TorchServe parses application/json bodies itself and forwards the raw bytes when they do not parse: raw
    bytes under ``content_type`` application/json are malformed JSON, not a text.
    """
    payload = request_payload(request)
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
        texts = payload["texts"]
        if not isinstance(texts, list):
            raise RequestError(400, f'"texts" must be a list of strings, got {type(texts).__name__}')
        if not texts:
            raise RequestError(400, '"texts" is empty')
        if len(texts) > max_items:
            raise RequestError(413, f'"texts" has {len(texts)} items, more than the limit of {max_items}')
        return TextRequest([_check_text(t, f"texts[{i}]", max_chars) for i, t in enumerate(texts)], as_list=True)
    raise RequestError(400, f'expected exactly one of the fields "text" or "texts", got {sorted(keys)}')
