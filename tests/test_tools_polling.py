"""torchserve_accel/tools/polling.py, on a simulated clock (no real waiting)."""

from __future__ import annotations

import pytest

from torchserve_accel.tools import polling


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(polling.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(polling.time, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    return now


def test_returns_the_first_truthy_value(clock):
    answers = iter([None, 0, [], {"workers": 2}])
    assert polling.wait_until(lambda: next(answers), timeout=10, interval=1) == {"workers": 2}
    assert clock[0] == 103.0  # three sleeps of one interval


def test_gives_none_at_the_deadline_and_reports_progress(clock):
    calls, notes = [], []
    result = polling.wait_until(lambda: calls.append(clock[0]), timeout=12, interval=1, on_wait=notes.append, every=5)
    assert result is None
    assert calls[0] == 100.0 and calls[-1] == 112.0  # one last look at the deadline
    assert notes == [5.0, 10.0]


def test_the_check_may_give_up_early(clock):
    def check():
        raise RuntimeError("the server exited")

    with pytest.raises(RuntimeError, match="exited"):
        polling.wait_until(check, timeout=60)
