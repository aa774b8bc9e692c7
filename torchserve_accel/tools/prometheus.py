"""TorchServe's metrics endpoint (Prometheus text format 0.0.4) read with prometheus_client's parser."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_samples(text: str) -> list[Sample]:
    """Every sample of the text; ValueError when it is not Prometheus text."""
    return [Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def metric_sum(samples: Iterable[Sample], name: str, **labels: str) -> float | None:
    """Sum of ``name`` over the samples whose labels include ``labels``; None when no sample matches. A counter's
    samples also match as ``name_total`` (the parser names TorchServe's ``HandlerBatches`` counter that way)."""
    total, found = 0.0, False
    for sample in samples:
        if sample.name in (name, f"{name}_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
            total += sample.value
            found = True
    return total if found else None


def metric_total(text: str, name: str, **labels: str) -> float:
    """``metric_sum`` straight from metrics text, 0.0 when no sample matches."""
    return metric_sum(parse_samples(text), name, **labels) or 0.0
