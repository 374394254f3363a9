"""The train trigger against moto: what it launches, and that it launches only once."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from lambdas import train
from lambdas.core import launch, lock, registry
from lambdas.core.errors import Unavailable
from localcloud import infra
from tests.conftest import subscribe_inbox
from tests.support.trigger import TRAIN_ARN, train_settings


@pytest.fixture
def cfg(stack: infra.Stack, monkeypatch: pytest.MonkeyPatch) -> train.TrainSettings:
    return train_settings(stack, monkeypatch)


def data_record(cfg: train.TrainSettings, sample_id: str, seq: int, *, event: str = "INSERT", ingested=None):
    ingested = int(time.time() * 1000) if ingested is None else ingested
    image = {
        "id": {"S": sample_id},
        "temp": {"N": "70"},
        "label": {"S": "ok"},
        "ingested": {"N": str(ingested)},
    }
    return {
        "eventID": f"e{seq}",
        "eventName": event,
        "eventSource": "aws:dynamodb",
        "eventSourceARN": f"arn:aws:dynamodb:us-east-1:123456789012:table/{cfg.data_table}/stream/2026",
        "dynamodb": {"Keys": {"id": {"S": sample_id}}, "NewImage": image, "SequenceNumber": f"{seq:021d}"},
    }


def run_record(cfg: train.TrainSettings, version: str, status: str, seq: int = 1):
    image = {"pk": {"S": version}, "kind": {"S": "run"}, "version": {"S": version}, "status": {"S": status}}
    return {
        "eventID": f"m{seq}",
        "eventName": "MODIFY",
        "eventSourceARN": f"arn:aws:dynamodb:us-east-1:123456789012:table/{cfg.model_table}/stream/2026",
        "dynamodb": {"Keys": {"pk": {"S": version}}, "NewImage": image, "SequenceNumber": f"{seq:021d}"},
    }


def batch(cfg, ids: list[str], start: int = 1) -> dict[str, Any]:
    return {"Records": [data_record(cfg, i, start + n) for n, i in enumerate(ids)]}


def instances() -> list[dict[str, Any]]:
    reply = boto3.client("ec2").describe_instances(
        Filters=[{"Name": "tag:service", "Values": ["autoretrain"]}]
    )
    return [i for r in reply["Reservations"] for i in r["Instances"]]


def alarm_names() -> list[str]:
    return [a["AlarmName"] for a in boto3.client("cloudwatch").describe_alarms()["MetricAlarms"]]


class Recorder:
    """A fake client that records every call and answers from canned replies."""

    def __init__(self, replies: dict[str, list[Any]] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.replies = replies or {}

    def __getattr__(self, name: str):
        def call(**kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            reply = self.replies.get(name, [{}]).pop(0) if self.replies.get(name) else {}
            if isinstance(reply, Exception):
                raise reply
            return reply

        return call


def capacity_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "no capacity"}}, "RunInstances")


def test_launch_makes_exactly_these_ec2_and_cloudwatch_calls(cfg: train.TrainSettings) -> None:
    ec2 = Recorder({"run_instances": [{"Instances": [{"InstanceId": "i-0abc"}]}]})
    cloudwatch = Recorder()
    decision = train.process(
        batch(cfg, ["a", "b", "c"])["Records"], cfg, train.Clients(boto3.client("dynamodb"), ec2, cloudwatch)
    )
    version = decision.launch
    assert version and registry.is_version(version)
    [(name, request)] = ec2.calls
    assert name == "run_instances"
    user_data = request.pop("UserData")
    tags = [
        {"Key": "service", "Value": "autoretrain"},
        {"Key": "stage", "Value": "test"},
        {"Key": "run_version", "Value": version},
        {"Key": "Name", "Value": f"autoretrain-test-train-{version}"},
    ]
    assert request == {
        "ImageId": "ami-12c6146b",
        "InstanceType": "c5.large",
        "MinCount": 1,
        "MaxCount": 1,
        "IamInstanceProfile": {"Arn": cfg.launch.instance_profile_arn},
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {
            "HttpTokens": "required",
            "HttpEndpoint": "enabled",
            "HttpPutResponseHopLimit": 2,
        },
        "Monitoring": {"Enabled": True},
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
        "InstanceMarketOptions": {
            "MarketType": "spot",
            "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
        },
    }
    assert f"-e RUN_VERSION={version}" in user_data and "-e EPOCHS=5" in user_data
    [(name, alarm)] = cloudwatch.calls
    assert name == "put_metric_alarm"
    dimensions = [{"Name": "InstanceId", "Value": "i-0abc"}]
    assert alarm == {
        "AlarmName": f"autoretrain-test-train-{version}",
        "AlarmDescription": f"terminates the training instance of run {version} when it is idle and silent",
        "Metrics": [
            {
                "Id": "cpu",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/EC2",
                        "MetricName": "CPUUtilization",
                        "Dimensions": dimensions,
                    },
                    "Period": 60,
                    "Stat": "Average",
                },
                "ReturnData": False,
            },
            {
                "Id": "beats",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "autoretrain/Trainer",
                        "MetricName": "Heartbeat",
                        "Dimensions": dimensions,
                    },
                    "Period": 60,
                    "Stat": "Sum",
                },
                "ReturnData": False,
            },
            {"Id": "dead", "Expression": "IF(FILL(beats, 0) == 0 AND cpu < 5, 1, 0)", "ReturnData": True},
        ],
        "EvaluationPeriods": 2,
        "DatapointsToAlarm": 2,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
        # Metric math cannot perform EC2 actions: the train function terminates the instance.
        "AlarmActions": [TRAIN_ARN],
    }
    run = registry.Registry(cfg.model_table).get_run(version)
    assert run["status"] == "training" and run["instance_id"] == "i-0abc" and run["market"] == "spot"
    assert run["hyperparameters"] == {"EPOCHS": "5", "SEED": "7"}


@pytest.mark.parametrize("code", sorted(launch.SPOT_CAPACITY_ERRORS))
def test_launch_falls_back_to_on_demand_when_spot_has_no_capacity(cfg, code: str) -> None:
    ec2 = Recorder({"run_instances": [capacity_error(code), {"Instances": [{"InstanceId": "i-0od"}]}]})
    assert launch.launch_instance(cfg.launch, "v20261123T091432Z-1a2b", "#!/bin/bash\n", ec2=ec2) == (
        "i-0od",
        "on-demand",
    )
    first, second = (kwargs for _, kwargs in ec2.calls)
    assert "InstanceMarketOptions" in first and "InstanceMarketOptions" not in second


def test_launch_failure_marks_the_run_failed_and_gives_the_lock_back(cfg) -> None:
    ec2 = Recorder({"run_instances": [capacity_error("InsufficientInstanceCapacity")] * 2})
    clients = train.Clients(boto3.client("dynamodb"), ec2, Recorder())
    with pytest.raises(
        Unavailable, match="could not launch a training instance: InsufficientInstanceCapacity"
    ):
        train.process(batch(cfg, ["d", "e", "f"], 10)["Records"], cfg, clients)
    state = lock.LockStore(cfg.model_table).read()
    assert state.holder is None and state.pending_ids == ("d", "e", "f") and state.last_launch_at == 0
    failed = [r for r in registry.Registry(cfg.model_table).list_runs()[0] if r["status"] == "failed"]
    assert len(failed) == 1 and "InsufficientInstanceCapacity" in failed[0]["reason"]


def test_trigger_waits_for_enough_new_samples(cfg) -> None:
    assert train.handler(batch(cfg, ["a", "b"])) == {"batchItemFailures": []}
    assert instances() == []
    assert lock.LockStore(cfg.model_table).read().pending_ids == ("a", "b")


@pytest.mark.parametrize("event", ["MODIFY", "REMOVE"])
def test_trigger_does_not_count_changes_as_new_samples(cfg, event: str) -> None:
    train.handler({"Records": [data_record(cfg, f"s{i}", i, event=event) for i in range(5)]})
    assert instances() == [] and lock.LockStore(cfg.model_table).read().pending == 0


def test_trigger_replayed_batches_launch_one_instance(cfg) -> None:
    event = batch(cfg, ["a", "b", "c"])
    for _ in range(4):
        assert train.handler(event) == {"batchItemFailures": []}
    assert len(instances()) == 1
    version = lock.LockStore(cfg.model_table).read().holder
    # the run finishes; the same records replayed afterwards are not new data
    train.handler({"Records": [run_record(cfg, str(version), "published")]})
    for _ in range(3):
        train.handler(event)
    assert len(instances()) == 1
    assert lock.LockStore(cfg.model_table).read().holder is None


def test_trigger_concurrent_batches_launch_one_instance(cfg) -> None:
    barrier = threading.Barrier(6)
    results: list[Any] = []

    def deliver(n: int) -> None:
        barrier.wait()
        results.append(train.handler(batch(cfg, [f"s{n}-{i}" for i in range(3)], n * 10)))

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(instances()) == 1
    assert len(registry.Registry(cfg.model_table).list_runs()[0]) == 1
    assert all(r == {"batchItemFailures": []} for r in results)


def test_trigger_data_during_a_run_is_picked_up_when_it_ends(cfg) -> None:
    train.handler(batch(cfg, ["a", "b", "c"]))
    first = lock.LockStore(cfg.model_table).read().holder
    train.handler(batch(cfg, ["d", "e", "f"], 10))
    assert len(instances()) == 1
    registry.Registry(cfg.model_table).update_run(str(first), status="published")
    train.handler({"Records": [run_record(cfg, str(first), "published")]})
    state = lock.LockStore(cfg.model_table).read()
    assert state.holder not in (None, first) and len(instances()) == 2
    assert f"autoretrain-test-train-{first}" not in alarm_names()
    assert alarm_names() == [f"autoretrain-test-train-{state.holder}"]


def test_trigger_respects_the_minimum_interval(cfg) -> None:
    slow = train.TrainSettings(**{**cfg.__dict__, "min_interval_s": 3600})
    clients = train.Clients.default()
    train.process(batch(cfg, ["a", "b", "c"])["Records"], slow, clients)
    version = lock.LockStore(cfg.model_table).read().holder
    decision = train.process(
        [run_record(cfg, str(version), "published")] + batch(cfg, ["d", "e", "f"], 10)["Records"],
        slow,
        clients,
    )
    assert decision.launch is None and "minimum" in str(decision.reason)
    assert len(instances()) == 1


def test_trigger_expired_lock_is_taken_over_and_its_run_failed(cfg) -> None:
    train.handler(batch(cfg, ["a", "b", "c"]))
    stale = lock.LockStore(cfg.model_table).read()
    later = time.time() + cfg.lock_ttl_s + 1
    decision = train.process(
        batch(cfg, ["d", "e", "f"], 10)["Records"], cfg, train.Clients.default(), now=later
    )
    assert decision.launch and decision.stale and decision.stale.holder == stale.holder
    old = registry.Registry(cfg.model_table).get_run(str(stale.holder))
    assert old["status"] == "failed" and "lock" in old["reason"]
    states = {i["InstanceId"]: i["State"]["Name"] for i in instances()}
    assert states[str(stale.instance_id)] in ("shutting-down", "terminated")
    assert alarm_names() == [f"autoretrain-test-train-{decision.launch}"]


def test_trigger_terminated_instance_frees_the_lock_before_expiry(cfg) -> None:
    train.handler(batch(cfg, ["a", "b", "c"]))
    stale = lock.LockStore(cfg.model_table).read()
    boto3.client("ec2").terminate_instances(InstanceIds=[str(stale.instance_id)])  # the idle alarm did it
    decision = train.process(batch(cfg, ["d", "e", "f"], 10)["Records"], cfg, train.Clients.default())
    assert decision.launch
    old = registry.Registry(cfg.model_table).get_run(str(stale.holder))
    assert old["status"] == "interrupted"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MIN_NEW_SAMPLES", "0", "MIN_NEW_SAMPLES must be >= 1"),
        ("MIN_NEW_SAMPLES", "2001", "MIN_NEW_SAMPLES must be at most 2,000"),
        ("TRAINER_IMAGE", "", "TRAINER_IMAGE is required"),
        ("TRAINER_SETTINGS", "EPOCHS", "KEY=VALUE"),
        ("INSTANCE_PROFILE_ARN", "", "INSTANCE_PROFILE_ARN is required"),
    ],
)
def test_train_settings_reject_bad_configuration(
    cfg, monkeypatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(Exception, match=message):
        train.TrainSettings.from_env()


def test_lock_item_holds_the_most_pending_samples_allowed_and_refuses_far_more(cfg) -> None:
    # DynamoDB (and moto) refuse an item over 400 KB: MAX_PENDING ids of 66 characters fit.
    store = lock.LockStore(cfg.model_table)
    samples = [(f"s-{i:064x}", 1_790_000_000_000 + i) for i in range(lock.MAX_PENDING * 4)]
    full = lock.add_samples(lock.LockState(), samples, cap=lock.MAX_PENDING)
    assert store.write(lock.LockState(), full)
    assert store.read().pending == lock.MAX_PENDING
    too_many = lock.add_samples(full, samples, cap=lock.MAX_PENDING * 4)
    with pytest.raises(ClientError, match="Item size"):
        store.write(store.read(), too_many)


# instance state changes (EventBridge) -------------------------------------------------------

EVENTS = Path(__file__).resolve().parents[1] / "events"


def state_change(instance_id: str, state: str = "terminated") -> dict[str, Any]:
    event = json.loads((EVENTS / "eventbridge_instance_terminated.json").read_text())
    event["detail"] = {"instance-id": instance_id, "state": state}
    event["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"]
    return event


@pytest.fixture
def inbox(cfg: train.TrainSettings) -> Any:
    """The notifications topic with a queue subscribed; returns (settings with the topic, read)."""
    topic = boto3.client("sns").create_topic(Name="train-trigger-test")["TopicArn"]
    read = subscribe_inbox(topic, "train-trigger-inbox")
    return dataclasses.replace(cfg, notify_topic_arn=topic), read


def running_run(cfg: train.TrainSettings) -> lock.LockState:
    """Launch one run through the stream path; its lock (holder, instance)."""
    train.process(batch(cfg, ["a", "b", "c"])["Records"], cfg, train.Clients.default())
    held = lock.LockStore(cfg.model_table).read()
    assert held.holder and held.instance_id
    return held


def test_instance_change_reads_the_canned_eventbridge_event() -> None:
    event = json.loads((EVENTS / "eventbridge_instance_terminated.json").read_text())
    assert train.instance_change(event) == ("i-0abcd1234efgh5678", "terminated")


@pytest.mark.parametrize(
    "event",
    [
        {"Records": []},
        {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}},
        {"source": "aws.ec2", "detail-type": "EC2 Spot Instance Interruption Warning", "detail": {}},
        {"source": "aws.ec2", "detail-type": train.EC2_STATE_CHANGE, "detail": {"state": "terminated"}},
        {"source": "aws.ec2", "detail-type": train.EC2_STATE_CHANGE, "detail": {"instance-id": "i-1"}},
    ],
)
def test_instance_change_is_none_for_other_events(event: dict[str, Any]) -> None:
    assert train.instance_change(event) is None


def test_instance_event_of_another_instance_changes_nothing(cfg) -> None:
    held = running_run(cfg)
    assert train.handler(state_change("i-0notours")) == {
        "instance_id": "i-0notours",
        "state": "terminated",
        "handled": False,
    }
    assert lock.LockStore(cfg.model_table).read() == held
    assert registry.Registry(cfg.model_table).get_run(str(held.holder))["status"] == "training"
    assert alarm_names() == [f"autoretrain-test-train-{held.holder}"]


def test_instance_event_without_a_run_in_flight_changes_nothing(cfg) -> None:
    assert train.instance_ended("i-0abc", "terminated", cfg, train.Clients.default()) is None
    assert lock.LockStore(cfg.model_table).read() == lock.LockState()
    assert instances() == [] and registry.Registry(cfg.model_table).list_runs()[0] == []


def test_instance_event_interrupts_a_run_still_training_and_frees_the_lock(cfg, inbox) -> None:
    cfg, read = inbox
    held = running_run(cfg)
    boto3.client("ec2").terminate_instances(InstanceIds=[str(held.instance_id)])  # the idle alarm
    change = train.instance_change(state_change(str(held.instance_id)))
    assert change is not None and train.instance_ended(*change, cfg, train.Clients.default())
    run = registry.Registry(cfg.model_table).get_run(str(held.holder))
    assert run["status"] == "interrupted"
    assert run["reason"] == "the instance was terminated before the trainer recorded an outcome"
    state = lock.LockStore(cfg.model_table).read()
    assert state.holder is None and state.instance_id is None
    assert alarm_names() == [] and len(instances()) == 1  # nothing pending: no new run
    [message] = read()
    assert {k: message[k] for k in ("type", "version", "status", "actor")} == {
        "type": "run_outcome",
        "version": held.holder,
        "status": "interrupted",
        "actor": "train-trigger",
    }


def test_instance_event_launches_the_retrain_pending_since_the_run_began(cfg) -> None:
    held = running_run(cfg)
    train.process(batch(cfg, ["d", "e", "f"], 10)["Records"], cfg, train.Clients.default())
    assert lock.LockStore(cfg.model_table).read().pending_ids == ("d", "e", "f")
    boto3.client("ec2").terminate_instances(InstanceIds=[str(held.instance_id)])
    decision = train.instance_ended(str(held.instance_id), "terminated", cfg, train.Clients.default())
    assert decision is not None and decision.launch
    assert decision.stale is not None and decision.stale.holder == held.holder
    state = lock.LockStore(cfg.model_table).read()
    assert state.holder == decision.launch and state.instance_id
    # The new run's samples stay pending while it runs (its own failure would keep them).
    assert state.pending_ids == ("d", "e", "f") and state.fresh(state.launch_ms) == 0
    assert registry.Registry(cfg.model_table).get_run(str(held.holder))["status"] == "interrupted"
    assert alarm_names() == [f"autoretrain-test-train-{decision.launch}"]
    assert len(instances()) == 2


def test_instance_event_repeated_or_out_of_order_is_harmless(cfg, inbox) -> None:
    cfg, read = inbox
    held = running_run(cfg)
    boto3.client("ec2").terminate_instances(InstanceIds=[str(held.instance_id)])
    clients = train.Clients.default()
    assert train.instance_ended(str(held.instance_id), "terminated", cfg, clients) is not None
    after = lock.LockStore(cfg.model_table).read()
    for state in ("terminated", "shutting-down", "terminated"):
        assert train.instance_ended(str(held.instance_id), state, cfg, clients) is None
    assert lock.LockStore(cfg.model_table).read() == after  # not even rewritten
    assert [m["status"] for m in read()] == ["interrupted"]
    assert len(instances()) == 1


def test_instance_event_after_the_run_finished_is_a_no_op(cfg, inbox) -> None:
    cfg, read = inbox
    held = running_run(cfg)
    registry.Registry(cfg.model_table).update_run(str(held.holder), status="published")
    train.process([run_record(cfg, str(held.holder), "published")], cfg, train.Clients.default())
    released = lock.LockStore(cfg.model_table).read()
    assert released.holder is None
    boto3.client("ec2").terminate_instances(InstanceIds=[str(held.instance_id)])  # its own shutdown
    assert train.handler(state_change(str(held.instance_id)))["handled"] is False
    assert lock.LockStore(cfg.model_table).read() == released
    assert registry.Registry(cfg.model_table).get_run(str(held.holder))["status"] == "published"
    assert read() == [] and alarm_names() == [] and len(instances()) == 1


def test_instance_event_before_the_model_stream_ends_the_run_the_same_way(cfg, inbox) -> None:
    cfg, read = inbox
    held = running_run(cfg)
    train.process(batch(cfg, ["d", "e", "f"], 10)["Records"], cfg, train.Clients.default())
    registry.Registry(cfg.model_table).update_run(str(held.holder), status="rejected")
    boto3.client("ec2").terminate_instances(InstanceIds=[str(held.instance_id)])
    decision = train.instance_ended(str(held.instance_id), "shutting-down", cfg, train.Clients.default())
    assert decision is not None and decision.stale is None and decision.launch
    assert registry.Registry(cfg.model_table).get_run(str(held.holder))["status"] == "rejected"
    # the model table's record of the same outcome arrives afterwards: nothing left to do
    late = train.process([run_record(cfg, str(held.holder), "rejected")], cfg, train.Clients.default())
    assert late.launch is None and lock.LockStore(cfg.model_table).read().holder == decision.launch
    assert alarm_names() == [f"autoretrain-test-train-{decision.launch}"]
    assert read() == [] and len(instances()) == 2


def test_instance_event_for_a_stopped_instance_terminates_it(cfg) -> None:
    held = running_run(cfg)
    boto3.client("ec2").stop_instances(InstanceIds=[str(held.instance_id)])
    assert train.instance_ended(str(held.instance_id), "stopped", cfg, train.Clients.default())
    run = registry.Registry(cfg.model_table).get_run(str(held.holder))
    assert run["status"] == "interrupted" and run["reason"].startswith("the instance was stopped")
    [instance] = instances()
    assert instance["State"]["Name"] in ("shutting-down", "terminated")
    assert lock.LockStore(cfg.model_table).read().holder is None and alarm_names() == []


def test_instance_event_of_a_running_instance_is_ignored(cfg) -> None:
    held = running_run(cfg)
    assert train.instance_ended(str(held.instance_id), "running", cfg, train.Clients.default()) is None
    assert lock.LockStore(cfg.model_table).read() == held


# launch safety: no instance without its alarm; spot refusals that on-demand does not share ---

SPOT_ROLE_NOT_PERMITTED = "AuthFailure.ServiceLinkedRoleCreationNotPermitted"


class FailingAlarms:
    """CloudWatch as the real (moto) client, except that creating an alarm raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.real = boto3.client("cloudwatch")
        self.error = error

    def put_metric_alarm(self, **kwargs: Any) -> Any:
        raise self.error

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def client_error(code: str, message: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


def access_denied() -> ClientError:
    # What PutMetricAlarm answers when the caller lacks cloudwatch:TagResource for its Tags.
    return client_error(
        "AccessDenied", "User is not authorized to perform: cloudwatch:TagResource", "PutMetricAlarm"
    )


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (access_denied(), "AccessDenied"),
        (client_error("Throttling", "Rate exceeded", "PutMetricAlarm"), "Throttling"),
        (RuntimeError("connection reset"), "RuntimeError"),
    ],
)
def test_alarm_failure_terminates_the_instance_and_fails_the_run(cfg, inbox, error, code: str) -> None:
    cfg, read = inbox
    clients = train.Clients(boto3.client("dynamodb"), boto3.client("ec2"), FailingAlarms(error))
    with pytest.raises(Unavailable, match=f"could not create the idle alarm.*{code}"):
        train.process(batch(cfg, ["a", "b", "c"])["Records"], cfg, clients)
    [instance] = instances()
    assert instance["State"]["Name"] in ("shutting-down", "terminated")
    [run] = registry.Registry(cfg.model_table).list_runs()[0]
    assert run["status"] == "failed" and run["instance_id"] == instance["InstanceId"]
    assert code in run["reason"] and "terminated" in run["reason"]
    state = lock.LockStore(cfg.model_table).read()
    assert state.holder is None and state.instance_id is None
    assert state.pending_ids == ("a", "b", "c") and state.last_launch_at == 0
    [message] = read()
    assert {k: message[k] for k in ("type", "version", "status", "actor")} == {
        "type": "run_outcome",
        "version": run["version"],
        "status": "failed",
        "actor": "train-trigger",
    }
    assert code in message["reason"]
    # the samples are still pending: once the retry's backoff is over, the next batch launches
    # again, this time with its alarm
    assert (
        state.failures == 1 and run["retry"]["attempt"] == 1 and message["failure_kind"] == "infrastructure"
    )
    later = time.time() + cfg.retry.delay_s(1)
    decision = train.process(batch(cfg, ["d"], 10)["Records"], cfg, train.Clients.default(), now=later)
    assert decision.launch and decision.launch != run["version"]
    running = [i for i in instances() if i["State"]["Name"] in ("pending", "running")]
    assert len(running) == 1 and alarm_names() == [f"autoretrain-test-train-{decision.launch}"]


def test_alarm_failure_keeps_the_lock_when_the_instance_cannot_be_terminated(cfg) -> None:
    """The instance may still run without its alarm: the lock stays held with it, so no second
    instance starts, and its expiry terminates it (see the expired-lock test above)."""
    ec2 = boto3.client("ec2")

    class NoTerminate:
        def __getattr__(self, name: str) -> Any:
            return getattr(ec2, name)

        def terminate_instances(self, **kwargs: Any) -> Any:
            raise client_error("InternalError", "try again later", "TerminateInstances")

    clients = train.Clients(boto3.client("dynamodb"), NoTerminate(), FailingAlarms(access_denied()))
    with pytest.raises(Unavailable, match="could not be terminated"):
        train.process(batch(cfg, ["a", "b", "c"])["Records"], cfg, clients)
    [instance] = instances()
    state = lock.LockStore(cfg.model_table).read()
    assert state.holder and state.instance_id == instance["InstanceId"]
    assert registry.Registry(cfg.model_table).get_run(state.holder)["status"] == "training"
    # the expired lock is taken over and the instance terminated
    later = time.time() + cfg.lock_ttl_s + 1
    train.process(batch(cfg, ["d", "e", "f"], 10)["Records"], cfg, train.Clients.default(), now=later)
    states = {i["InstanceId"]: i["State"]["Name"] for i in instances()}
    assert states[instance["InstanceId"]] in ("shutting-down", "terminated")


def spot_role_not_permitted() -> ClientError:
    # EC2's answer to the first spot request in an account when the caller may not create the
    # Spot service-linked role (AWSServiceRoleForEC2Spot).
    message = (
        "The provided credentials do not have permission to create the service-linked role "
        "for EC2 Spot Instances."
    )
    return client_error(SPOT_ROLE_NOT_PERMITTED, message, "RunInstances")


def test_launch_falls_back_to_on_demand_when_spot_may_not_create_its_service_linked_role(cfg) -> None:
    ec2 = Recorder({"run_instances": [spot_role_not_permitted(), {"Instances": [{"InstanceId": "i-0od"}]}]})
    assert launch.launch_instance(cfg.launch, "v20261123T091432Z-1a2b", "#!/bin/bash\n", ec2=ec2) == (
        "i-0od",
        "on-demand",
    )
    first, second = (kwargs for _, kwargs in ec2.calls)
    assert "InstanceMarketOptions" in first and "InstanceMarketOptions" not in second


def test_launch_without_fallback_names_the_spot_refusal(cfg) -> None:
    spot_only = dataclasses.replace(cfg.launch, spot_fallback_on_demand=False)
    ec2 = Recorder({"run_instances": [spot_role_not_permitted()]})
    with pytest.raises(Unavailable, match=f"{SPOT_ROLE_NOT_PERMITTED}.*on-demand fallback is off"):
        launch.launch_instance(spot_only, "v20261123T091432Z-1a2b", "#!/bin/bash\n", ec2=ec2)
    assert len(ec2.calls) == 1


@pytest.mark.parametrize("code", ["UnauthorizedOperation", "InvalidParameterValue", "AuthFailure"])
def test_launch_does_not_retry_on_demand_what_on_demand_would_refuse_too(cfg, code: str) -> None:
    ec2 = Recorder({"run_instances": [capacity_error(code)]})
    with pytest.raises(Unavailable, match=f"could not launch a training instance: {code}"):
        launch.launch_instance(cfg.launch, "v20261123T091432Z-1a2b", "#!/bin/bash\n", ec2=ec2)
    assert len(ec2.calls) == 1


# coalescing by what a run scanned; retries of infrastructure failures -----------------------


def run_ends(cfg: train.TrainSettings, version: str, status: str, **fields: Any) -> dict[str, Any]:
    """The trainer stand-in records its outcome; the model table's stream record of it."""
    registry.Registry(cfg.model_table).update_run(version, status=status, **fields)
    image = registry.to_item(registry.Registry(cfg.model_table).get_run(version))
    record = run_record(cfg, version, status)
    record["dynamodb"]["NewImage"] = image
    return record


def test_coalescing_a_burst_between_launch_and_scan_leads_to_one_run(cfg) -> None:
    clients = train.Clients.default()
    first = train.process(batch(cfg, ["a", "b", "c"])["Records"], cfg, clients).launch
    assert first
    # a burst arrives while the instance boots: pending, and enough for a run of its own
    launch_ms = lock.LockStore(cfg.model_table).read().launch_ms
    burst = [data_record(cfg, f"burst{i}", 20 + i, ingested=launch_ms + 1000 + i) for i in range(5)]
    train.process(burst, cfg, clients)
    # the trainer's scan starts after the burst (it trains on it); one sample comes later
    scan_ms = launch_ms + 5000 + cfg.scan_margin_s * 1000
    late = data_record(cfg, "late", 30, ingested=scan_ms + 1)
    decision = train.process([late, run_ends(cfg, first, "published", scan_started_ms=scan_ms)], cfg, clients)
    assert decision.launch is None and decision.reason == "1 new samples pending, 3 needed"
    state = lock.LockStore(cfg.model_table).read()
    assert state.holder is None and state.pending_ids == ("late",)
    assert state.watermark_ms == scan_ms - cfg.scan_margin_s * 1000
    assert len(instances()) == 1
    # the burst's records replayed later are not new data either
    assert train.process(burst, cfg, clients).launch is None and len(instances()) == 1


def test_coalescing_before_the_fix_a_run_without_scan_time_consumes_only_up_to_its_launch(cfg) -> None:
    """A run record of an older trainer (no scan_started_ms): the burst counts again, as before."""
    clients = train.Clients.default()
    first = train.process(batch(cfg, ["a", "b", "c"])["Records"], cfg, clients).launch
    launch_ms = lock.LockStore(cfg.model_table).read().launch_ms
    train.process(
        [data_record(cfg, f"b{i}", 20 + i, ingested=launch_ms + 1 + i) for i in range(3)], cfg, clients
    )
    decision = train.process([run_ends(cfg, str(first), "published")], cfg, clients)
    assert decision.launch and len(instances()) == 2


def test_retry_infrastructure_failure_keeps_the_samples_retries_with_backoff_then_gives_up(
    cfg, inbox
) -> None:
    cfg, read = inbox
    clients = train.Clients.default()
    records = batch(cfg, ["a", "b", "c"])["Records"]
    now = time.time() + 1  # launched after the samples were ingested: none is fresh for a retry
    version = train.process(records, cfg, clients, now=now).launch
    versions = [version]
    for attempt in (1, 2, 3):
        failed = run_ends(
            cfg, str(version), "failed", failure_kind="infrastructure", error="ThrottlingException"
        )
        decision = train.process([failed], cfg, clients, now=now + 10)
        assert decision.launch is None and decision.reason.startswith(f"retry {attempt} due in")
        state = lock.LockStore(cfg.model_table).read()
        assert state.pending_ids == ("a", "b", "c") and state.failures == attempt
        run = registry.Registry(cfg.model_table).get_run(str(version))
        assert run["status"] == "failed" and run["failure_kind"] == "infrastructure"
        assert run["retry"]["attempt"] == attempt and run["retry"]["of"] == 3 and not run["retry"]["gave_up"]
        due = now + 10 + cfg.retry.delay_s(attempt)
        # nothing new arrives: only the schedule starts the retry, and not before it is due
        assert train.tick(cfg, clients, now=due - 1) is None
        tick = train.tick(cfg, clients, now=due)
        assert tick is not None and tick.launch
        version, now = tick.launch, due
        versions.append(version)
        assert registry.Registry(cfg.model_table).get_run(version)["trigger"]["attempt"] == attempt + 1
    # the fourth infrastructure failure in a row: given up, visibly; its samples are consumed
    train.process(
        [run_ends(cfg, str(version), "failed", failure_kind="infrastructure")], cfg, clients, now=now + 10
    )
    run = registry.Registry(cfg.model_table).get_run(str(version))
    assert run["retry"] == {"attempt": 3, "of": 3, "gave_up": True}  # no next_at
    state = lock.LockStore(cfg.model_table).read()
    assert state.holder is None and state.pending == 0 and state.failures == 0
    assert train.tick(cfg, clients, now=now + 3600) is None
    assert len(instances()) == 4 and len(set(versions)) == 4
    messages = [(m["type"], m["status"], m["retry"]["attempt"]) for m in read()]
    assert messages == [
        ("run_retry", "retry_scheduled", 1),
        ("run_retry", "retry_scheduled", 2),
        ("run_retry", "retry_scheduled", 3),
        ("run_retry", "retries_exhausted", 3),
    ]


def test_retry_data_failure_is_not_retried(cfg, inbox) -> None:
    cfg, read = inbox
    clients = train.Clients.default()
    records = batch(cfg, ["a", "b", "c"])["Records"]
    now = time.time() + 1  # launched after the samples were ingested: none is fresh for a retry
    version = train.process(records, cfg, clients, now=now).launch
    scan_ms = int(now * 1000) + 5000 + cfg.scan_margin_s * 1000
    failed = run_ends(
        cfg, str(version), "failed", failure_kind="data", error="not enough data", scan_started_ms=scan_ms
    )
    decision = train.process([failed], cfg, clients, now=now + 10)
    assert decision.launch is None and decision.retries == ()
    state = lock.LockStore(cfg.model_table).read()
    assert state.holder is None and state.pending == 0 and state.failures == 0
    assert "retry" not in registry.Registry(cfg.model_table).get_run(str(version))
    assert train.tick(cfg, clients, now=now + 3600) is None and len(instances()) == 1
    assert read() == []


def test_retry_instance_died_without_a_record_is_an_infrastructure_failure(cfg, inbox) -> None:
    cfg, read = inbox
    held = running_run(cfg)
    boto3.client("ec2").terminate_instances(InstanceIds=[str(held.instance_id)])  # a spot reclaim
    decision = train.instance_ended(str(held.instance_id), "terminated", cfg, train.Clients.default())
    assert decision is not None and decision.launch is None and decision.reason.startswith("retry 1 due in")
    run = registry.Registry(cfg.model_table).get_run(str(held.holder))
    assert run["status"] == "interrupted" and run["failure_kind"] == "infrastructure"
    assert run["retry"]["attempt"] == 1
    [message] = read()
    assert (message["status"], message["failure_kind"], message["retry"]["attempt"]) == (
        "interrupted",
        "infrastructure",
        1,
    )
    assert lock.LockStore(cfg.model_table).read().pending_ids == ("a", "b", "c")


def test_tick_ends_the_run_of_an_instance_whose_state_change_event_was_lost(cfg, inbox) -> None:
    cfg, read = inbox
    held = running_run(cfg)
    clients = train.Clients.default()
    assert train.tick(cfg, clients) is None  # the instance runs: nothing to do
    assert lock.LockStore(cfg.model_table).read() == held
    train.process(batch(cfg, ["d", "e", "f"], 10)["Records"], cfg, clients)
    boto3.client("ec2").terminate_instances(InstanceIds=[str(held.instance_id)])  # its event lost
    decision = train.tick(cfg, clients)
    assert decision is not None and decision.launch and decision.stale is not None
    assert decision.stale.holder == held.holder
    run = registry.Registry(cfg.model_table).get_run(str(held.holder))
    assert (run["status"], run["failure_kind"]) == ("interrupted", "infrastructure")
    assert [m["status"] for m in read()] == ["interrupted"]
    # The event arrives after all: it is another instance's now, and the run ended once.
    after = lock.LockStore(cfg.model_table).read()
    assert train.instance_ended(str(held.instance_id), "terminated", cfg, clients) is None
    assert lock.LockStore(cfg.model_table).read() == after and read() == []


def test_tick_after_a_finished_run_ends_it_as_the_model_stream_would(cfg) -> None:
    held = running_run(cfg)
    clients = train.Clients.default()
    scanned = int(time.time() * 1000) + 60_000  # after every pending sample, margin included
    registry.Registry(cfg.model_table).update_run(
        str(held.holder), status="published", scan_started_ms=scanned
    )
    boto3.client("ec2").terminate_instances(InstanceIds=[str(held.instance_id)])  # its own shutdown
    decision = train.tick(cfg, clients)
    assert decision is not None and decision.stale is None and decision.retries == ()
    state = lock.LockStore(cfg.model_table).read()
    assert state.holder is None and state.failures == 0 and state.pending == 0
    assert registry.Registry(cfg.model_table).get_run(str(held.holder))["status"] == "published"
    assert alarm_names() == []


def test_train_handler_schedule_event_reads_the_lock_and_does_nothing_when_nothing_is_due(cfg) -> None:
    event = json.loads((EVENTS / "traffic_schedule.json").read_text())
    assert event["detail-type"] == "Scheduled Event"
    assert train.handler(event) == {"tick": True, "launch": None}
    assert instances() == [] and lock.LockStore(cfg.model_table).read() == lock.LockState()


# the idle alarm's Lambda action ---------------------------------------------------------------


def alarm_event(name: str, instance_id: str, state: str = "ALARM", previous: str = "OK") -> dict[str, Any]:
    """What CloudWatch sends a Lambda alarm action (CloudWatch User Guide, "Invoke a Lambda
    function from an alarm"), for the idle alarm's metric math."""
    metric = {"namespace": "AWS/EC2", "name": "CPUUtilization", "dimensions": {"InstanceId": instance_id}}
    return {
        "source": "aws.cloudwatch",
        "alarmArn": f"arn:aws:cloudwatch:us-east-1:123456789012:alarm:{name}",
        "accountId": "123456789012",
        "time": "2026-01-01T00:00:00.000+0000",
        "region": "us-east-1",
        "alarmData": {
            "alarmName": name,
            "state": {"value": state, "reason": "test", "timestamp": "2026-01-01T00:00:00.000+0000"},
            "previousState": {"value": previous, "reason": "", "timestamp": "2025-12-31T23:59:00.000+0000"},
            "configuration": {
                "metrics": [
                    {
                        "id": "cpu",
                        "metricStat": {"metric": metric, "period": 60, "stat": "Average"},
                        "returnData": False,
                    },
                    {
                        "id": "dead",
                        "expression": "IF(FILL(beats, 0) == 0 AND cpu < 5, 1, 0)",
                        "returnData": True,
                    },
                ]
            },
        },
    }


def instance_states() -> dict[str, str]:
    return {i["InstanceId"]: i["State"]["Name"] for i in instances()}


def test_idle_alarm_terminates_the_holders_instance_and_its_end_interrupts_the_run(cfg) -> None:
    held = running_run(cfg)
    name, instance_id = f"autoretrain-test-train-{held.holder}", str(held.instance_id)
    assert train.handler(alarm_event(name, instance_id)) == {
        "alarm": name,
        "state": "ALARM",
        "terminated": instance_id,
    }
    assert instance_states()[instance_id] in launch.GONE
    assert lock.LockStore(cfg.model_table).read() == held  # the instance's end event ends the run
    assert train.handler(alarm_event(name, instance_id))["terminated"] is None  # a replay
    train.handler(state_change(instance_id))
    run = registry.Registry(cfg.model_table).get_run(str(held.holder))
    assert (run["status"], run["failure_kind"]) == ("interrupted", "infrastructure")
    assert lock.LockStore(cfg.model_table).read().holder is None and alarm_names() == []


@pytest.mark.parametrize(
    ("which", "state"),
    [("other-run", "ALARM"), ("holder", "OK"), ("holder", "INSUFFICIENT_DATA"), ("other-instance", "ALARM")],
)
def test_idle_alarm_of_another_run_or_state_changes_nothing(cfg, which: str, state: str) -> None:
    held = running_run(cfg)
    name = f"autoretrain-test-train-{held.holder if which != 'other-run' else 'v20000101T000000Z-0000'}"
    instance_id = "i-0notours" if which == "other-instance" else str(held.instance_id)
    assert (
        train.idle_alarm(
            train.alarm_change(alarm_event(name, instance_id, state)), cfg, train.Clients.default()
        )
        is None
    )
    assert instance_states()[str(held.instance_id)] == "running"
    assert lock.LockStore(cfg.model_table).read() == held
