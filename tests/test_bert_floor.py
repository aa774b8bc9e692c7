"""benchmarks/bert_floor.py: the card-state summary, the target arithmetic, and a tiny CPU run of the whole script
(the card's samples themselves come from torchserve_accel.tools.gpu: tests/test_tools_gpu.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bert_floor  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def test_summary_drops_the_ramp_up_and_flags_the_power_cap():
    cool = {"sm_mhz": 1980.0, "max_sm_mhz": 1980.0, "power_w": 300.0, "power_limit_w": 700.0, "throttle": "0x0000000000000000"}
    capped = {"sm_mhz": 1500.0, "max_sm_mhz": 1980.0, "power_w": 690.0, "power_limit_w": 700.0, "throttle": "0x0000000000000004"}
    summary = bert_floor.summarize_samples([cool, cool, capped, capped, capped, capped])
    assert summary["sm_mhz"] == 1500.0 and summary["power_w"] == 690.0 and summary["samples"] == 4
    assert summary["power_capped"] is True and summary["throttle_reasons"] == ["0x0000000000000004"]
    uncapped = bert_floor.summarize_samples([cool] * 3)
    assert uncapped["power_capped"] is False
    assert bert_floor.summarize_samples([]) is None


def row(ms: float) -> dict:
    return {"ms_per_batch": ms}


def test_budget_for_a_throughput_target():
    rows = {"sequences": 256, "hf-fp16-sdpa": row(46.0), "ours": row(42.0), "ours-fused-ffn": row(41.4),
            "floor-gemms": row(33.1), "floor-gemms-attention": row(35.1)}
    b = bert_floor.budget("fixed128x256", rows)
    assert b["needed_ms_per_batch"] == pytest.approx(256 * 1000 / 7000, abs=1e-3)
    assert b["budget_left_ms_after_floor-gemms-attention"] == pytest.approx(36.571 - 35.1, abs=1e-3)
    assert b["ours_ms_beyond_floor"] == pytest.approx(6.9) and b["ours-fused-ffn_ms_beyond_floor"] == pytest.approx(6.3)
    assert b["best_ours_ms_per_batch"] == 41.4 and b["met"] is False
    rows["ours"] = row(36.0)
    assert bert_floor.budget("fixed128x256", rows)["met"] is True


def test_budget_for_a_speedup_target_uses_the_same_run_baseline():
    rows = {"sequences": 256, "hf-fp16-sdpa": row(47.9), "ours": row(24.9), "floor-gemms": row(18.6),
            "floor-gemms-attention": row(21.3)}
    b = bert_floor.budget("mixed16-128x256", rows)
    assert b["needed_ms_per_batch"] == pytest.approx(47.9 / 2.5, abs=1e-3)
    assert b["budget_left_ms_after_floor-gemms-attention"] < 0  # below the floor: no encoder meets it
    assert b["met"] is False


def test_tiny_cpu_run_writes_every_scenario(tmp_path):
    out = tmp_path / "floor.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bert_floor.py"), "--tiny", "--seconds", "0.05",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and set(report["scenarios"]) == set(bert_floor.SCENARIOS)
    for scenario, rows in report["scenarios"].items():
        for variant in ("hf-fp16-sdpa", "ours", "floor-gemms", "floor-gemms-attention"):
            assert rows[variant]["ms_per_batch"] > 0 and rows[variant]["calls"] >= 2, (scenario, variant)
        assert "needed_ms_per_batch" in rows["budget"] and isinstance(rows["budget"]["met"], bool)
    assert report["reference_gemm"]["ms_per_batch"] > 0 and report["reference_gemm"]["tflops"] >= 0  # a busy CPU may round to 0.0
    assert "target needs" in done.stdout
