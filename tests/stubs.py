"""Stand-ins shared by the tool tests: a quiet JSON-answering HTTP handler, and a model-table entry with stub files
for build_archive (the real torch-model-archiver packs them)."""

from __future__ import annotations

import json
import sys
import types
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable

import pytest

from torchserve_accel.tools import build as ba


class JsonHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def stub_model(root: Path, monkeypatch: pytest.MonkeyPatch, prepare_archive_files: Callable) -> types.ModuleType:
    """The model ``stub``: handlers/stub_handler.py and archiver_configs/stub.yaml under ``root``, and an archive
    module whose ``prepare_archive_files`` is the one given."""
    (root / "handlers").mkdir()
    (root / "handlers" / "stub_handler.py").write_text("def handle(data, context):\n    return data\n")
    (root / "archiver_configs").mkdir()
    (root / "archiver_configs" / "stub.yaml").write_text("batchSize: 4\n")
    module = types.ModuleType("stub_model_module")
    module.prepare_archive_files = prepare_archive_files
    monkeypatch.setitem(sys.modules, "stub_model_module", module)
    monkeypatch.setitem(ba.MODELS, "stub", ba.ModelSpec("handlers/stub_handler.py", "archiver_configs/stub.yaml",
                                                        "stub_model_module"))
    monkeypatch.setattr(ba, "data_file", lambda relative: root / relative)
    return module
