"""Browser POST uploads and S3 event notifications on the local cloud: the gate verifies a
presigned POST as S3 does (signature over the policy, expiry, conditions, the signer's
s3:PutObject) and the S3 event driver invokes the importer once per object created under
imports/, shaped as S3's event, only with ImporterS3Permission, retried on error, and without
losing an event across a restart."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config

from localcloud import s3events
from localcloud.cloud import LocalCloud
from tests.support import serverless
from tests.support.clouds import QUIET, narrator, wait

pytestmark = pytest.mark.slow

BUCKET_ARN = {"Fn::GetAtt": ["ImportBucket", "Arn"]}


def _role(statements: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            },
            "Policies": [
                {"PolicyName": "test", "PolicyDocument": {"Version": "2012-10-17", "Statement": statements}}
            ],
        },
    }


def config(folder: Path, *, permission: bool = True) -> Path:
    """serverless.yml with two signer roles for the tests (one may put under imports/, one may
    only read), short asynchronous retries, and an ``importer`` function even before it is
    written (its handler is replaced in the tests)."""

    def change(cfg: dict[str, Any]) -> None:
        cfg["functions"].setdefault("importer", {"handler": "lambdas/importer.handler", "timeout": 30})
        cfg["custom"]["localCloud"]["asyncInvoke"] = {"retryDelaysSeconds": [0.2, 0.2]}
        resources = cfg["resources"]["Resources"]
        imports = {"Fn::Join": ["", [BUCKET_ARN, "/imports/*"]]}
        resources["TestPostSignerRole"] = _role(
            [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": imports}]
        )
        resources["TestReadOnlySignerRole"] = _role(
            [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": imports}]
        )
        if not permission:
            del resources["ImporterS3Permission"]

    return serverless.edited(folder, change)


class Importer:
    """A stand-in importer run in the test's process: records each event, fails on demand."""

    def __init__(self, failures: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.failures = failures
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> None:
        if "Records" not in event:  # the importer's own schedule, once it is declared
            return
        with self._lock:
            self.events.append(event)
            if self.failures:
                self.failures -= 1
                raise RuntimeError("failing on purpose")

    def keys(self) -> list[str]:
        return [e["Records"][0]["s3"]["object"]["key"] for e in self.events]


def start(state: Path, cfg: Path, importer: Importer, said: list[str], **kwargs: Any) -> LocalCloud:
    kwargs.setdefault("drivers", ("s3events",))
    return LocalCloud(
        state,
        config_path=cfg,
        schedule_overrides=QUIET,
        handlers={"importer": importer},
        function_log=state.parent / "functions.log",
        web_dir=None,
        say=narrator(said),
        **kwargs,
    ).start()


@pytest.fixture
def cloud_with(tmp_path: Path) -> Any:
    started: list[LocalCloud] = []

    def make(importer: Importer, said: list[str] | None = None, *, permission: bool = True) -> LocalCloud:
        (tmp_path / f"cfg{len(started)}").mkdir()
        cfg = config(tmp_path / f"cfg{len(started)}", permission=permission)
        cloud = start(tmp_path / f"state{len(started)}", cfg, importer, said if said is not None else [])
        started.append(cloud)
        return cloud

    yield make
    for cloud in started:
        cloud.stop()


def signer_s3(cloud: LocalCloud, role: str | None) -> Any:
    """An s3v4 client (as lambdas/core/aws.py makes it) of a role, or of the administrator."""
    creds = (
        cloud.role_credentials(role)
        if role
        else {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": None}
    )
    return boto3.client(
        "s3",
        endpoint_url=cloud.aws_url,
        region_name=cloud.region,
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=creds["AWS_SESSION_TOKEN"],
        config=Config(signature_version="s3v4"),
    )


def presign(
    cloud: LocalCloud,
    key: str,
    *,
    role: str | None = "TestPostSignerRole",
    max_bytes: int = 100,
    expires: int = 900,
) -> dict[str, Any]:
    bucket = cloud.stack.physical["ImportBucket"]
    return signer_s3(cloud, role).generate_presigned_post(
        bucket,
        key,
        Conditions=[["eq", "$key", key], ["content-length-range", 1, max_bytes]],
        ExpiresIn=expires,
    )


def post(upload: dict[str, Any], body: bytes, **extra: str) -> requests.Response:
    return requests.post(
        upload["url"], data={**upload["fields"], **extra}, files={"file": ("history.csv", body)}, timeout=30
    )


def stored(cloud: LocalCloud, key: str) -> bool:
    reply = cloud.client("s3").list_objects_v2(Bucket=cloud.stack.physical["ImportBucket"], Prefix=key)
    return any(o["Key"] == key for o in reply.get("Contents", []))


def test_a_presigned_post_within_its_limits_is_stored_and_notifies_the_importer_once(cloud_with) -> None:
    importer = Importer()
    cloud = cloud_with(importer)
    bucket = cloud.stack.physical["ImportBucket"]
    body = b"temp,rh,wind,clo,label\n75,60,0.6,1.0,ok\n"
    reply = post(presign(cloud, "imports/imp-0123456789abcdef.csv"), body)
    assert reply.status_code == 204, reply.text
    assert stored(cloud, "imports/imp-0123456789abcdef.csv")
    s3 = cloud.client("s3")
    s3.put_object(Bucket=bucket, Key="elsewhere/x.csv", Body=b"1")  # another prefix: no event
    s3.put_object(Bucket=bucket, Key="imports/a b+c.csv", Body=b"12")
    wait(lambda: len(importer.events) >= 2, 20, "two events")
    time.sleep(1)  # nothing more comes
    assert importer.keys() == ["imports/imp-0123456789abcdef.csv", "imports/a+b%2Bc.csv"]

    record = importer.events[0]["Records"][0]
    etag = s3.head_object(Bucket=bucket, Key="imports/imp-0123456789abcdef.csv")["ETag"].strip('"')
    assert record["eventVersion"] == "2.1"
    assert record["eventSource"] == "aws:s3"
    assert record["awsRegion"] == cloud.region
    assert record["eventName"] == "ObjectCreated:Post"
    assert record["eventTime"].endswith("Z")
    assert "TestPostSignerRole" in record["userIdentity"]["principalId"]
    assert record["s3"]["s3SchemaVersion"] == "1.0"
    assert record["s3"]["configurationId"]
    assert record["s3"]["bucket"] == {
        "name": bucket,
        "ownerIdentity": {"principalId": cloud.stack.account},
        "arn": f"arn:aws:s3:::{bucket}",
    }
    assert record["s3"]["object"]["size"] == len(body)
    assert record["s3"]["object"]["eTag"] == etag
    second = importer.events[1]["Records"][0]
    assert second["eventName"] == "ObjectCreated:Put"
    assert int(second["s3"]["object"]["sequencer"], 16) > int(record["s3"]["object"]["sequencer"], 16)


def _error(reply: requests.Response) -> tuple[int, str, str]:
    text = reply.text
    code = text.split("<Code>")[1].split("</Code>")[0] if "<Code>" in text else ""
    message = text.split("<Message>")[1].split("</Message>")[0] if "<Message>" in text else ""
    return reply.status_code, code, message


def _tampered(upload: dict[str, Any]) -> dict[str, Any]:
    policy = json.loads(base64.b64decode(upload["fields"]["policy"]))
    policy["conditions"] = [
        c for c in policy["conditions"] if not (isinstance(c, list) and c[0] == "content-length-range")
    ]
    policy["conditions"].append(["content-length-range", 1, 10**9])
    fields = {**upload["fields"], "policy": base64.b64encode(json.dumps(policy).encode()).decode()}
    return {**upload, "fields": fields}


def _moved(upload: dict[str, Any]) -> dict[str, Any]:
    return {**upload, "fields": {**upload["fields"], "key": "imports/imp-ffffffffffffffff.csv"}}


def test_a_presigned_post_is_refused_as_s3_refuses_it(cloud_with) -> None:
    importer = Importer()
    cloud = cloud_with(importer)
    key = "imports/imp-0123456789abcdef.csv"
    ok = presign(cloud, key, max_bytes=10)
    cases: list[tuple[str, Callable[[], requests.Response], tuple[int, str, str]]] = [
        ("too large", lambda: post(ok, b"x" * 11), (400, "EntityTooLarge", "exceeds the maximum")),
        ("empty", lambda: post(ok, b""), (400, "EntityTooSmall", "smaller than the minimum")),
        (
            "another key",
            lambda: post(_moved(ok), b"x"),
            (
                403,
                "AccessDenied",
                f'Invalid according to Policy: Policy Condition failed: ["eq", "$key", "{key}"]',
            ),
        ),
        (
            "an extra field",
            lambda: post(ok, b"x", **{"x-amz-meta-a": "1"}),
            (403, "AccessDenied", "Invalid according to Policy: Extra input fields: x-amz-meta-a"),
        ),
        ("a tampered policy", lambda: post(_tampered(ok), b"x" * 11), (403, "SignatureDoesNotMatch", "")),
        (
            "a signer without s3:PutObject",
            lambda: post(presign(cloud, key, role="TestReadOnlySignerRole"), b"x"),
            (403, "AccessDenied", "s3:PutObject"),
        ),
    ]
    for what, attempt, (status, code, message) in cases:
        got = _error(attempt())
        assert got[:2] == (status, code), (what, got)
        assert message in got[2], (what, got)
    expiring = presign(cloud, key, expires=1)
    time.sleep(2.1)
    assert _error(post(expiring, b"x")) == (
        403,
        "AccessDenied",
        "Invalid according to Policy: Policy expired.",
    )
    sigv2 = boto3.client(
        "s3",
        endpoint_url=cloud.aws_url,
        region_name=cloud.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(signature_version="s3"),
    ).generate_presigned_post(cloud.stack.physical["ImportBucket"], key)
    assert "AWSAccessKeyId" in sigv2["fields"]
    assert _error(post(sigv2, b"x"))[:2] == (400, "InvalidRequest")
    assert not stored(cloud, key)
    assert importer.events == []


def test_a_form_that_moto_could_read_otherwise_than_the_gate_is_refused_and_nothing_is_written(
    cloud_with,
) -> None:
    importer = Importer()
    cloud = cloud_with(importer)
    bucket = cloud.stack.physical["ImportBucket"]
    signed = "imports/imp-0123456789abcdef.csv"
    ok = presign(cloud, signed, max_bytes=10)
    # The policy says key eq imports/imp-....csv; a second key field in another letter case used
    # to pass that check while moto wrote the first one, spelled "key".
    smuggled = [("key", "imports/evil.csv"), *((k, v) for k, v in ok["fields"].items() if k != "key")]
    smuggled.append(("KEY", signed))
    reply = requests.post(ok["url"], data=smuggled, files={"file": ("history.csv", b"x")}, timeout=30)
    status, code, message = _error(reply)
    assert (status, code) == (400, "InvalidArgument"), reply.text
    assert "'key' more than once" in message
    # A second file part (moto stores the last one) would get past content-length-range.
    extra_file = {"file": ("history.csv", b"x"), "zzz": ("big.csv", b"x" * 1000)}
    reply = requests.post(ok["url"], data=ok["fields"], files=extra_file, timeout=30)
    assert _error(reply)[:2] == (400, "InvalidArgument"), reply.text
    # ?delete would make moto delete the keys listed in the file, under a PutObject policy.
    s3 = cloud.client("s3")
    s3.put_object(Bucket=bucket, Key="elsewhere/keep.csv", Body=b"1")
    delete = b"<Delete><Object><Key>elsewhere/keep.csv</Key></Object></Delete>"
    roomy = presign(cloud, signed, max_bytes=100)  # the XML is within the policy's size
    reply = requests.post(
        roomy["url"] + "?delete", data=roomy["fields"], files={"file": ("d.xml", delete)}, timeout=30
    )
    assert _error(reply)[:2] == (400, "InvalidArgument"), reply.text
    assert stored(cloud, "elsewhere/keep.csv")
    assert not stored(cloud, "imports/evil.csv")
    assert not stored(cloud, signed)
    time.sleep(1)
    assert importer.events == []


def test_without_the_s3_permission_the_importer_is_not_invoked_and_the_cloud_says_why(cloud_with) -> None:
    importer = Importer()
    said: list[str] = []
    cloud = cloud_with(importer, said, permission=False)
    s3 = cloud.client("s3")
    for n in range(2):
        s3.put_object(Bucket=cloud.stack.physical["ImportBucket"], Key=f"imports/imp-{n}.csv", Body=b"1")
    wait(lambda: any("NOT DELIVERED" in line for line in said), 20, "the refusal")
    time.sleep(1)
    assert importer.events == []
    refusals = [line for line in said if "NOT DELIVERED" in line]
    assert len(refusals) == 1 and "s3.amazonaws.com" in refusals[0]


def test_a_failing_importer_is_retried_twice_then_the_event_is_dropped(cloud_with) -> None:
    importer = Importer(failures=5)
    said: list[str] = []
    cloud = cloud_with(importer, said)
    cloud.client("s3").put_object(
        Bucket=cloud.stack.physical["ImportBucket"], Key="imports/imp-1.csv", Body=b"1"
    )
    wait(lambda: len(importer.events) >= 3, 20, "three attempts")
    time.sleep(1)
    assert len(importer.events) == 3  # the first attempt and two retries
    assert importer.events[0] == importer.events[2]
    assert any("dropped" in line for line in said)
    # an importer that recovers on its retry gets the next event delivered
    importer.failures = 1
    cloud.client("s3").put_object(
        Bucket=cloud.stack.physical["ImportBucket"], Key="imports/imp-2.csv", Body=b"1"
    )
    wait(lambda: len(importer.events) >= 5, 20, "a failure and a retry")
    time.sleep(1)
    assert importer.keys()[3:] == ["imports/imp-2.csv", "imports/imp-2.csv"]


def test_an_object_created_while_the_driver_was_down_is_delivered_after_a_restart_once(
    tmp_path: Path,
) -> None:
    (tmp_path / "cfg").mkdir()
    cfg = config(tmp_path / "cfg")
    state = tmp_path / "state"
    importer = Importer()
    said: list[str] = []
    first = start(state, cfg, importer, said, drivers=(), durable=True)
    try:
        bucket = first.stack.physical["ImportBucket"]
        first.client("s3").put_object(Bucket=bucket, Key="imports/imp-while-down.csv", Body=b"1")
    finally:
        first.stop()
    second = start(state, cfg, importer, said, durable=True)
    try:
        wait(lambda: importer.events, 20, "the event kept across the restart")
        second.client("s3").put_object(Bucket=bucket, Key="imports/imp-after.csv", Body=b"2")
        wait(lambda: len(importer.events) >= 2, 20, "the next event")
    finally:
        second.stop()
    third = start(state, cfg, importer, said, durable=True)
    try:
        time.sleep(1.5)
    finally:
        third.stop()
    assert importer.keys() == ["imports/imp-while-down.csv", "imports/imp-after.csv"]


def test_the_event_key_is_url_encoded_as_s3_encodes_it() -> None:
    assert s3events.encode_key("imports/red flower.jpg") == "imports/red+flower.jpg"
    assert s3events.encode_key("imports/a+b=c.csv") == "imports/a%2Bb%3Dc.csv"


def test_a_post_upload_and_its_event_survive_a_crash_of_the_aws_endpoint(tmp_path: Path) -> None:
    """The upload is journaled and its event logged before the client is answered: after a
    kill -9 the object is back (the journal replays the form) and so is its event."""
    from localcloud.awsserver import AwsServer

    server = AwsServer(state_dir=tmp_path / "aws").start()
    try:
        admin = boto3.client(
            "s3",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(signature_version="s3v4"),
        )
        admin.create_bucket(Bucket="crash-test")
        upload = admin.generate_presigned_post(
            "crash-test", "imports/x.csv", Conditions=[["content-length-range", 1, 10]], ExpiresIn=60
        )
        assert post(upload, b"1,2\n").status_code == 204
        server.kill()
        server = AwsServer(state_dir=tmp_path / "aws").start()
        admin = boto3.client(
            "s3",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        assert admin.get_object(Bucket="crash-test", Key="imports/x.csv")["Body"].read() == b"1,2\n"
        log = requests.get(f"{server.url}{s3events.LOG_PATH}?after=0", timeout=10).json()["records"]
        assert [(r["key"], r["eventName"], r["size"]) for r in log] == [
            ("imports/x.csv", "ObjectCreated:Post", 4)
        ]
    finally:
        server.stop()
