"""parse() recovers the operation and its parameters from real boto3 traffic.

Every request here is sent by boto3 to moto's server wrapped by a WSGI app that records what
came over the wire, so the tests check parse() against what botocore actually sends (the
protocol choices described in localcloud/awsapi.py), not against a hand-made request.
"""

from __future__ import annotations

import base64
import contextlib
import io
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

from localcloud import awsapi
from localcloud.awsapi import ApiCall, UnparsableRequest, WireRequest

REGION = "us-east-1"
ACCOUNT = "123456789012"


class _Capture:
    """moto's application, recording each request as a WireRequest before serving it."""

    def __init__(self) -> None:
        self.app = DomainDispatcherApplication(create_backend_app)
        self.requests: list[WireRequest] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ["PATH_INFO"]
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        self.requests.append(
            WireRequest(
                method=environ["REQUEST_METHOD"],
                path=raw.split("?", 1)[0],
                query=environ.get("QUERY_STRING", ""),
                headers=headers,
                body=body,
            )
        )
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def capture() -> Iterator[tuple[_Capture, str]]:
    app = _Capture()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield app, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def client(capture: tuple[_Capture, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    _, url = capture

    def make(service: str) -> Any:
        return boto3.session.Session(
            aws_access_key_id="AKIDTESTCAPTURE",
            aws_secret_access_key="secret",
            region_name=REGION,
        ).client(
            service,
            endpoint_url=url,
            config=Config(retries={"max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"}),
        )

    return make


def _call(capture: tuple[_Capture, str], client: Any, method: str, **kwargs: Any) -> ApiCall:
    """Send one call (its outcome in moto does not matter) and parse what went over the wire."""
    app, _ = capture
    app.requests.clear()
    with contextlib.suppress(ClientError):
        getattr(client, method)(**kwargs)
    calls = [c for c in (awsapi.parse(r) for r in app.requests) if c is not None]
    # moto answers some calls with an error boto3 retries once: the same call, twice.
    assert calls and all(c == calls[0] for c in calls), calls
    return calls[0]


SHARD = "shardId-00000001-0123456789ab"
ITEM = {"id": {"S": "a"}, "n": {"N": "1"}}

CASES: list[tuple[str, str, dict[str, Any], str, dict[str, Any]]] = [
    # (service, method, kwargs, expected operation, expected params subset)
    (
        "dynamodb",
        "batch_write_item",
        {
            "RequestItems": {
                "t1": [{"PutRequest": {"Item": ITEM}}, {"DeleteRequest": {"Key": {"id": {"S": "b"}}}}]
            }
        },
        "BatchWriteItem",
        {
            "RequestItems": {
                "t1": [{"PutRequest": {"Item": ITEM}}, {"DeleteRequest": {"Key": {"id": {"S": "b"}}}}]
            }
        },
    ),
    ("dynamodb", "get_item", {"TableName": "t", "Key": {"id": {"S": "a"}}}, "GetItem", {"TableName": "t"}),
    ("dynamodb", "put_item", {"TableName": "t", "Item": ITEM}, "PutItem", {"TableName": "t", "Item": ITEM}),
    (
        "dynamodb",
        "update_item",
        {
            "TableName": "t",
            "Key": {"id": {"S": "a"}},
            "UpdateExpression": "SET n = :n",
            "ExpressionAttributeValues": {":n": {"N": "2"}},
        },
        "UpdateItem",
        {"TableName": "t", "Key": {"id": {"S": "a"}}},
    ),
    (
        "dynamodb",
        "delete_item",
        {"TableName": "t", "Key": {"id": {"S": "a"}}},
        "DeleteItem",
        {"TableName": "t"},
    ),
    (
        "dynamodb",
        "query",
        {
            "TableName": "t",
            "IndexName": "by-kind",
            "KeyConditionExpression": "kind = :k",
            "ExpressionAttributeValues": {":k": {"S": "run"}},
        },
        "Query",
        {"TableName": "t", "IndexName": "by-kind"},
    ),
    (
        "dynamodb",
        "scan",
        {"TableName": "t", "Segment": 1, "TotalSegments": 4},
        "Scan",
        {"TableName": "t", "Segment": 1, "TotalSegments": 4},
    ),
    (
        "dynamodb",
        "transact_write_items",
        {
            "TransactItems": [
                {"Put": {"TableName": "t", "Item": ITEM}},
                {
                    "ConditionCheck": {
                        "TableName": "u",
                        "Key": {"id": {"S": "a"}},
                        "ConditionExpression": "attribute_exists(id)",
                    }
                },
            ]
        },
        "TransactWriteItems",
        {
            "TransactItems": [
                {"Put": {"TableName": "t", "Item": ITEM}},
                {
                    "ConditionCheck": {
                        "TableName": "u",
                        "Key": {"id": {"S": "a"}},
                        "ConditionExpression": "attribute_exists(id)",
                    }
                },
            ]
        },
    ),
    (
        "dynamodb",
        "transact_get_items",
        {"TransactItems": [{"Get": {"TableName": "t", "Key": {"id": {"S": "a"}}}}]},
        "TransactGetItems",
        {"TransactItems": [{"Get": {"TableName": "t", "Key": {"id": {"S": "a"}}}}]},
    ),
    (
        "dynamodb",
        "batch_get_item",
        {"RequestItems": {"t": {"Keys": [{"id": {"S": "a"}}]}}},
        "BatchGetItem",
        {"RequestItems": {"t": {"Keys": [{"id": {"S": "a"}}]}}},
    ),
    ("dynamodb", "describe_table", {"TableName": "t"}, "DescribeTable", {"TableName": "t"}),
    (
        "dynamodbstreams",
        "describe_stream",
        {"StreamArn": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/x"},
        "DescribeStream",
        {"StreamArn": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/x"},
    ),
    (
        "dynamodbstreams",
        "get_shard_iterator",
        {
            "StreamArn": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/x",
            "ShardId": SHARD,
            "ShardIteratorType": "TRIM_HORIZON",
        },
        "GetShardIterator",
        {"ShardId": SHARD, "ShardIteratorType": "TRIM_HORIZON"},
    ),
    (
        "dynamodbstreams",
        "get_records",
        {"ShardIterator": "i" * 10},
        "GetRecords",
        {"ShardIterator": "i" * 10},
    ),
    ("dynamodbstreams", "list_streams", {"TableName": "tbl"}, "ListStreams", {"TableName": "tbl"}),
    (
        "s3",
        "get_object",
        {"Bucket": "b", "Key": "models/v 1/model.json"},
        "GetObject",
        {"Bucket": "b", "Key": "models/v 1/model.json"},
    ),
    (
        "s3",
        "head_object",
        {"Bucket": "b", "Key": "models/a+b.bin"},
        "HeadObject",
        {"Bucket": "b", "Key": "models/a+b.bin"},
    ),
    (
        "s3",
        "put_object",
        {"Bucket": "b", "Key": "k", "Body": b"hello"},
        "PutObject",
        {"Bucket": "b", "Key": "k"},
    ),
    ("s3", "delete_object", {"Bucket": "b", "Key": "k"}, "DeleteObject", {"Bucket": "b", "Key": "k"}),
    (
        "s3",
        "list_objects_v2",
        {"Bucket": "b", "Prefix": "models/"},
        "ListObjectsV2",
        {"Bucket": "b", "Prefix": "models/"},
    ),
    (
        "s3",
        "list_objects",
        {"Bucket": "b", "Prefix": "models/"},
        "ListObjects",
        {"Bucket": "b", "Prefix": "models/"},
    ),
    ("s3", "head_bucket", {"Bucket": "b"}, "HeadBucket", {"Bucket": "b"}),
    ("s3", "create_bucket", {"Bucket": "b"}, "CreateBucket", {"Bucket": "b"}),
    (
        "s3",
        "put_bucket_cors",
        {
            "Bucket": "b",
            "CORSConfiguration": {"CORSRules": [{"AllowedMethods": ["GET"], "AllowedOrigins": ["*"]}]},
        },
        "PutBucketCors",
        {"Bucket": "b"},
    ),
    ("s3", "get_bucket_location", {"Bucket": "b"}, "GetBucketLocation", {"Bucket": "b"}),
    (
        "ec2",
        "run_instances",
        {
            "ImageId": "ami-12345678",
            "MinCount": 1,
            "MaxCount": 1,
            "InstanceType": "t3.micro",
            "UserData": "#!/bin/sh\n",
            "IamInstanceProfile": {"Arn": "arn:aws:iam::123456789012:instance-profile/p"},
            "InstanceMarketOptions": {"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time"}},
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": [{"Key": "service", "Value": "autoretrain"}]},
                {"ResourceType": "volume", "Tags": [{"Key": "service", "Value": "autoretrain"}]},
            ],
        },
        "RunInstances",
        {
            "ImageId": "ami-12345678",
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": base64.b64encode(b"#!/bin/sh\n").decode(),
            "IamInstanceProfile": {"Arn": "arn:aws:iam::123456789012:instance-profile/p"},
            "InstanceMarketOptions": {"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time"}},
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": [{"Key": "service", "Value": "autoretrain"}]},
                {"ResourceType": "volume", "Tags": [{"Key": "service", "Value": "autoretrain"}]},
            ],
        },
    ),
    (
        "ec2",
        "terminate_instances",
        {"InstanceIds": ["i-1", "i-2"]},
        "TerminateInstances",
        {"InstanceIds": ["i-1", "i-2"]},
    ),
    ("ec2", "describe_instances", {"InstanceIds": ["i-1"]}, "DescribeInstances", {"InstanceIds": ["i-1"]}),
    (
        "ec2",
        "create_tags",
        {"Resources": ["i-1"], "Tags": [{"Key": "k", "Value": "v"}]},
        "CreateTags",
        {"Resources": ["i-1"], "Tags": [{"Key": "k", "Value": "v"}]},
    ),
    (
        "cloudwatch",
        "put_metric_alarm",
        {
            "AlarmName": "a",
            "MetricName": "CPUUtilization",
            "Namespace": "AWS/EC2",
            "Statistic": "Average",
            "Period": 60,
            "EvaluationPeriods": 1,
            "Threshold": 5.0,
            "ComparisonOperator": "LessThanThreshold",
            "Tags": [{"Key": "service", "Value": "autoretrain"}],
        },
        "PutMetricAlarm",
        {"AlarmName": "a", "Tags": [{"Key": "service", "Value": "autoretrain"}]},
    ),
    ("cloudwatch", "delete_alarms", {"AlarmNames": ["a", "b"]}, "DeleteAlarms", {"AlarmNames": ["a", "b"]}),
    ("cloudwatch", "describe_alarms", {"AlarmNames": ["a"]}, "DescribeAlarms", {"AlarmNames": ["a"]}),
    (
        "cloudwatch",
        "put_metric_data",
        {"Namespace": "N", "MetricData": [{"MetricName": "m", "Value": 1.0}]},
        "PutMetricData",
        {"Namespace": "N"},
    ),
    (
        "cloudwatch",
        "get_metric_statistics",
        {
            "Namespace": "N",
            "MetricName": "m",
            "StartTime": 0,
            "EndTime": 60,
            "Period": 60,
            "Statistics": ["Average"],
        },
        "GetMetricStatistics",
        {"Namespace": "N", "MetricName": "m"},
    ),
    (
        "sqs",
        "send_message",
        {"QueueUrl": "http://localhost/123456789012/q", "MessageBody": "x"},
        "SendMessage",
        {"QueueUrl": "http://localhost/123456789012/q", "MessageBody": "x"},
    ),
    ("sqs", "get_queue_url", {"QueueName": "q"}, "GetQueueUrl", {"QueueName": "q"}),
    (
        "sns",
        "publish",
        {"TopicArn": "arn:aws:sns:us-east-1:123456789012:t", "Message": "m"},
        "Publish",
        {"TopicArn": "arn:aws:sns:us-east-1:123456789012:t", "Message": "m"},
    ),
    ("sns", "create_topic", {"Name": "t"}, "CreateTopic", {"Name": "t"}),
    ("ecr", "get_authorization_token", {}, "GetAuthorizationToken", {}),
    (
        "ecr",
        "batch_get_image",
        {"repositoryName": "repo", "imageIds": [{"imageTag": "latest"}]},
        "BatchGetImage",
        {"repositoryName": "repo"},
    ),
    (
        "logs",
        "put_log_events",
        {
            "logGroupName": "/aws/lambda/f",
            "logStreamName": "s",
            "logEvents": [{"timestamp": 1, "message": "m"}],
        },
        "PutLogEvents",
        {"logGroupName": "/aws/lambda/f", "logStreamName": "s"},
    ),
    (
        "iam",
        "create_service_linked_role",
        {"AWSServiceName": "spot.amazonaws.com"},
        "CreateServiceLinkedRole",
        {"AWSServiceName": "spot.amazonaws.com"},
    ),
    ("sts", "get_caller_identity", {}, "GetCallerIdentity", {}),
    (
        "sts",
        "assume_role",
        {"RoleArn": "arn:aws:iam::123456789012:role/r", "RoleSessionName": "session"},
        "AssumeRole",
        {"RoleArn": "arn:aws:iam::123456789012:role/r"},
    ),
    ("ssm", "get_parameter", {"Name": "/p"}, "GetParameter", {"Name": "/p"}),
]


@pytest.mark.parametrize(
    ("service", "method", "kwargs", "operation", "expected"), CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES]
)
def test_parse_recovers_operation_and_params_from_boto3_traffic(
    capture: Any,
    client: Any,
    service: str,
    method: str,
    kwargs: dict[str, Any],
    operation: str,
    expected: dict[str, Any],
) -> None:
    call = _call(capture, client(service), method, **kwargs)
    assert (call.service, call.operation) == (service, operation)
    assert call.region == REGION
    assert call.access_key == "AKIDTESTCAPTURE"
    for key, value in expected.items():
        assert call.params[key] == value, key


def test_parse_reads_a_sigv4_presigned_s3_url() -> None:
    s3 = boto3.session.Session(
        aws_access_key_id="AKIDPRESIGN", aws_secret_access_key="s", region_name=REGION
    ).client(
        "s3",
        endpoint_url="http://127.0.0.1:1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "models/latest/model.json"})
    rest = url.split("127.0.0.1:1", 1)[1]
    path, _, query = rest.partition("?")
    call = awsapi.parse(WireRequest("GET", path, query, {}, b""))
    assert call == ApiCall(
        "s3", "GetObject", {"Bucket": "b", "Key": "models/latest/model.json"}, REGION, "AKIDPRESIGN"
    )


def test_parse_ignores_moto_api_requests() -> None:
    assert awsapi.parse(WireRequest("POST", "/moto-api/reset", "", {}, b"")) is None


def test_parse_ignores_unsigned_requests() -> None:
    assert awsapi.parse(WireRequest("GET", "/", "", {"Host": "localhost"}, b"")) is None


def test_parse_refuses_a_cbor_request() -> None:
    headers = {
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/monitoring/aws4_request, x",
        "Content-Type": "application/cbor",
        "smithy-protocol": "rpc-v2-cbor",
    }
    with pytest.raises(UnparsableRequest, match="CBOR"):
        awsapi.parse(
            WireRequest(
                "POST",
                "/service/GraniteServiceVersion20100801/operation/PutMetricAlarm",
                "",
                headers,
                b"\xa0",
            )
        )


def test_parse_refuses_a_service_it_does_not_know() -> None:
    headers = {"Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/lambda/aws4_request, x"}
    with pytest.raises(UnparsableRequest):
        awsapi.parse(WireRequest("GET", "/2015-03-31/functions", "", headers, b""))
