"""Request bodies -> texts, or a 4xx for that request alone (torchserve_accel/bert/requests.py)."""

from __future__ import annotations

import pytest

from torchserve_accel.bert.requests import parse_text_request
from torchserve_accel.serving.requests import RequestError, request_payload


def parse(body, key="body"):
    """As the handler does: the payload of TorchServe's request dict, then the BERT request parser."""
    return parse_text_request(request_payload({key: body}), max_items=3, max_chars=50)


@pytest.mark.parametrize(
    "body, texts, as_list",
    [
        ("plain text", ["plain text"], False),
        (bytearray("données".encode()), ["données"], False),
        ({"text": "json text"}, ["json text"], False),
        ({"texts": ["a", "b c"]}, ["a", "b c"], True),
    ],
)
def test_accepted_bodies(body, texts, as_list):
    request = parse(body)
    assert request.texts == texts and request.as_list is as_list


def test_multipart_data_field():
    assert parse("hi", key="data").texts == ["hi"]


@pytest.mark.parametrize(
    "body, status, words",
    [
        (None, 400, "empty request body"),
        ("", 400, "empty request body"),
        ("   \n", 400, "empty"),
        (bytearray(b"\xff\xfeabc"), 400, "UTF-8"),
        ({"text": ""}, 400, "empty"),
        ({"text": 3}, 400, "must be a string"),
        ({"texts": "abc"}, 400, "list of strings"),
        ({"texts": []}, 400, "empty"),
        ({"texts": ["a", 2]}, 400, "texts[1]"),
        ({"texts": ["a", "b", "c", "d"]}, 413, "limit of 3"),
        ({"text": "a", "texts": ["b"]}, 400, "exactly one"),
        ({"sentence": "a"}, 400, "exactly one"),
        (["a", "b"], 400, "JSON list"),
        ("x" * 51, 413, "limit of 50"),
    ],
)
def test_bad_requests_get_a_clear_4xx(body, status, words):
    with pytest.raises(RequestError) as err:
        parse(body)
    assert err.value.status == status
    assert words in err.value.message
