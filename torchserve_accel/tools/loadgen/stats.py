"""The load generator's figures: per-request records, percentiles, and the summary of a measurement window."""

from __future__ import annotations

import array
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

STATUS_TIMEOUT = -1  # client-side outcomes recorded in place of an HTTP status
STATUS_CONNECTION = -2
STATUS_NAMES = {STATUS_TIMEOUT: "timeout", STATUS_CONNECTION: "connection_error"}
# Every other failed gRPC call: STATUS_GRPC - the code's number, named after the code (grpc.StatusCode's order,
# listed here so the figures need no grpcio).
STATUS_GRPC = -100
GRPC_CODES = ("ok", "cancelled", "unknown", "invalid_argument", "deadline_exceeded", "not_found", "already_exists",
              "permission_denied", "resource_exhausted", "failed_precondition", "aborted", "out_of_range",
              "unimplemented", "internal", "unavailable", "data_loss", "unauthenticated")
STATUS_NAMES.update({STATUS_GRPC - number: f"grpc_{name}" for number, name in enumerate(GRPC_CODES) if number})


@dataclass
class Records:
    """Requests of one process: start (monotonic s; scheduled arrival in open loop), latency (s), status, and the
    index of the payload sent."""

    start: array.array = field(default_factory=lambda: array.array("d"))
    latency: array.array = field(default_factory=lambda: array.array("d"))
    status: array.array = field(default_factory=lambda: array.array("i"))
    payload: array.array = field(default_factory=lambda: array.array("i"))

    def add(self, start: float, latency: float, status: int, payload: int = 0) -> None:
        self.start.append(start)
        self.latency.append(latency)
        self.status.append(status)
        self.payload.append(payload)

    def extend(self, other: Records) -> None:
        self.start.extend(other.start)
        self.latency.extend(other.latency)
        self.status.extend(other.status)
        self.payload.extend(other.payload)

    def __len__(self) -> int:
        return len(self.start)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of ascending ``sorted_values``, linear interpolation (numpy's default)."""
    n = len(sorted_values)
    if n == 0:
        return None
    pos = (n - 1) * min(max(q, 0.0), 100.0) / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_summary(latencies_s: Iterable[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p99, max in milliseconds (None where there is no sample)."""
    values = sorted(latencies_s)
    ms = lambda v: None if v is None else round(v * 1000.0, 3)  # noqa: E731
    return {"count": len(values), "mean": ms(sum(values) / len(values)) if values else None,
            "p50": ms(percentile(values, 50)), "p90": ms(percentile(values, 90)),
            "p99": ms(percentile(values, 99)), "max": ms(values[-1] if values else None)}


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, str(status))


def summarize(records: Records, window_start: float, window_end: float, bad: Sequence[bool] = ()) -> dict[str, Any]:
    """Figures over the window [window_start, window_end] (monotonic seconds).

    Throughput counts answers that arrived inside the window (``throughput_rps``: every answer;
    ``ok_rps``: 200s). Latency and errors cover the requests started inside the window, followed to their end.
    Requests whose payload is marked in ``bad`` (by payload index) are counted apart, under ``bad_inputs`` (started
    inside the window, their answers by status, how many were not a 4xx); every other figure is about the rest.
    """
    window = window_end - window_start
    if window <= 0:
        raise ValueError(f"empty measurement window ({window:.3f} s): --max-requests ran out during the warm-up?")
    started_latency, started_ok_latency, errors, bad_answers = [], [], {}, {}
    completed = completed_ok = started = 0
    any_bad = any(bad)
    for start, latency, status, payload in zip(records.start, records.latency, records.status, records.payload):
        if any_bad and bad[payload]:
            if window_start <= start <= window_end:
                name = status_name(status)
                bad_answers[name] = bad_answers.get(name, 0) + 1
            continue
        end = start + latency
        if window_start <= end <= window_end:
            completed += 1
            completed_ok += status == 200
        if window_start <= start <= window_end:
            started += 1
            started_latency.append(latency)
            if status == 200:
                started_ok_latency.append(latency)
            else:
                name = status_name(status)
                errors[name] = errors.get(name, 0) + 1
    summary = {
        "window_s": round(window, 3),
        "throughput_rps": round(completed / window, 2),
        "ok_rps": round(completed_ok / window, 2),
        "completed": completed,
        "started": started,
        "errors": dict(sorted(errors.items())),
        "error_rate": round(sum(errors.values()) / started, 6) if started else None,
        "latency_ms": latency_summary(started_latency),
        "latency_ok_ms": latency_summary(started_ok_latency),
    }
    if any_bad:
        summary["bad_inputs"] = {"started": sum(bad_answers.values()), "answers": dict(sorted(bad_answers.items())),
                                 "not_4xx": sum(n for name, n in bad_answers.items() if not is_4xx(name))}
    return summary


def is_4xx(status: int | str) -> bool:
    """A client-error answer (a status, or its name as in ``errors``; "timeout" and the like are not)."""
    return str(status).isdigit() and 400 <= int(status) < 500


def split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal non-negative integers (earlier parts get the remainder)."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def cell(value: Any) -> str:
    """A figure in a table or a one-line summary: "-" for None, one decimal for a float."""
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)
