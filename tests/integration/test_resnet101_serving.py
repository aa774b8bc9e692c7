"""ResNet-101 end to end: the real archive (random weights) built by torchserve-accel build, served by the
real TorchServe frontend with token auth on, batching on, on the CPU here (GPU where one is visible).

Batches of 4 with a 5 s maxBatchDelay: requests sent in groups of four at once fill a batch, which closes as soon as
it is full, so which requests share a batch does not depend on how fast a busy machine delivers them.
"""

from __future__ import annotations

import io
import json
import time
import zipfile

import pytest
import requests
import yaml
from PIL import Image

from torchserve_accel.tools.build import archive_inputs
from torchserve_accel.tools.images import make_image
from torchserve_accel.tools.torchserve import TOKEN_FAILED, TorchServeError
from tests.integration.serving import (
    handler_counters, metric_total, ready_workers, running_torchserve, send_concurrently, wait_for_requests_metric,
)

pytestmark = pytest.mark.integration
MODEL = "resnet101"
BATCH = 4
DELAY_MS = 5000  # a batch closes when its fourth request is in; only a group that never fills waits this long


@pytest.fixture(scope="module")
def resnet(tmp_path_factory, resnet_store):
    with running_torchserve(tmp_path_factory.mktemp("resnet-run"), resnet_store) as ts:
        ts.register(f"{MODEL}.mar", MODEL, batch_size=BATCH, max_batch_delay=DELAY_MS, response_timeout=300)
        yield ts


def jpeg(seed: int) -> tuple[bytes, str]:
    return make_image(seed, fmt="JPEG"), "image/jpeg"


def test_archive_layout(resnet_store):
    with zipfile.ZipFile(resnet_store / f"{MODEL}.mar") as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    assert {"resnet_handler.py", "resnet101.yaml", "MAR-INF/MANIFEST.json"} <= names
    assert not any("/" in n for n in names - {"MAR-INF/MANIFEST.json"}), "extra files are flat"
    assert manifest["model"]["handler"] == "resnet_handler.py"
    assert manifest["model"]["configFile"] == "resnet101.yaml"


def test_workers_ready_with_batching(resnet):
    description = resnet.describe(MODEL)
    assert description["batchSize"] == BATCH and description["maxBatchDelay"] == DELAY_MS
    workers = ready_workers(resnet, MODEL, description["minWorkers"])
    assert len(workers) == description["minWorkers"] >= 1  # the archive's model-config sets the count
    assert {w["status"] for w in workers} == {"READY"}


def test_queue_holds_the_archives_job_queue_size(resnet):
    """The archive's jobQueueSize (not config.properties' job_queue_size) sizes the model's queue."""
    configured = yaml.safe_load(archive_inputs(MODEL)[2].read_text())["jobQueueSize"]
    queue = resnet.describe(MODEL)["jobQueueStatus"]
    assert queue["remainingCapacity"] + queue["pendingRequests"] == configured > 1000


def test_predicts_jpeg_and_png(resnet):
    png = io.BytesIO()
    Image.open(io.BytesIO(make_image(7, fmt="PNG"))).save(png, format="PNG")
    answers = send_concurrently(resnet, MODEL, [jpeg(1), (png.getvalue(), "image/png"), jpeg(2), jpeg(3)])
    for answer in answers:
        assert answer.status_code == 200, answer.text
        body = answer.json()
        predictions = body["predictions"]
        assert len(predictions) == 5
        for p in predictions:
            assert isinstance(p["label"], str) and p["label"]
            assert isinstance(p["index"], int) and 0 <= p["index"] < 1000
            assert 0.0 <= p["probability"] <= 1.0
        probabilities = [p["probability"] for p in predictions]
        assert probabilities == sorted(probabilities, reverse=True)
        assert len({p["index"] for p in predictions}) == 5
        assert 1 <= body["batch_size"] <= BATCH


def test_concurrent_requests_are_batched(resnet):
    """Two batches' worth sent at once run as two full batches (on one worker or both)."""
    batches0, requests0 = handler_counters(resnet, MODEL)
    answers = send_concurrently(resnet, MODEL, [jpeg(10 + i) for i in range(2 * BATCH)])
    assert [a.status_code for a in answers] == [200] * 2 * BATCH, [a.text for a in answers]
    sizes = [a.json()["batch_size"] for a in answers]
    assert sizes == [BATCH] * 2 * BATCH, sizes
    batches, requests_ = wait_for_requests_metric(resnet, MODEL, requests0 + 2 * BATCH)
    assert requests_ - requests0 == 2 * BATCH
    assert batches - batches0 == 2
    # The handler's host time per stage reaches the metrics endpoint: decode + compute within the total.
    text = resnet.metrics()
    decode, compute, total = (metric_total(text, name, ModelName=MODEL)
                              for name in ("HandlerDecodeMs", "HandlerComputeMs", "HandlerTotalMs"))
    assert decode > 0 and compute > 0, (decode, compute)
    assert decode + compute <= total, (decode, compute, total)


def test_bad_image_fails_alone_in_its_batch(resnet):
    bodies = [jpeg(20), jpeg(21), (b"this is not an image", "image/jpeg"), jpeg(22)]
    answers = send_concurrently(resnet, MODEL, bodies)
    assert [a.status_code for a in answers][:2] + [answers[3].status_code] == [200, 200, 200]
    bad = answers[2]
    assert 400 <= bad.status_code < 500, bad.text
    assert bad.json()["status"] == bad.status_code and bad.json()["error"]
    # The three good images were answered from the same batch as the bad one.
    assert [answers[i].json()["batch_size"] for i in (0, 1, 3)] == [4, 4, 4]


def test_empty_body_is_a_client_error(resnet):
    answer = resnet.predict(MODEL, b"", "image/jpeg")
    assert 400 <= answer.status_code < 500


def test_requests_without_token_are_refused(resnet):
    body, content_type = jpeg(30)
    answer = requests.post(resnet.url("inference", f"/predictions/{MODEL}"), data=body,
                           headers={"Content-Type": content_type}, timeout=60)
    assert answer.status_code == 400 and TOKEN_FAILED in answer.text


def test_scale_down_and_up(resnet):
    start = len(resnet.describe(MODEL)["workers"])
    resnet.scale(MODEL, 1, 1)
    deadline = time.monotonic() + 180  # only ends a wait that would never succeed
    while len(resnet.describe(MODEL)["workers"]) != 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(resnet.describe(MODEL)["workers"]) == 1
    assert resnet.predict(MODEL, *jpeg(40)).status_code == 200
    target = max(2, start)
    resnet.scale(MODEL, target, target)  # synchronous: returns once the new workers loaded the model
    workers = ready_workers(resnet, MODEL, target)
    assert len(workers) == target and {w["status"] for w in workers} == {"READY"}, workers
    answers = send_concurrently(resnet, MODEL, [jpeg(50 + i) for i in range(4)])
    assert all(a.status_code == 200 for a in answers)


def test_unregister(resnet):
    resnet.unregister(MODEL)
    with pytest.raises(TorchServeError) as gone:
        resnet.describe(MODEL)
    assert gone.value.status == 404
    assert resnet.list_models() == []
