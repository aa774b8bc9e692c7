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
        ({"text": "a\ud800b"}, 400, "text is not valid Unicode (a lone surrogate at character 1)"),
        ({"texts": ["ok", "\udc00"]}, 400, "texts[1] is not valid Unicode"),
        ({"text": "\x00\u200b\u200c\ufeff \t"}, 400, "text is empty"),
        ({f"k{i}": i for i in range(1000)}, 400, "1000 field(s): 'k0', 'k1', 'k10', 'k100', 'k101', ..."),
    ],
)
def test_bad_requests_get_a_clear_4xx(body, status, words):
    with pytest.raises(RequestError) as err:
        parse(body)
    assert err.value.status == status
    assert words in err.value.message


def test_visible_text_in_any_script_is_accepted():
    for text in ("\u4f60\u597d", "caf\u00e9", "\u200bword", "\u0000 x", "\U0001F600"):
        assert parse({"text": text}).texts == [text]


def test_tokenizer_work_is_bounded_by_what_can_be_kept(tmp_path):
    """A 100,000-character text costs what its first few thousand characters cost, and gets the same tokens and
    truncation flag as tokenizing it whole would."""
    from torchserve_accel.bert.tokenize import BatchTokenizer
    from torchserve_accel.bert.vocab import build_vocab, save_wordpiece_tokenizer

    save_wordpiece_tokenizer(tmp_path, build_vocab())
    tokenizer = BatchTokenizer.from_dir(tmp_path, 64)
    calls = []
    encode_batch = tokenizer._tokenizer.encode_batch
    tokenizer._tokenizer = type("Counting", (), {"encode_batch": lambda self, texts, **kw: calls.append(
        [len(t) for t in texts]) or encode_batch(texts, **kw)})()
    texts = ["!" * 99_999, "the cat sat on the mat " * 4000, " " * 90_000 + "late words at the end", "short text"]
    got = tokenizer(texts)
    whole = encode_batch(texts)
    assert got.ids == [e.ids for e in whole] and got.truncated == [True, True, False, False]
    assert calls[0] == [512, 509, 511, 10]  # 8 characters per token that can be kept, cut at a space near the end
    assert max(map(max, calls)) < 100_000 and len(calls) <= 5  # only the spaces-first text reads further
