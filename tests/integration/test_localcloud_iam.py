"""The local cloud refuses what AWS refuses: every function's calls run under its role from
serverless.yml; a call the role does not allow gets the service's AccessDenied error naming
the action and the resource, and nothing is written. Mutation tests remove one permission from
a copy of serverless.yml and show the call it guards failing locally."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from lambdas.core.registry import Registry
from localcloud.cloud import LocalCloud
from tests.support import serverless
from tests.support.clouds import keyed

pytestmark = pytest.mark.slow

SAMPLE = {"temp": 75, "rh": 60, "wind": 0.6, "clo": 1.0, "label": "ok"}


def as_role(cloud: LocalCloud, role: str, service: str) -> Any:
    return cloud.role_client(service, role)


def count(cloud: LocalCloud, logical: str) -> int:
    table = cloud.stack.table_name(logical)
    return int(cloud.client("dynamodb").scan(TableName=table, Select="COUNT")["Count"])


def test_a_role_may_do_what_its_policy_allows_and_nothing_else(make_cloud) -> None:
    cloud = make_cloud()
    upload = as_role(cloud, "UploadFunctionRole", "dynamodb")
    data, models = cloud.stack.table_name("DataTable"), cloud.stack.table_name("ModelTable")
    recorded = count(cloud, "ModelTable")  # the default client's record, written at start
    item = {"id": {"S": "a"}, "temp": {"N": "70"}}
    upload.batch_write_item(RequestItems={data: [{"PutRequest": {"Item": item}}]})
    assert count(cloud, "DataTable") == 1
    with pytest.raises(ClientError) as denied:
        upload.put_item(TableName=models, Item={"pk": {"S": "latest"}})
    error = denied.value.response["Error"]
    assert error["Code"] == "AccessDeniedException"
    assert "dynamodb:PutItem" in error["Message"]
    assert cloud.stack.arns["ModelTable.Arn"] in error["Message"]
    assert "assumed-role/autoretrain-local-UploadFunctionRole" in error["Message"]
    with pytest.raises(ClientError) as denied_batch:
        upload.batch_write_item(RequestItems={models: [{"PutRequest": {"Item": {"pk": {"S": "x"}}}}]})
    assert denied_batch.value.response["Error"]["Code"] == "AccessDeniedException"
    assert count(cloud, "ModelTable") == recorded


def test_an_unknown_access_key_or_a_forged_session_token_is_refused(make_cloud) -> None:
    cloud = make_cloud()
    stranger = boto3.client(
        "dynamodb",
        endpoint_url=cloud.aws_url,
        region_name=cloud.region,
        aws_access_key_id="AKIAUNKNOWN000000000",
        aws_secret_access_key="x",
    )
    with pytest.raises(ClientError) as refused:
        stranger.list_tables()
    assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"
    creds = cloud.role_credentials("ModelsFunctionRole")
    forged = boto3.client(
        "dynamodb",
        endpoint_url=cloud.aws_url,
        region_name=cloud.region,
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        aws_session_token="not-the-token",
    )
    with pytest.raises(ClientError) as refused_token:
        forged.get_item(TableName=cloud.stack.table_name("ModelTable"), Key={"pk": {"S": "latest"}})
    assert refused_token.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_functions_call_aws_with_their_own_role(make_cloud) -> None:
    cloud = make_cloud()
    reply = requests.post(f"{cloud.api_url}/upload", json=[SAMPLE], headers=keyed(cloud), timeout=60)
    assert reply.status_code == 200, reply.text
    assert count(cloud, "DataTable") == 1
    assert requests.get(f"{cloud.api_url}/models", timeout=60).status_code == 200


def test_removing_batch_write_from_the_upload_role_fails_uploads_and_writes_nothing(
    make_cloud, tmp_path
) -> None:
    config = serverless.without_action(tmp_path, "UploadFunctionRole", "dynamodb:BatchWriteItem")
    cloud = make_cloud(config_path=config)
    reply = requests.post(f"{cloud.api_url}/upload", json=[SAMPLE] * 3, headers=keyed(cloud), timeout=60)
    assert reply.status_code >= 500, reply.text
    assert count(cloud, "DataTable") == 0
    assert "AccessDeniedException" in (tmp_path / "functions.log").read_text()


def test_removing_query_from_the_models_role_fails_the_listing(make_cloud, tmp_path) -> None:
    config = serverless.without_action(tmp_path, "ModelsFunctionRole", "dynamodb:Query")
    cloud = make_cloud(config_path=config)
    reply = requests.get(f"{cloud.api_url}/models", timeout=60)
    assert reply.status_code >= 500, reply.text
    assert "dynamodb:Query" in (tmp_path / "functions.log").read_text()


def test_removing_get_object_from_the_proxy_role_stops_it_signing(make_cloud, tmp_path) -> None:
    config = serverless.without_action(tmp_path, "S3ProxyFunctionRole", "s3:GetObject")
    cloud = make_cloud(config_path=config)
    bucket = cloud.stack.physical["ModelBucket"]
    version = "v20261123T091432Z-1a2b"
    cloud.client("s3").put_object(Bucket=bucket, Key=f"models/{version}/model.json", Body=b"{}")
    reply = requests.get(f"{cloud.api_url}/s3proxy/{version}/model.json", timeout=60, allow_redirects=False)
    assert reply.status_code >= 500, reply.text
    assert "403" in (tmp_path / "functions.log").read_text()  # HeadObject refused: S3's 403


def test_the_proxy_redirects_to_a_url_the_gate_verifies(make_cloud) -> None:
    cloud = make_cloud()
    bucket = cloud.stack.physical["ModelBucket"]
    version = "v20261123T091432Z-1a2b"
    cloud.client("s3").put_object(Bucket=bucket, Key=f"models/{version}/model.json", Body=b'{"ok": 1}')
    cloud.client("s3").put_object(Bucket=bucket, Key=f"models/{version}/other.bin", Body=b"secret")
    reply = requests.get(f"{cloud.api_url}/s3proxy/{version}/model.json", timeout=60, allow_redirects=False)
    assert reply.status_code == 302, reply.text
    url = reply.headers["Location"]
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "X-Amz-Security-Token=" in url
    assert requests.get(url, timeout=10).json() == {"ok": 1}
    moved = requests.get(url.replace("model.json", "other.bin"), timeout=10)
    assert moved.status_code == 403 and b"SignatureDoesNotMatch" in moved.content
    altered = requests.get(url.replace("X-Amz-Expires=", "X-Amz-Expires=1"), timeout=10)
    assert altered.status_code == 403
    unsigned = requests.get(f"{cloud.aws_url}/{bucket}/models/{version}/model.json", timeout=10)
    assert unsigned.status_code == 403
    # a file that is not there is a 404 only because the proxy's role may list the bucket
    missing = requests.get(f"{cloud.api_url}/s3proxy/{version}/group1-shard1of1.bin", timeout=60)
    assert missing.status_code == 404, missing.text


def test_the_gate_records_each_decision_for_the_coverage_report(make_cloud, tmp_path) -> None:
    record = tmp_path / "record.jsonl"
    cloud = make_cloud(iam_record=record)
    requests.post(
        f"{cloud.api_url}/upload", json=[SAMPLE], headers=keyed(cloud), timeout=60
    ).raise_for_status()
    with pytest.raises(ClientError):
        as_role(cloud, "UploadFunctionRole", "s3").list_objects_v2(Bucket=cloud.stack.physical["ModelBucket"])
    time.sleep(0.2)
    entries = [json.loads(line) for line in record.read_text().splitlines()]
    assert {
        "role": "autoretrain-local-UploadFunctionRole",
        "action": "dynamodb:BatchWriteItem",
        "resource": cloud.stack.arns["DataTable.Arn"],
        "allowed": True,
    } in entries
    assert any(e["action"] == "s3:ListBucket" and not e["allowed"] for e in entries)


def _log_messages(cloud: LocalCloud, function: str) -> list[str]:
    logs = cloud.client("logs")
    group = f"/aws/lambda/{cloud.function_name(function)}"
    return [e["message"] for e in logs.filter_log_events(logGroupName=group).get("events", [])]


def test_function_logs_reach_their_log_group_with_the_functions_role(make_cloud) -> None:
    cloud = make_cloud()
    requests.post(
        f"{cloud.api_url}/upload", json=[SAMPLE], headers=keyed(cloud), timeout=60
    ).raise_for_status()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _log_messages(cloud, "upload"):
        time.sleep(0.3)
    assert any('"event":"samples_written"' in m or "written" in m for m in _log_messages(cloud, "upload"))


def test_a_role_without_log_permissions_loses_its_logs_not_its_work(make_cloud, tmp_path) -> None:
    config = serverless.without_action(tmp_path, "UploadFunctionRole", "logs:PutLogEvents")
    said: list[str] = []
    cloud = make_cloud(config_path=config, say=said.append)
    requests.post(
        f"{cloud.api_url}/upload", json=[SAMPLE], headers=keyed(cloud), timeout=60
    ).raise_for_status()
    assert count(cloud, "DataTable") == 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("may not write its logs" in line for line in said):
        time.sleep(0.3)
    assert any("upload: its role may not write its logs" in line for line in said)
    assert _log_messages(cloud, "upload") == []


def _instances(cloud: LocalCloud) -> list[dict[str, Any]]:
    reply = cloud.client("ec2").describe_instances(
        Filters=[{"Name": "tag:service", "Values": ["autoretrain"]}]
    )
    return [i for r in reply["Reservations"] for i in r["Instances"]]


def _runs(cloud: LocalCloud) -> list[dict[str, Any]]:
    from lambdas.core.registry import Registry

    return Registry(cloud.stack.table_name("ModelTable"), cloud.client("dynamodb")).list_runs(limit=20)[0]


def _post_burst(cloud: LocalCloud, n: int = 240) -> None:
    from lambdas.core import comfort

    samples = comfort.generate(n, 7, 0.05)
    reply = requests.post(f"{cloud.api_url}/upload", json=samples, headers=keyed(cloud), timeout=120)
    assert reply.status_code == 200, reply.text


def _wait(condition: Callable[[], bool], seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.3)
    return condition()


def test_removing_the_alarm_permission_never_leaves_an_instance_running_unguarded(
    make_cloud, tmp_path
) -> None:
    config = serverless.without_action(tmp_path, "TrainFunctionRole", "cloudwatch:PutMetricAlarm")
    cloud = make_cloud(config_path=config, drivers=("streams", "instances"))
    _post_burst(cloud)
    assert _wait(lambda: any(r.get("status") == "failed" for r in _runs(cloud)), 90)
    failed = next(r for r in _runs(cloud) if r.get("status") == "failed")
    assert "cloudwatch:PutMetricAlarm" in json.dumps(failed) or "alarm" in json.dumps(failed).lower()
    # every instance launched for it was terminated at once, and no alarm exists
    assert _wait(
        lambda: all(i["State"]["Name"] in ("shutting-down", "terminated") for i in _instances(cloud)), 30
    )
    assert _instances(cloud)
    assert cloud.client("cloudwatch").describe_alarms()["MetricAlarms"] == []


def test_without_the_spot_service_linked_role_permission_the_launch_falls_back_to_on_demand(
    make_cloud, tmp_path
) -> None:
    config = serverless.without_action(tmp_path, "TrainFunctionRole", "iam:CreateServiceLinkedRole")
    cloud = make_cloud(config_path=config, drivers=("streams",))
    _post_burst(cloud)
    assert _wait(lambda: bool(_instances(cloud)), 90)
    [instance] = _instances(cloud)
    assert instance.get("InstanceLifecycle") != "spot"
    assert "spot_unavailable" in (tmp_path / "functions.log").read_text()
    assert "ServiceLinkedRoleCreationNotPermitted" in (tmp_path / "functions.log").read_text()


def test_with_the_file_as_it_is_the_first_spot_launch_creates_the_service_linked_role(make_cloud) -> None:
    cloud = make_cloud(drivers=("streams",))
    iam = cloud.client("iam")
    assert not [r for r in iam.list_roles()["Roles"] if r["Path"] == "/aws-service-role/spot.amazonaws.com/"]
    _post_burst(cloud)
    assert _wait(lambda: bool(_instances(cloud)), 90)
    [instance] = _instances(cloud)
    assert instance.get("InstanceLifecycle") == "spot"
    assert [r for r in iam.list_roles()["Roles"] if r["Path"] == "/aws-service-role/spot.amazonaws.com/"]


def test_a_failing_stream_batch_reaches_the_failure_queue_through_the_functions_role(
    make_cloud, tmp_path
) -> None:
    # Without GetItem the train function fails on every batch (it reads the lock first).
    config = serverless.without_action(tmp_path, "TrainFunctionRole", "dynamodb:GetItem")
    cloud = make_cloud(config_path=config, drivers=("streams",))
    _post_burst(cloud, 30)
    sqs = cloud.client("sqs")
    url = cloud.stack.physical["TrainFailureQueue"]
    messages: list[dict[str, Any]] = []

    def arrived() -> bool:
        messages.extend(sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []))
        return bool(messages)

    assert _wait(arrived, 90)
    body = json.loads(messages[0]["Body"])
    assert "DDBStreamBatchInfo" in body
    assert body["DDBStreamBatchInfo"]["streamArn"] == cloud.stack.arns["DataTable.StreamArn"]
    assert not _instances(cloud)


# --- service limits moto does not apply, applied by the gate -----------------------------------


def test_the_local_endpoint_applies_dynamodb_and_ec2_limits_to_everyone(make_cloud) -> None:
    cloud = make_cloud()
    ddb = cloud.client("dynamodb")  # the administrator too: limits are the service's, not IAM's
    table = cloud.stack.table_name("DataTable")
    too_many = [{"PutRequest": {"Item": {"id": {"S": f"s{i}"}}}} for i in range(26)]
    with pytest.raises(ClientError) as batch:
        ddb.batch_write_item(RequestItems={table: too_many})
    assert batch.value.response["Error"]["Code"] == "ValidationException"
    ddb.batch_write_item(RequestItems={table: too_many[:25]})
    with pytest.raises(ClientError) as item:
        ddb.put_item(TableName=table, Item={"id": {"S": "big"}, "blob": {"S": "x" * (400 * 1024)}})
    assert item.value.response["Error"]["Code"] == "ValidationException"
    assert "Item size has exceeded the maximum allowed size" in item.value.response["Error"]["Message"]
    assert count(cloud, "DataTable") == 25
    with pytest.raises(ClientError) as user_data:
        cloud.client("ec2").run_instances(
            ImageId="ami-12c6146b", MinCount=1, MaxCount=1, UserData="#" * 16385
        )
    assert user_data.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert _instances(cloud) == [] and not cloud.client("ec2").describe_instances()["Reservations"]


def test_an_expired_or_sigv2_presigned_url_is_refused_as_s3_refuses_it(make_cloud) -> None:
    from botocore.config import Config

    cloud = make_cloud(environment={"PROXY_URL_EXPIRY_S": "1"})
    bucket = cloud.stack.physical["ModelBucket"]
    version = "v20261123T091432Z-1a2b"
    cloud.client("s3").put_object(Bucket=bucket, Key=f"models/{version}/model.json", Body=b"{}")
    reply = requests.get(f"{cloud.api_url}/s3proxy/{version}/model.json", timeout=60, allow_redirects=False)
    assert reply.status_code == 302
    time.sleep(2.5)
    expired = requests.get(reply.headers["Location"], timeout=10)
    assert expired.status_code == 403 and b"Request has expired" in expired.content
    sigv2 = boto3.client(
        "s3",
        endpoint_url=cloud.aws_url,
        region_name=cloud.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(signature_version="s3"),
    ).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": f"models/{version}/model.json"})
    assert "Signature=" in sigv2 and "X-Amz-Signature" not in sigv2
    refused = requests.get(sigv2, timeout=10)
    assert refused.status_code == 400 and b"InvalidRequest" in refused.content


def test_the_registry_lists_history_and_a_missing_model_is_a_409_not_a_403(make_cloud) -> None:
    """GET /models/history queries the by-kind index; promoting a run whose model.json is not in
    the bucket is a 409 only because the registry's role may list the bucket (without
    s3:ListBucket S3 answers the HeadObject with 403)."""
    cloud = make_cloud()
    registry = Registry(cloud.stack.table_name("ModelTable"), cloud.client("dynamodb"))
    version = "v20261130T010101Z-abcd"
    registry.create_run(version, sample_count=1)
    registry.update_run(version, status="published")
    history = requests.get(f"{cloud.api_url}/models/history", timeout=60)
    assert history.status_code == 200, history.text
    promoted = requests.post(
        f"{cloud.api_url}/models/{version}/promote",
        json={"reason": "t"},
        headers=keyed(cloud, operator=True),
        timeout=60,
    )
    assert promoted.status_code == 409, promoted.text
    assert "model.json" in promoted.json()["message"]


def test_the_trainer_reads_the_data_tables_size_only_with_its_describe_table_permission(make_cloud) -> None:
    from trainer import data

    cloud = make_cloud()
    table = cloud.stack.table_name("DataTable")
    trainer_role = as_role(cloud, "TrainInstanceRole", "dynamodb")
    assert data.table_bytes(table, trainer_role) == 0  # moto's size, as a new AWS table's
    with pytest.raises(ClientError) as denied:
        trainer_role.describe_table(TableName=cloud.stack.table_name("ModelTable"))
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    # A role without it: refused, and the scan goes on with the default segments.
    upload_role = as_role(cloud, "UploadFunctionRole", "dynamodb")
    assert data.table_bytes(table, upload_role) is None
    assert data.segments_for(data.table_bytes(table, upload_role)) == data.MIN_SEGMENTS


# --- the score function: live scoring under its own role ---------------------------------------

V1 = "v20261120T080000Z-0001"
V2 = "v20261121T080000Z-0002"


def _live_seen(cloud: LocalCloud, version: str) -> int:
    from lambdas.core import live

    store = live.LiveStore(cloud.stack.table_name("ModelTable"), client=cloud.client("dynamodb"))
    counts = store.totals([version]).get(version)
    return counts.seen if counts else 0


def test_the_score_role_writes_a_mark_only_with_its_counts_in_one_transaction(make_cloud) -> None:
    cloud = make_cloud()
    score = as_role(cloud, "ScoreFunctionRole", "dynamodb")
    data, models = cloud.stack.table_name("DataTable"), cloud.stack.table_name("ModelTable")
    cloud.client("dynamodb").put_item(TableName=data, Item={"id": {"S": "s-1"}, "label": {"S": "ok"}})
    recorded = count(cloud, "ModelTable")  # the default client's record, written at start
    mark = {
        "TableName": data,
        "Key": {"id": {"S": "s-1"}},
        "UpdateExpression": "SET scored_by = :v",
        "ConditionExpression": "attribute_not_exists(scored_by)",
        "ExpressionAttributeValues": {":v": {"S": V1}},
    }
    counts = {
        "TableName": models,
        "Key": {"pk": {"S": f"live#{V1}"}},
        "UpdateExpression": "ADD seen :one",
        "ExpressionAttributeValues": {":one": {"N": "1"}},
    }
    refused = [
        lambda: score.update_item(**mark),  # a plain UpdateItem: outside a transaction
        lambda: score.update_item(**counts),
        lambda: score.transact_write_items(
            TransactItems=[{"Put": {"TableName": models, "Item": {"pk": {"S": "latest"}}}}]
        ),
        lambda: score.put_item(TableName=models, Item={"pk": {"S": "latest"}, "version": {"S": V1}}),
        lambda: score.scan(TableName=data),
        lambda: score.batch_write_item(
            RequestItems={data: [{"DeleteRequest": {"Key": {"id": {"S": "s-1"}}}}]}
        ),
    ]
    for call in refused:
        with pytest.raises(ClientError) as denied:
            call()
        assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    assert count(cloud, "ModelTable") == recorded
    score.transact_write_items(TransactItems=[{"Update": mark}, {"Update": counts}])
    admin = cloud.client("dynamodb")
    assert admin.get_item(TableName=data, Key={"id": {"S": "s-1"}})["Item"]["scored_by"] == {"S": V1}
    assert admin.get_item(TableName=models, Key=counts["Key"])["Item"]["seen"] == {"N": "1"}
    history = score.query(
        TableName=models,
        IndexName="by-kind",
        KeyConditionExpression="kind = :k",
        ExpressionAttributeValues={":k": {"S": "history"}},
    )
    assert history["Items"] == []
    assert "Item" not in score.get_item(TableName=models, Key={"pk": {"S": "latest"}})


def test_the_score_function_scores_uploads_by_the_version_latest_at_ingestion(make_cloud) -> None:
    """Through the stream poller, the proxy and the gate, with the score function's own role: a
    pointer written before the history existed (read with GetItem), then a promotion (history,
    read with Query); GET /models shows both versions' live accuracy."""
    from scripts.bench_score import publish_constant

    cloud = make_cloud(drivers=("streams",))
    reg = Registry(cloud.stack.table_name("ModelTable"), cloud.client("dynamodb"))
    bucket = cloud.stack.physical["ModelBucket"]
    publish_constant(cloud.client("s3"), reg, bucket, V1, "ok", promote=False)
    cloud.client("dynamodb").put_item(
        TableName=cloud.stack.table_name("ModelTable"), Item={"pk": {"S": "latest"}, "version": {"S": V1}}
    )
    reply = requests.post(
        f"{cloud.api_url}/upload",
        json=[SAMPLE] * 2 + [{**SAMPLE, "label": "cold"}],
        headers=keyed(cloud),
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert _wait(lambda: _live_seen(cloud, V1) == 3, 60)
    publish_constant(cloud.client("s3"), reg, bucket, V2, "warm")
    time.sleep(0.01)
    reply = requests.post(
        f"{cloud.api_url}/upload", json=[{**SAMPLE, "label": "warm"}] * 2, headers=keyed(cloud), timeout=60
    )
    assert reply.status_code == 200, reply.text
    assert _wait(lambda: _live_seen(cloud, V2) == 2, 60)
    listing = requests.get(f"{cloud.api_url}/models", timeout=60)
    assert listing.status_code == 200, listing.text
    scored = {item["version"]: item["live"] for item in listing.json()["items"]}
    assert (scored[V1]["seen"], scored[V1]["correct"]) == (3, 2)
    assert (scored[V2]["seen"], scored[V2]["correct"]) == (2, 2)
    assert _live_seen(cloud, V1) == 3  # nothing counted twice meanwhile


def test_the_score_role_asks_for_a_retrain_only_through_the_lock_items_transaction(make_cloud) -> None:
    """The quality rule's request (lambdas/core/quality.py) needs no permission the score role
    lacked: a one-action TransactWriteItems on the lock item; a plain write is still refused."""
    from lambdas.core import lock

    cloud = make_cloud()
    models = cloud.stack.table_name("ModelTable")
    score = as_role(cloud, "ScoreFunctionRole", "dynamodb")
    with pytest.raises(ClientError) as denied:
        score.put_item(TableName=models, Item={"pk": {"S": "lock"}, "request": {"M": {}}})
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    locks = lock.LockStore(models, client=score)
    assert locks.request({"rule": "quality", "from_ms": 1, "seen": 40}) is True
    state = locks.read()
    assert state.request == {"rule": "quality", "from_ms": 1, "seen": 40} and state.rev == 1
    admin = lock.LockStore(models, client=cloud.client("dynamodb"))
    admin.write(state, lock.acquire(state, V1, time.time(), 60))
    assert locks.request({"rule": "quality", "from_ms": 2}) is False  # a run in flight


@pytest.mark.parametrize("rule", ["quality", "drift"])
def test_a_quality_drop_or_an_input_drift_starts_a_run_on_the_local_cloud(make_cloud, rule: str) -> None:
    """Uploads the serving model gets wrong (quality), or gets right but far from its training
    inputs (drift: every sample the same): the score function (its own role, the stream poller)
    asks for a retrain, the train function's schedule starts it with far fewer new samples than
    MIN_NEW_SAMPLES, and the run item says which rule started it."""
    import numpy as np

    from lambdas.core import comfort, drift
    from lambdas.core.schema import FEATURE_NAMES
    from scripts.bench_score import publish_constant

    env = {"QUALITY_MIN_SAMPLES": "30", "DRIFT_MIN_SAMPLES": "30", "MIN_NEW_SAMPLES": "200"}
    cloud = make_cloud(drivers=("streams",), environment=env)
    reg = Registry(cloud.stack.table_name("ModelTable"), cloud.client("dynamodb"))
    publish_constant(cloud.client("s3"), reg, cloud.stack.physical["ModelBucket"], V1, "ok")
    fields: dict[str, Any] = {"metrics": {"holdout": {"accuracy": 0.9, "count": 2000}}}
    if rule == "drift":
        rows = comfort.generate(1000, 1, 0.0)
        x = np.array([[r[name] for name in FEATURE_NAMES] for r in rows], dtype=np.float32)
        fields["input_profile"] = drift.profile(x).to_dict()
    reg.update_run(V1, expect_status=None, **fields)
    label = "warm" if rule == "quality" else "ok"  # the model answers "ok"
    reply = requests.post(
        f"{cloud.api_url}/upload", json=[{**SAMPLE, "label": label}] * 40, headers=keyed(cloud), timeout=60
    )
    assert reply.status_code == 200, reply.text

    def started() -> list[dict[str, Any]]:
        return [run for run in reg.list_runs(limit=10)[0] if run["version"] != V1]

    assert _wait(lambda: bool(started()), 90), "no run started"
    (run,) = started()
    assert run["trigger"]["rule"] == rule and run["trigger"]["new_samples"] < 200
    assert run["trigger"][rule]["seen"] == 40


def test_a_score_batch_given_up_on_reaches_its_own_failure_queue(make_cloud, tmp_path) -> None:
    # Without Query the score function cannot read the promotion history: every batch fails.
    config = serverless.without_action(tmp_path, "ScoreFunctionRole", "dynamodb:Query")
    cloud = make_cloud(config_path=config, drivers=("streams",))
    requests.post(
        f"{cloud.api_url}/upload", json=[SAMPLE] * 2, headers=keyed(cloud), timeout=60
    ).raise_for_status()
    sqs = cloud.client("sqs")
    url = cloud.stack.physical["ScoreFailureQueue"]
    messages: list[dict[str, Any]] = []

    def arrived() -> bool:
        messages.extend(sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []))
        return bool(messages)

    assert _wait(arrived, 90)
    body = json.loads(messages[0]["Body"])
    assert body["DDBStreamBatchInfo"]["streamArn"] == cloud.stack.arns["DataTable.StreamArn"]
    assert "dynamodb:Query" in (tmp_path / "functions.log").read_text()
    train_queue = cloud.stack.physical["TrainFailureQueue"]
    assert not sqs.receive_message(QueueUrl=train_queue).get("Messages")


def test_the_importer_role_may_change_the_lock_item_and_no_other_model_table_item(make_cloud) -> None:
    """dynamodb:LeadingKeys: the gate supplies the partition key's value of an item call, and the
    importer's model-table grant holds only for "lock" (its import holds)."""
    from lambdas.core import lock

    cloud = make_cloud()
    models = cloud.stack.table_name("ModelTable")
    importer = as_role(cloud, "ImporterFunctionRole", "dynamodb")
    holds = lock.LockStore(models, client=importer)
    now = time.time()
    holds.set_holds(lambda s: lock.hold(s, "imp-0000000000000001", int(now * 1000) + 60_000, now))
    state = lock.LockStore(models, client=cloud.client("dynamodb")).read()
    assert [i for i, _ in state.holds] == ["imp-0000000000000001"]
    for key in ("latest", f"live#{V1}"):
        with pytest.raises(ClientError) as denied:
            importer.update_item(
                TableName=models,
                Key={"pk": {"S": key}},
                UpdateExpression="SET version = :v",
                ExpressionAttributeValues={":v": {"S": V1}},
            )
        assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
        with pytest.raises(ClientError):
            importer.get_item(TableName=models, Key={"pk": {"S": key}})
