"""The retrain rules judged on live data: quality (here) and drift (``lambdas.core.drift``).

The quality rule: a retrain when the serving model does significantly worse on the labelled
samples arriving now than on its holdout. Evaluated by the score function after each batch that
counted samples of the serving version (``Monitor.check``), over a rolling window of that
version's live time buckets (``live.LiveStore.window_items``). The rule holds when

    upper(window) < lower(holdout) - tolerance

- ``upper(window)``: the upper bound of the one-sided ``confidence`` Wilson interval of the
  window's accuracy: the best accuracy the window is still compatible with;
- ``lower(holdout)``: the lower bound of the same interval of the holdout accuracy (its count
  is recorded with it; without a count, the accuracy itself). A holdout is a sample too: a
  model whose holdout of 40 samples happened to be all right must not look degraded forever;
- ``tolerance``: the drop not worth a retrain (practical significance).

So a trigger needs both bounds apart by more than the tolerance: a conservative test (comparing
two one-sided intervals has a smaller error rate than each alone). It is evaluated after every
batch, so one stream of stationary traffic is tested many times over overlapping windows: the
per-look error must be far below the rate wanted overall. With the defaults (one-sided 95 %,
3 points of tolerance, 200 samples at least) 10,000 stationary samples at the holdout's accuracy
give no trigger (tests/unit/test_quality.py measures it over accuracies, holdout sizes, traffic
rates and seeds), while a drop from 90 % to 70 % is requested within 400 samples. A window with
fewer than ``min_samples`` samples never triggers: noise in a handful of samples is no evidence.

Both rules share the window: the last ``LIVE_WINDOW_S``, starting no earlier than the first
bucket after the last launch (evidence older than a run was that run's to answer: a candidate
the gate rejected leaves the same version serving, judged again on what arrives after that run
started). Quality is judged first (the users' own measure), then drift.

When a rule holds and no run is in flight, the monitor stores a request in the lock item
(``lock.LockStore.request``) with the rule and its figures; the train function's next step (its
one-minute schedule reads the lock) starts the run under the single-flight lock, the minimum
interval and the retry backoff, and records the figures as the run's ``trigger``. The score
function never launches anything and needs no permission beyond the model table it writes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from lambdas.core import drift, live, lock, log, registry, settings
from lambdas.core.errors import ConfigError, NotFound
from lambdas.core.scoring import LatestHistory

RULE = "quality"


@dataclass(frozen=True)
class QualitySettings:
    window_s: int = 3600  # the rolling window of both rules (LIVE_WINDOW_S)
    min_samples: int = 200  # fewer samples in the window never trigger
    tolerance: float = 0.03  # accuracy drop (absolute) not worth a retrain
    confidence: float = 0.95  # one-sided level of each interval
    enabled: bool = True

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(self.confidence)

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> QualitySettings:
        env = settings.environ() if env is None else env
        confidence = settings.number(env, "QUALITY_CONFIDENCE", 0.95, minimum=0.5)
        if confidence >= 1:
            raise ConfigError(f"QUALITY_CONFIDENCE must be below 1, got {confidence}")
        return cls(
            window_s=settings.integer(env, "LIVE_WINDOW_S", 3600, minimum=1),
            enabled=settings.boolean(env, "QUALITY_RULE", True),
            min_samples=settings.integer(env, "QUALITY_MIN_SAMPLES", 200, minimum=30),
            tolerance=settings.number(env, "QUALITY_TOLERANCE", 0.03, minimum=0.0),
            confidence=confidence,
        )


@dataclass(frozen=True)
class Verdict:
    """One evaluation of the rule on a window."""

    version: str
    seen: int
    correct: int
    upper: float  # one-sided upper bound of the window's accuracy
    holdout_accuracy: float
    holdout_count: int | None
    holdout_lower: float  # one-sided lower bound of the holdout's accuracy
    tolerance: float
    confidence: float
    from_ms: int  # the window: samples ingested from here ...
    to_ms: int  # ... to here

    @property
    def accuracy(self) -> float:
        return self.correct / self.seen

    @property
    def triggered(self) -> bool:
        return self.upper < self.holdout_lower - self.tolerance

    def request(self, at: str) -> dict[str, Any]:
        """The lock item's request (and the run's ``trigger.quality``): the rule and its figures."""
        return {
            "rule": RULE,
            "version": self.version,
            "seen": self.seen,
            "correct": self.correct,
            "accuracy": round(self.accuracy, 6),
            "upper": round(self.upper, 6),
            "holdout_accuracy": self.holdout_accuracy,
            "holdout_count": self.holdout_count,
            "holdout_lower": round(self.holdout_lower, 6),
            "tolerance": self.tolerance,
            "confidence": self.confidence,
            "from_ms": self.from_ms,
            "to_ms": self.to_ms,
            "at": at,
        }


def judge(
    window: live.Counts,
    holdout_accuracy: float,
    holdout_count: int | None,
    cfg: QualitySettings,
    *,
    version: str,
    from_ms: int,
    to_ms: int,
) -> Verdict | None:
    """The rule on one window; None when the window is too small to say anything."""
    if window.seen < cfg.min_samples:
        return None
    _, upper = live.wilson(window.correct, window.seen, cfg.z)
    lower = holdout_accuracy
    if holdout_count:
        correct = min(holdout_count, max(0, round(holdout_accuracy * holdout_count)))
        lower = min(holdout_accuracy, live.wilson(correct, holdout_count, cfg.z)[0])
    return Verdict(
        version=version,
        seen=window.seen,
        correct=window.correct,
        upper=upper,
        holdout_accuracy=holdout_accuracy,
        holdout_count=holdout_count,
        holdout_lower=lower,
        tolerance=cfg.tolerance,
        confidence=cfg.confidence,
        from_ms=from_ms,
        to_ms=to_ms,
    )


def window_start(now_ms: int, window_s: int, bucket_s: int, last_launch_ms: int) -> int:
    """The first bucket of the window: ``window_s`` back from ``now_ms``, but none that began
    before the last launch (the first bucket starting at or after it)."""
    width = bucket_s * 1000
    rolling = live.bucket_start_ms(now_ms - window_s * 1000, bucket_s)
    after_launch = live.bucket_start_ms(last_launch_ms + width - 1, bucket_s) if last_launch_ms else 0
    return max(rolling, after_launch)


def holdout_of(run: dict[str, Any]) -> tuple[float, int | None] | None:
    """A run's holdout accuracy and count (None when it has none)."""
    holdout = (run.get("metrics") or {}).get("holdout") or {}
    accuracy = holdout.get("accuracy")
    if accuracy is None:
        return None
    count = holdout.get("count")
    return float(accuracy), int(count) if count else None


Facts = tuple[tuple[float, int | None] | None, drift.Profile | None]


class RunFacts:
    """What the rules need of a version's run item: its holdout accuracy and count, its training
    inputs' profile (``drift.Profile``). Read once per container and version when the run is
    final: its metrics and profile are written with its final status in one update
    (trainer/run.py, ``_record_final``) and never change after. A read before that (the run
    still ``training``, or no item) is kept only ``retry_s``: the trainer moves latest before it
    records the final fields, so a sample scored in between finds the serving version's item
    without them, and keeping that miss would leave the version unjudged for the container's
    life."""

    def __init__(
        self, runs: registry.Registry, *, retry_s: float = 30.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._runs = runs
        self._retry_s = retry_s
        self._clock = clock
        self._facts: dict[str, Facts] = {}
        self._misses: dict[str, tuple[float, Facts]] = {}  # version: (read at, what it read)

    def _read(self, version: str) -> Facts:
        if version in self._facts:
            return self._facts[version]
        now = self._clock()
        missed = self._misses.get(version)
        if missed is not None and now - missed[0] < self._retry_s:
            return missed[1]
        try:
            run = self._runs.get_run(version)
        except NotFound:
            run = {}
        facts = (holdout_of(run), drift.Profile.from_dict(run.get("input_profile") or {}))
        if run.get("status") in registry.FINAL_STATUSES:
            self._facts[version] = facts
            self._misses.pop(version, None)
        else:
            self._misses[version] = (now, facts)
        return facts

    def holdout(self, version: str) -> tuple[float, int | None] | None:
        return self._read(version)[0]

    def profile(self, version: str) -> drift.Profile | None:
        return self._read(version)[1]


@dataclass(frozen=True)
class Judged:
    """One evaluation after a batch: the verdicts and the request stored (None: none)."""

    quality: Verdict | None = None
    drift: drift.DriftVerdict | None = None
    requested: dict[str, Any] | None = None


@dataclass
class Monitor:
    """Evaluates the rules for the serving version and asks for a run when one holds: the quality
    rule first (the users' own measure), then the drift rule (``lambdas.core.drift``)."""

    cfg: QualitySettings
    facts: RunFacts
    store: live.LiveStore
    locks: lock.LockStore
    history: LatestHistory
    clock: Callable[[], float] = time.time
    drift_cfg: drift.DriftSettings = field(default_factory=drift.DriftSettings)

    def check(self, counted: Iterable[str]) -> Judged:
        """After a batch that counted samples of the ``counted`` versions: the verdicts on the
        serving version's window, and the request stored in the lock when a rule holds."""
        if not (self.cfg.enabled or self.drift_cfg.enabled):
            return Judged()
        now_ms = int(self.clock() * 1000)
        self.history.refresh_for(now_ms)
        serving = self.history.version_at(now_ms)
        if serving is None or serving not in set(counted):
            return Judged()  # only the model answering requests now is worth retraining for
        state = self.locks.read()
        if state.holder is not None:
            return Judged()  # a run is in flight: what it serves next is judged afresh
        from_ms = window_start(now_ms, self.cfg.window_s, self.store.bucket_s, state.launch_ms)
        counts, items = self.store.window_items(serving, from_ms)
        found = Judged(
            quality=self._quality(serving, counts, from_ms, now_ms),
            drift=self._drift(serving, items, from_ms, now_ms),
        )
        for verdict in (found.quality, found.drift):
            if verdict is None:
                continue
            figures = verdict.request(registry.now_iso())
            if not verdict.triggered:
                log.log(f"{figures['rule']}_ok", **figures)
                continue
            if self.locks.request(figures):
                log.warning("retrain_requested", **figures)
                return dataclasses.replace(found, requested=figures)
            log.log("retrain_request_skipped", reason="a run started meanwhile", **figures)
            break
        return found

    def _quality(self, version: str, counts: live.Counts, from_ms: int, to_ms: int) -> Verdict | None:
        if not self.cfg.enabled:
            return None
        holdout = self.facts.holdout(version)
        if holdout is None:
            log.log("quality_not_judged", version=version, reason="no holdout accuracy recorded")
            return None
        return judge(counts, *holdout, self.cfg, version=version, from_ms=from_ms, to_ms=to_ms)

    def _drift(
        self, version: str, items: list[dict[str, Any]], from_ms: int, to_ms: int
    ) -> drift.DriftVerdict | None:
        if not self.drift_cfg.enabled:
            return None
        shape = self.facts.profile(version)
        if shape is None:
            return None
        window = [[0] * (len(edges) + 1) for edges in shape.edges]
        for item in items:
            for total, counts in zip(window, drift.histograms(item, shape), strict=True):
                for i, n in enumerate(counts):
                    total[i] += n
        return drift.judge(window, shape, self.drift_cfg, version=version, from_ms=from_ms, to_ms=to_ms)
