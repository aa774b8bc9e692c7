"""Drain a model before it loses workers: wait until TorchServe holds none of its requests, queued or in a worker.

TorchServe 0.12 does not drain. Scaling down shuts the last workers down at once: the batch a leaving worker holds
is answered 500 "Worker scaled down.". Unregistering, or scaling to 0, leaves the requests still in the model's
queue unanswered for good (their clients wait for their own timeout). ``scale`` and ``unregister`` here drain
first, scaling down one worker at a time; ``TorchServe.scale`` and ``TorchServe.unregister`` do not.

    drain.unregister(ts, "echo", timeout=300, log=print)       # DrainTimeout when the deadline passes first
    drain.scale(ts, "echo", 0)                                  # 2 -> 1 -> 0 workers, draining before each step

What drain observes of TorchServe 0.12.0 (its frontend's code, and a running one), through the management and
metrics APIs only:

- queued: describe's ``jobQueueStatus.pendingRequests``, the size of the model's job queue. A request a worker has
  taken (into a batch still being collected for maxBatchDelay, or running) is no longer in it, and describe shows
  no busy state: the queue alone cannot tell that the last batches have finished.
- in flight: the metrics API counts each request as it arrives, before it is queued (``ts_inference_requests_total``
  per model); it counts no completions (its latency metrics are sums). The handlers of this project count every
  request they answer (``HandlerBatchedRequests``, sent by the worker after each batch), so
  in flight = arrived - answered - queued. The worker sends that count around the time it sends the answers, so
  drain wants an empty queue and nothing in flight on two polls in a row.
- Requests counted on arrival but never in the handler's count keep that difference above zero for good: 503 for a
  full queue or a model without workers (both counted on arrival), a batch that failed as a whole, a worker that
  died, and increments the frontend loses when several workers report a new metric at once (its log: "Collector
  already registered"). So drain also accepts an empty queue whose counts have not moved for maxBatchDelay +
  responseTimeout, within which the frontend answers or fails every batch; what is left of the difference then is
  ``Backlog.unanswered``, never waited for again (the next steps of a scale-down start from it). That wait is also
  all drain can go by for a handler that does not count its requests.
- Without the metrics API (a server given by ``--management-url`` alone) drain sees the queue only, and says so.

Remaining gap: a request that arrives after drain returns and before the call that removes a worker. Drain does not
stop traffic; stop sending to the model first when that matters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Protocol

import requests

from torchserve_accel.tools import Log
from torchserve_accel.tools.launch import TorchServeError
from torchserve_accel.tools.polling import wait_until
from torchserve_accel.tools.prometheus import metric_sum, parse_samples


class Server(Protocol):
    """What drain needs of a TorchServe (torchserve.TorchServe, or endpoints.TorchServeAt); a protocol, since
    torchserve.py's commands call drain."""

    def describe(self, model_name: str) -> dict: ...

    def metrics(self, names: list[str] | None = None) -> str: ...

    def scale(self, model_name: str, min_worker: int, max_worker: int | None = None,
              synchronous: bool = True) -> dict: ...

    def unregister(self, model_name: str, log: Log = print) -> dict: ...


DEFAULT_TIMEOUT = 300.0  # s for a whole command: time to serve a long queue, short of a stuck one
ARRIVED = "ts_inference_requests_total"  # TorchServe frontend, per model_name (and version)
ANSWERED = "HandlerBatchedRequests"  # this project's handlers, per ModelName (serving/metrics.py)
QUIET_POLLS = 2  # consecutive idle polls before acting (answers and their count reach the frontend separately)


@dataclass(frozen=True)
class Backlog:
    """A model's unfinished work as TorchServe shows it at one moment. ``in_flight`` is None where it cannot be
    counted: no metrics API, or no count of answered requests (yet) while requests have arrived. ``unanswered``:
    requests counted on arrival that are known never to be answered (module docstring), left out of ``in_flight``."""

    queued: int
    in_flight: int | None
    workers: int
    arrived: float | None = None
    answered: float | None = None
    unanswered: int = 0

    def __str__(self) -> str:
        flight = "in flight unknown" if self.in_flight is None else f"{self.in_flight} in flight"
        never = f" ({self.unanswered} never answered)" if self.unanswered else ""
        return f"{self.queued} queued, {flight}{never}, {self.workers} worker(s)"


class DrainTimeout(TorchServeError):
    """The deadline passed while the model still had work (``backlog``)."""

    def __init__(self, message: str, backlog: Backlog):
        super().__init__(message)
        self.backlog = backlog


def observe(ts: Server, model: str, unanswered: int = 0) -> tuple[Backlog, dict]:
    """The model's backlog and its description. The queue is read first: a request queued after that read is
    counted on arrival by the metrics read that follows, so it shows as in flight rather than being missed."""
    description = ts.describe(model)
    queued = int((description.get("jobQueueStatus") or {}).get("pendingRequests", 0))
    workers = len(description.get("workers", []))
    try:
        samples = parse_samples(ts.metrics([ARRIVED, ANSWERED]))
    except (TorchServeError, requests.RequestException, ValueError):
        return Backlog(queued, None, workers), description
    arrived = metric_sum(samples, ARRIVED, model_name=model) or 0.0
    answered = metric_sum(samples, ANSWERED, ModelName=model)
    if answered is None and arrived:
        return Backlog(queued, None, workers, arrived), description
    in_flight = max(0, round(arrived - (answered or 0.0)) - queued - unanswered)
    return Backlog(queued, in_flight, workers, arrived, answered, unanswered), description


class _Watch:
    """The drain condition, polled: ``idle()`` once the queue is empty and nothing is in flight (or nothing has
    moved for maxBatchDelay + responseTimeout) on ``QUIET_POLLS`` polls in a row."""

    def __init__(self, ts: Server, model: str, log: Log, unanswered: int):
        self.ts, self.model, self.log, self.unanswered = ts, model, log, unanswered
        self.last: Backlog | None = None
        self.quiet = 0
        self.counts: tuple | None = None
        self.moved = time.monotonic()
        self.noted: set[str] = set()

    def note(self, key: str, message: str) -> None:
        if key not in self.noted:
            self.noted.add(key)
            self.log(message)

    def idle(self) -> bool:
        backlog, description = observe(self.ts, self.model, self.unanswered)
        self.last = backlog
        now = time.monotonic()
        counts = (backlog.queued, backlog.arrived, backlog.answered)
        if counts != self.counts:
            self.counts, self.moved = counts, now
        no_metrics = backlog.in_flight is None and backlog.arrived is None
        if no_metrics:
            self.note("no metrics", f"  {self.model}: no metrics API (--metrics-url): draining sees the queue only, "
                                    "not the batches workers hold")
        if backlog.queued == 0 and (backlog.in_flight == 0 or no_metrics):
            self.quiet += 1
            return self.quiet >= QUIET_POLLS
        self.quiet = 0
        if backlog.in_flight is None and not no_metrics:
            self.note("uncounted", f"  {self.model}: its handler reports no {ANSWERED}, so requests in flight "
                                   "cannot be counted")
        settle = description.get("maxBatchDelay", 0) / 1000 + description.get("responseTimeout", 120)
        if backlog.queued == 0 and now - self.moved >= settle:
            self.log(f"  {self.model}: nothing moved for {settle:.0f} s (maxBatchDelay + responseTimeout, within "
                     f"which TorchServe answers or fails every batch): the {backlog.in_flight or 'uncounted'} "
                     "request(s) counted on arrival but never answered by the handler are not in flight")
            if backlog.in_flight is not None:
                self.last = replace(backlog, in_flight=0, unanswered=self.unanswered + backlog.in_flight)
            return True
        self.note("waiting", f"draining {self.model}: {backlog}")
        return False


def drain(ts: Server, model: str, timeout: float = DEFAULT_TIMEOUT, log: Log = print,
          interval: float = 0.25, every: float = 5.0, unanswered: int = 0) -> Backlog:
    """Wait until ``model`` has no queued and no in-flight request (module docstring: what that rests on), logging
    the backlog every ``every`` seconds meanwhile; the last backlog seen. ``DrainTimeout`` after ``timeout`` s.
    ``unanswered``: a previous drain's ``Backlog.unanswered`` on the same server, so it is not waited for again."""
    watch = _Watch(ts, model, log, unanswered)
    started = time.monotonic()
    if wait_until(watch.idle, timeout, interval=interval, every=every,
                  on_wait=lambda waited: log(f"  {model}: {watch.last} ({waited:.0f} s)")):
        if "waiting" in watch.noted:
            log(f"{model} drained ({time.monotonic() - started:.1f} s)")
        return watch.last
    raise DrainTimeout(f"{model} did not drain within {timeout:g} s: {watch.last} left", watch.last)


def unregister(ts: Server, model: str, timeout: float = DEFAULT_TIMEOUT, log: Log = print,
               force: bool = False) -> dict:
    """``ts.unregister`` once ``model`` has drained (``force``: at once). ``DrainTimeout``: not unregistered."""
    if not force:
        try:
            drain(ts, model, timeout, log)
        except DrainTimeout as err:
            raise DrainTimeout(f"{err}; not unregistered (--force unregisters without draining)", err.backlog) from None
    return ts.unregister(model, log)


def scale(ts: Server, model: str, min_worker: int, max_worker: int | None = None,
          timeout: float = DEFAULT_TIMEOUT, log: Log = print, force: bool = False, synchronous: bool = True) -> dict:
    """``ts.scale`` that, when it lowers the worker count, goes down one worker at a time, draining before each
    step (``force``: at once). TorchServe's rule: fewer workers than ``min_worker`` get added up to it, more than
    ``max_worker`` are shut down to it. The deadline (``timeout`` s) is for all steps together; ``DrainTimeout``
    says how many workers are left."""
    max_worker = min_worker if max_worker is None else max_worker
    current = len(ts.describe(model).get("workers", []))
    target = min_worker if current < min_worker else min(current, max_worker)
    if force or target >= current:
        return ts.scale(model, min_worker, max_worker, synchronous=synchronous)
    deadline, unanswered = time.monotonic() + timeout, 0
    for count in range(current - 1, target - 1, -1):
        try:
            unanswered = drain(ts, model, max(0.0, deadline - time.monotonic()), log, unanswered=unanswered).unanswered
        except DrainTimeout as err:
            raise DrainTimeout(f"{err}; {model} left at {count + 1} worker(s), not scaled below that (--force scales "
                               "without draining)", err.backlog) from None
        log(f"scaling {model} to {count} worker(s)")
        if count > target:  # a step on the way: TorchServe shuts down the workers above max_worker
            ts.scale(model, count, count, synchronous=True)
    return ts.scale(model, min_worker, max_worker, synchronous=synchronous)
