"""The wire formats clients already speak, through the real handlers on CPU: TorchServe's stock handler shapes,
several images in one request, HuggingFace/TEI bodies, KServe v1 and the Open Inference Protocol v2."""

from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from bert_handler import BertHandler
from resnet_handler import ResNetHandler
from tests.answers import close
from tests.fake_context import FakeContext
from tests.test_bert_handler import TINY as TINY_BERT
from torchserve_accel.bert.archive import make_random_checkpoint
from torchserve_accel.resnet.archive import prepare_archive_files
from torchserve_accel.serving import handler as serving_handler

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def jpeg(seed: int, size=(160, 120)) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), "RGB").resize(size, Image.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="JPEG")
    return out.getvalue()


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def handle(handler, bodies, context=None):
    """Each body is a TorchServe request dict; -> (answers as parsed JSON, {index: status} of the refused)."""
    context = context or FakeContext("unused")
    context.metrics = None
    answers = [json.loads(r) for r in handler.handle(bodies, context)]
    return answers, {i: status for i, (status, _) in context.statuses.items()}


# ---------------------------------------------------------------------------------------------- ResNet


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("resnet")
    prepare_archive_files(model_dir, None, log=lambda m: None)
    return model_dir


def resnet(model_dir, **options):
    config = yaml.safe_load((REPO / "archiver_configs/resnet101.yaml").read_text())
    config["handler"].update(options)
    handler = ResNetHandler()
    handler.initialize(FakeContext(model_dir, config, batch_size=8))
    return handler


@pytest.fixture(scope="module")
def native(resnet_dir):
    return resnet(resnet_dir)


@pytest.fixture(scope="module")
def stock(resnet_dir):
    return resnet(resnet_dir, response_format="torchserve", max_items_per_request=3)


def top(answer: dict) -> list[tuple[str, float]]:
    """Labels and probabilities, rounded: the same image computes within ~1e-9 in batches of other sizes."""
    return [(p["label"], round(p["probability"], 6)) for p in answer["predictions"]]


def test_answers_compare_equal_only_within_the_tolerance():
    one = {"label": "cat", "probabilities": {"cat": 0.9, "dog": 0.1}, "predictions": [{"index": 3, "p": 0.5}]}
    near = json.loads(json.dumps(one).replace("0.9", "0.9000000002"))
    assert close(one, near)
    for other in ({**one, "label": "dog"}, {**one, "probabilities": {"cat": 0.89, "dog": 0.1}},
                  {**one, "probabilities": {"dog": 0.1, "cat": 0.9}}, {**one, "predictions": [{"index": 4, "p": 0.5}]},
                  {**one, "predictions": []}, {k: v for k, v in one.items() if k != "label"}):
        assert not close(one, other), other


def test_an_image_as_raw_bytes_base64_json_or_base64_text_gets_one_answer(native):
    blob = jpeg(1)
    answers, refused = handle(native, [{"body": bytearray(blob)}, {"body": b64(blob)}, {"data": b64(blob)},
                                       {"body": "not base64 at all!"}])
    assert refused == {3: 400} and "neither an image nor base64" in answers[3]["error"]
    assert top(answers[0]) == top(answers[1]) == top(answers[2]) and answers[0]["batch_size"] == 4


def test_several_images_in_one_request_each_with_its_own_result(native):
    blobs = [jpeg(2), jpeg(3)]
    answers, refused = handle(native, [
        {"body": [b64(blobs[0]), "%%%", b64(b"not an image"), b64(blobs[1])]},
        {"data": bytearray(blobs[1]), "second": bytearray(blobs[0])},  # multipart, two parts
        {"body": bytearray(blobs[0])},
    ])
    assert refused == {}
    listed, parts, single = answers
    assert [sorted(r) for r in listed["results"]] == [["predictions"], ["error", "status"], ["error", "status"],
                                                       ["predictions"]]
    assert listed["results"][1]["status"] == 400 and listed["results"][2]["status"] == 415
    assert listed["images_in_batch"] == 5 and listed["batch_size"] == 3
    assert top(listed["results"][0]) == top(single) == top(parts["results"][1])
    assert top(parts["results"][0]) == top(listed["results"][3])


def test_torchserve_stock_format_answers_label_to_probability(native, stock):
    blob = jpeg(4)
    ours, _ = handle(native, [{"body": bytearray(blob)}])
    answers, refused = handle(stock, [{"body": bytearray(blob)}, {"body": [b64(blob), "%%%"]},
                                      {"body": [b64(blob)] * 4}])
    rounded = [{k: round(v, 6) for k, v in a.items()} for a in (answers[0], answers[1][0])]
    assert rounded[0] == dict(top(ours[0])) == rounded[1]  # TorchServe's image_classifier: {label: probability}
    assert answers[1][1]["status"] == 400
    assert refused == {2: 413} and "4 images, more than the limit of 3" in answers[2]["error"]


def test_kserve_v1_instances(native, stock):
    blobs = [jpeg(5), jpeg(6)]
    body = {"instances": [b64(blobs[0]), {"b64": b64(blobs[1])}, {"data": b64(blobs[0])}]}
    answers, refused = handle(native, [{"body": body}, {"body": {"instances": [b64(blobs[0]), "%%%"]}}])
    assert refused == {1: 400} and answers[1]["error"].startswith("instances[1]")
    predictions = answers[0]["predictions"]
    assert len(predictions) == 3 and close(predictions[0], predictions[2]) and len(predictions[0]) == 5
    assert set(predictions[0][0]) == {"label", "index", "probability"}
    (stocked,), _ = handle(stock, [{"body": body}])
    assert close(stocked["predictions"][0], {p["label"]: p["probability"] for p in predictions[0]})


def test_open_inference_protocol_v2(native):
    blobs = [jpeg(7), jpeg(8)]
    body = {"id": "req-1", "inputs": [{"name": "images", "datatype": "BYTES", "shape": [2], "data": [b64(b) for b in blobs]}]}
    context = FakeContext("unused")
    context.manifest = {"model": {"modelName": "resnet101", "modelVersion": "1.0"}}
    answers, refused = handle(native, [
        {"body": body},
        {"body": {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [2], "data": [b64(blobs[0]), "%%"]}]}},
        {"body": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}},
        {"body": {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [3], "data": [b64(blobs[0])]}]}},
        {"body": {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["x"],
                              "parameters": {"binary_data_size": 12}}]}},
        {"body": bytearray(blobs[0])},
    ], context)
    assert refused == {1: 400, 2: 400, 3: 400, 4: 400}
    assert answers[1]["error"].startswith("input images[1]") and "BYTES" in answers[2]["error"]
    assert "holds 3 values, data has 1" in answers[3]["error"] and "binary data extension" in answers[4]["error"]
    v2 = answers[0]
    assert (v2["model_name"], v2["model_version"], v2["id"]) == ("resnet101", "1.0", "req-1")
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert {n: (o["datatype"], o["shape"]) for n, o in outputs.items()} == {
        "probabilities": ("FP32", [2, 5]), "indices": ("INT64", [2, 5]), "labels": ("BYTES", [2, 5])}
    assert outputs["labels"]["data"][:5] == [label for label, _ in top(answers[5])]
    # A refusal is a v2 answer too (gRPC ModelInfer builds its reply from these fields whatever the status).
    assert answers[1]["model_name"] == "resnet101" and "id" not in answers[1]
    assert answers[1]["outputs"] == [{"name": "error", "datatype": "BYTES", "shape": [1], "data": [answers[1]["error"]]}]


# ---------------------------------------------------------------------------------------------- BERT


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    return {task: make_random_checkpoint(root / task, seed=7, config_overrides=TINY_BERT,
                                         task="qa" if task == "qa" else "classify") for task in ("classify", "qa")}


def bert(checkpoints, tmp_path_factory, task="classify", **options):
    model_dir = tmp_path_factory.mktemp(f"bert-{task}")
    for path in checkpoints["qa" if task == "qa" else "classify"].iterdir():
        shutil.copy(path, model_dir / path.name)
    config = {"handler": {"task": task, "max_length": 32, "max_items_per_request": 4, **options}}
    handler = BertHandler()
    handler.initialize(FakeContext(model_dir, config))
    return handler


@pytest.fixture(scope="module")
def classify(checkpoints, tmp_path_factory):
    return bert(checkpoints, tmp_path_factory)


@pytest.fixture(scope="module")
def classify_hf(checkpoints, tmp_path_factory):
    return bert(checkpoints, tmp_path_factory, response_format="hf")


@pytest.fixture(scope="module")
def embed_hf(checkpoints, tmp_path_factory):
    return bert(checkpoints, tmp_path_factory, "embed", response_format="hf", pooling="mean", normalize=True)


@pytest.fixture(scope="module")
def qa_hf(checkpoints, tmp_path_factory):
    return bert(checkpoints, tmp_path_factory, "qa", response_format="hf")


LONG = "the cat sat on the mat " * 20  # more than 32 tokens


def test_inputs_bodies_are_answered_like_text_and_texts(classify):
    answers, refused = handle(classify, [{"body": {"inputs": "good film"}}, {"body": {"text": "good film"}},
                                         {"body": {"inputs": ["good film", LONG]}},
                                         {"body": {"inputs": ["fine", LONG], "truncate": False}},
                                         {"body": {"inputs": "x", "normalize": True}}])
    assert refused == {3: 413, 4: 400}
    assert close(answers[0], answers[1])
    assert close(answers[2]["results"][0]["probabilities"], answers[0]["probabilities"])
    assert [r["truncated"] for r in answers[2]["results"]] == [False, True]
    assert answers[3]["error"].startswith("inputs[1]: has more than max_length=32 tokens (truncate: false)")
    assert "takes the fields ['inputs', 'parameters', 'truncate']" in answers[4]["error"]


def test_hf_classification_is_every_label_with_its_score_best_first(classify, classify_hf):
    (ours,), _ = handle(classify, [{"body": {"text": "a pleasant evening"}}])
    answers, refused = handle(classify_hf, [{"body": {"inputs": "a pleasant evening"}},
                                            {"body": {"inputs": ["a pleasant evening", "x"]}},
                                            {"body": {"inputs": "a pleasant evening", "parameters": {"top_k": 1}}},
                                            {"body": "a pleasant evening"}])
    assert refused == {}
    single, listed, best, plain = answers
    assert single == sorted(({"label": k, "score": v} for k, v in ours["probabilities"].items()),
                            key=lambda x: -x["score"])
    assert listed[0] == single and len(listed) == 2 and best == single[:1] and plain == single


def test_tei_embeddings_normalize_per_request(embed_hf):
    """The archive says normalize: true (TEI's default); a request's "normalize": false overrides it."""
    answers, refused = handle(embed_hf, [{"body": {"inputs": "one text"}},
                                         {"body": {"inputs": ["one text", "another"], "normalize": False}},
                                         {"body": {"inputs": LONG, "truncate": False}},
                                         {"body": {"inputs": "one text", "normalize": "yes"}}])
    assert refused == {2: 413, 3: 400}
    (unit,), (raw, _) = answers[0], answers[1]  # TEI: a list of embeddings even for one text
    assert len(unit) == 32 and abs(sum(x * x for x in unit) - 1) < 1e-4
    norm = sum(x * x for x in raw) ** 0.5
    assert abs(norm - 1) > 1e-3 and max(abs(u - r / norm) for u, r in zip(unit, raw)) < 1e-5


@pytest.mark.parametrize("encoder", ["orjson", "json"])
def test_embeddings_are_float32_in_every_form(checkpoints, tmp_path_factory, monkeypatch, encoder):
    """Embedding rows reach the encoder as float32 arrays (orjson: the shortest float32 digits in the body; json,
    without orjson: their float64 digits): native, TEI, KServe v1 and v2 give the same numbers, each one a float32
    value, and v2 shapes them (texts, hidden)."""
    if encoder == "json":
        monkeypatch.setattr(serving_handler, "orjson", None)
    elif serving_handler.orjson is None:
        pytest.skip("orjson is not installed")
    embed = bert(checkpoints, tmp_path_factory, "embed", pooling="mean")
    context = FakeContext("unused")
    context.manifest = {"model": {"modelName": "bert", "modelVersion": "2"}}
    texts = ["one text", "another"]
    v2 = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}]}
    answers, refused = handle(embed, [{"body": {"texts": texts}}, {"body": {"instances": texts}}, {"body": v2},
                                      {"body": {"inputs": texts}}], context)
    assert refused == {}
    native = [r["embedding"] for r in answers[0]["results"]]
    assert [len(row) for row in native] == [32, 32]
    if encoder == "orjson":  # the shortest digits of each float32 value
        assert all(float(str(np.float32(x))) == x for row in native for x in row)
    else:  # the standard library's json writes each float32 value's float64 digits
        assert all(float(np.float32(x)) == x for row in native for x in row)
    assert answers[1]["predictions"] == [{"embedding": row, "truncated": False} for row in native]
    outputs = {o["name"]: o for o in answers[2]["outputs"]}
    assert outputs["embedding"]["shape"] == [2, 32] and outputs["embedding"]["data"] == native[0] + native[1]
    assert outputs["truncated"]["data"] == [False, False]
    assert [r["embedding"] for r in answers[3]["results"]] == native


def test_hf_question_answering(qa_hf):
    context = "The cat sat on the mat in the kitchen."
    answers, refused = handle(qa_hf, [{"body": {"question": "Where did the cat sit?", "context": context}},
                                      {"body": {"inputs": {"question": "Where did the cat sit?", "context": context}}},
                                      {"body": {"inputs": [{"question": "Who sat?", "context": context}]}}])
    assert refused == {}
    assert set(answers[0]) == {"score", "start", "end", "answer"} and answers[0] == answers[1]
    assert answers[2][0]["answer"] == context[answers[2][0]["start"]:answers[2][0]["end"]]


def test_kserve_v1_and_v2_for_texts(classify, checkpoints, tmp_path_factory):
    context = FakeContext("unused")
    context.manifest = {"model": {"modelName": "bert", "modelVersion": "2"}}
    v2 = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [["good film"], ["bad film"]]}]}
    answers, refused = handle(classify, [{"body": {"instances": ["good film", {"text": "bad film"}]}},
                                         {"body": v2}, {"body": {"text": "good film"}},
                                         {"body": {"instances": ["fine", 3]}}], context)
    assert refused == {3: 400} and answers[3]["error"].startswith("instances[1] must be a string")
    v1, v2_answer, single = answers[:3]
    assert close(v1["predictions"][0]["probabilities"], single["probabilities"])
    outputs = {o["name"]: o for o in v2_answer["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 2] and outputs["label"]["data"][0] == single["label"]
    assert outputs["probabilities"]["data"][:2] == list(single["probabilities"].values())
    assert v2_answer["model_name"] == "bert" and outputs["truncated"]["data"] == [False, False]

    qa = bert(checkpoints, tmp_path_factory, "qa")
    text = "The cat sat on the mat in the kitchen."
    pairs = {"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": ["Where did the cat sit?"]},
                        {"name": "context", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    answers, refused = handle(qa, [{"body": pairs}, {"body": {"question": "Where did the cat sit?", "context": text}},
                                   {"body": {"instances": [{"question": "Where did the cat sit?", "context": text}]}},
                                   {"body": {"inputs": pairs["inputs"][:1]}}])
    assert refused == {3: 400} and "context" in answers[3]["error"]
    outputs = {o["name"]: o["data"] for o in answers[0]["outputs"]}
    assert outputs["answer"] == [answers[1]["answer"]] and outputs["start"] == [answers[1]["start"]]
    assert answers[2]["predictions"][0] == {k: v for k, v in answers[1].items() if k != "batch_size"}


def test_v2_texts_from_grpc_model_infer_arrive_base64(classify):
    """The frontend turns a gRPC ModelInfer into a v2 body with ``model_name`` added and every BYTES element
    base64-encoded, with no HTTP header (only a per-field content type): such a body's texts are decoded; a REST
    body's (HTTP headers, Host among them) are taken as sent, whether or not it names the model."""
    context = FakeContext("unused")
    context.manifest = {"model": {"modelName": "bert", "modelVersion": "2"}}
    rest = {"Host": "127.0.0.1:8080", "Content-Type": "application/json", "explain": "False"}
    context.get_all_request_header = lambda idx: rest if idx in (1, 3) else {"body": {"content-type": "application/json"}}
    texts = ["good film", "na\u00efve caf\u00e9"]

    def v2(data, **extra):
        return {"body": {**extra, "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(data)], "data": data}]}}

    answers, refused = handle(classify, [
        v2([b64(t.encode()) for t in texts], id="r1", model_name="bert"), v2(texts),
        v2([b64(b"\xff\xfe bad")], id="r2", model_name="bert"), v2(texts, model_name="bert"),
    ], context)
    assert refused == {2: 400}
    assert answers[0]["outputs"] == answers[1]["outputs"] == answers[3]["outputs"] and answers[0]["id"] == "r1"
    assert "not valid UTF-8" in answers[2]["error"] and answers[2]["id"] == "r2"
    assert answers[2]["outputs"][0]["data"] == [answers[2]["error"]]


def test_a_json_object_without_content_type_is_read_as_json(classify):
    """gRPC Predictions passes the body with no Content-Type; a text/plain body stays one text."""
    context = FakeContext("unused")
    context.get_all_request_header = lambda idx: {"Content-Type": "text/plain"} if idx == 1 else {}
    body = json.dumps({"texts": ["good film", "bad film"]}).encode()
    answers, refused = handle(classify, [{"body": bytearray(body)}, {"body": bytearray(body)},
                                         {"body": bytearray(b"{not json")}, {"body": {"texts": ["good film", "bad film"]}}],
                              context)
    assert refused == {}
    assert answers[0]["results"] == answers[3]["results"] and len(answers[0]["results"]) == 2
    assert "label" in answers[1] and "label" in answers[2]  # one text each
