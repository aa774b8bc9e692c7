"""KServe's protocols through the real TorchServe frontend, with a stock client: tritonclient's HTTP client speaking the
Open Inference Protocol (v2) to ``/v2/models/<model>/infer``, and KServe v1 bodies to ``/v1/models/<model>:predict``,
for both models; a bad request sent with good ones gets its own 4xx while they are answered from the same batch."""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.answers import close
from tests.integration.serving import log, running_torchserve, send_concurrently
from tests.integration.test_bad_inputs import jpeg, model_store, tiny_bert_archive
from torchserve_accel.tools.loadgen.payloads import image_payloads, per_request, text_payloads

tritonclient_http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

pytestmark = pytest.mark.integration
RESNET, BERT = "resnet101", "bert"
BATCH, DELAY_MS = 8, 500


@pytest.fixture(scope="module")
def served(tmp_path_factory, resnet_store):
    store = model_store(tmp_path_factory.mktemp("kserve-store"), resnet_store / f"{RESNET}.mar",
                        tiny_bert_archive(tmp_path_factory))
    with running_torchserve(tmp_path_factory.mktemp("kserve-run"), store) as ts:
        ts.register(f"{RESNET}.mar", RESNET, batch_size=BATCH, max_batch_delay=DELAY_MS, response_timeout=300)
        ts.register("bert_large.mar", BERT, batch_size=BATCH, max_batch_delay=DELAY_MS)
        yield ts


def client(ts):
    """The stock Open Inference Protocol client, pointed at TorchServe's inference address with the token."""
    url = ts.url("inference", "").split("://", 1)[1].rstrip("/")
    return tritonclient_http.InferenceServerClient(url=url, connection_timeout=300, network_timeout=300)


def auth(ts) -> dict:
    return {"Authorization": f"Bearer {ts.keys()['inference']}"}


def text(value) -> str:
    """A BYTES element as tritonclient gives it: str for JSON data, bytes for binary data."""
    return value.decode() if isinstance(value, bytes) else str(value)


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def infer(ts, model: str, name: str, values: list[str], outputs: list[str]):
    """One v2 request: a BYTES input of ``values`` (JSON data, not the binary extension)."""
    data = tritonclient_http.InferInput(name, [len(values)], "BYTES")
    data.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=False)
    requested = [tritonclient_http.InferRequestedOutput(o, binary_data=False) for o in outputs]
    return client(ts).infer(model, [data], outputs=requested, headers=auth(ts), request_id="req-7")


def test_v2_images_with_tritonclient(served):
    blobs = [jpeg(50), jpeg(51)]
    result = infer(served, RESNET, "images", [b64(b) for b in blobs], ["probabilities", "indices", "labels"])
    probabilities, indices, labels = (result.as_numpy(n) for n in ("probabilities", "indices", "labels"))
    assert probabilities.shape == indices.shape == labels.shape == (2, 5) and probabilities.dtype == np.float32
    assert result.get_response()["id"] == "req-7" and result.get_response()["model_name"] == RESNET
    native = served.predict(RESNET, blobs[1], "image/jpeg").json()["predictions"]
    assert [p["index"] for p in native] == indices[1].tolist()
    assert [p["label"] for p in native] == [text(label) for label in labels[1]]
    assert np.allclose([p["probability"] for p in native], probabilities[1], rtol=1e-4)


def test_v2_texts_with_tritonclient(served):
    result = infer(served, BERT, "text", ["a good film", "a bad film"], ["probabilities", "label", "truncated"])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 2) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    native = served.predict(BERT, b"a good film", "text/plain").json()
    assert text(result.as_numpy("label")[0]) == native["label"]
    assert np.allclose(probabilities[0], [native["probabilities"][k] for k in ("negative", "positive")], atol=1e-5)


def test_v2_bad_request_gets_its_own_4xx_in_a_shared_batch(served):
    """Three v2 requests and one native one sent together: the bad v2 request (an item that is not base64) is refused
    with 400 through tritonclient's exception; the others are answered, from one batch of four."""
    good = [b64(jpeg(52))]
    outcomes: dict[str, object] = {}

    def run(tag: str, values: list[str]) -> None:
        try:
            outcomes[tag] = infer(served, RESNET, "images", values, ["labels"])
        except InferenceServerException as err:
            outcomes[tag] = err

    threads = [threading.Thread(target=run, args=(tag, values)) for tag, values in
               (("good-1", good), ("bad", [good[0], "%%% not base64"]), ("good-2", good))]
    for thread in threads:
        thread.start()
    native = send_concurrently(served, RESNET, [(jpeg(53), "image/jpeg")])[0]
    for thread in threads:
        thread.join()
    assert native.status_code == 200
    bad = outcomes["bad"]
    assert isinstance(bad, InferenceServerException) and bad.status() == "400", bad
    assert "input images[1]" in bad.message() and "neither an image nor base64" in bad.message()
    for tag in ("good-1", "good-2"):
        assert outcomes[tag].as_numpy("labels").shape == (1, 5), outcomes[tag]
    log(f"native answer shared a batch of {native.json()['batch_size']}")
    assert native.json()["batch_size"] >= 2  # at least one v2 request ran in its batch


def test_v1_predict_route_for_both_models(served):
    blob = jpeg(54)
    images = served.request("inference", "POST", f"/v1/models/{RESNET}:predict",
                            json={"instances": [b64(blob), {"b64": b64(blob)}]})
    texts = served.request("inference", "POST", f"/v1/models/{BERT}:predict", json={"instances": ["a good film"]})
    refused = served.request("inference", "POST", f"/v1/models/{BERT}:predict", json={"instances": ["fine", ""]})
    assert (images.status_code, texts.status_code, refused.status_code) == (200, 200, 400)
    first, second = images.json()["predictions"]
    assert first == second and len(first) == 5
    assert texts.json()["predictions"][0]["label"] in ("negative", "positive")
    assert refused.json()["error"].startswith("instances[1] is empty")


def test_a_stock_style_client_of_torchserve(served):
    """TorchServe's stock VisionHandler clients send base64 in a JSON string or as text/plain; several images in one
    request come back as one list, a bad one with its own error."""
    blob = jpeg(55)
    answers = send_concurrently(served, RESNET, [
        (f'"{b64(blob)}"'.encode(), "application/json"), (b64(blob).encode(), "text/plain"),
        (f'["{b64(blob)}", "%%%"]'.encode(), "application/json")])
    assert [a.status_code for a in answers] == [200, 200, 200]
    single, text, listed = (a.json() for a in answers)
    assert close(single["predictions"], text["predictions"])
    assert listed["results"][0]["predictions"][0]["index"] == single["predictions"][0]["index"]
    assert listed["results"][1]["status"] == 400


def test_multipart_images_and_hf_inputs_each_with_a_bad_item(served):
    """Several images as the parts of one multipart request (any field names, in order; TorchServe hands each part
    to the worker as its own field), and HuggingFace/TEI ``{"inputs": ...}`` bodies, all sent at once: the bad part
    gets its own error inside its request's list; the text that is too long with ``"truncate": false`` refuses its
    request alone (413, TEI's meaning)."""
    blob = jpeg(56)
    parts = [("first", ("a.jpg", blob, "image/jpeg")), ("second", ("b.jpg", b"not an image", "image/jpeg")),
             ("third", ("c.jpg", blob, "image/jpeg"))]
    long_text = "the cat sat on the mat " * 40  # over the tiny checkpoint's 64 tokens
    calls = {
        "multipart": lambda: served.request("inference", "POST", f"/predictions/{RESNET}", files=parts, timeout=300),
        "single": lambda: served.predict(RESNET, blob, "image/jpeg", timeout=300),
        "inputs": lambda: served.request("inference", "POST", f"/predictions/{BERT}", timeout=300,
                                         json={"inputs": ["a good film", long_text]}),
        "strict": lambda: served.request("inference", "POST", f"/predictions/{BERT}", timeout=300,
                                         json={"inputs": ["fine", long_text], "truncate": False}),
        "text": lambda: served.predict(BERT, b"a good film", "text/plain", timeout=300),
    }
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        answers = dict(zip(calls, pool.map(lambda call: call(), calls.values())))
    assert {tag: a.status_code for tag, a in answers.items()} == {
        "multipart": 200, "single": 200, "inputs": 200, "strict": 413, "text": 200}, {
        tag: a.text[:200] for tag, a in answers.items()}
    first, bad, third = answers["multipart"].json()["results"]
    single = answers["single"].json()["predictions"]
    assert close(first["predictions"], third["predictions"])
    assert [p["index"] for p in first["predictions"]] == [p["index"] for p in single]
    assert bad["status"] == 415 and "not an image" in bad["error"]
    good, cut = answers["inputs"].json()["results"]
    assert good["label"] == answers["text"].json()["label"] and (good["truncated"], cut["truncated"]) == (False, True)
    assert answers["strict"].json()["error"].startswith("inputs[1]: has more than max_length=64 tokens")


def test_the_load_generators_several_item_requests_are_answered_item_by_item(served):
    """``bench --per-request N`` sends N images as the parts of one multipart body and N texts as ``{"texts": [...]}``:
    each item gets its own answer, the same as when it is sent alone."""
    images = image_payloads(3, size=(64, 48))
    texts = text_payloads(3, seed=3)
    image_request, text_request = per_request(images, 3)[0], per_request(texts, 3)[0]
    calls = {
        "images": lambda: served.predict(RESNET, image_request.body, image_request.content_type, timeout=300),
        "texts": lambda: served.predict(BERT, text_request.body, text_request.content_type, timeout=300),
        **{f"image{i}": (lambda p=p: served.predict(RESNET, p.body, p.content_type, timeout=300))
           for i, p in enumerate(images)},
        **{f"text{i}": (lambda p=p: served.predict(BERT, p.body, p.content_type, timeout=300))
           for i, p in enumerate(texts)},
    }
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        answers = dict(zip(calls, pool.map(lambda call: call(), calls.values())))
    assert {tag: a.status_code for tag, a in answers.items()} == dict.fromkeys(calls, 200)
    listed = answers["images"].json()["results"]
    assert [[p["index"] for p in r["predictions"]] for r in listed] == [
        [p["index"] for p in answers[f"image{i}"].json()["predictions"]] for i in range(3)]
    assert [r["label"] for r in answers["texts"].json()["results"]] == [
        answers[f"text{i}"].json()["label"] for i in range(3)]
