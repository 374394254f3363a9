"""Alarm evaluator: what CloudWatch does with the training instances' idle alarms.

Every few seconds each alarm on ``AWS/EC2 CPUUtilization`` is evaluated over its last
EvaluationPeriods x Period (the Period written in the alarm: the local cloud writes short ones,
see custom.localCloud in serverless.yml), honouring ComparisonOperator, Threshold and
TreatMissingData. A transition to ALARM carries out ``arn:aws:automate:<region>:ec2:terminate``.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from localcloud.driver import Context

_COMPARE = {
    "GreaterThanOrEqualToThreshold": lambda v, t: v >= t,
    "GreaterThanThreshold": lambda v, t: v > t,
    "LessThanThreshold": lambda v, t: v < t,
    "LessThanOrEqualToThreshold": lambda v, t: v <= t,
}


def evaluate(alarm: dict[str, Any], datapoints: list[float | None]) -> str:
    """ALARM, OK or INSUFFICIENT_DATA for one alarm, given one value per period, oldest first
    (None where the period had no data)."""
    periods = int(alarm["EvaluationPeriods"])
    needed = int(alarm.get("DatapointsToAlarm") or periods)
    window = (datapoints + [None] * periods)[:periods] if len(datapoints) < periods else datapoints[-periods:]
    compare = _COMPARE[alarm["ComparisonOperator"]]
    missing = alarm.get("TreatMissingData") or "missing"
    breaching = 0
    present = 0
    for value in window:
        if value is None:
            if missing == "breaching":
                breaching += 1
            continue
        present += 1
        breaching += compare(value, float(alarm["Threshold"]))
    if breaching >= needed:
        return "ALARM"
    if present == 0 and missing in ("missing", "ignore"):
        return "INSUFFICIENT_DATA"
    return "OK"


class AlarmEvaluator:
    name = "alarms"

    def __init__(self, *, every_s: float | None = None) -> None:
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.terminated: list[str] = []

    def start(self, ctx: Context) -> None:
        self.ctx = ctx
        self.every_s = self._every_s or float((ctx.settings.get("alarms") or {}).get("evaluateSeconds", 1))
        self.cloudwatch = ctx.client("cloudwatch")
        self.ec2 = ctx.client("ec2")
        self._thread = threading.Thread(target=self._loop, name="alarms", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.evaluate_all()
            except Exception as err:  # noqa: BLE001 - a driver must keep going
                self.ctx.say(f"alarms: {err!r}")

    def evaluate_all(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        alarms = self.cloudwatch.describe_alarms(AlarmTypes=["MetricAlarm"]).get("MetricAlarms", [])
        for alarm in alarms:
            if alarm.get("Namespace") != "AWS/EC2" or alarm.get("MetricName") != "CPUUtilization":
                continue
            state = evaluate(alarm, self._datapoints(alarm, now))
            if state == alarm.get("StateValue"):
                continue
            self.cloudwatch.set_alarm_state(
                AlarmName=alarm["AlarmName"], StateValue=state, StateReason=f"local cloud evaluation: {state}"
            )
            self.ctx.say(f"alarm {alarm['AlarmName']}: {alarm.get('StateValue')} -> {state}")
            if state == "ALARM" and alarm.get("ActionsEnabled", True):
                self._act(alarm)

    def _datapoints(self, alarm: dict[str, Any], now: datetime) -> list[float | None]:
        period = int(alarm["Period"])
        periods = int(alarm["EvaluationPeriods"])
        start = now - timedelta(seconds=period * periods)
        stats = self.cloudwatch.get_metric_statistics(
            Namespace=alarm["Namespace"],
            MetricName=alarm["MetricName"],
            Dimensions=alarm.get("Dimensions", []),
            StartTime=start,
            EndTime=now,
            Period=period,
            Statistics=[alarm.get("Statistic") or "Average"],
        )
        values: list[float | None] = [None] * periods
        statistic = alarm.get("Statistic") or "Average"
        for point in stats.get("Datapoints", []):
            index = int((point["Timestamp"] - start).total_seconds() // period)
            if 0 <= index < periods:
                values[index] = float(point[statistic])
        return values

    def _act(self, alarm: dict[str, Any]) -> None:
        for action in alarm.get("AlarmActions", []):
            if not (action.startswith("arn:aws:automate:") and action.endswith(":ec2:terminate")):
                continue
            for dim in alarm.get("Dimensions", []):
                if dim["Name"] == "InstanceId":
                    self.ec2.terminate_instances(InstanceIds=[dim["Value"]])
                    self.terminated.append(dim["Value"])
                    self.ctx.say(f"alarm {alarm['AlarmName']}: terminated idle instance {dim['Value']}")
