"""TorchServe's gRPC inference API (``inference.proto``, served on ``grpc_inference_port``) with a stock grpcio client,
for both models, against the real frontend with token auth on.

Stubs are compiled at test time from the protos inside TorchServe's jar (``grpc_stubs.py``). One instance with the
shipped config.properties serves the ResNet-101 archive (random weights) and the tiny random BERT classifier of
test_bad_inputs.py, each with batch_size 4 and a 5 s maxBatchDelay: every test sends its requests in groups of four
at once, so a batch closes as soon as the group is in and the good answers' ``batch_size`` shows the group shared it.

What TorchServe 0.12 does with gRPC, pinned here (docs/grpc.md):
- the token goes in the call metadata as ``authorization: Bearer <inference key>``; without it, or with another
  key, every call (Ping included) gets PERMISSION_DENIED;
- ``Predictions`` hands the worker each entry of the ``input`` map as a request field of that name, raw bytes with
  no Content-Type (gRPC metadata never reaches the worker);
- the per-request status a handler sets is dropped: a request refused by the handler gets gRPC OK, and only its
  body, our ``{"error": ..., "status": ...}``, says it was refused;
- the Open Inference Protocol service (``open_inference_grpc.proto``: ``ModelInfer`` ...) shares the port but is
  only served with ``ts_open_inference_protocol=true``; a second instance with that setting and a probe handler pins
  what a ``ModelInfer`` hands the worker and what a handler answer must hold for the frontend to convert it.
"""

from __future__ import annotations

import base64
import json
import sys
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from torchserve_accel.tools.grpc_stubs import Stubs, bearer, compile_stubs
from tests.integration.serving import log, ready_workers, running_torchserve
from tests.integration.test_bad_inputs import jpeg, model_store, tiny_bert_archive, worker_pids
from torchserve_accel.tools.launch import read_properties
from torchserve_accel.tools.paths import BASE_CONFIG
from torchserve_accel.tools.torchserve import TorchServe

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (pip install -e .[dev])")
pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed (pip install -e .[dev])")

pytestmark = pytest.mark.integration
RESNET, BERT, PROBE = "resnet101", "bert", "probe"
BATCH = 4
DELAY_MS = 5000  # a batch of four closes when the fourth request is in; only a group that never fills waits this long
BATCH_ONLY = ("batch_size", "images_in_batch")  # facts about the batch an answer ran in, not about the request
MAX_REQUEST_SIZE = int(read_properties(BASE_CONFIG)["max_request_size"])
TOKEN_FAILED = "Token Authorization failed"


@dataclass
class Grpc:
    """One TorchServe instance and a gRPC channel to its inference port."""

    ts: TorchServe
    stubs: Stubs
    channel: Any

    @property
    def inference(self):
        return self.stubs.inference_grpc.InferenceAPIsServiceStub(self.channel)

    @property
    def open_inference(self):
        return self.stubs.open_inference_grpc.GRPCInferenceServiceStub(self.channel)

    def key(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.ts.keys()["inference"])

    def predictions(self, model: str, data: bytes, metadata: Any = None) -> tuple[Any, Any]:
        """One ``Predictions`` call with ``data`` in the input ``data`` -> (status code, JSON body or error details)."""
        request = self.stubs.inference.PredictionsRequest(model_name=model, input={"data": data})
        try:
            answer = self.inference.Predictions(request, metadata=self.key() if metadata is None else metadata,
                                                timeout=300)
        except grpc.RpcError as err:
            return err.code(), err.details()
        return grpc.StatusCode.OK, json.loads(answer.prediction)

    def rest(self, model: str, body: bytes, content_type: str) -> tuple[int, Any]:
        answer = self.ts.predict(model, body, content_type)
        return answer.status_code, answer.json()


def connect(ts: TorchServe, stubs: Stubs) -> Grpc:
    return Grpc(ts, stubs, grpc.insecure_channel(f"127.0.0.1:{ts.info.grpc_ports[0]}"))


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Stubs:
    return compile_stubs(tmp_path_factory.mktemp("grpc-stubs"))


@pytest.fixture(scope="module")
def served(tmp_path_factory, resnet_store, stubs):
    store = model_store(tmp_path_factory.mktemp("grpc-store"), resnet_store / f"{RESNET}.mar",
                        tiny_bert_archive(tmp_path_factory))
    with running_torchserve(tmp_path_factory.mktemp("grpc-run"), store) as ts:
        ts.register(f"{RESNET}.mar", RESNET, batch_size=BATCH, max_batch_delay=DELAY_MS, response_timeout=300)
        ts.register("bert_large.mar", BERT, batch_size=BATCH, max_batch_delay=DELAY_MS)
        pids = {model: worker_pids(ts, model) for model in (RESNET, BERT)}
        client = connect(ts, stubs)
        yield client
        client.channel.close()
        assert {model: worker_pids(ts, model) for model in (RESNET, BERT)} == pids, "a worker restarted"


def at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run every call at the same time, one thread each; results in order."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def request_part(answer: Any) -> Any:
    """A native answer without the facts about the batch it ran in."""
    return {k: v for k, v in answer.items() if k not in BATCH_ONLY} if isinstance(answer, dict) else answer


def assert_close(got: Any, want: Any, where: str = "answer") -> None:
    """Equal JSON, floats to a relative 1e-4 (two answers for the same bytes may come from different batches)."""
    if isinstance(want, float) and isinstance(got, (int, float)):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{where}: {got!r} != {want!r}"
        for key in want:
            assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for index, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{index}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


# ---------------------------------------------------------------------------------------------- the shipped config


def test_ping(served):
    answer = served.inference.Ping(served.stubs.inference_grpc.google_dot_protobuf_dot_empty__pb2.Empty(),
                                   metadata=served.key(), timeout=60)
    assert json.loads(answer.health) == {"status": "Healthy"}


@pytest.mark.parametrize("metadata", [
    pytest.param((), id="no-key"),
    pytest.param(bearer("wrong"), id="wrong-key"),
    pytest.param("management", id="management-key"),
    pytest.param("bare", id="key-without-Bearer"),
])
def test_calls_without_the_inference_key_are_refused(served, metadata):
    """TorchServe's gRPC interceptor reads ``authorization`` and wants ``Bearer <inference key>`` (REST answers the
    same mistakes with 400)."""
    keys = served.ts.keys()
    metadata = {"management": bearer(keys["management"]), "bare": (("authorization", keys["inference"]),)}.get(
        metadata, metadata)
    empty = served.stubs.inference_grpc.google_dot_protobuf_dot_empty__pb2.Empty()
    with pytest.raises(grpc.RpcError) as ping:
        served.inference.Ping(empty, metadata=metadata, timeout=60)
    code, details = served.predictions(RESNET, jpeg(1), metadata=metadata)
    assert (ping.value.code(), code) == (grpc.StatusCode.PERMISSION_DENIED,) * 2
    assert TOKEN_FAILED in ping.value.details() and TOKEN_FAILED in details


def test_resnet_answers_equal_the_rest_api(served):
    """JPEG bytes in the input ``data`` reach the worker as the raw body does over REST (bytes, no Content-Type
    needed), and the answer is the REST answer."""
    blobs = [jpeg(20), jpeg(21)]
    answers = at_once([lambda: served.rest(RESNET, blobs[0], "image/jpeg"), lambda: served.predictions(RESNET, blobs[0]),
                       lambda: served.rest(RESNET, blobs[1], "image/jpeg"), lambda: served.predictions(RESNET, blobs[1])])
    assert [status for status, _ in answers] == [200, grpc.StatusCode.OK] * 2, answers
    for rest, over_grpc in (answers[0:2], answers[2:4]):
        assert "error" not in over_grpc[1]
        assert_close(request_part(over_grpc[1]), request_part(rest[1]))


def multipart(parts: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    from urllib3 import encode_multipart_formdata

    return encode_multipart_formdata([(name, (f"{name}.jpg", blob, "image/jpeg")) for name, blob in parts])


def results_of(answer: tuple[Any, Any]) -> list[Any]:
    status, body = answer
    assert status in (200, grpc.StatusCode.OK) and "results" in body, answer
    return body["results"]


def close(a: Any, b: Any) -> bool:
    try:
        assert_close(a, b)
    except AssertionError:
        return False
    return True


def test_several_images_as_entries_named_by_index_are_answered_in_that_order(served):
    """Twelve images as Predictions entries "0".."11" (the client's map sends them shuffled; "10" must come after
    "9", not after "1"), and a call with entry "5" not an image: answered as the REST multipart requests of the same
    images in that order, one result or error per image. Four calls at once: one batch."""
    blobs = [jpeg(40 + i) for i in range(12)]
    with_bad = [*blobs[:5], b"not an image", *blobs[6:]]

    def over_grpc(images: list[bytes]) -> tuple[Any, Any]:
        request = served.stubs.inference.PredictionsRequest(model_name=RESNET,
                                                            input={str(i): b for i, b in enumerate(images)})
        answer = served.inference.Predictions(request, metadata=served.key(), timeout=300)
        return grpc.StatusCode.OK, json.loads(answer.prediction)

    def over_rest(images: list[bytes]) -> tuple[Any, Any]:
        return served.rest(RESNET, *multipart([(f"image{i}", b) for i, b in enumerate(images)]))

    answers = at_once([lambda: over_grpc(blobs), lambda: over_rest(blobs), lambda: over_grpc(with_bad),
                       lambda: over_rest(with_bad)])
    grpc_all, rest_all, grpc_bad, rest_bad = (results_of(a) for a in answers)
    assert len(grpc_all) == len(grpc_bad) == 12
    assert not any(close(grpc_all[i], grpc_all[i + 1]) for i in range(11)), "images too alike to check the order"
    assert_close(grpc_all, rest_all)
    assert grpc_bad[5]["status"] in (400, 415) and "error" in grpc_bad[5], grpc_bad[5]
    assert_close(grpc_bad, rest_bad)
    assert_close(grpc_bad[:5] + grpc_bad[6:], grpc_all[:5] + grpc_all[6:])
    assert [answers[i][1]["batch_size"] for i in range(4)] == [4] * 4, "the four did not share a batch"


def test_bert_text_answers_equal_the_rest_api(served):
    """A text as UTF-8 bytes: gRPC gives the worker bytes with no Content-Type, which the handler reads as one text,
    like a text/plain body over REST."""
    texts = ["a film I would watch again", "na\u00efve caf\u00e9 \u2014 \u4e2d\u6587 too"]
    answers = at_once([lambda: served.rest(BERT, texts[0].encode(), "text/plain"),
                       lambda: served.predictions(BERT, texts[0].encode()),
                       lambda: served.rest(BERT, texts[1].encode(), "text/plain"),
                       lambda: served.predictions(BERT, texts[1].encode())])
    assert [status for status, _ in answers] == [200, grpc.StatusCode.OK] * 2, answers
    for rest, over_grpc in (answers[0:2], answers[2:4]):
        assert_close(request_part(over_grpc[1]), request_part(rest[1]))


def test_bert_json_answers_equal_the_rest_api(served):
    """gRPC Predictions hands the worker JSON bytes with no Content-Type (no gRPC metadata reaches it): a body that
    is a JSON object is read as the same body sent as application/json."""
    bodies = [json.dumps({"texts": ["a good film", "a bad film"]}).encode(), json.dumps({"text": "fine"}).encode()]
    answers = at_once([lambda: served.rest(BERT, bodies[0], "application/json"), lambda: served.predictions(BERT, bodies[0]),
                       lambda: served.rest(BERT, bodies[1], "application/json"), lambda: served.predictions(BERT, bodies[1])])
    assert [status for status, _ in answers] == [200, grpc.StatusCode.OK] * 2, answers
    for rest, over_grpc in (answers[0:2], answers[2:4]):
        assert_close(request_part(over_grpc[1]), request_part(rest[1]))


def test_resnet_bad_image_is_refused_in_the_body_only(served):
    """A truncated JPEG sent at once with two good ones over gRPC and the same bad bytes over REST: one batch of four.
    REST answers the bad one 400; gRPC drops that status (OK), and the body is the same JSON error."""
    good, bad = [jpeg(30), jpeg(31)], jpeg(32)[:3000]
    answers = at_once([lambda: served.predictions(RESNET, good[0]), lambda: served.predictions(RESNET, bad),
                       lambda: served.rest(RESNET, bad, "image/jpeg"), lambda: served.predictions(RESNET, good[1])])
    (good_a, refused, rest_refused, good_b) = answers
    log(f"gRPC answer to a truncated JPEG: {refused}")
    assert refused[0] == grpc.StatusCode.OK, "TorchServe now maps the per-request status: update docs/grpc.md"
    assert refused[1]["status"] == 400 and "truncated" in refused[1]["error"], refused
    assert rest_refused == (400, refused[1])
    assert [good_a[0], good_b[0]] == [grpc.StatusCode.OK] * 2
    assert "error" not in good_a[1] and "error" not in good_b[1]
    assert [good_a[1]["batch_size"], good_b[1]["batch_size"]] == [4, 4], "the four did not share a batch"


def test_bert_bad_text_is_refused_in_the_body_only(served):
    answers = at_once([lambda: served.predictions(BERT, b"a good text"), lambda: served.predictions(BERT, b"\xff\xfe caf\xe9"),
                       lambda: served.predictions(BERT, b"another good one"), lambda: served.predictions(BERT, b"fine")])
    assert [code for code, _ in answers] == [grpc.StatusCode.OK] * 4
    error = answers[1][1]
    assert error["status"] == 400 and "not valid UTF-8" in error["error"], error
    assert [answers[i][1]["batch_size"] for i in (0, 2, 3)] == [4, 4, 4], "the four did not share a batch"


def test_frontend_errors_are_grpc_statuses(served):
    """Errors the frontend raises itself (not the handler's) are gRPC statuses: an unknown model is INTERNAL; a message
    over max_request_size is cut off by grpc-java's inbound limit, which the client sees as RESOURCE_EXHAUSTED or, when
    the server resets the stream while the message is still being sent, CANCELLED."""
    code, details = served.predictions("no_such_model", b"x")
    assert code == grpc.StatusCode.INTERNAL and "Model not found: no_such_model" in details
    code, details = served.predictions(RESNET, b"\xff\xd8\xff" + b"a" * MAX_REQUEST_SIZE)
    log(f"gRPC answer to a message over max_request_size: {code} {details}")
    assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED), details


def test_open_inference_grpc_is_off_with_the_shipped_config(served):
    request = served.stubs.open_inference.ModelInferRequest(model_name=RESNET)
    with pytest.raises(grpc.RpcError) as refused:
        served.open_inference.ModelInfer(request, metadata=served.key(), timeout=60)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "GRPCInferenceService/ModelInfer" in refused.value.details()


# ---------------------------------------------------------------------------------------------- Open Inference Protocol

PROBE_HANDLER = '''
import json


class Probe:
    """Answers a v2 ModelInfer with what the worker received: the request dict and the request's headers."""

    def initialize(self, context):
        pass

    def handle(self, data, context):
        answers = []
        for idx, request in enumerate(data):
            body = request["body"]
            if body["inputs"] and body["inputs"][0]["name"] == "not_v2":
                context.set_response_status(400, "refused", idx)
                answers.append(json.dumps({"error": "refused", "status": 400}))
                continue
            headers = {k: v for k, v in context.get_all_request_header(idx).items() if k.lower() != "authorization"}
            answers.append(json.dumps({"id": body.get("id", ""), "model_name": "probe", "model_version": "1.0",
                                       "outputs": [{"name": "request", "datatype": "BYTES", "shape": [1], "data": [request]},
                                                   {"name": "headers", "datatype": "BYTES", "shape": [1], "data": [headers]},
                                                   {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["cat"]},
                                                   {"name": "score", "datatype": "FP32", "shape": [2], "data": [0.25, 0.75]}]}))
        return answers
'''


def build_probe_archive(store: Path) -> None:
    handler = store.parent / "probe_handler.py"
    handler.write_text(PROBE_HANDLER)
    store.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", PROBE, "--version", "1.0",
                    "--handler", str(handler), "--export-path", str(store), "--force"],
                   check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def oip(tmp_path_factory, stubs):
    """An instance with ``ts_open_inference_protocol=true`` serving the probe (batch size 1)."""
    store = tmp_path_factory.mktemp("oip") / "model_store"
    build_probe_archive(store)
    with running_torchserve(tmp_path_factory.mktemp("oip-run"), store, {"ts_open_inference_protocol": "true"}) as ts:
        ts.register(f"{PROBE}.mar", PROBE)
        client = connect(ts, stubs)
        yield client
        client.channel.close()


def tensor(stubs: Stubs, name: str, datatype: str, shape: list[int], **contents):
    infer = stubs.open_inference
    return infer.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape,
                                                   contents=infer.InferTensorContents(**contents))


def outputs_of(answer) -> dict[str, tuple[str, list[int], list]]:
    """A ModelInferResponse's outputs as {name: (datatype, shape, values)}; BYTES elements parsed as JSON, which is
    how TorchServe writes each element of a BYTES output (``JsonElement.toString()``)."""
    found = {}
    for out in answer.outputs:
        contents = out.contents
        values = ([json.loads(b) for b in contents.bytes_contents] or list(contents.fp32_contents)
                  or list(contents.fp64_contents) or list(contents.int64_contents) or list(contents.int_contents)
                  or list(contents.uint_contents) or list(contents.uint64_contents) or list(contents.bool_contents))
        found[out.name] = (out.datatype, list(out.shape), values)
    return found


def test_open_inference_grpc_shares_the_port_and_the_token(oip):
    infer = oip.stubs.open_inference
    assert oip.open_inference.ServerLive(infer.ServerLiveRequest(), metadata=oip.key(), timeout=60).live
    assert oip.open_inference.ModelReady(infer.ModelReadyRequest(name=PROBE), metadata=oip.key(), timeout=60).ready
    with pytest.raises(grpc.RpcError) as refused:
        oip.open_inference.ServerLive(infer.ServerLiveRequest(), timeout=60)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and TOKEN_FAILED in refused.value.details()


def test_model_infer_as_the_worker_sees_it(oip):
    """The frontend turns a ModelInfer into a v2 JSON body under ``body`` (Content-Type application/json, so parsed):
    ``id`` and ``model_name`` added, every BYTES element base64-encoded, ``raw_input_contents`` dropped (the tensor's
    ``data`` is empty), ``parameters`` and requested ``outputs`` dropped; no request header reaches the worker."""
    infer = oip.stubs.open_inference
    request = infer.ModelInferRequest(
        model_name=PROBE, id="req-1", parameters={"priority": infer.InferParameter(int64_param=1)},
        inputs=[tensor(oip.stubs, "texts", "BYTES", [2], bytes_contents=[b"a good film", b"\xff\xd8 raw"]),
                tensor(oip.stubs, "scale", "FP32", [2], fp32_contents=[1.5, 2.0]),
                infer.ModelInferRequest.InferInputTensor(name="raw", datatype="BYTES", shape=[1])],
        outputs=[infer.ModelInferRequest.InferRequestedOutputTensor(name="label")],
        raw_input_contents=[b"raw bytes"])
    answer = oip.open_inference.ModelInfer(request, metadata=oip.key(), timeout=60)
    outputs = outputs_of(answer)
    (seen,), (headers,) = outputs["request"][2], outputs["headers"][2]
    assert seen == {"body": {"id": "req-1", "model_name": PROBE, "inputs": [
        {"name": "texts", "shape": [2], "datatype": "BYTES",
         "data": [base64.b64encode(b"a good film").decode(), base64.b64encode(b"\xff\xd8 raw").decode()]},
        {"name": "scale", "shape": [2], "datatype": "FP32", "data": [1.5, 2.0]},
        {"name": "raw", "shape": [1], "datatype": "BYTES", "data": []}]}}
    assert headers == {"body": {"content-type": "application/json"}}
    # What comes back: id, model name and version as the handler wrote them; a BYTES element as its JSON text.
    assert (answer.id, answer.model_name, answer.model_version) == ("req-1", PROBE, "1.0")
    assert [b for b in answer.outputs[2].contents.bytes_contents] == [b'"cat"']
    assert outputs["score"] == ("FP32", [2], [0.25, 0.75])


def test_v2_rest_route_as_the_worker_sees_it(oip):
    """``POST /v2/models/<m>/infer`` (served with or without ts_open_inference_protocol): the body as the client sent
    it, BYTES data untouched, with the request's HTTP headers and TorchServe's ``explain: False``."""
    body = {"id": "req-2", "inputs": [{"name": "texts", "shape": [1], "datatype": "BYTES", "data": ["a good film"]}]}
    answer = oip.ts.request("inference", "POST", f"/v2/models/{PROBE}/infer", json=body)
    assert answer.status_code == 200, answer.text
    outputs = {out["name"]: out for out in answer.json()["outputs"]}
    (seen,), (headers,) = outputs["request"]["data"], outputs["headers"]["data"]
    assert seen == {"body": body}
    assert headers["Content-Type"] == "application/json" and headers["explain"] == "False"


def test_model_infer_answer_that_is_not_v2_restarts_the_worker(oip):
    """The frontend reads ``id``, ``model_name``, ``model_version`` and ``outputs`` from the handler's answer whatever
    status the handler set; an answer without them (our ``{"error", "status"}``) throws in the frontend, which then
    kills the worker: INTERNAL "Worker died." and a new worker process."""
    before = worker_pids(oip.ts, PROBE)
    request = oip.stubs.open_inference.ModelInferRequest(
        model_name=PROBE, inputs=[tensor(oip.stubs, "not_v2", "BYTES", [1], bytes_contents=[b"x"])])
    with pytest.raises(grpc.RpcError) as failed:
        oip.open_inference.ModelInfer(request, metadata=oip.key(), timeout=120)
    assert failed.value.code() == grpc.StatusCode.INTERNAL and "Worker died." in failed.value.details()
    workers = ready_workers(oip.ts, PROBE, 1, timeout=120)
    assert [w["status"] for w in workers] == ["READY"]
    assert worker_pids(oip.ts, PROBE).keys() == before.keys() and worker_pids(oip.ts, PROBE) != before


# ---------------------------------------------------------------------------------------------- ModelInfer, both models

@pytest.fixture(scope="module")
def oip_models(oip, tmp_path_factory, resnet_store):
    """ResNet-101 and the tiny BERT on the Open Inference Protocol instance (batch size 4, 100 ms)."""
    store = Path(oip.ts.info.model_store)
    model_store(store, resnet_store / f"{RESNET}.mar", tiny_bert_archive(tmp_path_factory))
    oip.ts.register(f"{RESNET}.mar", RESNET, batch_size=BATCH, max_batch_delay=100, response_timeout=300)
    oip.ts.register("bert_large.mar", BERT, batch_size=BATCH, max_batch_delay=100)
    return oip


def model_infer(client: Grpc, model: str, name: str, values: list[bytes]):
    request = client.stubs.open_inference.ModelInferRequest(
        model_name=model, id="req-3", inputs=[tensor(client.stubs, name, "BYTES", [len(values)], bytes_contents=values)])
    return client.open_inference.ModelInfer(request, metadata=client.key(), timeout=300)


def v2_rest(client: Grpc, model: str, name: str, values: list[str]) -> dict:
    body = {"id": "req-3", "inputs": [{"name": name, "shape": [len(values)], "datatype": "BYTES", "data": values}]}
    answer = client.ts.request("inference", "POST", f"/v2/models/{model}/infer", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def rest_outputs(answer: dict) -> dict[str, tuple[str, list[int], list]]:
    def flat(data):
        return [x for item in data for x in flat(item)] if isinstance(data, list) else [data]

    return {out["name"]: (out["datatype"], out["shape"], flat(out["data"])) for out in answer["outputs"]}


def test_model_infer_resnet_equals_the_v2_rest_answer(oip_models):
    """Raw JPEG bytes in a BYTES tensor over gRPC; the same images as base64 strings over REST v2 (the form the
    frontend hands the worker in both cases)."""
    blobs = [jpeg(40), jpeg(41)]
    over_grpc = model_infer(oip_models, RESNET, "images", blobs)
    rest = v2_rest(oip_models, RESNET, "images", [base64.b64encode(b).decode() for b in blobs])
    assert (over_grpc.id, over_grpc.model_name) == ("req-3", RESNET)
    assert_close(outputs_of(over_grpc), rest_outputs(rest), "outputs")


def test_model_infer_bert_equals_the_v2_rest_answer(oip_models):
    """UTF-8 texts in a BYTES tensor over gRPC reach the worker base64-encoded; over REST v2 the same texts are plain
    strings. The handler must answer both alike."""
    texts = ["a good film", "na\u00efve caf\u00e9"]
    over_grpc = model_infer(oip_models, BERT, "text", [t.encode() for t in texts])
    rest = v2_rest(oip_models, BERT, "text", texts)
    assert_close(outputs_of(over_grpc), rest_outputs(rest), "outputs")


@pytest.mark.parametrize("model, name, value, words", [
    pytest.param(RESNET, "images", jpeg(42)[:3000], "truncated", id="resnet-truncated-jpeg"),
    pytest.param(BERT, "text", b"\xff\xfe caf\xe9", "UTF-8", id="bert-invalid-utf8"),
])
def test_model_infer_bad_request_is_answered_and_keeps_the_worker(oip_models, model, name, value, words):
    """The frontend drops the handler's status on ModelInfer and cannot convert a non-v2 body (the worker would be
    restarted): a refused request must still be a v2 answer, with the error in it."""
    before = worker_pids(oip_models.ts, model)
    try:
        answer = str(model_infer(oip_models, model, name, [value]))
    except grpc.RpcError as err:
        answer = f"{err.code()} {err.details()}"
    assert "Worker died" not in answer and words in answer, answer
    assert worker_pids(oip_models.ts, model) == before
