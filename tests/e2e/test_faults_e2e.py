"""The fault suite: a fault injected at each stage, on the local cloud, and what became of the
data. The local AWS endpoint injects AWS's own failures (``localcloud/faults.py``): throttling,
``UnprocessedItems``, S3 errors; the function, the stream and the trainer run as they would.
Every test ends by counting what was lost: nothing. (A crash of the whole local cloud is
tests/e2e/test_durable_e2e.py.)"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from lambdas.core import comfort
from lambdas.core.registry import Registry
from localcloud.cloud import LocalCloud
from tests.support.clouds import keyed, wait

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def inject(cloud: LocalCloud, **fault: Any) -> None:
    reply = requests.post(f"{cloud.aws_url}/localcloud-api/faults", json=fault, timeout=10)
    assert reply.status_code == 200, reply.text


def clear_faults(cloud: LocalCloud) -> list[dict[str, Any]]:
    fired = requests.get(f"{cloud.aws_url}/localcloud-api/faults", timeout=10).json()["faults"]
    requests.delete(f"{cloud.aws_url}/localcloud-api/faults", timeout=10)
    return fired


def ids_in_table(cloud: LocalCloud) -> set[str]:
    ddb = cloud.client("dynamodb")
    out: set[str] = set()
    kwargs: dict[str, Any] = {"TableName": cloud.stack.table_name("DataTable"), "ProjectionExpression": "id"}
    while True:
        page = ddb.scan(**kwargs)
        out |= {item["id"]["S"] for item in page["Items"]}
        if "LastEvaluatedKey" not in page:
            return out
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def test_upload_under_throttling_retries_and_loses_nothing(make_cloud) -> None:
    cloud = make_cloud()
    inject(
        cloud,
        action="dynamodb:BatchWriteItem",
        error="ProvisionedThroughputExceededException",
        status=400,
        times=3,
    )
    samples = comfort.generate(120, 1, 0.05)
    reply = requests.post(f"{cloud.api_url}/upload", json=samples, headers=keyed(cloud), timeout=120)
    assert reply.status_code == 200, reply.text
    assert set(reply.json()["ids"]) == ids_in_table(cloud)
    assert len(ids_in_table(cloud)) == 120
    assert clear_faults(cloud)[0]["fired"] == 3


def test_upload_when_dynamodb_keeps_throttling_is_a_clear_503_and_a_resend_completes_it(make_cloud) -> None:
    cloud = make_cloud()
    inject(
        cloud,
        action="dynamodb:BatchWriteItem",
        error="ProvisionedThroughputExceededException",
        status=400,
        times=-1,
    )
    samples = comfort.generate(60, 2, 0.05)
    reply = requests.post(f"{cloud.api_url}/upload", json=samples, headers=keyed(cloud), timeout=120)
    assert reply.status_code == 503
    body = reply.json()
    assert body["written"] == 0 and "resend" in body["message"].lower()
    assert ids_in_table(cloud) == set()
    clear_faults(cloud)
    again = requests.post(f"{cloud.api_url}/upload", json=samples, headers=keyed(cloud), timeout=120)
    assert again.status_code == 200
    assert len(ids_in_table(cloud)) == 60  # the resend wrote each sample once


def test_unprocessed_items_are_written_by_the_retries(make_cloud) -> None:
    cloud = make_cloud()
    inject(cloud, action="dynamodb:BatchWriteItem", unprocessed=True, times=4)
    samples = comfort.generate(100, 3, 0.05)
    reply = requests.post(f"{cloud.api_url}/upload", json=samples, headers=keyed(cloud), timeout=120)
    assert reply.status_code == 200, reply.text
    assert len(ids_in_table(cloud)) == 100
    assert clear_faults(cloud)[0]["fired"] == 4


def test_a_failing_stream_handler_loses_no_sample_id(make_cloud, tmp_path) -> None:
    """The train function fails on every batch (its lock read is refused): the batches are
    bisected, retried, then sent to the failure queue, whose records name every sample."""
    cloud = make_cloud(drivers=("streams",))
    inject(
        cloud,
        action="dynamodb:GetItem",
        principal="*TrainFunctionRole",
        error="InternalServerError",
        times=-1,
    )
    samples = comfort.generate(30, 4, 0.05)
    reply = requests.post(f"{cloud.api_url}/upload", json=samples, headers=keyed(cloud), timeout=120)
    posted = set(reply.json()["ids"])
    sqs = cloud.client("sqs")
    url = cloud.stack.physical["TrainFailureQueue"]
    failures: list[dict[str, Any]] = []

    def drained() -> bool:
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            failures.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        covered = sum(f["DDBStreamBatchInfo"]["batchSize"] for f in failures)
        return covered >= len(posted)

    wait(drained, 120, "every record to reach the failure queue")
    streams = cloud.client("dynamodbstreams")
    recovered: set[str] = set()
    for failure in failures:
        info = failure["DDBStreamBatchInfo"]
        iterator = streams.get_shard_iterator(
            StreamArn=info["streamArn"],
            ShardId=info["shardId"],
            ShardIteratorType="AT_SEQUENCE_NUMBER",
            SequenceNumber=info["startSequenceNumber"],
        )["ShardIterator"]
        records = streams.get_records(ShardIterator=iterator, Limit=info["batchSize"])["Records"]
        recovered |= {r["dynamodb"]["Keys"]["id"]["S"] for r in records}
    assert recovered == posted  # no sample id is lost: each is named by a failure record
    assert len(ids_in_table(cloud)) == 30


def test_an_s3_error_while_publishing_never_moves_latest_to_a_partial_model(make_cloud) -> None:
    cloud = make_cloud(drivers=("streams", "instances", "alarms"))
    bucket = cloud.stack.physical["ModelBucket"]
    inject(
        cloud,
        action="s3:PutObject",
        resource=f"arn:aws:s3:::{bucket}/models/*/group1-shard*",
        principal="*TrainInstanceRole",
        error="InternalError",
        status=500,
        times=-1,
    )
    samples = comfort.generate(240, 5, 0.05)
    reply = requests.post(f"{cloud.api_url}/upload", json=samples, headers=keyed(cloud), timeout=120)
    assert reply.status_code == 200
    registry = Registry(cloud.stack.table_name("ModelTable"), cloud.client("dynamodb"))
    run = wait(
        lambda: next(
            (r for r in registry.list_runs(limit=5)[0] if r.get("status") not in (None, "training")), None
        ),
        240,
        "the run to end",
    )
    assert run["status"] in ("failed", "interrupted")
    assert registry.latest_version() is None
    keys = [o["Key"] for o in cloud.client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not any(k.endswith("model.json") for k in keys)  # model.json is written last: never here
    assert len(ids_in_table(cloud)) == 240


# --- the trainer failing at each phase -------------------------------------------------------
# Where: a fault on the AWS call of the phase (scan, publish, promote), the trainer process
# killed when its log shows the phase (fit, export), or a spot interruption notice at the phase.
# Every case must end with the run failed or interrupted, latest not moved to anything partial,
# every sample still in the table, and the run retried (an infrastructure failure) once the
# fault is gone, until a model is published from the same samples.

MARKERS = {"scan": '"event":"run_start"', "fit": '"event":"epoch"', "export": '"event":"evaluated"'}


def _trainer_processes() -> list[Any]:
    import psutil

    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "-m" in cmdline and "trainer" in cmdline:
            out.append(proc)
    return out


def _when_logged(state: Path, marker: str, action: Callable[[str], None], stop: Any) -> None:
    """Watch the instances' consoles; on the first line with ``marker`` call ``action(instance_id)``."""
    while not stop.is_set():
        for log in state.glob("instance-i-*.log"):
            if marker in log.read_text(errors="replace"):
                action(log.stem.removeprefix("instance-"))
                return
        time.sleep(0.1)


CASES = {
    "scan: DynamoDB refuses the scan": ("fault", {"action": "dynamodb:Scan", "error": "InternalServerError"}),
    "fit: the trainer process dies": ("kill", "fit"),
    "export: the trainer process dies": ("kill", "export"),
    "publish: S3 fails a weight shard": (
        "fault",
        {
            "action": "s3:PutObject",
            "resource": "arn:aws:s3:::*/models/*/group1-shard*",
            "error": "InternalError",
        },
    ),
    "promote: the latest pointer cannot be written": (
        "fault",
        {"action": "dynamodb:TransactWriteItems", "error": "InternalServerError"},
    ),
    "scan: spot interruption notice": ("spot", "scan"),
    "fit: spot interruption notice": ("spot", "fit"),
    "export: spot interruption notice": ("spot", "export"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_trainer_failing_at_each_phase_loses_nothing_and_is_retried(
    make_cloud, tmp_path, case: str
) -> None:
    import threading

    kind, what = CASES[case]
    cloud = make_cloud(drivers=("streams", "instances", "alarms"))
    stop = threading.Event()
    if kind == "fault":
        inject(cloud, principal="*TrainInstanceRole", status=500, times=-1, **what)
    else:
        act: Callable[[str], Any] = (
            (lambda _id: [p.kill() for p in _trainer_processes()])
            if kind == "kill"
            else (lambda instance_id: (cloud.state_dir / f"spot-notice-{instance_id}").touch())
        )
        args = (cloud.state_dir, MARKERS[what], act, stop)
        threading.Thread(target=_when_logged, args=args, daemon=True).start()
    samples = comfort.generate(240, 11, 0.05)
    reply = requests.post(f"{cloud.api_url}/upload", json=samples, headers=keyed(cloud), timeout=120)
    posted = set(reply.json()["ids"])
    registry = Registry(cloud.stack.table_name("ModelTable"), cloud.client("dynamodb"))

    def first_outcome() -> dict[str, Any] | None:
        listed = registry.list_runs(limit=10)[0]
        ended = [r for r in listed if r.get("status") not in (None, "training")]
        return ended[-1] if ended else None

    failed = wait(first_outcome, 240, f"the run to end ({case})")
    stop.set()
    clear_faults(cloud)
    if kind == "spot" and failed["status"] == "published":
        # A notice gives two minutes; the trainer checks for one every few seconds, and a
        # local fit or export can finish first: a complete model, published, is also right.
        assert registry.latest_version() == failed["version"]
        assert ids_in_table(cloud) >= posted
        return
    assert failed["status"] in ("failed", "interrupted"), failed
    assert registry.latest_version() is None  # latest never moved to a partial model
    assert ids_in_table(cloud) >= posted  # every sample is still there
    # the samples stayed pending: a retry publishes a model once the fault is gone
    published = wait(
        lambda: next((r for r in registry.list_runs(limit=10)[0] if r.get("status") == "published"), None),
        300,
        "a retry to publish",
    )
    assert registry.latest_version() == published["version"]
    bucket = cloud.stack.physical["ModelBucket"]
    manifest = json.loads(
        cloud.client("s3")
        .get_object(Bucket=bucket, Key=f"models/{published['version']}/model.json")["Body"]
        .read()
    )
    for group in manifest["weightsManifest"]:
        for path in group["paths"]:  # every shard the published model names is there
            key = f"models/{published['version']}/{path.rsplit('/', 1)[-1]}"
            cloud.client("s3").head_object(Bucket=bucket, Key=key)
