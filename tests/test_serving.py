"""The serving skeleton shared by every model: request errors, slots, JSON parsing, responses (no TorchServe)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.fake_context import FakeContext
from torchserve_accel.serving import handler as serving_handler
from torchserve_accel.serving.handler import ModelHandler, encode_responses
from torchserve_accel.serving.requests import (
    MAX_MESSAGE_CHARS, RequestError, Slots, binary_parts, describe_keys, first_error, parse_json, request_payload,
)


def test_request_errors_are_one_short_ascii_line_whatever_went_into_them():
    error = RequestError(400, "got " + "é\n" * 10_000)
    assert len(error.message) == MAX_MESSAGE_CHARS and error.message.isascii() and "\n" not in error.message
    assert error.message.endswith("...") and error.to_json() == {"error": error.message, "status": 400}
    assert RequestError(404, "short one").message == "short one"


def test_client_keys_in_messages_are_counted_and_cut():
    text = describe_keys({f"k{i}" + "x" * 50: i for i in range(600_000)})
    assert text.startswith("600000 field(s): ") and text.endswith(", ...") and len(text) < 200
    assert describe_keys(["b", "a"]) == "2 field(s): 'a', 'b'"


@pytest.mark.parametrize("body, words", [(b"[" * 100_000, "not valid JSON"), (b"\xff{}", "UTF-8"),
                                         ("{'single': 'quotes'}", "not valid JSON")])
def test_json_the_frontend_did_not_parse_is_a_400(body, words):
    with pytest.raises(RequestError) as err:
        parse_json(body, "{...}")
    assert err.value.status == 400 and words in err.value.message
    assert parse_json(bytearray(b'{"a": [1]}'), "{...}") == {"a": [1]}


def test_parts_named_by_their_index_come_in_the_numbers_order():
    # gRPC Predictions entries arrive in whatever order the client's map serialized them
    shuffled = {"10": b"k", "2": b"c", "0": b"a", "1": b"b", "3": b"d", "4": b"e", "5": b"f", "6": b"g", "7": b"h",
                "8": b"i", "9": b"j"}
    assert binary_parts(shuffled) == tuple(bytes([c]) for c in b"abcdefghijk")  # 10 after 9, not after 1
    assert request_payload(shuffled) == b"a"  # no "data": the first of the list
    assert request_payload({"0": b"only"}) == b"only"
    # other names keep the order they came in (multipart parts), one index among names changes nothing
    assert binary_parts({"image1": b"x", "image0": b"y"}) == (b"x", b"y")
    assert binary_parts({"b": b"x", "0": b"y", "a": b"z"}) == (b"x", b"y", b"z")
    assert binary_parts({"1": b"x", "٠": b"y"}) == (b"x", b"y")  # digits other than ASCII are no index
    assert binary_parts({"1": b"x", "0": b"", "data": "text"}) == (b"x",)  # empty and text fields are no parts
    assert request_payload({"data": b"d", "0": b"z"}) == b"d"


def test_slots_keep_every_item_in_its_place():
    bad = RequestError(413, "too big")
    slots = Slots([["a", "b"], bad, ["c"], []], parts=lambda item: item)
    assert slots.flat == ["a", "b", "c"] and slots.counts == [2, 0, 1, 0]
    answers = slots.answers([1, 2, 3], lambda item, outputs: {"item": item, "outputs": outputs})
    assert answers == [{"item": ["a", "b"], "outputs": [1, 2]}, bad, {"item": ["c"], "outputs": [3]},
                       {"item": [], "outputs": []}]
    with pytest.raises(ValueError, match="2 outputs for 3 parts"):
        slots.answers([1, 2], lambda item, outputs: None)


def test_first_error_names_where_it_was():
    outputs = [{"ok": 1}, RequestError(413, "too long"), RequestError(400, "other")]
    failed = first_error(outputs, lambda i: f"pairs[{i}]: ")
    assert (failed.status, failed.message) == (413, "pairs[1]: too long")
    assert first_error([{"ok": 1}]) is None


def test_the_skeleton_parses_runs_and_answers_each_request_on_its_own(tmp_path):
    """A tiny model through ``ModelHandler``: bad requests keep their 4xx, the rest run as one batch."""

    class Runner:
        def parse(self, request):
            if request.payload == "bad":
                raise RequestError(422, "bad payload")
            return (request.payload, request.content_type)

        def run(self, items, timings):
            timings["decode"] = 0.001
            return [item if isinstance(item, RequestError) else {"echo": item[0], "type": item[1],
                                                                   "batch_size": len(items)} for item in items]

    @dataclasses.dataclass(frozen=True)
    class Options:
        pass

    def load(model_dir, options, device, batch_size):
        assert str(device) == "cpu" and batch_size == 4
        return Runner()

    class Handler(ModelHandler):
        pass

    Handler.options, Handler.load = Options, load
    handler = Handler()
    handler.initialize(FakeContext(tmp_path, batch_size=4))
    context = FakeContext(tmp_path)
    context.get_all_request_header = lambda idx: {"Content-Type": "text/plain"} if idx == 0 else {}
    data = [{"body": "one"}, {"body": "bad"}, {}, {"data": "two"}]
    answers = [json.loads(r) for r in handler.handle(data, context)]
    assert answers[0] == {"echo": "one", "type": "text/plain", "batch_size": 4}
    assert answers[3] == {"echo": "two", "type": None, "batch_size": 4}
    assert {i: status for i, (status, _) in context.statuses.items()} == {1: 422, 2: 400}
    assert answers[1] == {"error": "bad payload", "status": 422} and "empty request body" in answers[2]["error"]
    assert set(context.content_types.values()) == {"application/json"}
    names = [name for name, _, _ in context.metrics.records]
    assert names[:3] == ["HandlerBatches", "HandlerBatchedRequests", "HandlerBatchSize"]
    assert "HandlerDecodeMs" in names and "HandlerTotalMs" in names


def test_responses_without_a_context():
    bodies = encode_responses(None, [{"a": 1}, RequestError(400, "no")])
    assert [json.loads(body) for body in bodies] == [{"a": 1}, {"error": "no", "status": 400}]


@pytest.mark.parametrize("encoder", ["orjson", "json"])
def test_both_encoders_give_the_same_json(monkeypatch, encoder):
    """orjson where installed (setup.py asks for it), the standard library where an archive lands without it: the
    same values, floats to the last bit, non-ASCII text included."""
    if encoder == "json":
        monkeypatch.setattr(serving_handler, "orjson", None)
    elif serving_handler.orjson is None:
        pytest.skip("orjson is not installed")
    answer = {"predictions": [{"label": "café crème", "index": 3, "probability": 0.1 + 0.2}],
              "embedding": [1e-05, -2.5, 3.0, 0.30000000000000004], "batch": {"batch_size": 2}}
    body = serving_handler.to_json(answer)
    assert isinstance(body, bytes if encoder == "orjson" else str)
    assert json.loads(body) == answer
    if encoder == "orjson":  # numpy values from a runner, and the NaN json.dumps would write as invalid JSON
        import numpy as np
        assert json.loads(serving_handler.to_json({"v": np.float32(0.5), "a": np.arange(3), "nan": float("nan")})) \
            == {"v": 0.5, "a": [0, 1, 2], "nan": None}
