"""The idle backstop: the alarm's request, the event its Lambda action delivers, and who may
invoke the train function - without AWS."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from lambdas import train
from lambdas.core import launch
from localcloud import alarms, infra

REGION, ACCOUNT = "eu-west-1", "111122223333"
TRAIN_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:autoretrain-qa-train"
VERSION = "v20261123T091432Z-1a2b"


def settings(**overrides: Any) -> launch.LaunchSettings:
    fields: dict[str, Any] = {
        "region": REGION,
        "stage": "qa",
        "ami_id": "ami-1",
        "instance_type": "c5.large",
        "instance_profile_arn": f"arn:aws:iam::{ACCOUNT}:instance-profile/p",
        "subnet_id": None,
        "security_group_id": None,
        "spot_fallback_on_demand": True,
        "alarm_period_s": 60,
        "alarm_evaluation_periods": 2,
        "alarm_cpu_threshold": 5.0,
        "alarm_function_arn": TRAIN_ARN,
    }
    return launch.LaunchSettings(**{**fields, **overrides})


def test_idle_alarm_request_is_metric_math_that_invokes_the_train_function() -> None:
    request = launch.idle_alarm_request(settings(alarm_cpu_threshold=2.5), VERSION, "i-0abc")
    assert request["AlarmName"] == f"autoretrain-qa-train-{VERSION}"
    assert request["AlarmActions"] == [TRAIN_ARN]  # no EC2 action: metric math cannot have one
    assert not any(a.startswith("arn:aws:automate:") for a in request["AlarmActions"])
    assert [q["ReturnData"] for q in request["Metrics"]] == [False, False, True]
    assert request["Metrics"][2]["Expression"] == "IF(FILL(beats, 0) == 0 AND cpu < 2.5, 1, 0)"
    assert (request["Threshold"], request["ComparisonOperator"]) == (1.0, "GreaterThanOrEqualToThreshold")
    assert request["TreatMissingData"] == "notBreaching"
    assert "Namespace" not in request and "Tags" not in request


@pytest.mark.parametrize(
    ("beats", "cpu", "state"),
    [
        ([None, None], [1.0, 2.0], "ALARM"),  # silent and idle for the whole window: dead
        ([3.0, 3.0], [0.5, 0.5], "OK"),  # idle but beating (blocked on I/O): spared
        ([None, None], [80.0, 1.0], "OK"),  # silent but busy for part of the window
        ([None, None], [None, None], "OK"),  # booting: no CPU datapoint yet, not breaching
    ],
)
def test_idle_alarm_request_takes_only_a_silent_idle_instance(beats, cpu, state: str) -> None:
    request = launch.idle_alarm_request(settings(), VERSION, "i-0abc")
    values = alarms.evaluate_queries(request["Metrics"], {"cpu": cpu, "beats": beats})
    assert alarms.evaluate({**request, "Period": 60}, values) == state


def test_alarm_version_reads_only_this_stages_run_alarms() -> None:
    assert launch.alarm_version("qa", launch.alarm_name("qa", VERSION)) == VERSION
    assert launch.alarm_version("qa", launch.alarm_name("prod", VERSION)) is None
    assert launch.alarm_version("qa", "autoretrain-qa-train-") is None
    assert launch.alarm_version("qa", "something-else") is None


def local_event(state: str = "ALARM", previous: str = "OK") -> dict[str, Any]:
    """The event the local evaluator sends, shaped as CloudWatch's (localcloud/alarms.py)."""
    request = launch.idle_alarm_request(settings(), VERSION, "i-0abc")
    alarm = {**request, "StateValue": previous, "AlarmArn": f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:x"}
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return alarms.alarm_event(alarm, state, "test", account=ACCOUNT, region=REGION, now=now)


def test_alarm_change_reads_the_event_cloudwatch_sends() -> None:
    event = local_event()
    assert event["source"] == "aws.cloudwatch" and event["time"] == "2026-01-02T03:04:05.000+0000"
    assert train.alarm_change(event) == train.AlarmChange(
        name=f"autoretrain-qa-train-{VERSION}", state="ALARM", previous="OK", instance_ids=("i-0abc",)
    )


def test_alarm_change_reads_the_documented_metric_alarm_example() -> None:
    # CloudWatch User Guide, "Invoke a Lambda function from an alarm": the metric alarm example
    # (abridged; dimensions are an object there, not a list of Name/Value pairs).
    event = {
        "source": "aws.cloudwatch",
        "alarmArn": "arn:aws:cloudwatch:us-east-1:444455556666:alarm:lambda-demo-metric-alarm",
        "accountId": "444455556666",
        "time": "2023-08-04T12:36:15.490+0000",
        "region": "us-east-1",
        "alarmData": {
            "alarmName": "lambda-demo-metric-alarm",
            "state": {"value": "ALARM", "reason": "test", "timestamp": "2023-08-04T12:36:15.490+0000"},
            "previousState": {"value": "INSUFFICIENT_DATA", "reason": "Insufficient Data"},
            "configuration": {
                "description": "Metric Alarm to test Lambda actions",
                "metrics": [
                    {
                        "id": "1234e046-06f0-a3da-9534-EXAMPLEe4c",
                        "metricStat": {
                            "metric": {
                                "namespace": "AWS/Logs",
                                "name": "CallCount",
                                "dimensions": {"InstanceId": "i-12345678"},
                            },
                            "period": 60,
                            "stat": "Average",
                            "unit": "Percent",
                        },
                        "returnData": True,
                    }
                ],
            },
        },
    }
    change = train.alarm_change(event)
    assert change == train.AlarmChange(
        "lambda-demo-metric-alarm", "ALARM", "INSUFFICIENT_DATA", ("i-12345678",)
    )


@pytest.mark.parametrize(
    "event",
    [
        {"Records": []},
        {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}},
        {"source": "aws.ec2", "detail-type": train.EC2_STATE_CHANGE, "detail": {"instance-id": "i-1"}},
        {"source": "aws.cloudwatch"},
        {"source": "aws.cloudwatch", "alarmData": {"alarmName": "a"}},
        {"source": "aws.cloudwatch", "alarmData": {"state": {"value": "ALARM"}}},
    ],
)
def test_alarm_change_is_none_for_other_events(event: dict[str, Any]) -> None:
    assert train.alarm_change(event) is None


def test_infra_lets_only_this_stages_run_alarms_invoke_the_train_function() -> None:
    stack = infra.load(stage="qa", region=REGION, account=ACCOUNT)
    env = stack.function_environment("train")
    assert env["TRAIN_FUNCTION_ARN"] == TRAIN_ARN
    alarm = f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{launch.alarm_name('qa', VERSION)}"
    assert alarms.lambda_permitted(stack, "train", alarm)
    assert not alarms.lambda_permitted(stack, "train", alarm.replace(ACCOUNT, "999999999999"))
    assert not alarms.lambda_permitted(stack, "train", alarm.replace("autoretrain-qa-", "autoretrain-prod-"))
    assert not alarms.lambda_permitted(stack, "upload", alarm)


def test_local_evaluator_reads_only_completed_periods() -> None:
    # 10:00:07 with 3 s periods: 10:00:06-07 is still filling and must not count (it flapped).
    now = datetime(2026, 1, 1, 10, 0, 7, 500000, tzinfo=UTC)
    assert alarms.completed_window(now, 3, 2) == (
        datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC),
        datetime(2026, 1, 1, 10, 0, 6, tzinfo=UTC),
    )
