"""Out of GPU memory in the middle of a batch: split it and retry, so one huge request costs only itself."""

from __future__ import annotations

import logging
from typing import Callable, Sequence, TypeVar

import torch

from torchserve_accel.serving.requests import RequestError

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


def halving_on_oom(run: Callable[[Sequence[Item]], list[Result]], items: Sequence[Item],
                   what: str = "item") -> list[Result | RequestError]:
    """``run(items)`` -> one result per item. A batch that runs out of GPU memory is split in halves and each half
    retried; a single item that still does not fit gets a 503 of its own (retryable: the memory may free up)."""
    try:
        return run(items)
    except torch.cuda.OutOfMemoryError:
        pass
    # Retry outside the except block: until it ends, the exception's traceback keeps the failed attempt's frames,
    # and with them every tensor it had allocated.
    torch.cuda.empty_cache()
    if len(items) == 1:
        return [RequestError(503, f"out of GPU memory for this {what}; retry later or send a smaller one")]
    log.warning("batch of %d ran out of GPU memory: splitting it and retrying", len(items))
    mid = len(items) // 2
    return halving_on_oom(run, items[:mid], what) + halving_on_oom(run, items[mid:], what)
