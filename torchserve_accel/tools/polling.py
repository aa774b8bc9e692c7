"""The one wait-until-ready-or-deadline loop the tools and tests share."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(ready: Callable[[], T], timeout: float, interval: float = 0.25,
               on_wait: Callable[[float], None] | None = None, every: float = 5.0) -> T | None:
    """Call ``ready()`` every ``interval`` seconds until it returns a truthy value, and return that value; return
    None once ``timeout`` seconds have passed (``ready`` runs at least once). ``ready`` may raise to give up early.
    ``on_wait(seconds waited)``, when given, runs every ``every`` seconds while waiting (progress lines)."""
    started = time.monotonic()
    deadline, next_note = started + timeout, started + every
    while True:
        value = ready()
        if value:
            return value
        now = time.monotonic()
        if now >= deadline:
            return None
        if on_wait is not None and now >= next_note:
            on_wait(now - started)
            next_note += every
        time.sleep(min(interval, deadline - now))
