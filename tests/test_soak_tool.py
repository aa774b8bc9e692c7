"""Unit tests of the soak's pure parts (torchserve_accel/tools/soak.py, loadgen/payloads.py): bad inputs mixed in
at a fraction, the per-segment totals, what a worker kill may cost, and the combined verdict of soaks run together.
Fast, no TorchServe (tests/integration/test_soak*.py run the soak against a real one)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from torchserve_accel.tools import soak
from torchserve_accel.tools.cli import main
from torchserve_accel.tools.loadgen.payloads import Payload, bad_inputs, interleave_bad

GOOD = [Payload(f"g{i}".encode(), "image/jpeg", f"g{i}") for i in range(7)]
BAD = [Payload(b"x", "image/jpeg", "b0", bad=True), Payload(b"y", "image/jpeg", "b1", bad=True)]


# ---------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("fraction, period", [(0.01, 100), (0.1, 10), (0.25, 4), (0.5, 2), (0.3, 3)])
def test_every_period_th_payload_is_bad_from_any_starting_point(fraction, period):
    mixed = interleave_bad(GOOD, BAD, fraction)
    assert len(mixed) % period == 0 and not mixed[0].bad
    assert [i for i, p in enumerate(mixed) if p.bad] == list(range(period - 1, len(mixed), period))
    assert {p.name for p in mixed if not p.bad} == {p.name for p in GOOD}  # every good payload is sent
    assert [p.name for p in mixed if p.bad][:2] == ["b0", "b1"]  # in turn, each at least once
    for start in range(len(mixed)):  # a load process starts anywhere and cycles: one bad in every period
        cycle = soak.rotated(mixed, start)
        window = [cycle[i % len(cycle)] for i in range(3 * len(mixed))]
        assert sum(p.bad for p in window) == 3 * len(mixed) // period


def test_no_fraction_keeps_the_payloads_and_a_wrong_one_is_refused():
    assert interleave_bad(GOOD, [], 0.0) == GOOD
    for fraction in (-0.1, 0.51, 1.0):
        with pytest.raises(ValueError, match="within"):
            interleave_bad(GOOD, BAD, fraction)
    with pytest.raises(ValueError, match="good and bad"):
        interleave_bad(GOOD, [], 0.1)


def test_bad_inputs_fit_the_payload_kind():
    texts = bad_inputs("text")
    assert [p.name for p in texts] == ["bad_invalid_json", "bad_empty_text"] and all(p.bad for p in texts)
    with pytest.raises(json.JSONDecodeError):
        json.loads(texts[0].body)
    assert json.loads(texts[1].body) == {"text": ""}
    images = bad_inputs("images")
    assert [p.name for p in images] == ["bad_not_an_image", "bad_truncated_jpeg"] and all(p.bad for p in images)
    assert images[1].body.startswith(b"\xff\xd8") and not images[1].body.endswith(b"\xff\xd9")  # no end marker
    with pytest.raises(ValueError, match="no bad inputs"):
        bad_inputs("bytes")


def _segment(started, p99, failed=0, bad=None):
    segment = {"window_s": 10.0, "started": started, "failed": failed, "latency_ms": {"p99": p99}}
    if bad is not None:
        segment["bad_inputs"] = {"started": sum(bad.values()), "answers": bad}
    return segment


def test_totals_report_each_segments_p99_and_bad_answers_apart():
    doc = {"warmup": _segment(18, 5.0, bad={"415": 2}), "max_rate": {"failed": 1}}
    segments = [_segment(90, 20.0, bad={"400": 5, "415": 5}), _segment(99, 31.5, failed=2, bad={"507": 1})]
    t = soak.soak_totals(doc, segments)
    assert t["sent"] == 90 + 10 + 99 + 1 and t["good_sent"] == 189 and t["mean_rate"] == 10.0
    assert t["failed"] == 3  # warm-up and the closed loop count too
    assert t["bad_sent"] == 13 and t["bad_not_4xx"] == 1 and t["bad_answers"] == {"400": 5, "415": 7, "507": 1}
    assert t["p99_ms_per_segment"] == [20.0, 31.5] and t["p99_ms_worst_segment"] == 31.5


# ---------------------------------------------------------------------------------------------- worker kill


def test_a_kill_may_lose_two_batches_and_nothing_else():
    ok = soak.judge_kill({"507": 8, "timeout": 8}, batch_size=8, workers=4, rate=80, max_rps=100, recovered=True)
    assert ok["lost"] == 16 and ok["lost_limit"] == 16 and ok["failures"] == [] and ok["other"] == {}
    too_many = soak.judge_kill({"507": 8, "timeout": 9}, 8, 4, 80, 100, True)
    assert too_many["failures"] == ["17 request(s) lost, more than 2 x batchSize (16)"]
    assert soak.judge_kill({}, 8, 4, 80, 100, False)["failures"][0].startswith("not 4 READY worker(s)")
    # the killed batch answered 500 "Worker died" (as TorchServe does on a GPU machine) counts as lost, not unexpected
    assert soak.judge_kill({"500": 8, "timeout": 8}, 8, 4, 80, 100, True)["failures"] == []
    assert soak.judge_kill({"500": 17}, 8, 4, 80, 100, True)["lost"] == 17
    assert soak.judge_kill({"502": 1}, 8, 4, 80, 100, True)["failures"] == ["unexpected answers {'502': 1}"]
    assert soak.judge_kill({}, 8, 4, 80, 100, True, restarted=2)["failures"] == [
        "2 workers have a new pid; one was killed"]


def test_503s_fail_a_kill_only_when_the_other_workers_could_carry_the_rate():
    # 4 workers at 80% of their maximum: 3 carry 75% of it, less than the rate; the queue fills while one is down
    overloaded = soak.judge_kill({"503": 500}, 8, 4, rate=80, max_rps=100, recovered=True)
    assert overloaded["overloaded_without_one_worker"] and overloaded["failures"] == []
    assert overloaded["capacity_without_one_worker_rps"] == 75.0 and overloaded["refused_503"] == 500
    # 10 workers at 80%: 9 carry 90%, so a 503 is the kill's fault
    spare = soak.judge_kill({"503": 3}, 8, 10, rate=80, max_rps=100, recovered=True)
    assert not spare["overloaded_without_one_worker"] and "refused 503" in spare["failures"][0]
    assert soak.judge_kill({"503": 1}, 8, 1, rate=1, max_rps=None, recovered=True)["failures"]  # unknown: judged


# ---------------------------------------------------------------------------------------------- several models


def _doc(model, passed=True, soak_span=(100.0, 700.0), kill=710.0):
    doc = {"model": model, "card": "1x NVIDIA H200", "passed": passed, "failures": [] if passed else ["2 failed"],
           "phases": {"soak": list(soak_span), "kill": kill}, "bad_inputs": {"fraction": 0.01},
           "memory": {"rss_start_mb": 100.0, "rss_end_mb": 100.5, "rss_growth": 0.001, "gpu_start_mib": 10,
                      "gpu_end_mib": 10, "gpu_growth": 0.0},
           "totals": {"sent": 1000, "mean_rate": 100.0, "failed": 0 if passed else 2, "bad_sent": 10,
                      "bad_not_4xx": 0, "p99_ms_per_segment": [30.0, 31.25]},
           "kill": {"worker": "9000", "recovery_s": 4.2, "new_pids": [42], "lost": 3, "lost_limit": 128,
                    "refused_503": 0}}
    return doc


def test_combine_passes_only_when_every_soak_passed():
    both = soak.combine([_doc("resnet101"), _doc("bert_large", soak_span=(103.0, 705.0), kill=712.0)])
    assert both["passed"] and both["failures"] == [] and both["models"] == ["resnet101", "bert_large"]
    assert both["soak_phases_together_s"] == 597.0 and both["kills_after_every_soak"] is True
    assert both["card"] == "1x NVIDIA H200" and len(both["soaks"]) == 2
    line = both["verdicts"][0]["summary"]
    assert "p99 per segment 30.0 31.2 ms" in line and "bad inputs 10 (warm-up included), 0 not answered 4xx" in line
    assert "worker 9000 killed: back in 4.2 s (new pid 42), 3 lost (limit 128)" in line and line.endswith("PASSED")

    one_failed = soak.combine([_doc("resnet101"), _doc("bert_large", passed=False)])
    assert not one_failed["passed"] and one_failed["failures"] == ["bert_large: 2 failed"]
    assert [v["passed"] for v in one_failed["verdicts"]] == [True, False]
    errored = soak.combine([_doc("resnet101"), {"model": "bert_large", "passed": False, "error": "OSError: x"}])
    assert errored["failures"] == ["bert_large: OSError: x"]
    assert not soak.combine([])["passed"]


def test_combine_says_when_a_kill_came_during_another_soak():
    early = soak.combine([_doc("resnet101", kill=650.0), _doc("bert_large")])
    assert early["kills_after_every_soak"] is False and early["passed"]  # reported, not judged


def test_soak_combine_command_exits_non_zero_when_one_soak_failed(tmp_path, capsys):
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "combined.json"
    a.write_text(json.dumps(_doc("resnet101")))
    b.write_text(json.dumps(_doc("bert_large")))
    assert main(["soak-combine", str(a), str(b), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["passed"] is True
    b.write_text(json.dumps(_doc("bert_large", passed=False)))
    assert main(["soak-combine", str(a), str(b), "--out", str(out)]) == 1
    assert json.loads(out.read_text())["failures"] == ["bert_large: 2 failed"]
    assert main(["soak-combine", str(a), str(tmp_path / "missing.json"), "--out", str(out)]) == 1
    assert "FAILED" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- kills in turn


def _kill(window_start, killed_after_s=5.0, recovery_s=20.0, window_s=30.0):
    return {"killed_at": window_start + killed_after_s, "killed_after_s": killed_after_s, "recovery_s": recovery_s,
            "window": {"window_s": window_s}}


def test_kills_apart_covers_each_window_and_recovery():
    assert soak.kills_apart([_kill(0.0), _kill(30.0)]) is True  # window 0-30, recovery ends at 25
    assert soak.kills_apart([_kill(0.0, recovery_s=40.0), _kill(30.0)]) is False  # still recovering at 30
    assert soak.kills_apart([_kill(50.0), _kill(0.0, recovery_s=None)]) is False  # never back: never apart
    assert soak.kills_apart([_kill(0.0)]) is None
    assert soak.kills_apart([_kill(0.0), {"recovery_s": 1.0}]) is None  # an older result without the times


def test_kill_turns_take_turns_and_keep_load_until_every_kill_is_done(tmp_path):
    resnet = soak.KillTurns(str(tmp_path), "resnet101", ["bert_large"])
    bert = soak.KillTurns(str(tmp_path), "bert_large", ["resnet101"])
    waiting, loads, order = threading.Event(), {"resnet101": 0, "bert_large": 0}, []

    def load(model):
        def keep_load():
            loads[model] += 1
            waiting.set()
            time.sleep(0.01)
        return keep_load

    resnet.wait_turn(load("resnet101"), log=lambda m: None)  # first: the turn at once, no load needed
    assert loads["resnet101"] == 0

    def bert_kill():
        bert.wait_turn(load("bert_large"), log=lambda m: None)
        order.append("bert_large killed")
        bert.done()

    thread = threading.Thread(target=bert_kill)
    thread.start()
    assert waiting.wait(30)  # bert keeps its load while resnet holds the turn
    order.append("resnet101 killed")
    resnet.done()
    resnet.wait_others(load("resnet101"), timeout_s=60, log=lambda m: None)  # load on until bert's kill is done
    thread.join(30)
    assert order == ["resnet101 killed", "bert_large killed"] and loads["bert_large"] >= 1
    assert (tmp_path / "resnet101.killed").exists() and (tmp_path / "bert_large.killed").exists()


def test_kill_turns_stop_waiting_for_a_soak_that_never_kills(tmp_path):
    turns = soak.KillTurns(str(tmp_path), "resnet101", ["failed_early"])
    turns.wait_turn(lambda: None, log=lambda m: None)
    turns.done()
    calls = []
    turns.wait_others(lambda: calls.append(1), timeout_s=0.0, log=lambda m: None)
    assert calls == []


def test_beside_kills_judges_the_waiting_model_like_the_soak():
    ok = {"window_s": 5.0, "started": 100, "failed": 0, "latency_ms": {"p99": 40.0},
          "bad_inputs": {"started": 1, "answers": {"400": 1}}}
    bad = {"window_s": 5.0, "started": 100, "failed": 3, "latency_ms": {"p99": 900.0},
           "bad_inputs": {"started": 1, "answers": {"503": 1}}}
    assert soak.beside_kills([ok, ok])["failures"] == []
    judged = soak.beside_kills([ok, bad])
    assert judged["failed"] == 3 and judged["p99_ms_worst_segment"] == 900.0 and judged["sent"] == 202
    assert judged["failures"] == ["beside the other models' kills: 3 failed good request(s)",
                                  "beside the other models' kills: 1 bad request(s) not answered 4xx: "
                                  "{'400': 1, '503': 1}"]


# ---------------------------------------------------------------------------------------------- memory


def _samples(rss_mb):
    return [soak.MemorySample(t_s=5.0 * i, rss_bytes=int(mb * 2**20), rss_per_worker={}, frontend_rss_bytes=0,
                              gpu=None) for i, mb in enumerate(rss_mb)]


def test_memory_is_judged_on_a_trend_of_enough_samples():
    leak = [100, 100, 101, 104, 108, 112, 116, 120, 124]  # grows all the time
    memory, failures = soak.judge_memory(_samples(leak), max_growth=0.05)
    assert failures and failures[0].startswith("worker RSS trends up") and memory["rss_growth"] > 0.05
    step = [100, 108, 108, 108, 108, 108, 108, 108, 108]  # one early high-water mark, then flat
    assert soak.judge_memory(_samples(step), max_growth=0.05)[1] == []
    # four samples (a soak of three segments): one sample a third is no trend, whatever it shows
    memory, failures = soak.judge_memory(_samples([100, 100, 101, 107]), max_growth=0.05)
    assert failures == [] and memory["judged"].startswith("not judged: 4 samples, a trend needs 6")
    assert memory["rss_growth"] > 0.05  # still reported
    assert soak.judge_memory(_samples([100] * 5 + [120]), max_growth=0.05)[1]  # six: judged


def test_memory_is_judged_only_when_the_workers_kept_up_with_the_rate():
    leak = [100, 100, 101, 104, 108, 112, 116, 120, 124]
    assert soak.judge_memory(_samples(leak), max_growth=0.05, kept_up=0.95)[1]  # kept up: the leak fails it
    memory, failures = soak.judge_memory(_samples(leak), max_growth=0.05, kept_up=0.02)
    assert failures == [] and memory["judged"].startswith("not judged: the workers fell behind the rate (2% ")
    assert memory["rss_growth"] > 0.05 and memory["kept_up"] == 0.02  # still reported
    segments = [{"ok_rps": 1.9, "window_s": 5.0, "started": 10}, {"ok_rps": 0.1, "window_s": 5.0, "started": 10}]
    assert soak.kept_up_share(segments) == 0.5
    assert soak.kept_up_share([{"ok_rps": 0.0, "window_s": 5.0, "started": 0}]) is None
    # too few samples is said first, however the machine kept up: the reason does not depend on the load
    memory, _ = soak.judge_memory(_samples([100, 100, 101, 107]), max_growth=0.05, kept_up=0.02)
    assert memory["judged"].startswith("not judged: 4 samples")
