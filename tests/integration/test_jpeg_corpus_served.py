"""The JPEG corpus (tests/jpeg_corpus.py: files from libjpeg-turbo's and Pillow's test suites, and variants) sent at
once to the real TorchServe: each is classified or gets its own 4xx; no answer is a 5xx and no worker restarts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.serving import running_torchserve
from tests.integration.test_bad_inputs import model_store, worker_pids
from tests.jpeg_corpus import REFUSED, corpus

pytestmark = pytest.mark.integration
RESNET = "resnet101"


def test_every_case_is_classified_or_refused_alone(tmp_path_factory, resnet_store):
    store = model_store(tmp_path_factory.mktemp("corpus-store"), resnet_store / f"{RESNET}.mar")
    cases = corpus()
    with running_torchserve(tmp_path_factory.mktemp("corpus-run"), store) as ts:
        ts.register(f"{RESNET}.mar", RESNET, batch_size=8, max_batch_delay=200, response_timeout=300)
        before = worker_pids(ts, RESNET)
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = dict(zip(cases, pool.map(lambda blob: ts.predict(RESNET, blob, "image/jpeg"), cases.values())))
        for name, answer in answers.items():
            if name in REFUSED:
                status, words = REFUSED[name]
                assert answer.status_code == status and words in answer.json()["error"], (name, answer.text[:300])
            else:
                assert answer.status_code == 200, (name, answer.text[:300])
                assert len(answer.json()["predictions"]) == 5, name
        assert worker_pids(ts, RESNET) == before, "a worker restarted"
