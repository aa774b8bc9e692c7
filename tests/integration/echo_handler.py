"""A tiny TorchServe handler for lifecycle tests (not collected by pytest; archived by the tests).

It answers each request with its body length, the batch it ran in and the worker pid, and uses the installed
``handlers`` package exactly as the real handlers do: per-request 4xx through ``finish_batch`` and the batch
metrics through ``record_batch``. A body of ``bad`` gets a 422 for itself alone.
"""

import os
import time

from handlers.common import RequestError, finish_batch, payload_bytes, record_batch, request_payload


class EchoHandler:
    def initialize(self, context):
        self.delay_s = float((context.model_yaml_config or {}).get("handler", {}).get("delay_s", 0.0))
        self.initialized = True

    def handle(self, data, context):
        outputs = []
        for request in data:
            try:
                body = payload_bytes(request_payload(request), "raw bytes")
                if body == b"bad":
                    raise RequestError(422, "bad payload")
                outputs.append({"bytes": len(body), "batch_size": len(data), "pid": os.getpid()})
            except RequestError as error:
                outputs.append(error)
        if self.delay_s:
            time.sleep(self.delay_s)
        record_batch(context, len(data))
        return finish_batch(context, outputs)
