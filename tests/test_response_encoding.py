"""benchmarks/response_encoding.py: its answers are the shapes the runners return, both encoders agree on them,
and it writes its JSON (timings are printed and saved, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from torchserve_accel.serving import handler

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(handler.orjson is None, reason="orjson is not installed (setup.py asks for it)")
def test_the_benchmark_writes_every_case(tmp_path):
    out = tmp_path / "encoding.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "response_encoding.py"), "--out", str(out),
                           "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    assert document["failures"] == []
    cases = {row["case"]: row for row in document["cases"]}
    assert set(cases) == {"resnet-native-top5", "resnet-torchserve-top5", "bert-classify-2", "bert-embed-384",
                          "bert-embed-768", "bert-embed-1024"}
    # orjson writes no spaces after separators: a 1024-float embedding is ~1 KB smaller
    assert cases["bert-embed-1024"]["orjson_bytes"] < cases["bert-embed-1024"]["json_bytes"]
    assert all(row["orjson_us"] > 0 and row["json_us"] > 0 for row in cases.values())
