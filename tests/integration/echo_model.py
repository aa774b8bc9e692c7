"""The echo model for lifecycle tests, in the shape of every model here (packed beside echo_handler.py in the test
archives; not collected by pytest): typed options, ``load`` -> a runner with ``parse`` and ``run``. Each request is
answered with its body length, the batch it ran in and the worker pid; a body of ``bad`` gets a 422 of its own."""

import os
import time
from dataclasses import dataclass

from torchserve_accel.serving.requests import RequestError, payload_bytes


@dataclass(frozen=True)
class EchoOptions:
    delay_s: float = 0.0  # sleep this long per batch (to make batches or timeouts happen)
    leak_bytes: int = 0  # keep this many bytes per answered request forever: a leak for the soak's judge to catch


_LEAKED: list[bytearray] = []


class EchoRunner:
    def __init__(self, options: EchoOptions):
        self.options = options

    def parse(self, request):
        body = payload_bytes(request.payload, "raw bytes")
        if body == b"bad":
            raise RequestError(422, "bad payload")
        return body

    def run(self, items, timings):
        if self.options.delay_s:
            time.sleep(self.options.delay_s)
        for item in items:
            if self.options.leak_bytes and not isinstance(item, RequestError):
                _LEAKED.append(bytearray(b"x") * self.options.leak_bytes)  # written, so resident
        return [item if isinstance(item, RequestError) else {"bytes": len(item), "batch_size": len(items),
                                                              "pid": os.getpid()} for item in items]


def load(model_dir, options: EchoOptions, device, batch_size) -> EchoRunner:
    return EchoRunner(options)
