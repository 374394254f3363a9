"""Fire the ``schedule`` events of serverless.yml, as EventBridge would.

Each enabled schedule gets one thread that sleeps until its next firing and then invokes the
function with a scheduled event. A firing that is still running when the next one is due
delays it rather than overlapping it (AWS would run them concurrently; locally a backlog of
overlapping runs only hides a handler that is too slow for its rate).

Expressions:
- ``rate(N unit)`` with unit minute(s), hour(s), day(s) as in AWS, plus second(s) locally so
  a cycle takes seconds. The first firing is one period after start.
- ``cron(min hour day-of-month month day-of-week year)`` in UTC, each field ``*``, ``?``, a
  number or name (JAN-DEC, SUN-SAT; day-of-week 1 = SUN as in AWS), ``a-b``, ``a,b,c`` and
  ``*/n`` or ``a/n`` steps. ``L``, ``W`` and ``#`` are not supported and fail at start-up.

``custom.localCloud.schedules.<function>`` overrides the keys of that function's schedule
events (``enabled``, ``rate``) locally.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from localcloud import infra

Invoke = Callable[[str, dict[str, Any]], Any]
Say = Callable[[str], None]

_RATE = re.compile(r"rate\(\s*(\d+)\s+(second|minute|hour|day)s?\s*\)")
_CRON = re.compile(r"cron\((.+)\)")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_MONTHS = {name.upper(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}


class ScheduleError(ValueError):
    pass


def rate_seconds(expression: str) -> int | None:
    """Seconds between firings of a ``rate()`` expression; None for anything else."""
    match = _RATE.fullmatch(expression.strip())
    if not match:
        return None
    amount = int(match.group(1))
    if amount < 1:
        raise ScheduleError(f"{expression}: the rate must be at least 1")
    return amount * _UNIT_SECONDS[match.group(2)]


def _field(text: str, low: int, high: int, names: dict[str, int] | None = None) -> frozenset[int] | None:
    """The values a cron field allows; None means "any" (``*`` or ``?``)."""
    if text in {"*", "?"}:
        return None
    if "#" in text:
        raise ScheduleError(f"cron field {text!r}: L, W and # are not supported locally")

    def value(token: str) -> int:
        token = token.upper()
        if names and token in names:
            return names[token]
        if token[-1:] in {"L", "W"}:
            raise ScheduleError(f"cron field {text!r}: L, W and # are not supported locally")
        if not token.isdigit():
            raise ScheduleError(f"cron field {text!r}: {token!r} is not a number or a known name")
        return int(token)

    allowed: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ScheduleError(f"cron field {text!r}: the step must be at least 1")
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, last = base.split("-", 1)
            start, end = value(first), value(last)
        else:
            start = value(base)
            end = high if step_text else start
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise ScheduleError(f"cron field {text!r} is outside {low}-{high}")
        allowed.update(range(start, end + 1, step))
    return frozenset(allowed)


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int] | None
    hours: frozenset[int] | None
    days: frozenset[int] | None
    months: frozenset[int] | None
    weekdays: frozenset[int] | None  # 1 = Sunday, as in AWS
    years: frozenset[int] | None

    @classmethod
    def parse(cls, expression: str) -> Cron:
        match = _CRON.fullmatch(expression.strip())
        if not match:
            raise ScheduleError(f"{expression!r} is neither rate(...) nor cron(...)")
        fields = match.group(1).split()
        if len(fields) != 6:
            raise ScheduleError(f"{expression}: AWS cron expressions have 6 fields, got {len(fields)}")
        return cls(
            minutes=_field(fields[0], 0, 59),
            hours=_field(fields[1], 0, 23),
            days=_field(fields[2], 1, 31),
            months=_field(fields[3], 1, 12, _MONTHS),
            weekdays=_field(fields[4], 1, 7, _DAYS),
            years=_field(fields[5], 1970, 2199),
        )

    def matches(self, when: dt.datetime) -> bool:
        weekday = when.isoweekday() % 7 + 1  # Monday=1..Sunday=7 -> Sunday=1..Saturday=7
        checks = (
            (self.minutes, when.minute),
            (self.hours, when.hour),
            (self.days, when.day),
            (self.months, when.month),
            (self.weekdays, weekday),
            (self.years, when.year),
        )
        return all(allowed is None or value in allowed for allowed, value in checks)

    def next_after(self, when: dt.datetime) -> dt.datetime:
        """The first matching minute strictly after ``when`` (UTC), searched up to 5 years out."""
        candidate = when.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        limit = candidate + dt.timedelta(days=5 * 366)
        while candidate < limit:
            if (self.months is None or candidate.month in self.months) and (
                self.days is None or candidate.day in self.days
            ):
                if self.matches(candidate):
                    return candidate
                candidate += dt.timedelta(minutes=1)
            else:  # skip the whole day
                candidate = (candidate + dt.timedelta(days=1)).replace(hour=0, minute=0)
        raise ScheduleError("the cron expression never fires in the next five years")


@dataclass(frozen=True)
class Schedule:
    function: str
    name: str
    expression: str
    event_input: Any = None  # the schedule's `input`, delivered instead of the scheduled event

    def next_delay(self, now: dt.datetime) -> float:
        seconds = rate_seconds(self.expression)
        if seconds is not None:
            return float(seconds)
        return (Cron.parse(self.expression).next_after(now) - now).total_seconds()


def schedules(stack: infra.Stack, overrides: dict[str, dict[str, Any]] | None = None) -> list[Schedule]:
    """The enabled schedules of the file, after the local overrides (keyed by function name)."""
    overrides = overrides or {}
    out = []
    for fn in stack.functions():
        for index, event in enumerate(fn.events):
            if "schedule" not in event:
                continue
            spec = event["schedule"]
            spec = {"rate": spec} if isinstance(spec, str) else dict(spec)
            spec.update(overrides.get(fn.name) or {})
            if not _enabled(spec.get("enabled", True)):
                continue
            rates = spec["rate"] if isinstance(spec["rate"], list) else [spec["rate"]]
            for expression in rates:
                if rate_seconds(expression) is None:
                    Cron.parse(expression)  # fail at start-up, not at the first firing
                name = str(spec.get("name") or f"{fn.name}-schedule-{index + 1}")
                out.append(Schedule(fn.name, name, str(expression), spec.get("input")))
    return out


def _enabled(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return bool(value)


def scheduled_event(schedule: Schedule, region: str, account: str, now: dt.datetime) -> dict[str, Any]:
    if schedule.event_input is not None:
        return (
            schedule.event_input
            if isinstance(schedule.event_input, dict)
            else {"input": schedule.event_input}
        )
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{account}:rule/{schedule.name}"],
        "detail": {},
    }


class Scheduler:
    """One thread per schedule; ``stop()`` wakes and joins them all."""

    def __init__(self, stack: infra.Stack, invoke: Invoke, say: Say, items: Iterable[Schedule]) -> None:
        self._stack = stack
        self._invoke = invoke
        self._say = say
        self.items = list(items)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.fired: dict[str, int] = {}  # schedule name -> firings, for progress output and tests

    def start(self) -> None:
        self._stopping.clear()
        for item in self.items:
            thread = threading.Thread(target=self._run, args=(item,), name=f"localcloud-schedule-{item.name}")
            thread.start()
            self._threads.append(thread)

    def _run(self, item: Schedule) -> None:
        while not self._stopping.wait(item.next_delay(dt.datetime.now(dt.UTC))):
            now = dt.datetime.now(dt.UTC)
            self.fired[item.name] = self.fired.get(item.name, 0) + 1
            try:
                self._invoke(
                    item.function, scheduled_event(item, self._stack.region, self._stack.account, now)
                )
            except Exception as err:  # noqa: BLE001 - an asynchronous invocation failure is only logged
                self._say(f"schedule {item.name}: {item.function} failed: {err!r}")

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
