"""A tiny TorchServe handler for lifecycle tests (not collected by pytest; archived by the tests).

It has the shape of every model here: typed options, ``load`` -> a runner with ``parse`` and ``run``, and the
shared ``ModelHandler`` skeleton, so per-request 4xx and the batch metrics go through the same code as the real
handlers. Each request is answered with its body length, the batch it ran in and the worker pid; a body of ``bad``
gets a 422 for itself alone.
"""

import os
import time
from dataclasses import dataclass

from torchserve_accel.serving.handler import ModelHandler
from torchserve_accel.serving.requests import RequestError, payload_bytes


@dataclass(frozen=True)
class EchoOptions:
    delay_s: float = 0.0


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
        return [item if isinstance(item, RequestError) else {"bytes": len(item), "batch_size": len(items),
                                                              "pid": os.getpid()} for item in items]


def load(model_dir, options, device, batch_size):
    return EchoRunner(options)


class EchoHandler(ModelHandler):
    options = EchoOptions
    load = load
