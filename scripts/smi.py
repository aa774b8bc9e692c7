"""``nvidia-smi --query-gpu=... -lms N`` read line by line in a background thread, for samplers that watch the
GPUs while a measurement runs (scripts/loadgen.py: utilization and memory; benchmarks/bert_floor.py: clocks,
power and throttle reasons). Without nvidia-smi a stream is null: ``available`` is False and no samples come."""

from __future__ import annotations

import shutil
import subprocess
import threading
from typing import Any, Callable, Sequence


class SmiStream:
    """``parse(fields)`` turns one line's comma-separated fields into a sample (None skips the line)."""

    def __init__(self, query: str, parse: Callable[[list[str]], Any], interval_ms: int = 200,
                 extra_args: Sequence[str] = ()):
        self.args = ["nvidia-smi", *extra_args, f"--query-gpu={query}", "--format=csv,noheader,nounits",
                     "-lms", str(interval_ms)]
        self.parse = parse
        self.interval_ms = interval_ms
        self.samples: list[Any] = []
        self.available = shutil.which("nvidia-smi") is not None
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self):
        if self.available:
            try:
                self._proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            except OSError:
                self.available = False
                return self
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                sample = self.parse([f.strip() for f in line.split(",")])
            except (ValueError, IndexError):
                continue
            if sample is not None:
                self.samples.append(sample)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)
