"""The trainer's heartbeat: proof of progress for the instance's idle backstop.

CPU alone cannot tell a hung trainer from one waiting on I/O (a long scan, a slow upload):
both sit near 0 %. So the trainer says it is alive: a custom metric ``Heartbeat`` (value 1,
namespace ``autoretrain/Trainer``, dimension ``InstanceId``) published when a phase starts,
after every epoch, and by a background thread every third of a period *while the current
phase is within its budget*. A trainer blocked longer than the alarm's window but within its
phase's budget keeps beating; one that is deadlocked (the process stops) or stuck past its
phase's budget stops beating, and the backstop may take it.

The instance role may publish to this namespace only (``cloudwatch:namespace`` condition,
infra/serverless.yml TrainInstanceRole; CloudWatch User Guide, "Using condition keys to limit
access to CloudWatch namespaces"). A failed PutMetricData is logged, never raised: the
heartbeat must not be what fails a run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from lambdas.core import aws, log

NAMESPACE = "autoretrain/Trainer"
METRIC = "Heartbeat"
# The trainer's phases, in order (trainer/run.py), and how long each may take before the
# trainer counts as stuck. Generous on purpose: the backstop is for the dead, the run's time
# limit (TRAIN_TIME_LIMIT_S, 1,800 s by default) for the slow. Measured here: a scan of 100k
# items took 90 s and 100 epochs over 100k samples 373 s (shared/DESIGN.md).
SCAN, FIT, EXPORT, PUBLISH = "scan", "fit", "export", "publish"
BUDGETS_S: Mapping[str, float] = {SCAN: 900.0, FIT: 1800.0, EXPORT: 300.0, PUBLISH: 600.0}
# Beats per alarm period: one datapoint per period is enough for the alarm, three survive a
# late or lost request.
BEATS_PER_PERIOD = 3


def within_budget(phase: str | None, started: float, now: float, budgets: Mapping[str, float]) -> bool:
    """Whether a phase that started at ``started`` may still beat at ``now``. No phase yet
    (starting up) beats; a phase without a budget is a programming error, not a free pass."""
    if phase is None:
        return True
    if phase not in budgets:
        raise KeyError(f"no heartbeat budget for phase {phase!r}")
    return now - started <= budgets[phase]


class Heartbeat:
    """Publishes the heartbeat of one instance. ``start()``/``stop()`` run the background
    thread; ``phase(name)`` marks the current phase (and beats); ``beat()`` beats now."""

    def __init__(
        self,
        instance_id: str,
        *,
        period_s: float,
        budgets: Mapping[str, float] = BUDGETS_S,
        cloudwatch: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.instance_id = instance_id
        self.interval_s = period_s / BEATS_PER_PERIOD
        self.budgets = dict(budgets)
        self._cloudwatch = cloudwatch
        self._clock = clock
        self._lock = threading.Lock()
        self._phase: str | None = None
        self._started = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self._last = float("-inf")
        self.stalled = False  # the current phase ran past its budget: beating stopped

    @property
    def current(self) -> str | None:
        return self._phase

    def alive(self) -> bool:
        with self._lock:
            return within_budget(self._phase, self._started, self._clock(), self.budgets)

    def enter(self, name: str) -> None:
        """Phase ``name`` starts now, and with it its budget."""
        if name not in self.budgets:
            raise KeyError(f"no heartbeat budget for phase {name!r}")
        with self._lock:
            self._phase, self._started = name, self._clock()
            self.stalled = False
        self.beat()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Run the block as phase ``name``."""
        self.enter(name)
        yield

    def progress(self) -> None:
        """Progress (an epoch): beat, unless a beat went out less than an interval ago - fast
        epochs need not cost one request each."""
        if self._clock() - self._last >= self.interval_s:
            self.beat()

    def beat(self) -> None:
        """Beat now, if the current phase is within its budget (an epoch that ends after the
        fit budget is not progress the backstop should trust)."""
        if not self.alive():
            if not self.stalled:
                self.stalled = True
                budget = self.budgets.get(self._phase or "")
                log.warning("heartbeat_stalled", phase=self._phase, budget_s=budget)
            return
        try:
            client = self._cloudwatch = self._cloudwatch or aws.client("cloudwatch")
            client.put_metric_data(
                Namespace=NAMESPACE,
                MetricData=[
                    {
                        "MetricName": METRIC,
                        "Dimensions": [{"Name": "InstanceId", "Value": self.instance_id}],
                        "Value": 1.0,
                        "Unit": "Count",
                    }
                ],
            )
            self.sent += 1
            self._last = self._clock()
        except Exception as err:  # noqa: BLE001 - a lost beat is the backstop's problem, not the run's
            log.warning("heartbeat_failed", error=f"{type(err).__name__}: {err}")

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()


# The heartbeat of this process, if one runs: trainer/run.py marks phases and progress with
# one-line calls, and a run without an instance (a laptop, a unit test) beats nowhere.
_active: Heartbeat | None = None


def begin(instance_id: str, *, period_s: float, cloudwatch: Any = None) -> Heartbeat:
    global _active
    end()
    _active = Heartbeat(instance_id, period_s=period_s, cloudwatch=cloudwatch)
    _active.start()
    return _active


def end() -> None:
    global _active
    if _active is not None:
        _active.stop()
        _active = None


def enter(phase: str) -> None:
    if _active is not None:
        _active.enter(phase)


def progress() -> None:
    if _active is not None:
        _active.progress()
