"""Faults against the real TorchServe frontend: a worker SIGKILLed under load, and engine failures at initialize.

Worker death (tiny BERT archive, one worker, closed-loop load of CONCURRENCY clients): TorchServe restarts the
worker; only the requests in flight at the kill may fail, and the service comes back. TorchServe 0.12 answers
requests whose batch was running in the worker with 507 "Worker died."; requests that were still being collected
into a batch (inside maxBatchDelay) are never answered at all, so clients need a timeout (docs/reliability.md).
Both count as failures here. What is tested is that these things happen, not how fast: every wait has a deadline
(DEADLINE_S) that only ends a wait that would never succeed, and the client timeout is longer still, so a request
queued while a busy machine restarts the worker is served, not timed out.

Engine failure (ResNet-101): an archive whose model-config asks for ``backend: cudnn`` on a CPU-only worker is
refused at registration with a clear message in the model log (``on_engine_failure: refuse``), or serves with
the eager engine (``on_engine_failure: eager``). The variants are the session's ResNet archive unpacked into
TorchServe's no-archive layout (a directory in the model store) with an edited model-config: building them with
build_archive.py's ``config_overrides`` would re-create and re-zip 170 MB of weights per variant (~15 s of CPU
each here) for the same files.

The GPU out-of-memory path (ImageClassifier.classify_blobs halves the batch and retries; one image that still does
not fit gets its own 503) is unit-tested in tests/test_resnet_handler.py and has no CPU integration test.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import requests
import yaml

from torchserve_accel.tools.images import make_image
from torchserve_accel.tools.polling import wait_until
from torchserve_accel.tools.torchserve import TorchServe, TorchServeError
from tests.integration.serving import log, metric_total, running_torchserve, send_concurrently
from tests.integration.test_bad_inputs import model_store, tiny_bert_archive, worker_pids

pytestmark = pytest.mark.integration
BERT = "bert"
CONCURRENCY = 4  # closed-loop clients: at most this many requests are in flight when the worker dies
DEADLINE_S = 300.0  # any wait here, e.g. kill -> new worker READY and answering (~5 s for tiny BERT on 2 idle cores)
CLIENT_TIMEOUT_S = 2 * DEADLINE_S  # a guard against a hang: longer than any wait, so it never decides an outcome
HOLD_MS = 60_000  # maxBatchDelay that keeps a lone request in the aggregator until the worker is killed


def unpacked_variant(mar: Path, target: Path, handler_options: dict, shared_weights: Path | None = None) -> Path:
    """``mar`` unpacked into ``target`` (TorchServe's no-archive layout) with its model-config's ``handler:``
    section updated and one worker; big files are hard links to ``shared_weights``'s when given."""
    target.mkdir(parents=True)
    with zipfile.ZipFile(mar) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        for name in archive.namelist():
            if shared_weights is not None and name == manifest["model"]["serializedFile"]:
                os.link(shared_weights / name, target / name)
            else:
                archive.extract(name, target)
    config_path = target / manifest["model"]["configFile"]
    config = yaml.safe_load(config_path.read_text())
    config["handler"].update(handler_options)
    config.update(minWorkers=1, maxWorkers=1)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


@pytest.fixture(scope="module")
def faults(tmp_path_factory, resnet_store):
    store = model_store(tmp_path_factory.mktemp("faults-store"), tiny_bert_archive(tmp_path_factory))
    mar = resnet_store / "resnet101.mar"
    eager = unpacked_variant(mar, store / "resnet_cudnn_eager", {"backend": "cudnn", "on_engine_failure": "eager"})
    unpacked_variant(mar, store / "resnet_cudnn_refuse", {"backend": "cudnn", "on_engine_failure": "refuse"},
                     shared_weights=eager)
    with running_torchserve(tmp_path_factory.mktemp("faults-run"), store) as ts:
        yield ts


def model_log_line(ts: TorchServe, model: str, words: str, timeout: float = 120.0) -> str | None:
    """The first line of logs/model_log.log from ``model``'s workers that contains ``words`` (logging is async)."""
    path = ts.run_dir / "logs" / "model_log.log"
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if f"-{model}_" in line and words in line:
                    return line
        if time.monotonic() > deadline:
            return None
        time.sleep(0.3)


def requests_received(ts: TorchServe, model: str) -> float:
    """Inference requests the frontend has taken for ``model`` (counted just before it queues the job)."""
    return metric_total(ts.metrics(), "ts_inference_requests_total", model_name=model)


def restarted(ts: TorchServe, model: str, worker_id: str, old_pid: int) -> bool:
    """``model``'s one worker is READY again under its id, with a new pid."""
    workers = ts.describe(model)["workers"]
    return [(w["id"], w["status"]) for w in workers] == [(worker_id, "READY")] and workers[0]["pid"] != old_pid


def queued(ts: TorchServe, model: str) -> int:
    """Jobs in ``model``'s queue: not those a batch aggregator has taken and holds while it collects a batch."""
    return ts.describe(model)["jobQueueStatus"]["pendingRequests"]


# ---------------------------------------------------------------------------------------------- worker death


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | str  # HTTP status, or "timeout" / "connection_error" / "unanswered"
    body: str


class ClosedLoop:
    """``clients`` threads, each sending its next request as soon as the previous one is answered.

    A request TorchServe dropped is never answered, and waiting out a client timeout only tells that slowly:
    ``finish`` leaves the requests sent before a given moment and still waiting to their daemon threads (ended by
    their timeout or by the instance stopping) and reports them as "unanswered"."""

    def __init__(self, ts: TorchServe, model: str, clients: int, timeout: float):
        self.ts, self.model, self.timeout = ts, model, timeout
        self.outcomes: list[Outcome] = []
        self._waiting: dict[int, float] = {}  # client -> when it sent the request it is waiting for
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _client(self, index: int) -> None:
        sent = 0
        while not self._stop.is_set():
            body = json.dumps({"text": f"client {index} request {sent} under load"}).encode()
            started = time.monotonic()
            with self._lock:
                self._waiting[index] = started
            try:
                answer = self.ts.predict(self.model, body, "application/json", timeout=self.timeout)
                status, text = answer.status_code, answer.text[:200]
            except requests.Timeout:
                status, text = "timeout", f"no answer within {self.timeout:.0f} s"
            except requests.ConnectionError as err:
                status, text = "connection_error", str(err)[:200]
            with self._lock:
                del self._waiting[index]
                self.outcomes.append(Outcome(started, time.monotonic(), status, text))
            sent += 1

    def __enter__(self) -> "ClosedLoop":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def answered_after(self, t: float) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.started > t and o.status == 200)

    def finish(self, dropped_before: float) -> list[Outcome]:
        """Stop sending; every outcome once the clients whose request was sent at or after ``dropped_before`` have
        their answers, with the requests still waiting as "unanswered". The caller makes sure that a request sent
        before ``dropped_before`` and not answered yet was dropped rather than queued."""
        self._stop.set()
        with self._lock:
            dropped = {i for i, started in self._waiting.items() if started < dropped_before}
        for i, thread in enumerate(self._threads):
            if i not in dropped:
                thread.join(timeout=self.timeout)
        with self._lock:
            return self.outcomes + [Outcome(started, math.inf, "unanswered", "") for started in self._waiting.values()]


def test_worker_killed_under_load_is_restarted(faults):
    ts = faults
    ts.register("bert_large.mar", BERT, batch_size=4, max_batch_delay=100)
    try:
        (worker_id, old_pid), = worker_pids(ts, BERT).items()
        assert ts.predict(BERT, b"warm up", "text/plain").status_code == 200
        with ClosedLoop(ts, BERT, CONCURRENCY, CLIENT_TIMEOUT_S) as load:
            loaded = wait_until(lambda: load.answered_after(0) >= CONCURRENCY, DEADLINE_S, interval=0.1)
            assert loaded, "no load before the kill"
            killed_at = time.monotonic()
            os.kill(old_pid, signal.SIGKILL)
            log(f"SIGKILL worker {worker_id} (pid {old_pid}) with {CONCURRENCY} clients in a closed loop")

            # Recovered: the worker is READY under a new pid and a request sent after that is answered.
            deadline = killed_at + DEADLINE_S
            ready_at = recovered_at = None
            while recovered_at is None and time.monotonic() < deadline:
                if restarted(ts, BERT, worker_id, old_pid):
                    ready_at = ready_at or time.monotonic()
                    left = max(1.0, deadline - time.monotonic())
                    probe = ts.predict(BERT, b"are you back", "text/plain", timeout=left)
                    if probe.status_code == 200:
                        recovered_at = time.monotonic()
                        break
                time.sleep(0.2)
            assert recovered_at is not None, f"no recovery within {DEADLINE_S:.0f} s\n{ts.log_tail()}"
            # The queue is first in, first out and each client waits for its answer: once 2 x CONCURRENCY requests
            # sent after the recovery are answered, some client got two, the second queued after the first was
            # answered; a request sent before the restart and still waiting was not in the queue: it was dropped.
            served = wait_until(lambda: load.answered_after(recovered_at) >= 2 * CONCURRENCY, DEADLINE_S,
                                interval=0.1)
            assert served, f"the restarted worker answered {load.answered_after(recovered_at)} requests"
            outcomes = load.finish(dropped_before=ready_at)

        failed = [o for o in outcomes if o.status != 200]
        summary = (f"{len(outcomes)} requests, {len(failed)} failed "
                   f"({sorted({str(o.status) for o in failed})}); recovery {recovered_at - killed_at:.1f} s")
        log(f"worker kill: {summary}")
        assert len(failed) <= CONCURRENCY, summary
        # In flight = sent before the frontend noticed the death (a request answered just before the kill lets
        # its client send the next one into the dying worker's batch); none sent to the new worker fails.
        assert all(o.started < ready_at for o in failed), "a request sent after the restart failed: " + summary
        for o in failed:  # TorchServe's own answer for a batch that was running, or no answer at all
            assert o.status == "unanswered" or (o.status == 507 and "Worker died" in o.body), o
        assert restarted(ts, BERT, worker_id, old_pid)
    finally:
        ts.unregister(BERT)


class Pending:
    """One request on a daemon thread, so that a request never answered does not hold the test up."""

    def __init__(self, send: Callable[[], requests.Response]):
        self.answer: requests.Response | Exception | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(send,), daemon=True).start()

    def _run(self, send: Callable[[], requests.Response]) -> None:
        try:
            self.answer = send()
        except requests.RequestException as err:
            self.answer = err
        self.done.set()


def test_request_waiting_for_its_batch_when_the_worker_dies_is_never_answered(faults):
    """Pins a TorchServe 0.12 frontend behaviour that makes client timeouts mandatory: jobs the batch aggregator
    has taken from the queue while it waits up to maxBatchDelay for more are dropped when the worker dies, with
    no response and no log line (a batch already sent to the worker gets 507 instead). If this test starts
    failing because an answer arrives, TorchServe fixed it: update docs/reliability.md."""
    ts = faults
    ts.register("bert_large.mar", BERT, batch_size=4, max_batch_delay=HOLD_MS)
    try:
        (worker_id, old_pid), = worker_pids(ts, BERT).items()
        received = requests_received(ts, BERT)
        lone = Pending(lambda: ts.predict(BERT, b"a lone request", "text/plain", timeout=CLIENT_TIMEOUT_S))
        # Held by the aggregator: the frontend counted it and it is no longer queued (the idle worker's aggregator
        # takes a job at once, then waits up to HOLD_MS for three more).
        held = wait_until(lambda: requests_received(ts, BERT) > received and queued(ts, BERT) == 0, DEADLINE_S,
                          interval=0.1)
        assert held and not lone.done.is_set(), f"not held for its batch: {lone.answer}"
        os.kill(old_pid, signal.SIGKILL)
        back = wait_until(lambda: restarted(ts, BERT, worker_id, old_pid), DEADLINE_S, interval=0.2)
        assert back, f"no new worker within {DEADLINE_S:.0f} s\n{ts.log_tail()}"
        # A full batch runs at once. Had TorchServe queued the lone request again, the queue (first in, first out)
        # would hand it to the new worker before these.
        answers = send_concurrently(ts, BERT, [(f"served by the restarted worker {i}".encode(), "text/plain")
                                               for i in range(4)])
        assert [a.status_code for a in answers] == [200] * 4, [a.text[:200] for a in answers]
        assert not lone.done.wait(timeout=5), f"the lone request was answered: {lone.answer}"
    finally:
        ts.unregister(BERT)


# ---------------------------------------------------------------------------------------------- engine failure

cpu_only = pytest.mark.skipif(__import__("torch").cuda.is_available(),
                              reason="checks the cudnn backend failing on a CPU-only worker")


@cpu_only
def test_engine_failure_refuses_to_load_with_a_clear_message(faults):
    ts = faults
    with pytest.raises(TorchServeError) as refused:
        ts.register("resnet_cudnn_refuse", "refuse", batch_size=4, max_batch_delay=10)
    assert refused.value.status == 500 and "Failed to start workers" in str(refused.value)
    line = model_log_line(ts, "refuse", "refusing to start")
    assert line is not None, ts.log_tail()
    assert "cudnn engine not served (the cudnn backend needs a GPU worker" in line
    assert "set handler.on_engine_failure: eager to fall back instead" in line
    try:
        # TorchServe keeps it registered and retries the worker with a backoff: a describe may catch a retry
        # starting, but never a worker READY
        assert not [w for w in ts.describe("refuse")["workers"] if w.get("status") == "READY"]
        assert ts.predict("refuse", make_image(1), "image/jpeg").status_code == 503
    finally:
        ts.unregister("refuse")


@cpu_only
def test_engine_failure_falls_back_to_eager_when_configured(faults):
    ts = faults
    ts.register("resnet_cudnn_eager", "fallback", batch_size=4, max_batch_delay=10, response_timeout=300)
    try:
        answer = ts.predict("fallback", make_image(2, size=(256, 256)), "image/jpeg")
        assert answer.status_code == 200, answer.text[:300]
        assert answer.json()["engine"] == "eager"
        line = model_log_line(ts, "fallback", "serving the eager engine (on_engine_failure: eager)")
        assert line is not None and "cudnn engine not served" in line, ts.log_tail()
    finally:
        ts.unregister("fallback")
