"""benchmarks/frontend_cost.py through a real TorchServe: every way of sending images is served and measured (tiny
durations; the figures themselves are the benchmark's, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("grpc", reason="grpcio is not installed (pip install -e .[dev])")
pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_every_case_is_served_and_gets_its_frontend_cpu(tmp_path):
    out = tmp_path / "frontend_cost.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "frontend_cost.py"), "--per-request", "4",
                          "--images", "6", "--concurrency", "4", "--workers", "1", "--warmup", "1", "--seconds", "2",
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document["failures"] == []
    cases = {row["case"]: row for row in document["cases"]}
    assert list(cases) == ["raw body, 1 image", "gRPC entry, 1 image", "multipart, 4 parts", "JSON base64 list, 4",
                           "gRPC entries 0..3"]
    for row in cases.values():
        assert row["ok_rps"] > 0 and row["errors"] == {}, row
        assert row["frontend_cpu_ms_per_request"] > 0, row
        assert row["frontend_cpu_ms_per_image"] == pytest.approx(
            row["frontend_cpu_ms_per_request"] / row["images_per_request"], abs=1e-3)
    assert [row["transport"] for row in cases.values()] == ["http", "grpc", "http", "http", "grpc"]
    assert cases["gRPC entries 0..3"]["images_per_request"] == 4
    assert cases["JSON base64 list, 4"]["bytes_per_request"] > cases["multipart, 4 parts"]["bytes_per_request"]
