"""The local cloud's stream poller against a moto server: batching, filters, retries, the
failure queue, re-delivery, and the real train handler behind it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from lambdas import train
from lambdas.core import aws, lock, registry
from localcloud import infra, streams
from localcloud.driver import Context

Records = list[dict[str, Any]]


class Function:
    """A recording stand-in for ``ctx.invoke``: keeps every event for function ``only`` (the
    train function: the other reader of the data table's stream, score, gets its own batches),
    answers with ``behaviour``; the other functions' batches are answered as all done."""

    def __init__(self, behaviour: Callable[[Records], Any] | None = None, only: str = "train") -> None:
        self.behaviour = behaviour
        self.only = only
        self.calls: list[tuple[str, Records, float]] = []
        self._lock = threading.Lock()

    def __call__(self, name: str, event: dict[str, Any]) -> Any:
        if name != self.only:
            return {"batchItemFailures": []}
        with self._lock:
            self.calls.append((name, event["Records"], time.monotonic()))
        return self.behaviour(event["Records"]) if self.behaviour else {"batchItemFailures": []}

    def batches(self) -> list[list[str]]:
        return [[key_of(r) for r in records] for _, records, _ in list(self.calls)]

    def delivered(self) -> list[str]:
        return [sample_id for batch in self.batches() for sample_id in batch]


def key_of(record: dict[str, Any]) -> str:
    return str(next(iter(record["dynamodb"]["Keys"].values()))["S"])


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_server: str) -> Iterator[Context]:
    endpoint = moto_server
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the train handler's clients, too
    aws.reset()
    stack = infra.create_resources(infra.load(stage="test"), boto3.Session())
    said: list[str] = []
    context = Context(
        stack=stack,
        aws_endpoint=endpoint,
        api_url="http://127.0.0.1:1",
        state_dir=tmp_path / "state",
        invoke=Function(),
        say=said.append,
        settings=dict(stack.custom["localCloud"]),
    )
    context.said = said  # type: ignore[attr-defined]
    yield context


@pytest.fixture
def started(cloud: Context) -> Iterator[Callable[..., streams.StreamPoller]]:
    pollers: list[streams.StreamPoller] = []

    def start(function: Function, **overrides: Any) -> streams.StreamPoller:
        cloud.invoke = function
        options = {"poll_s": 0.05, "retry_backoff_s": 0.05, **overrides}
        poller = streams.StreamPoller(**options)
        poller.start(cloud)
        pollers.append(poller)
        return poller

    yield start
    for poller in pollers:
        poller.stop()


def data_event(ctx: Context, index: int = 0) -> dict[str, Any]:
    return ctx.stack.config["functions"]["train"]["events"][index]["stream"]


def write_samples(ctx: Context, ids: list[str]) -> None:
    """One request, so every record reaches the stream at once (moto does not enforce the
    25-item limit of BatchWriteItem)."""
    now = int(time.time() * 1000)
    items = [
        {
            "PutRequest": {
                "Item": {
                    "id": {"S": sample_id},
                    "temp": {"N": "72"},
                    "rh": {"N": "45"},
                    "wind": {"N": "0.1"},
                    "clo": {"N": "0.6"},
                    "label": {"S": "ok"},
                    "created": {"N": str(now)},
                    "ingested": {"N": str(now)},
                    "source": {"S": "api"},
                }
            }
        }
        for sample_id in ids
    ]
    ctx.client("dynamodb").batch_write_item(RequestItems={ctx.stack.physical["DataTable"]: items})


def wait_for(condition: Callable[[], Any], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def failure_messages(ctx: Context) -> list[dict[str, Any]]:
    reply = ctx.client("sqs").receive_message(
        QueueUrl=ctx.stack.physical["TrainFailureQueue"], MaxNumberOfMessages=10
    )
    return [json.loads(m["Body"]) for m in reply.get("Messages", [])]


def fail_on(poison: str) -> Callable[[Records], Any]:
    def behaviour(records: Records) -> Any:
        if any(key_of(r) == poison for r in records):
            raise RuntimeError(f"cannot handle {poison}")
        return {"batchItemFailures": []}

    return behaviour


def poller_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("stream-") and t.is_alive()]


# filter patterns (no server) ----------------------------------------------------------------

INSERT_RUN = {
    "eventName": "INSERT",
    "dynamodb": {"NewImage": {"kind": {"S": "run"}, "status": {"S": "published"}, "tries": [1, 2]}},
}


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ({"eventName": ["INSERT"]}, True),
        ({"eventName": ["MODIFY", "REMOVE"]}, False),
        (
            {"dynamodb": {"NewImage": {"kind": {"S": ["run"]}, "status": {"S": ["published", "failed"]}}}},
            True,
        ),
        ({"dynamodb": {"NewImage": {"status": {"S": ["training"]}}}}, False),
        ({"dynamodb": {"OldImage": {"status": {"S": ["published"]}}}}, False),
        ({"dynamodb": {"NewImage": {"kind": ["run"]}}}, False),  # a mapping is not a value
        ({"dynamodb": {"NewImage": {"tries": [2.0]}}}, True),  # arrays: any element; 2 is 2.0
        ({"dynamodb": {"NewImage": {"tries": [True]}}}, False),  # true is not 1
    ],
)
def test_stream_filter_matches_exact_values_under_nested_keys(
    pattern: dict[str, Any], expected: bool
) -> None:
    streams.check_pattern(pattern, "pattern")
    assert streams.matches(pattern, INSERT_RUN) is expected


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ({"eventName": [{"prefix": "INS"}]}, "filter operator {'prefix': 'INS'} is not supported"),
        ({"eventName": [{"anything-but": ["REMOVE"]}]}, "'anything-but'"),
        ({"dynamodb": {"NewImage": {"n": {"N": [{"numeric": [">", 0]}]}}}}, "'numeric'"),
        ({"dynamodb": {"NewImage": {"kind": [{"exists": True}]}}}, "'exists'"),
        ({"eventName": "INSERT"}, "expected a list of values"),
        ({"eventName": []}, "an empty list matches nothing"),
    ],
)
def test_stream_poller_refuses_unsupported_filters_at_start(
    tmp_path: Path, pattern: dict[str, Any], message: str
) -> None:
    stack = infra.load(stage="test")
    stack.arns.update(
        {
            "DataTable.StreamArn": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/1",
            "ModelTable.StreamArn": "arn:aws:dynamodb:us-east-1:123456789012:table/m/stream/1",
            "TrainFailureQueue.Arn": "arn:aws:sqs:us-east-1:123456789012:q",
            "ScoreFailureQueue.Arn": "arn:aws:sqs:us-east-1:123456789012:s",
        }
    )
    stack.config["functions"]["train"]["events"][0]["stream"]["filterPatterns"] = [pattern]
    ctx = Context(stack, "http://127.0.0.1:1", "http://127.0.0.1:1", tmp_path, Function(), print)
    poller = streams.StreamPoller()
    with pytest.raises(streams.StreamConfigError, match="filterPatterns") as err:
        poller.start(ctx)
    assert message in str(err.value)
    assert poller_threads() == []


# against the moto server --------------------------------------------------------------------


@pytest.mark.slow
def test_stream_poller_delivers_in_order_by_batch_size_then_after_the_window(cloud: Context, started) -> None:
    function = Function()
    started(function, batch_window_s=2)
    size = int(cloud.stack.function("train").events[0]["stream"]["batchSize"])  # serverless.yml's
    ids = [f"s{n:05d}" for n in range(2 * size + 50)]
    write_samples(cloud, ids)
    wait_for(lambda: len(function.delivered()) >= len(ids))
    assert [len(b) for b in function.batches()] == [size, size, 50]
    assert function.delivered() == ids
    sequence = [int(r["dynamodb"]["SequenceNumber"]) for _, records, _ in function.calls for r in records]
    assert sequence == sorted(sequence) and len(set(sequence)) == len(ids)
    # the last 50 were read after the second batch went out, and waited for the window
    (_, _, second), (_, _, third) = function.calls[1], function.calls[2]
    assert third - second >= 2
    assert {name for name, _, _ in function.calls} == {"train"}


@pytest.mark.slow
def test_stream_poller_delivers_records_shaped_as_lambda_does(cloud: Context, started) -> None:
    function = Function()
    started(function, batch_window_s=0)
    write_samples(cloud, ["a"])
    wait_for(lambda: function.calls)
    [(_, [record], _)] = function.calls
    change = record.pop("dynamodb")
    assert record == {
        "eventID": record["eventID"],
        "eventName": "INSERT",
        "eventVersion": "1.0",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "eventSourceARN": cloud.stack.arns["DataTable.StreamArn"],
    }
    assert record["eventID"]
    assert sorted(change) == [
        "ApproximateCreationDateTime",
        "Keys",
        "NewImage",
        "SequenceNumber",
        "SizeBytes",
        "StreamViewType",
    ]
    assert change["Keys"] == {"id": {"S": "a"}} and change["NewImage"]["label"] == {"S": "ok"}
    assert change["StreamViewType"] == "NEW_IMAGE" and isinstance(change["ApproximateCreationDateTime"], int)
    assert abs(change["ApproximateCreationDateTime"] - time.time()) < 600
    json.dumps(change)  # exactly what a Lambda event can carry


@pytest.mark.slow
def test_stream_poller_filter_drops_modifications(cloud: Context, started) -> None:
    function = Function()
    started(function, batch_window_s=0)
    write_samples(cloud, ["a", "b"])
    wait_for(lambda: len(function.delivered()) >= 2)
    ddb = cloud.client("dynamodb")
    for sample_id in ("a", "b"):
        ddb.update_item(
            TableName=cloud.stack.physical["DataTable"],
            Key={"id": {"S": sample_id}},
            UpdateExpression="SET score = :s",
            ExpressionAttributeValues={":s": {"N": "1"}},
        )
    write_samples(cloud, ["c"])  # after the modifications in the stream
    wait_for(lambda: "c" in function.delivered())
    assert function.delivered() == ["a", "b", "c"]
    assert {r["eventName"] for _, records, _ in function.calls for r in records} == {"INSERT"}


@pytest.mark.slow
def test_stream_poller_retries_a_partial_failure_from_the_failed_record(cloud: Context, started) -> None:
    seen: set[str] = set()

    def fails_on_c_once(records: Records) -> Any:
        failed = [r for r in records if key_of(r) == "c" and "c" not in seen]
        seen.update(key_of(r) for r in records)
        return {"batchItemFailures": [{"itemIdentifier": r["dynamodb"]["SequenceNumber"]} for r in failed]}

    function = Function(fails_on_c_once)
    started(function, batch_window_s=1)
    write_samples(cloud, ["a", "b", "c", "d", "e"])
    wait_for(lambda: len(function.calls) >= 2)
    write_samples(cloud, ["f"])
    wait_for(lambda: "f" in function.delivered())
    assert function.batches() == [["a", "b", "c", "d", "e"], ["c", "d", "e"], ["f"]]
    assert failure_messages(cloud) == []


@pytest.mark.slow
def test_stream_poller_bisects_retries_then_sends_the_poison_record_to_the_failure_queue(
    cloud: Context, started
) -> None:
    function = Function(fail_on("poison"))
    poller = started(function, batch_window_s=1)
    write_samples(cloud, ["a", "poison", "b", "c"])
    messages: list[dict[str, Any]] = []
    wait_for(lambda: messages.extend(failure_messages(cloud)) or messages)
    write_samples(cloud, ["d"])
    wait_for(lambda: "d" in function.delivered())

    retries = data_event(cloud)["maximumRetryAttempts"]
    assert function.batches() == [
        ["a", "poison", "b", "c"],
        ["a", "poison"],  # split in two; splitting is not a retry
        ["a"],
        *[["poison"]] * (1 + retries),
        ["b", "c"],
        ["d"],  # later records still flow
    ]
    [message] = messages
    poison = function.calls[3][1][0]["dynamodb"]["SequenceNumber"]
    assert message["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert message["requestContext"]["approximateInvokeCount"] == 1 + retries
    assert message["requestContext"]["functionArn"].endswith(":function:autoretrain-test-train")
    assert message["responseContext"]["functionError"] == "Unhandled"
    info = message["DDBStreamBatchInfo"]
    assert info["startSequenceNumber"] == info["endSequenceNumber"] == poison
    assert info["batchSize"] == 1 and info["streamArn"] == cloud.stack.arns["DataTable.StreamArn"]
    assert info["shardId"].startswith("shardId-")
    assert poller.failures == [message]


@pytest.mark.slow
def test_stream_poller_gives_up_on_records_older_than_the_maximum_age(cloud: Context, started) -> None:
    data_event(cloud)["maximumRecordAgeInSeconds"] = 1
    function = Function(fail_on("old"))
    # five retries 0.4 s apart take longer than the record may live
    started(function, batch_window_s=0, retry_backoff_s=0.4)
    write_samples(cloud, ["old"])
    messages: list[dict[str, Any]] = []
    wait_for(lambda: messages.extend(failure_messages(cloud)) or messages)
    [message] = messages
    assert message["requestContext"]["condition"] == "RecordAgeExceeded"
    assert 1 <= len(function.calls) <= data_event(cloud)["maximumRetryAttempts"]


@pytest.mark.slow
def test_stream_poller_redelivers_every_batch(cloud: Context, started, monkeypatch) -> None:
    monkeypatch.setenv(streams.REDELIVER_ENV, "3")
    function = Function()
    started(function, batch_window_s=1)
    write_samples(cloud, ["a", "b", "c"])
    wait_for(lambda: len(function.calls) >= 3)
    write_samples(cloud, ["d"])
    wait_for(lambda: len(function.calls) >= 6)
    assert function.batches() == [["a", "b", "c"]] * 3 + [["d"]] * 3
    assert any("(3/3)" in line for line in cloud.said)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_stream_poller_with_the_train_handler_and_redelivery_launches_one_run(
    cloud: Context, started, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = {k: str(v) for k, v in cloud.settings["environment"].items()}
    for key, value in cloud.stack.function_environment("train", local).items():
        monkeypatch.setenv(key, value)
    train._settings.cache_clear()
    aws.reset()
    needed = int(local["MIN_NEW_SAMPLES"])

    def real_train(records: Records) -> Any:
        return train.handler({"Records": records})

    function = Function(real_train)
    poller = started(function, redeliver=3)
    write_samples(cloud, [f"s{n}" for n in range(needed + 5)])
    wait_for(lambda: poller.invocations.get("train", 0) >= 3 * (needed + 5))
    model_table = cloud.stack.physical["ModelTable"]
    holder = lock.LockStore(model_table).read().holder
    # more data while the run is in flight: pending, not a second instance
    write_samples(cloud, [f"t{n}" for n in range(needed + 5)])
    wait_for(lambda: poller.invocations.get("train", 0) >= 6 * (needed + 5))
    train._settings.cache_clear()

    runs, _ = registry.Registry(model_table).list_runs()
    assert [r["version"] for r in runs] == [holder] and runs[0]["status"] == "training"
    reply = cloud.client("ec2").describe_instances(
        Filters=[{"Name": "tag:service", "Values": ["autoretrain"]}]
    )
    instances = [i for r in reply["Reservations"] for i in r["Instances"]]
    assert [i["InstanceId"] for i in instances] == [runs[0]["instance_id"]]
    assert len(function.calls) % 3 == 0 and len(function.calls) >= 6  # each batch three times
    assert lock.LockStore(model_table).read().pending > 0


@pytest.mark.slow
def test_stream_poller_stop_leaves_no_thread_alive(cloud: Context) -> None:
    cloud.invoke = Function(fail_on("stuck"))  # retried forever: stop() must still end it
    data_event(cloud)["maximumRetryAttempts"] = -1
    poller = streams.StreamPoller(poll_s=0.05, retry_backoff_s=0.05)
    poller.start(cloud)
    assert len(poller_threads()) == 3  # one per stream event: two of train, one of score
    write_samples(cloud, ["stuck"])
    wait_for(lambda: len(cloud.invoke.calls) >= 3)  # type: ignore[attr-defined]
    poller.stop()
    poller.stop()  # twice is fine
    assert poller_threads() == []
