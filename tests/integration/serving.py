"""Helpers for tests against the real TorchServe frontend (fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

from torchserve_accel.tools.launch import free_ports
from torchserve_accel.tools.polling import wait_until
from torchserve_accel.tools.prometheus import metric_total
from torchserve_accel.tools.torchserve import TorchServe

__all__ = ["ECHO_HANDLER", "ECHO_MODEL", "at_once", "build_echo_archive", "handler_counters", "log", "metric_total",
           "ready_workers", "running_torchserve", "send_concurrently", "wait_for_requests_metric"]

HERE = Path(__file__).resolve().parent
ECHO_HANDLER = HERE / "echo_handler.py"
ECHO_MODEL = HERE / "echo_model.py"  # packed beside the entry file: the archive root is on the worker's sys.path
T = TypeVar("T")


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


def build_echo_archive(store: Path, name: str = "echo", handler: str = "  delay_s: 0.0\n") -> Path:
    """A .mar with tests/integration/echo_handler.py as entry file and echo_model.py beside it, built by the real
    torch-model-archiver."""
    store.mkdir(parents=True, exist_ok=True)
    config = store.parent / f"{name}-config.yaml"
    config.write_text("responseTimeout: 60\nhandler:\n" + handler)
    subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name, "--version", "1.0",
                    "--handler", str(ECHO_HANDLER), "--extra-files", str(ECHO_MODEL), "--config-file", str(config),
                    "--export-path", str(store), "--force"], check=True, capture_output=True, text=True)
    return store / f"{name}.mar"


def at_once(calls: list[Callable[[], T]]) -> list[T]:
    """Run every call at the same time, one thread each; results in input order."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def send_concurrently(ts: TorchServe, model: str, bodies: list[tuple[bytes, str]]):
    """POST all (body, content_type) at once, one thread each; answers in input order."""
    return at_once([lambda b=b: ts.predict(model, b[0], b[1], timeout=300) for b in bodies])


def handler_counters(ts: TorchServe, model: str) -> tuple[float, float]:
    """(HandlerBatches, HandlerBatchedRequests) summed over workers, from the Prometheus endpoint."""
    text = ts.metrics()
    return (metric_total(text, "HandlerBatches", ModelName=model),
            metric_total(text, "HandlerBatchedRequests", ModelName=model))


def wait_for_requests_metric(ts: TorchServe, model: str, at_least: float, timeout: float = 120) -> tuple[float, float]:
    """Worker metrics reach the frontend asynchronously (log lines): poll until the request count gets there (the
    deadline only ends a wait that would never succeed)."""
    def arrived() -> tuple[float, float] | None:
        batches, requests = handler_counters(ts, model)
        return (batches, requests) if requests >= at_least else None

    return wait_until(arrived, timeout, interval=0.2) or handler_counters(ts, model)


def ready_workers(ts: TorchServe, model: str, count: int, timeout: float = 120) -> list[dict]:
    """The model's workers once ``count`` of them are READY (or whatever describe shows at the deadline).

    TorchServe answers a synchronous register/scale in the same millisecond as the last worker's state change to
    loaded, so an immediate describe can still show that worker as UNLOADING."""
    def ready() -> list[dict] | None:
        workers = ts.describe(model)["workers"]
        return workers if len(workers) == count and all(w["status"] == "READY" for w in workers) else None

    return wait_until(ready, timeout, interval=0.2) or ts.describe(model)["workers"]
