"""Helpers for tests against the real TorchServe frontend (fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scripts.tsctl import TorchServe, free_ports, metric_total

HERE = Path(__file__).resolve().parent
ECHO_HANDLER = HERE / "echo_handler.py"


def log(message: str) -> None:
    print(message, flush=True)


@contextlib.contextmanager
def running_torchserve(run_dir: Path, model_store: Path, config_overrides: dict[str, str] | None = None):
    """A TorchServe instance on free loopback ports, stopped on exit; its log tail is printed on errors."""
    ts = TorchServe(run_dir)
    ts.start(model_store, ports=free_ports(5), config_overrides=config_overrides, timeout=180, log=log)
    try:
        yield ts
    except BaseException:
        print(ts.log_tail(), flush=True)
        raise
    finally:
        ts.stop(log=log)


def build_echo_archive(store: Path, name: str = "echo") -> Path:
    """A .mar with tests/integration/echo_handler.py as entry file, built by the real torch-model-archiver."""
    store.mkdir(parents=True, exist_ok=True)
    config = store.parent / f"{name}-config.yaml"
    config.write_text("responseTimeout: 60\nhandler:\n  delay_s: 0.0\n")
    subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name, "--version", "1.0",
                    "--handler", str(ECHO_HANDLER), "--config-file", str(config), "--export-path", str(store),
                    "--force"], check=True, capture_output=True, text=True)
    return store / f"{name}.mar"


def send_concurrently(ts: TorchServe, model: str, bodies: list[tuple[bytes, str]]):
    """POST all (body, content_type) at once, one thread each; answers in input order."""
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(lambda b: ts.predict(model, b[0], b[1], timeout=300), bodies))


def handler_counters(ts: TorchServe, model: str) -> tuple[float, float]:
    """(HandlerBatches, HandlerBatchedRequests) summed over workers, from the Prometheus endpoint."""
    text = ts.metrics()
    return (metric_total(text, "HandlerBatches", ModelName=model),
            metric_total(text, "HandlerBatchedRequests", ModelName=model))


def wait_for_requests_metric(ts: TorchServe, model: str, at_least: float, timeout: float = 15) -> tuple[float, float]:
    """Worker metrics reach the frontend asynchronously (log lines): poll until the request count gets there."""
    deadline = time.monotonic() + timeout
    while True:
        batches, requests = handler_counters(ts, model)
        if requests >= at_least or time.monotonic() > deadline:
            return batches, requests
        time.sleep(0.2)


def ready_workers(ts: TorchServe, model: str, count: int, timeout: float = 30) -> list[dict]:
    """The model's workers once ``count`` of them are READY (or whatever describe shows at the deadline).

    TorchServe answers a synchronous register/scale in the same millisecond as the last worker's state change to
    loaded, so an immediate describe can still show that worker as UNLOADING."""
    deadline = time.monotonic() + timeout
    while True:
        workers = ts.describe(model)["workers"]
        if (len(workers) == count and all(w["status"] == "READY" for w in workers)) or time.monotonic() > deadline:
            return workers
        time.sleep(0.2)
