"""The batches a handler actually ran, as TorchServe custom metrics (TorchServe itself has no batch-size metric)."""

from __future__ import annotations

from typing import Any, Mapping

# Host time per stage: ``decode`` turns request bodies into tensors (image decode, tokenization), ``compute`` runs
# the engine until the batch's one sync, ``total`` is the whole ``handle``.
STAGE_METRICS = {"decode": "HandlerDecodeMs", "compute": "HandlerComputeMs", "total": "HandlerTotalMs"}


def record_batch(context: Any, batch_size: int, stage_seconds: Mapping[str, float] | None = None) -> None:
    """``HandlerBatches`` (+1) and ``HandlerBatchedRequests`` (+batch size) are counters, so the mean batch size over
    any window is the ratio of their increments; ``HandlerBatchSize`` is the last batch as a gauge.
    ``stage_seconds`` (keys of ``STAGE_METRICS``) become millisecond counters: their increments over a window divided
    by the batches give the handler's host time per batch and stage.
    """
    metrics = getattr(context, "metrics", None)
    if metrics is None:
        return
    from ts.metrics.metric_type_enum import MetricTypes

    metrics.add_metric("HandlerBatches", 1, "count", metric_type=MetricTypes.COUNTER)
    metrics.add_metric("HandlerBatchedRequests", batch_size, "count", metric_type=MetricTypes.COUNTER)
    metrics.add_metric("HandlerBatchSize", batch_size, "count", metric_type=MetricTypes.GAUGE)
    for stage, seconds in (stage_seconds or {}).items():
        if stage in STAGE_METRICS:
            metrics.add_metric(STAGE_METRICS[stage], round(seconds * 1e3, 3), "ms", metric_type=MetricTypes.COUNTER)
