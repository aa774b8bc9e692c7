"""The soak's fault phases against real TorchServe on the CPU (torchserve-accel soak): bad inputs mixed into the
load, each to be refused with its own 4xx while every good request is served; and a worker SIGKILLed after the
soak, under the same load, which TorchServe must replace (same count, all READY, a new pid) while only the
killed worker's requests may fail.

Both assert properties, never speeds: the machine may be slow and busy with other work. The GPU run of the same
phases, two models at once under MPS, is scripts/gpu_soak.sh (docs/reliability.md).
"""

from __future__ import annotations

import json

import pytest

from torchserve_accel.tools.cli import main
from torchserve_accel.tools.loadgen.stats import is_4xx
from tests.integration.serving import running_torchserve

pytestmark = pytest.mark.integration


def test_bad_inputs_in_a_soak_each_get_a_4xx_and_the_good_ones_200(tmp_path_factory, resnet_store, tmp_path):
    """ResNet-101 (two CPU workers, batch 8) at 2 requests/s with every 10th request a bad input: bytes that are no
    image (415) or a truncated JPEG (400), in turn. The bad requests share batches with good ones."""
    with running_torchserve(tmp_path_factory.mktemp("soak-bad-run"), resnet_store) as ts:
        ts.register("resnet101.mar", "resnet101", batch_size=8, max_batch_delay=20, response_timeout=300)
        out = tmp_path / "soak.json"
        code = main(["soak", "--model", "resnet101", "--run-dir", str(ts.run_dir), "--minutes", "0.3", "--rate", "2",
                     "--burst-s", "5", "--warmup-s", "3", "--segment-s", "6", "--processes", "1", "--images", "8",
                     "--bad-fraction", "0.1", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert code == 0 and doc["passed"], doc.get("failures") or doc.get("error")
    # 3 segments give 4 memory samples, too few for a trend (test_soak.py judges memory): reported, not judged
    assert doc["memory"]["judged"].startswith("not judged: 4 samples")
    assert doc["bad_inputs"]["fraction"] == 0.1
    assert doc["bad_inputs"]["kinds"] == ["bad_not_an_image", "bad_truncated_jpeg"]
    t = doc["totals"]
    assert t["failed"] == 0 and t["bad_sent"] > 0 and t["bad_not_4xx"] == 0
    assert t["bad_sent"] == sum(t["bad_answers"].values()) and set(t["bad_answers"]) == {"400", "415"}
    assert all(is_4xx(status) for status in t["bad_answers"])
    segments = doc["segments"]
    assert t["sent"] == sum(s["started"] + s.get("bad_inputs", {}).get("started", 0) for s in segments)
    assert t["good_sent"] == sum(s["started"] for s in segments) < t["sent"]
    assert len(t["p99_ms_per_segment"]) == len(segments) == 3
    assert doc["workers_after"] == doc["workers_before"]


def test_a_worker_killed_after_the_soak_comes_back_and_only_its_requests_may_fail(tmp_path_factory, echo_store,
                                                                                   tmp_path):
    """The echo model, two workers, batch 4, at 5 requests/s: after the soak one worker is SIGKILLed 2 s into a
    10 s window at the same rate. TorchServe restarts it (a new pid), the other worker serves meanwhile; the
    requests lost are at most the killed worker's two batches (the one it ran, answered 507, and the one it was
    collecting, never answered: they time out after 20 s). The memory judge is not what this test is about
    (--max-growth 1: a few seconds of samples)."""
    with running_torchserve(tmp_path_factory.mktemp("soak-kill-run"), echo_store) as ts:
        ts.register("echo.mar", "echo", batch_size=4, max_batch_delay=20, initial_workers=2)
        out = tmp_path / "soak.json"
        code = main(["soak", "--model", "echo", "--run-dir", str(ts.run_dir), "--minutes", "0.1", "--rate", "5",
                     "--burst-s", "2", "--warmup-s", "2", "--segment-s", "3", "--processes", "1", "--images", "8",
                     "--timeout", "20", "--max-growth", "1", "--kill-worker", "--kill-after-s", "2",
                     "--kill-window-s", "10", "--out", str(out)])
        described = {w["id"]: w for w in ts.describe("echo")["workers"]}
    doc = json.loads(out.read_text())
    assert code == 0 and doc["passed"], doc.get("failures") or doc.get("error")
    assert doc["workers_after"] == doc["workers_before"]  # the soak before the kill: no restart
    kill = doc["kill"]
    assert kill["failures"] == [] and kill["recovery_s"] > 0 and kill["workers"] == 2
    assert kill["pid"] == doc["workers_before"][kill["worker"]]["pid"]
    assert len(kill["new_pids"]) == 1 and kill["pid"] not in kill["new_pids"]
    assert sorted(w["pid"] for w in kill["workers_after"].values()) == sorted(w["pid"] for w in described.values())
    assert all(w["status"] == "READY" for w in kill["workers_after"].values())
    assert kill["lost"] <= kill["lost_limit"] == 8 and kill["sent"] > 0
    assert set(kill["unexpected"]) <= {"507", "timeout", "connection_error"}
    assert doc["phases"]["kill"] > doc["phases"]["soak"][1]
