"""The local cloud's instance runner and alarm evaluator against a moto server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from localcloud import alarms, infra, instances, streams
from localcloud.driver import Context

EVENTS = Path(__file__).resolve().parents[1] / "events"


@pytest.fixture
def ctx(tmp_path: Path, moto_server: str) -> Iterator[Context]:
    said: list[str] = []
    invoked: list[tuple[str, dict[str, Any]]] = []
    context = Context(
        stack=infra.load(stage="test"),
        aws_endpoint=moto_server,
        api_url="http://127.0.0.1:1",
        state_dir=tmp_path / "state",
        invoke=lambda name, event: invoked.append((name, event)),
        say=said.append,
    )
    context.said = said  # type: ignore[attr-defined]
    context.invoked = invoked  # type: ignore[attr-defined]
    yield context


def launch(ctx: Context, user_data: str = "#!/bin/bash\nsleep 600\n", profile_arn: str | None = None) -> str:
    extra: dict[str, Any] = {"IamInstanceProfile": {"Arn": profile_arn}} if profile_arn else {}
    return ctx.client("ec2").run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        UserData=user_data,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "service", "Value": "autoretrain"}]}
        ],
        **extra,
    )["Instances"][0]["InstanceId"]


def idle_alarm(ctx: Context, instance_id: str, period: int = 2) -> None:
    ctx.client("cloudwatch").put_metric_alarm(
        AlarmName=f"idle-{instance_id}",
        Namespace="AWS/EC2",
        MetricName="CPUUtilization",
        Dimensions=[{"Name": "InstanceId", "Value": instance_id}],
        Statistic="Average",
        Period=period,
        EvaluationPeriods=2,
        Threshold=5.0,
        ComparisonOperator="LessThanThreshold",
        TreatMissingData="notBreaching",
        AlarmActions=["arn:aws:automate:us-east-1:ec2:terminate"],
    )


def report_cpu(ctx: Context, instance_id: str, value: float, ago_s: float) -> None:
    from datetime import UTC, datetime, timedelta

    ctx.client("cloudwatch").put_metric_data(
        Namespace="AWS/EC2",
        MetricData=[
            {
                "MetricName": "CPUUtilization",
                "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
                "Value": value,
                "Unit": "Percent",
                "Timestamp": datetime.now(UTC) - timedelta(seconds=ago_s),
            }
        ],
    )


def state(ctx: Context, instance_id: str) -> str:
    reply = ctx.client("ec2").describe_instances(InstanceIds=[instance_id])
    return reply["Reservations"][0]["Instances"][0]["State"]["Name"]


@pytest.mark.parametrize(
    ("points", "missing", "expected"),
    [
        ([1.0, 2.0], "notBreaching", "ALARM"),
        ([1.0, 50.0], "notBreaching", "OK"),
        ([None, None], "notBreaching", "OK"),
        ([None, None], "missing", "INSUFFICIENT_DATA"),
        ([None, 1.0], "breaching", "ALARM"),
    ],
)
def test_alarm_evaluate_follows_threshold_and_missing_data(
    points: list[Any], missing: str, expected: str
) -> None:
    alarm = {
        "EvaluationPeriods": 2,
        "Threshold": 5.0,
        "ComparisonOperator": "LessThanThreshold",
        "TreatMissingData": missing,
    }
    assert alarms.evaluate(alarm, points) == expected


@pytest.mark.slow
def test_alarm_evaluator_terminates_an_idle_instance_and_spares_a_busy_one(ctx: Context) -> None:
    idle, busy = launch(ctx), launch(ctx)
    for instance_id in (idle, busy):
        idle_alarm(ctx, instance_id, period=10)
    for ago in (15, 5):
        report_cpu(ctx, idle, 0.5, ago)
        report_cpu(ctx, busy, 80.0, ago)
    evaluator = alarms.AlarmEvaluator(every_s=0.2)
    evaluator.start(ctx)
    deadline = time.time() + 20
    while state(ctx, idle) not in ("shutting-down", "terminated") and time.time() < deadline:
        time.sleep(0.2)
    evaluator.stop()
    assert state(ctx, idle) in ("shutting-down", "terminated")
    assert state(ctx, busy) == "running"
    assert evaluator.terminated == [idle]
    states = {
        a["AlarmName"]: a["StateValue"] for a in ctx.client("cloudwatch").describe_alarms()["MetricAlarms"]
    }
    assert states == {f"idle-{idle}": "ALARM", f"idle-{busy}": "OK"}


@pytest.mark.slow
def test_instance_runner_runs_user_data_reports_cpu_and_serves_imds(ctx: Context, tmp_path: Path) -> None:
    marker = tmp_path / "imds.txt"
    # Only the AMI's commands (localcloud/ami.py): curl, not python3; a bash busy loop for CPU.
    script = (
        "#!/bin/bash\nset -euo pipefail\n"
        "token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "
        '"$LOCALCLOUD_IMDS_ENDPOINT/latest/api/token")\n'
        'curl -sf -H "X-aws-ec2-metadata-token: $token" '
        f'"$LOCALCLOUD_IMDS_ENDPOINT/latest/meta-data/instance-id" > {marker}\n'
        'end=$((SECONDS + 3)); while [ "$SECONDS" -lt "$end" ]; do :; done\n'
        "shutdown -h now\n"
    )
    instance_id = launch(ctx, script)
    runner = instances.InstanceRunner(poll_s=0.2, metric_period_s=0.5)
    runner.start(ctx)
    deadline = time.time() + 30
    while instance_id not in runner.exit_codes and time.time() < deadline:
        time.sleep(0.2)
    runner.stop()
    assert runner.exit_codes[instance_id] == 0
    assert marker.read_text().strip() == instance_id
    assert state(ctx, instance_id) in ("shutting-down", "terminated")
    states = [e["detail"]["state"] for _, e in ctx.invoked]  # type: ignore[attr-defined]
    assert states == ["shutting-down", "terminated"]  # its own shutdown is reported like any other
    from datetime import UTC, datetime, timedelta

    stats = ctx.client("cloudwatch").get_metric_statistics(
        Namespace="AWS/EC2",
        MetricName="CPUUtilization",
        Dimensions=[{"Name": "InstanceId", "Value": instance_id}],
        StartTime=datetime.now(UTC) - timedelta(minutes=5),
        EndTime=datetime.now(UTC) + timedelta(minutes=1),
        Period=60,
        Statistics=["Maximum"],
    )
    assert max(p["Maximum"] for p in stats["Datapoints"]) > 20  # the busy loop showed up


def wait_for(runner: instances.InstanceRunner, instance_id: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while instance_id not in runner.exit_codes and time.time() < deadline:
        time.sleep(0.2)


@pytest.mark.slow
def test_instance_runner_gives_the_trainer_the_instance_role_through_imds(
    ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on EC2: no keys anywhere; botocore's chain in the trainer's process finds the role's
    credentials (IMDSv2) that the runner obtained with STS AssumeRole for the instance profile."""
    from lambdas.core import userdata

    found = tmp_path / "credentials.json"
    trainer = tmp_path / "trainer.py"
    trainer.write_text(
        "import json, os, botocore.session\n"
        "c = botocore.session.get_session().get_credentials()\n"
        "f = c.get_frozen_credentials()\n"
        f"json.dump({{'method': c.method, 'key': f.access_key, 'secret': f.secret_key, 'token': f.token,"
        f" 'env': sorted(os.environ)}}, open({str(found)!r}, 'w'))\n"
    )
    monkeypatch.setenv(instances.TRAINER_CMD_ENV, f"python3 {trainer}")
    runner = instances.InstanceRunner(poll_s=0.2, metric_period_s=0.5)
    runner.start(ctx)
    [profile] = ctx.stack.resources_of_type("AWS::IAM::InstanceProfile")
    script = userdata.render(
        region="us-east-1",
        image="123456789012.dkr.ecr.us-east-1.amazonaws.com/autoretrain-test-trainer:latest",
        time_limit_s=60,
        run_version="v1",
        environment={"RUN_VERSION": "v1"},
        install_retry_s=0,
    )
    ecr = ctx.client("ecr")  # the trainer image, as `make image` pushes it
    ecr.create_repository(repositoryName="autoretrain-test-trainer")
    ecr.put_image(
        repositoryName="autoretrain-test-trainer", imageManifest=infra.trainer_manifest(), imageTag="latest"
    )
    instance_id = launch(ctx, script, profile_arn=ctx.stack.arns[f"{profile}.Arn"])
    wait_for(runner, instance_id, 60)
    assert runner.imds is not None
    role_name, served = runner.imds.roles[instance_id]
    runner.stop()
    assert runner.exit_codes[instance_id] == 0
    got = json.loads(found.read_text())
    assert got["method"] == "iam-role"
    assert (got["key"], got["secret"], got["token"]) == (
        served["AccessKeyId"],
        served["SecretAccessKey"],
        served["Token"],
    )
    assert served["Code"] == "Success" and served["Type"] == "AWS-HMAC" and served["Expiration"]
    assert served["AccessKeyId"] != "testing"  # STS's, not the local cloud's admin key
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED"} & set(got["env"])
    role = ctx.client("iam").get_instance_profile(InstanceProfileName=ctx.stack.physical[profile])
    assert role_name == role["InstanceProfile"]["Roles"][0]["RoleName"]


@pytest.mark.slow
def test_instance_runner_kills_the_work_of_an_instance_terminated_from_outside(
    ctx: Context, tmp_path: Path
) -> None:
    instance_id = launch(ctx, f"#!/bin/bash\nsleep 300\ntouch {tmp_path / 'survived'}\n")
    runner = instances.InstanceRunner(poll_s=0.2, metric_period_s=0.3)
    runner.start(ctx)
    time.sleep(1.5)
    ctx.client("ec2").terminate_instances(InstanceIds=[instance_id])
    deadline = time.time() + 15
    while instance_id not in runner.exit_codes and time.time() < deadline:
        time.sleep(0.2)
    runner.stop()
    assert runner.exit_codes[instance_id] != 0
    assert not (tmp_path / "survived").exists()
    assert any("terminated from outside" in line for line in ctx.said)  # type: ignore[attr-defined]
    assert [(name, e["detail"]) for name, e in ctx.invoked] == [  # type: ignore[attr-defined]
        ("train", {"instance-id": instance_id, "state": "shutting-down"}),
        ("train", {"instance-id": instance_id, "state": "terminated"}),
    ]


def test_instance_state_change_event_is_shaped_like_eventbridges() -> None:
    canned = json.loads((EVENTS / "eventbridge_instance_terminated.json").read_text())
    event = instances.state_change_event(
        "i-0abcd1234efgh5678", "terminated", account="123456789012", region="us-east-1"
    )
    assert set(event) == set(canned)
    assert {k: event[k] for k in ("version", "source", "detail-type", "account", "region")} == {
        k: canned[k] for k in ("version", "source", "detail-type", "account", "region")
    }
    assert event["resources"] == canned["resources"] and event["detail"] == canned["detail"]
    assert datetime.strptime(event["time"], "%Y-%m-%dT%H:%M:%SZ")


def test_instance_event_rules_come_from_the_stack_and_match_only_endings() -> None:
    rules = instances.event_rules(infra.load(stage="test"))
    assert [name for name, _ in rules] == ["train"]
    [(_, pattern)] = rules
    for state, expected in [("terminated", True), ("shutting-down", True), ("running", False)]:
        event = instances.state_change_event("i-1", state, account="1", region="us-east-1")
        assert streams.matches(pattern, event) is expected
    other = {**instances.state_change_event("i-1", "terminated", account="1", region="us-east-1")}
    other["source"] = "aws.autoscaling"
    assert not streams.matches(pattern, other)


@pytest.mark.slow
def test_instance_runner_sends_no_event_when_the_user_data_exits_without_shutdown(ctx: Context) -> None:
    instance_id = launch(ctx, "#!/bin/bash\nexit 3\n")
    runner = instances.InstanceRunner(poll_s=0.2, metric_period_s=0.3)
    runner.start(ctx)
    deadline = time.time() + 15
    while instance_id not in runner.exit_codes and time.time() < deadline:
        time.sleep(0.2)
    runner.stop()
    assert runner.exit_codes[instance_id] == 3
    assert state(ctx, instance_id) == "running" and ctx.invoked == []  # type: ignore[attr-defined]


# --- the idle backstop on metric math: heartbeat AND cpu, with the instance runner ----------

# A stand-in trainer: beats through trainer/heartbeat.py as the instance, enters the scan
# phase (budget SCAN_BUDGET_S) and blocks in it without CPU for BLOCK_S seconds.
BEATING_TRAINER = """#!/bin/bash
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL="$LOCALCLOUD_AWS_ENDPOINT" PYTHONPATH="$LOCALCLOUD_ROOT"
exec {python} -c '
import os, time
from trainer import heartbeat
iid = os.environ["LOCALCLOUD_INSTANCE_ID"]
beat = heartbeat.Heartbeat(iid, period_s={period}, budgets={{"scan": {budget}}})
beat.start()
beat.enter("scan")
time.sleep({block})
'
"""


def dead_alarm(ctx: Context, instance_id: str, period: int) -> str:
    """The backstop as metric math: dead = no heartbeat AND idle CPU, for 2 periods."""

    def stat(query_id: str, namespace: str, name: str, statistic: str) -> dict[str, Any]:
        metric = {
            "Namespace": namespace,
            "MetricName": name,
            "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
        }
        return {
            "Id": query_id,
            "MetricStat": {"Metric": metric, "Period": period, "Stat": statistic},
            "ReturnData": False,
        }

    name = f"dead-{instance_id}"
    ctx.client("cloudwatch").put_metric_alarm(
        AlarmName=name,
        Metrics=[
            stat("cpu", "AWS/EC2", "CPUUtilization", "Average"),
            stat("beats", "autoretrain/Trainer", "Heartbeat", "Sum"),
            {"Id": "dead", "Expression": "IF(FILL(beats, 0) == 0 AND cpu < 5, 1, 0)", "ReturnData": True},
        ],
        EvaluationPeriods=2,
        Threshold=1.0,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="notBreaching",
        AlarmActions=["arn:aws:automate:us-east-1:ec2:terminate"],
    )
    return name


@pytest.mark.slow
def test_dead_alarm_takes_a_hung_trainer_and_spares_a_slow_one_that_beats(ctx: Context) -> None:
    import sys

    period = 2  # a window of 2 periods: 4 s
    block = 6 * period  # the slow trainer blocks for 3 windows, within its phase's budget
    hung = launch(ctx, "#!/bin/bash\nsleep 600\n")  # no heartbeat at all
    stuck = launch(ctx, BEATING_TRAINER.format(python=sys.executable, period=period, budget=1, block=600))
    slow = launch(ctx, BEATING_TRAINER.format(python=sys.executable, period=period, budget=60, block=block))
    names = {dead_alarm(ctx, i, period): i for i in (hung, stuck, slow)}
    runner = instances.InstanceRunner(poll_s=0.2, metric_period_s=0.5)
    evaluator = alarms.AlarmEvaluator(every_s=0.5)
    runner.start(ctx)
    evaluator.start(ctx)
    seen: dict[str, set[str]] = {i: set() for i in names.values()}
    try:
        deadline = time.time() + block + 4
        while time.time() < deadline:
            for alarm in ctx.client("cloudwatch").describe_alarms(AlarmNames=list(names))["MetricAlarms"]:
                seen[names[alarm["AlarmName"]]].add(alarm["StateValue"])
            time.sleep(0.25)
    finally:
        evaluator.stop()
        runner.stop()
    assert "ALARM" in seen[hung]  # never beat, idle: dead within the window
    assert "ALARM" in seen[stuck]  # stuck past its phase's budget: its beats stopped
    assert "ALARM" not in seen[slow] and "OK" in seen[slow]  # blocked 3 windows, but beating
    # AWS: alarms on math expressions cannot perform EC2 actions (localcloud/alarms.py): the
    # action is refused, loudly, and the instances still run.
    assert set(evaluator.refused) == {f"dead-{hung}", f"dead-{stuck}"}
    assert evaluator.terminated == []
    assert any("REFUSED" in line for line in ctx.said)  # type: ignore[attr-defined]
