"""The trainer's heartbeat: beats while the current phase is within its budget, never fails a run."""

from __future__ import annotations

import time
from typing import Any

import pytest

from trainer import heartbeat


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def put_metric_data(self, **kwargs: Any) -> None:
        if self.fail:
            raise ConnectionError("endpoint unreachable")
        self.calls.append(kwargs)


def test_heartbeat_within_budget_follows_each_phases_own_budget() -> None:
    budgets = {"scan": 10.0, "fit": 100.0}
    assert heartbeat.within_budget(None, 0.0, 1e9, budgets)  # starting up: no phase yet
    assert heartbeat.within_budget("scan", 0.0, 10.0, budgets)
    assert not heartbeat.within_budget("scan", 0.0, 10.1, budgets)
    assert heartbeat.within_budget("fit", 0.0, 99.0, budgets)
    with pytest.raises(KeyError, match="no heartbeat budget for phase 'export'"):
        heartbeat.within_budget("export", 0.0, 1.0, budgets)


def test_heartbeat_budgets_cover_every_phase_of_the_trainer() -> None:
    assert set(heartbeat.BUDGETS_S) == {heartbeat.SCAN, heartbeat.FIT, heartbeat.EXPORT, heartbeat.PUBLISH}


def test_heartbeat_beats_as_the_instance_in_its_namespace_at_each_phase() -> None:
    cw, clock = Recorder(), Clock()
    beat = heartbeat.Heartbeat("i-0abc", period_s=60, cloudwatch=cw, clock=clock)
    assert beat.interval_s == 20
    with beat.phase(heartbeat.SCAN):
        beat.beat()
    assert (
        cw.calls
        == [
            {
                "Namespace": "autoretrain/Trainer",
                "MetricData": [
                    {
                        "MetricName": "Heartbeat",
                        "Dimensions": [{"Name": "InstanceId", "Value": "i-0abc"}],
                        "Value": 1.0,
                        "Unit": "Count",
                    }
                ],
            }
        ]
        * 2
    )
    assert beat.current == heartbeat.SCAN


def test_heartbeat_stops_beating_once_a_phase_passes_its_budget_and_resumes_with_the_next() -> None:
    cw, clock = Recorder(), Clock()
    beat = heartbeat.Heartbeat(
        "i-0abc", period_s=3, budgets={"scan": 5.0, "fit": 50.0}, cloudwatch=cw, clock=clock
    )
    with beat.phase("scan"):
        clock.now += 5.0
        beat.beat()  # blocked, but within the scan's budget: still alive
        clock.now += 0.5
        beat.beat()  # stuck past it: silence, so the backstop may act
        assert beat.stalled and not beat.alive()
    assert len(cw.calls) == 2
    with beat.phase("fit"):  # a new phase is progress: its own budget starts now
        assert not beat.stalled
    assert len(cw.calls) == 3
    with pytest.raises(KeyError), beat.phase("export"):
        pass


def test_heartbeat_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    beat = heartbeat.Heartbeat("i-0abc", period_s=3, cloudwatch=Recorder(fail=True))
    beat.beat()
    assert beat.sent == 0 and "heartbeat_failed" in caplog.text


def test_heartbeat_thread_beats_every_third_of_a_period_until_stopped() -> None:
    cw = Recorder()
    beat = heartbeat.Heartbeat("i-0abc", period_s=0.15, cloudwatch=cw)
    beat.start()
    time.sleep(0.5)
    beat.stop()
    sent = len(cw.calls)
    assert sent >= 5  # one at start, then every 0.05 s
    time.sleep(0.15)
    assert len(cw.calls) == sent
