"""A small stand-in for TorchServe's ``Context`` for unit tests (integration tests use the real server)."""

from __future__ import annotations


class FakeMetrics:
    def __init__(self):
        self.records = []

    def add_metric(self, name, value, unit, idx=None, dimensions=None, metric_type=None):
        self.records.append((name, value, unit))


class FakeContext:
    def __init__(self, model_dir, model_yaml_config=None, gpu_id=None, batch_size=1):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id, "batch_size": batch_size}
        self.model_yaml_config = model_yaml_config or {}
        self.manifest = {"model": {"modelName": "test"}}
        self.metrics = FakeMetrics()
        self.statuses = {}
        self.content_types = {}

    def set_response_status(self, code=200, phrase="", idx=0):
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.content_types[idx] = value
