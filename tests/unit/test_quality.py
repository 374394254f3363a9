"""The quality rule: its test on a window, and the monitor that asks for a retrain, on traffic
simulated through the same bucketing as the live counts (no AWS)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from lambdas.core import live, lock, quality
from lambdas.core.errors import ConfigError

V1 = "v20261120T080000Z-0001"
CFG = quality.QualitySettings()
HOUR_MS = 3_600_000
T0_MS = 1_800_000_000_000


def counts(correct: int, seen: int) -> live.Counts:
    return live.Counts.of([("ok", "ok")] * correct + [("ok", "warm")] * (seen - correct))


def verdict(correct: int, seen: int, holdout: float = 0.9, holdout_count: int | None = 2000, **cfg: Any):
    return quality.judge(
        counts(correct, seen),
        holdout,
        holdout_count,
        quality.QualitySettings(**cfg),
        version=V1,
        from_ms=0,
        to_ms=1,
    )


def test_quality_window_below_the_minimum_size_is_not_judged() -> None:
    assert verdict(0, CFG.min_samples - 1) is None


def test_quality_rule_holds_when_the_window_is_significantly_worse_than_the_holdout() -> None:
    found = verdict(150, 200)  # 75 % live against 90 % on 2,000 holdout samples
    assert found is not None and found.triggered
    assert found.upper == pytest.approx(live.wilson(150, 200, CFG.z)[1])
    assert found.holdout_lower == pytest.approx(live.wilson(1800, 2000, CFG.z)[0])
    assert found.request("t")["rule"] == "quality" and found.request("t")["seen"] == 200


@pytest.mark.parametrize(
    ("correct", "seen", "triggered"),
    [
        (170, 200, False),  # 85 %: within the tolerance plus the noise of 200 samples
        (880, 1000, False),  # 88 %: within the tolerance
        (150, 200, True),
        (1600, 2000, True),  # 80 %
    ],
)
def test_quality_rule_needs_more_than_the_tolerance_and_the_noise(
    correct: int, seen: int, triggered: bool
) -> None:
    found = verdict(correct, seen)
    assert found is not None and found.triggered is triggered


def test_quality_holdout_of_few_samples_widens_the_margin() -> None:
    """36 right of 40 holdout samples say little: 80 % live is no evidence of a drop from 90 %."""
    assert not verdict(160, 200, holdout=0.9, holdout_count=40).triggered  # type: ignore[union-attr]
    assert verdict(160, 200, holdout=0.9, holdout_count=None).triggered  # type: ignore[union-attr]


def test_quality_window_starts_after_the_last_launch() -> None:
    bucket_s = 300
    now = T0_MS + 10 * HOUR_MS
    assert quality.window_start(now, 3600, bucket_s, 0) == live.bucket_start_ms(now - HOUR_MS, bucket_s)
    launch = now - 1_000_000 + 1  # inside a bucket: the window starts with the next one
    start = quality.window_start(now, 3600, bucket_s, launch)
    assert start >= launch and start - launch < bucket_s * 1000 and start % (bucket_s * 1000) == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QUALITY_CONFIDENCE": "1"}, "QUALITY_CONFIDENCE must be below 1"),
        ({"LIVE_WINDOW_S": "0"}, "LIVE_WINDOW_S"),
        ({"QUALITY_MIN_SAMPLES": "10"}, "QUALITY_MIN_SAMPLES"),
        ({"QUALITY_TOLERANCE": "-0.1"}, "QUALITY_TOLERANCE"),
    ],
)
def test_quality_settings_refuse_bad_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        quality.QualitySettings.from_env(env)


# the monitor on simulated traffic -------------------------------------------------------------


@dataclass
class FakeLive:
    """Live buckets of one version, summed like ``LiveStore.window``."""

    bucket_s: int = 300
    buckets: dict[int, live.Counts] = field(default_factory=dict)
    queries: int = 0

    def add(self, at_ms: int, correct: bool) -> None:
        start = live.bucket_start_ms(at_ms, self.bucket_s)
        one = live.Counts.of([("ok", "ok" if correct else "warm")])
        self.buckets[start] = self.buckets.get(start, live.Counts()) + one

    def window_items(self, version: str, since_ms: int) -> tuple[live.Counts, list[dict[str, Any]]]:
        self.queries += 1
        since = live.bucket_start_ms(since_ms, self.bucket_s)
        total = live.Counts()
        for start, c in self.buckets.items():
            if start >= since:
                total = total + c
        return total, []


@dataclass
class FakeLocks:
    state: lock.LockState = field(default_factory=lock.LockState)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def read(self) -> lock.LockState:
        return self.state

    def request(self, request: dict[str, Any]) -> bool:
        if self.state.holder is not None:
            return False
        self.requests.append(request)
        self.state = lock.LockState(**{**self.state.__dict__, "request": request})
        return True


class FakeHistory:
    def refresh_for(self, newest_ms: int) -> None:
        pass

    def version_at(self, at_ms: int) -> str | None:
        return V1


class FakeRuns:
    def __init__(self, accuracy: float, count: int) -> None:
        self.run = {"status": "published", "metrics": {"holdout": {"accuracy": accuracy, "count": count}}}
        self.reads = 0

    def get_run(self, version: str) -> dict[str, Any]:
        self.reads += 1
        return self.run


class Clock:
    def __init__(self) -> None:
        self.ms = T0_MS

    def __call__(self) -> float:
        return self.ms / 1000


def monitor(accuracy: float, count: int, **cfg: Any) -> tuple[quality.Monitor, FakeLive, FakeLocks, Clock]:
    store, locks, clock = FakeLive(), FakeLocks(), Clock()
    runs = FakeRuns(accuracy, count)
    m = quality.Monitor(
        quality.QualitySettings(**cfg),
        quality.RunFacts(runs),  # type: ignore[arg-type]
        store,  # type: ignore[arg-type]
        locks,  # type: ignore[arg-type]
        FakeHistory(),  # type: ignore[arg-type]
        clock=clock,
    )
    m.runs = runs  # type: ignore[attr-defined]
    return m, store, locks, clock


def simulate(
    m: quality.Monitor,
    store: FakeLive,
    clock: Clock,
    accuracies: list[float],
    *,
    per_hour: int,
    batch: int,
    seed: int,
) -> list[int]:
    """Samples ``accuracies[i]``-likely right, ``per_hour`` evenly, judged after every ``batch``;
    the indices of the samples after which a retrain was requested."""
    rng = random.Random(seed)
    step_ms = HOUR_MS // per_hour
    triggers = []
    for i, p in enumerate(accuracies):
        clock.ms += step_ms
        store.add(clock.ms, rng.random() < p)
        if (i + 1) % batch == 0 and m.check([V1]).requested is not None:
            triggers.append(i + 1)
    return triggers


# Stationary traffic: 10,000 samples drawn at exactly the holdout's accuracy, for several accuracies,
# holdout sizes and traffic rates (a window of ~250 samples up to all of them), judged after every
# stream batch. The measure is the number of false triggers: it must be 0.
@pytest.mark.parametrize("accuracy", [0.5, 0.75, 0.9, 0.97])
@pytest.mark.parametrize(
    ("holdout_count", "per_hour", "batch"), [(100, 250, 5), (1000, 1000, 25), (5000, 20000, 100)]
)
def test_quality_no_trigger_on_10000_stationary_samples(
    accuracy: float, holdout_count: int, per_hour: int, batch: int
) -> None:
    false_triggers = 0
    for seed in range(5):
        m, store, locks, clock = monitor(accuracy, holdout_count)
        false_triggers += len(
            simulate(m, store, clock, [accuracy] * 10_000, per_hour=per_hour, batch=batch, seed=seed)
        )
        assert locks.requests == []
    assert false_triggers == 0


def test_quality_drop_is_requested_within_one_window_and_its_figures_say_why() -> None:
    m, store, locks, clock = monitor(0.9, 2000)
    before = [0.9] * 2000
    after = [0.7] * 2000
    triggers = simulate(m, store, clock, before + after, per_hour=1000, batch=25, seed=1)
    assert triggers and triggers[0] > 2000
    delay = triggers[0] - 2000
    assert delay <= 400, f"{delay} samples after the drop"
    request = locks.requests[0]
    assert request["rule"] == "quality" and request["version"] == V1 and request["at"]
    assert request["upper"] < request["holdout_lower"] - request["tolerance"]
    assert request["accuracy"] < 0.9


def test_quality_monitor_asks_nothing_while_a_run_is_in_flight() -> None:
    m, store, locks, clock = monitor(0.9, 2000)
    locks.state = lock.LockState(holder="v2", expires_at=clock() + 600, last_launch_at=clock())
    simulate(m, store, clock, [0.5] * 1000, per_hour=1000, batch=25, seed=2)
    assert locks.requests == [] and store.queries == 0


def test_quality_monitor_judges_only_the_serving_version_and_reads_its_holdout_once() -> None:
    m, store, _, clock = monitor(0.9, 2000)
    assert m.check(["v-older"]) == quality.Judged() and store.queries == 0
    simulate(m, store, clock, [0.9] * 500, per_hour=1000, batch=25, seed=3)
    assert m.runs.reads == 1  # type: ignore[attr-defined]


def test_run_facts_read_before_the_run_is_final_are_read_again_after_a_while() -> None:
    """Latest moves before the trainer records the run's metrics: a sample scored in between
    must not leave the version without a holdout for the container's life."""
    runs, clock = FakeRuns(0.9, 2000), Clock()
    recorded = runs.run
    runs.run = {"status": "training"}
    facts = quality.RunFacts(runs, retry_s=30, clock=clock)  # type: ignore[arg-type]
    assert facts.holdout(V1) is None
    runs.run = recorded  # the trainer records its final fields
    clock.ms += 29_000
    assert facts.holdout(V1) is None and runs.reads == 1  # a miss is kept a little while
    clock.ms += 1_000
    assert facts.holdout(V1) == (0.9, 2000) and runs.reads == 2
    clock.ms += 3_600_000
    assert facts.holdout(V1) == (0.9, 2000) and facts.profile(V1) is None and runs.reads == 2


def test_quality_rule_off() -> None:
    m, store, _, clock = monitor(0.9, 2000, enabled=False)
    assert simulate(m, store, clock, [0.1] * 1000, per_hour=1000, batch=25, seed=4) == []
