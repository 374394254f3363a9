"""checks() maps each call to what AWS authorizes; allowed() evaluates infra/serverless.yml's roles."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

import pytest

from localcloud import iam, infra
from localcloud.awsapi import ApiCall
from localcloud.iam import Check, UnmappedCall

ACCOUNT = "123456789012"
REGION = "us-east-1"
STACK = infra.load(stage="test", region=REGION, account=ACCOUNT)
DATA = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{STACK.table_name('DataTable')}"
MODEL = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{STACK.table_name('ModelTable')}"
DATA_STREAM = f"{DATA}/stream/2026-01-01T00:00:00.000"
BUCKET = f"autoretrain-test-models-{ACCOUNT}"
INSTANCE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/autoretrain-test-TrainInstanceRole"
PROFILE = f"arn:aws:iam::{ACCOUNT}:instance-profile/autoretrain-test-TrainInstanceProfile"
STACK.physical["NotificationsTopic"] = f"arn:aws:sns:{REGION}:{ACCOUNT}:autoretrain-test-notifications"
# Ref of an AWS::SecretsManager::Secret: its full ARN (name, hyphen, 6 random characters).
STACK.physical["HoldoutKeySecret"] = (
    f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:autoretrain-test/holdout-key-AbC123"
)
STACK.arns.update(
    {
        "DataTable.Arn": DATA,
        "DataTable.StreamArn": DATA_STREAM,
        "ModelTable.Arn": MODEL,
        "ModelTable.StreamArn": f"{MODEL}/stream/2026-01-01T00:00:00.000",
        "ModelBucket.Arn": f"arn:aws:s3:::{BUCKET}",
        "TrainerRepository.Arn": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/autoretrain-test-trainer",
        "TrainFailureQueue.Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:autoretrain-test-train-failures",
        "ScoreFailureQueue.Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:autoretrain-test-score-failures",
        "TrainInstanceRole.Arn": INSTANCE_ROLE,
    }
)


def policies(role: str) -> list[dict[str, Any]]:
    """The role's identity-based policies as serverless.yml declares them (Fn::If resolved)."""
    return list(STACK.role_policies(role).values())


class FakeWorld:
    def __init__(
        self,
        tags: Mapping[str, Mapping[str, str]] | None = None,
        spot_role: bool = True,
        missing_objects: frozenset[str] = frozenset(),
    ) -> None:
        self.tags = dict(tags or {})
        self.spot_role = spot_role
        self.missing_objects = missing_objects

    def instance_tags(self, instance_id: str) -> Mapping[str, str] | None:
        return self.tags.get(instance_id)

    def instance_profile_role_arns(self, profile: str) -> list[str]:
        return [INSTANCE_ROLE] if profile in (PROFILE, "autoretrain-test-TrainInstanceProfile") else []

    def service_linked_role_exists(self, service_name: str) -> bool:
        return self.spot_role

    def object_exists(self, bucket: str, key: str) -> bool:
        return key not in self.missing_objects


def call(service: str, operation: str, **params: Any) -> ApiCall:
    return ApiCall(service, operation, params, REGION, "AKID")


def checks(c: ApiCall, world: FakeWorld | None = None) -> list[Check]:
    return iam.checks(c, account=ACCOUNT, region=REGION, world=world or FakeWorld())


def all_allowed(role: str, c: ApiCall, world: FakeWorld | None = None) -> bool:
    return all(iam.allowed(policies(role), check) for check in checks(c, world))


ITEM = {"id": {"S": "a"}}


def launch(
    tags: list[dict[str, str]] | None = None, *, spot: bool = True, volume_tags: bool = True
) -> ApiCall:
    tags = [{"Key": "service", "Value": "autoretrain"}] if tags is None else tags
    specs = [{"ResourceType": "instance", "Tags": tags}]
    if volume_tags:
        specs.append({"ResourceType": "volume", "Tags": tags})
    params: dict[str, Any] = {
        "ImageId": "ami-0abc",
        "InstanceType": "c5.large",
        "MinCount": 1,
        "MaxCount": 1,
        "IamInstanceProfile": {"Arn": PROFILE},
        "TagSpecifications": specs,
    }
    if spot:
        params["InstanceMarketOptions"] = {
            "MarketType": "spot",
            "SpotOptions": {"SpotInstanceType": "one-time"},
        }
    return call("ec2", "RunInstances", **params)


# --- checks(): the mapping --------------------------------------------------------------


def test_checks_batch_write_item_names_every_table() -> None:
    c = call("dynamodb", "BatchWriteItem", RequestItems={"a": [{"PutRequest": {"Item": ITEM}}], "b": []})
    assert [(k.action, k.resource) for k in checks(c)] == [
        ("dynamodb:BatchWriteItem", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/a"),
        ("dynamodb:BatchWriteItem", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/b"),
    ]


@pytest.mark.parametrize("operation", ["GetItem", "PutItem", "UpdateItem", "DeleteItem", "DescribeTable"])
def test_checks_single_table_operations_name_the_table(operation: str) -> None:
    assert checks(call("dynamodb", operation, TableName="t")) == [
        Check(f"dynamodb:{operation}", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/t")
    ]


@pytest.mark.parametrize("operation", ["Query", "Scan"])
def test_checks_query_and_scan_on_an_index_name_the_index(operation: str) -> None:
    assert checks(
        call("dynamodb", operation, TableName="t", IndexName="by-kind", Segment=0, TotalSegments=2)
    ) == [Check(f"dynamodb:{operation}", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/t/index/by-kind")]


def test_checks_transact_write_items_authorizes_each_item_as_its_own_action() -> None:
    c = call(
        "dynamodb",
        "TransactWriteItems",
        TransactItems=[
            {"Put": {"TableName": "a", "Item": ITEM}},
            {"Update": {"TableName": "a", "Key": ITEM}},
            {"Delete": {"TableName": "b", "Key": ITEM}},
            {"ConditionCheck": {"TableName": "b", "Key": ITEM}},
        ],
    )
    assert [(k.action, k.resource.rsplit("/", 1)[1]) for k in checks(c)] == [
        ("dynamodb:PutItem", "a"),
        ("dynamodb:UpdateItem", "a"),
        ("dynamodb:DeleteItem", "b"),
        ("dynamodb:ConditionCheckItem", "b"),
    ]
    assert {k.context["dynamodb:EnclosingOperation"] for k in checks(c)} == {"TransactWriteItems"}
    # Outside a transaction there is no enclosing operation; a call on one item names its
    # partition key's value (dynamodb:LeadingKeys), in a transaction too.
    key_value = ITEM["id"]["S"]
    plain = checks(call("dynamodb", "UpdateItem", TableName="a", Key=ITEM))[0].context
    assert plain == {"dynamodb:LeadingKeys": [key_value]}
    leading = [k.context.get("dynamodb:LeadingKeys") for k in checks(c)]
    assert leading == [None, [key_value], [key_value], [key_value]]  # PutItem has no Key


def test_checks_transact_get_and_batch_get() -> None:
    assert checks(
        call("dynamodb", "TransactGetItems", TransactItems=[{"Get": {"TableName": "a", "Key": ITEM}}])
    ) == [
        Check(
            "dynamodb:GetItem",
            f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/a",
            {"dynamodb:EnclosingOperation": "TransactGetItems"},
        )
    ]
    assert checks(call("dynamodb", "BatchGetItem", RequestItems={"a": {"Keys": [ITEM]}})) == [
        Check("dynamodb:BatchGetItem", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/a")
    ]


def test_checks_get_records_recovers_the_stream_from_the_shard_iterator() -> None:
    c = call("dynamodbstreams", "GetRecords", ShardIterator=f"{DATA_STREAM}|1|AAAAopaque")
    assert checks(c) == [Check("dynamodb:GetRecords", DATA_STREAM)]


def test_checks_stream_operations_and_list_streams() -> None:
    assert checks(call("dynamodbstreams", "DescribeStream", StreamArn=DATA_STREAM)) == [
        Check("dynamodb:DescribeStream", DATA_STREAM)
    ]
    assert checks(call("dynamodbstreams", "ListStreams")) == [Check("dynamodb:ListStreams", "*")]


@pytest.mark.parametrize(
    ("operation", "action"),
    [
        ("GetObject", "s3:GetObject"),
        ("HeadObject", "s3:GetObject"),
        ("PutObject", "s3:PutObject"),
        ("DeleteObject", "s3:DeleteObject"),
    ],
)
def test_checks_s3_object_operations(operation: str, action: str) -> None:
    assert checks(call("s3", operation, Bucket="b", Key="models/v1/model.json")) == [
        Check(action, "arn:aws:s3:::b/models/v1/model.json")
    ]


@pytest.mark.parametrize("operation", ["ListObjectsV2", "ListObjects", "HeadBucket"])
def test_checks_s3_listing_is_list_bucket_on_the_bucket(operation: str) -> None:
    [check] = checks(call("s3", operation, Bucket="b"))
    assert (check.action, check.resource) == ("s3:ListBucket", "arn:aws:s3:::b")


def test_checks_run_instances_covers_resources_tags_pass_role_and_spot_role() -> None:
    found = checks(launch(), FakeWorld(spot_role=False))
    pairs = [(k.action, k.resource) for k in found]
    ec2 = f"arn:aws:ec2:{REGION}:{ACCOUNT}"
    for kind in (
        "instance",
        "volume",
        "network-interface",
        "spot-instances-request",
        "subnet",
        "security-group",
    ):
        assert ("ec2:RunInstances", f"{ec2}:{kind}/*") in pairs
    assert ("ec2:RunInstances", f"arn:aws:ec2:{REGION}::image/ami-0abc") in pairs
    instance = next(k for k in found if k.resource == f"{ec2}:instance/*" and k.action == "ec2:RunInstances")
    assert instance.context["aws:RequestTag/service"] == "autoretrain"
    assert instance.context["aws:TagKeys"] == ["service"]
    tagging = [k for k in found if k.action == "ec2:CreateTags"]
    assert {k.resource for k in tagging} == {f"{ec2}:instance/*", f"{ec2}:volume/*"}
    assert all(k.context["ec2:CreateAction"] == "RunInstances" for k in tagging)
    assert Check("iam:PassRole", INSTANCE_ROLE, {"iam:PassedToService": "ec2.amazonaws.com"}) in found
    slr = found[-1]
    assert slr.action == "iam:CreateServiceLinkedRole"
    assert (
        slr.resource
        == f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot"
    )
    assert slr.context == {"iam:AWSServiceName": "spot.amazonaws.com"}
    assert slr.denied_code == "AuthFailure.ServiceLinkedRoleCreationNotPermitted"


def test_checks_run_instances_skips_the_spot_role_once_it_exists() -> None:
    assert not [
        k for k in checks(launch(), FakeWorld(spot_role=True)) if k.action == "iam:CreateServiceLinkedRole"
    ]


def test_checks_terminate_instances_carries_the_instance_tags() -> None:
    world = FakeWorld({"i-1": {"service": "autoretrain"}})
    [check] = checks(call("ec2", "TerminateInstances", InstanceIds=["i-1"]), world)
    assert check.resource == f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-1"
    assert check.context["aws:ResourceTag/service"] == "autoretrain"


def test_checks_put_metric_alarm_with_tags_also_needs_tag_resource() -> None:
    c = call("cloudwatch", "PutMetricAlarm", AlarmName="x", Tags=[{"Key": "service", "Value": "autoretrain"}])
    arn = f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:x"
    assert [(k.action, k.resource) for k in checks(c)] == [
        ("cloudwatch:PutMetricAlarm", arn),
        ("cloudwatch:TagResource", arn),
    ]


def test_checks_other_services() -> None:
    queue = f"arn:aws:sqs:{REGION}:{ACCOUNT}:q"
    url = f"http://localhost:4566/{ACCOUNT}/q"
    assert checks(call("sqs", "SendMessageBatch", QueueUrl=url, Entries=[])) == [
        Check("sqs:SendMessage", queue)
    ]
    assert checks(call("sqs", "GetQueueUrl", QueueName="q")) == [Check("sqs:GetQueueUrl", queue)]
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:t"
    assert checks(call("sns", "Publish", TopicArn=topic, Message="m")) == [Check("sns:Publish", topic)]
    assert checks(call("ecr", "GetAuthorizationToken")) == [Check("ecr:GetAuthorizationToken", "*")]
    assert checks(call("ecr", "BatchGetImage", repositoryName="r", imageIds=[])) == [
        Check("ecr:BatchGetImage", f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/r")
    ]
    assert checks(
        call("logs", "PutLogEvents", logGroupName="/aws/lambda/f", logStreamName="s", logEvents=[])
    ) == [Check("logs:PutLogEvents", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/f:log-stream:s")]
    assert checks(call("sts", "GetCallerIdentity")) == []


def test_checks_refuses_an_unmapped_operation() -> None:
    with pytest.raises(UnmappedCall, match="dynamodb:DeleteTable"):
        checks(call("dynamodb", "DeleteTable", TableName="t"))


# --- allowed(): the real roles of serverless.yml ----------------------------------------


def test_upload_role_may_batch_write_the_data_table_only() -> None:
    ok = call("dynamodb", "BatchWriteItem", RequestItems={STACK.table_name("DataTable"): []})
    bad = call("dynamodb", "BatchWriteItem", RequestItems={STACK.table_name("ModelTable"): []})
    assert all_allowed("UploadFunctionRole", ok)
    assert not all_allowed("UploadFunctionRole", bad)


def test_train_role_may_run_instances_only_with_the_service_tag() -> None:
    assert all_allowed("TrainFunctionRole", launch())
    assert not all_allowed("TrainFunctionRole", launch([{"Key": "service", "Value": "other"}]))
    assert not all_allowed("TrainFunctionRole", launch([]))


def test_train_role_must_tag_the_volume_too() -> None:
    assert not all_allowed("TrainFunctionRole", launch(volume_tags=False))


def test_a_role_without_the_spot_service_linked_role_fails_with_aws_code() -> None:
    # The train role minus its iam:CreateServiceLinkedRole statements.
    trimmed = [
        {**p, "Statement": [s for s in p["Statement"] if s["Action"] != "iam:CreateServiceLinkedRole"]}
        for p in policies("TrainFunctionRole")
    ]
    found = checks(launch(), FakeWorld(spot_role=False))
    refused = [k for k in found if not iam.allowed(trimmed, k)]
    assert [k.denied_code for k in refused] == ["AuthFailure.ServiceLinkedRoleCreationNotPermitted"]


def test_train_role_may_launch_the_first_spot_instance_of_the_account() -> None:
    assert all_allowed("TrainFunctionRole", launch(), FakeWorld(spot_role=False))


def test_train_role_may_terminate_only_instances_of_this_service() -> None:
    world = FakeWorld({"i-ours": {"service": "autoretrain"}, "i-theirs": {"service": "other"}})
    assert all_allowed("TrainFunctionRole", call("ec2", "TerminateInstances", InstanceIds=["i-ours"]), world)
    assert not all_allowed(
        "TrainFunctionRole", call("ec2", "TerminateInstances", InstanceIds=["i-theirs"]), world
    )
    assert not all_allowed(
        "TrainFunctionRole", call("ec2", "TerminateInstances", InstanceIds=["i-untagged"]), world
    )


def test_train_role_may_pass_the_instance_role_only_to_ec2() -> None:
    to_ec2 = Check("iam:PassRole", INSTANCE_ROLE, {"iam:PassedToService": "ec2.amazonaws.com"})
    to_lambda = Check("iam:PassRole", INSTANCE_ROLE, {"iam:PassedToService": "lambda.amazonaws.com"})
    assert iam.allowed(policies("TrainFunctionRole"), to_ec2)
    assert not iam.allowed(policies("TrainFunctionRole"), to_lambda)
    assert not iam.allowed(policies("TrainFunctionRole"), Check("iam:PassRole", INSTANCE_ROLE, {}))


def test_train_role_may_create_only_the_spot_service_linked_role() -> None:
    assert all_allowed(
        "TrainFunctionRole", call("iam", "CreateServiceLinkedRole", AWSServiceName="spot.amazonaws.com")
    )
    assert not all_allowed(
        "TrainFunctionRole", call("iam", "CreateServiceLinkedRole", AWSServiceName="events.amazonaws.com")
    )
    other = call("iam", "CreateServiceLinkedRole", AWSServiceName="autoscaling.amazonaws.com")
    assert not all_allowed("TrainFunctionRole", other)


def test_train_role_alarms_are_limited_to_its_prefix() -> None:
    assert all_allowed(
        "TrainFunctionRole", call("cloudwatch", "PutMetricAlarm", AlarmName="autoretrain-test-train-v1")
    )
    assert not all_allowed(
        "TrainFunctionRole", call("cloudwatch", "PutMetricAlarm", AlarmName="someone-else")
    )


def test_train_role_tagged_alarm_needs_tag_resource_which_it_lacks() -> None:
    tagged = call(
        "cloudwatch",
        "PutMetricAlarm",
        AlarmName="autoretrain-test-train-v1",
        Tags=[{"Key": "a", "Value": "b"}],
    )
    assert not all_allowed("TrainFunctionRole", tagged)


def test_s3proxy_role_may_get_models_and_nothing_else() -> None:
    assert all_allowed(
        "S3ProxyFunctionRole", call("s3", "GetObject", Bucket=BUCKET, Key="models/v1/model.json")
    )
    assert all_allowed(
        "S3ProxyFunctionRole", call("s3", "HeadObject", Bucket=BUCKET, Key="models/latest/model.json")
    )
    assert not all_allowed("S3ProxyFunctionRole", call("s3", "GetObject", Bucket=BUCKET, Key="secrets/key"))
    assert not all_allowed(
        "S3ProxyFunctionRole", call("s3", "PutObject", Bucket=BUCKET, Key="models/v1/model.json")
    )


def test_resources_match_case_sensitively() -> None:
    # principalmapper's simulator would allow this (it matches resources ignoring case).
    assert not all_allowed(
        "S3ProxyFunctionRole", call("s3", "GetObject", Bucket=BUCKET, Key="MODELS/v1/model.json")
    )


def test_models_role_may_query_the_by_kind_index_only() -> None:
    table = STACK.table_name("ModelTable")
    assert all_allowed("ModelsFunctionRole", call("dynamodb", "Query", TableName=table, IndexName="by-kind"))
    assert not all_allowed("ModelsFunctionRole", call("dynamodb", "Query", TableName=table))


def test_infer_role_reads_s3_only_when_the_condition_says_so() -> None:
    # InferModelSource defaults to proxy: the Fn::If policy is AWS::NoValue.
    assert not all_allowed(
        "InferFunctionRole", call("s3", "GetObject", Bucket=BUCKET, Key="models/v1/model.json")
    )


def test_registry_role_transaction_needs_put_item_on_the_model_table() -> None:
    table = STACK.table_name("ModelTable")
    puts = call(
        "dynamodb", "TransactWriteItems", TransactItems=[{"Put": {"TableName": table, "Item": ITEM}}] * 2
    )
    update = call(
        "dynamodb", "TransactWriteItems", TransactItems=[{"Update": {"TableName": table, "Key": ITEM}}]
    )
    assert all_allowed("RegistryFunctionRole", puts)
    assert not all_allowed("RegistryFunctionRole", update)


def test_score_role_updates_both_tables_only_inside_a_transaction() -> None:
    data, model = STACK.table_name("DataTable"), STACK.table_name("ModelTable")
    together = call(
        "dynamodb",
        "TransactWriteItems",
        TransactItems=[
            {"Update": {"TableName": data, "Key": ITEM}},
            {"Update": {"TableName": model, "Key": {"pk": {"S": "live#v"}}}},
        ],
    )
    assert all_allowed("ScoreFunctionRole", together)
    for table in (data, model):
        assert not all_allowed("ScoreFunctionRole", call("dynamodb", "UpdateItem", TableName=table, Key=ITEM))
    put = call("dynamodb", "TransactWriteItems", TransactItems=[{"Put": {"TableName": model, "Item": ITEM}}])
    assert not all_allowed("ScoreFunctionRole", put)
    history = call("dynamodb", "Query", TableName=model, IndexName="by-kind")
    assert all_allowed("ScoreFunctionRole", history)
    assert not all_allowed("ScoreFunctionRole", call("dynamodb", "Query", TableName=data))
    assert all_allowed(
        "ModelsFunctionRole", call("dynamodb", "BatchGetItem", RequestItems={model: {"Keys": [ITEM]}})
    )
    assert not all_allowed(
        "ModelsFunctionRole", call("dynamodb", "BatchGetItem", RequestItems={data: {"Keys": [ITEM]}})
    )


def test_function_roles_may_log_to_their_own_group_only() -> None:
    own = call("logs", "PutLogEvents", logGroupName="/aws/lambda/autoretrain-test-upload", logStreamName="s")
    other = call("logs", "PutLogEvents", logGroupName="/aws/lambda/autoretrain-test-train", logStreamName="s")
    assert all_allowed("UploadFunctionRole", own)
    assert not all_allowed("UploadFunctionRole", other)


# --- allowed(): evaluation rules --------------------------------------------------------

ALLOW_ALL = {"Effect": "Allow", "Action": "*", "Resource": "*"}


def doc(*statements: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"Version": "2012-10-17", "Statement": list(statements)}]


def test_explicit_deny_wins_over_allow() -> None:
    deny = {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/secret/*"}
    assert not iam.allowed(doc(ALLOW_ALL, deny), Check("s3:GetObject", "arn:aws:s3:::b/secret/x"))
    assert iam.allowed(doc(ALLOW_ALL, deny), Check("s3:GetObject", "arn:aws:s3:::b/public/x"))


def test_default_is_deny() -> None:
    assert not iam.allowed([], Check("s3:GetObject", "arn:aws:s3:::b/x"))


def test_not_action_and_not_resource() -> None:
    policy = doc({"Effect": "Allow", "NotAction": "iam:*", "NotResource": "arn:aws:s3:::private/*"})
    assert iam.allowed(policy, Check("s3:GetObject", "arn:aws:s3:::b/x"))
    assert not iam.allowed(policy, Check("iam:PassRole", "arn:aws:iam::1:role/r"))
    assert not iam.allowed(policy, Check("s3:GetObject", "arn:aws:s3:::private/x"))


def test_actions_match_ignoring_case() -> None:
    policy = doc({"Effect": "Allow", "Action": "DynamoDB:getitem", "Resource": "*"})
    assert iam.allowed(policy, Check("dynamodb:GetItem", "arn:aws:dynamodb:r:a:table/t"))


def test_string_like_and_if_exists_and_for_any_value() -> None:
    like = doc(
        {
            "Effect": "Allow",
            "Action": "*",
            "Resource": "*",
            "Condition": {"StringLike": {"iam:AWSServiceName": "events.*"}},
        }
    )
    assert iam.allowed(
        like, Check("iam:CreateServiceLinkedRole", "*", {"iam:AWSServiceName": "events.amazonaws.com"})
    )
    assert not iam.allowed(like, Check("iam:CreateServiceLinkedRole", "*", {}))
    if_exists = doc(
        {
            "Effect": "Allow",
            "Action": "*",
            "Resource": "*",
            "Condition": {"StringEqualsIfExists": {"aws:RequestTag/service": "x"}},
        }
    )
    assert iam.allowed(if_exists, Check("a:b", "*", {}))
    assert not iam.allowed(if_exists, Check("a:b", "*", {"aws:RequestTag/service": "y"}))
    any_value = doc(
        {
            "Effect": "Allow",
            "Action": "*",
            "Resource": "*",
            "Condition": {"ForAnyValue:StringEquals": {"aws:TagKeys": ["service"]}},
        }
    )
    assert iam.allowed(any_value, Check("a:b", "*", {"aws:TagKeys": ["Name", "service"]}))
    assert not iam.allowed(any_value, Check("a:b", "*", {"aws:TagKeys": ["Name"]}))


def test_negated_operators_hold_when_the_key_is_missing() -> None:
    policy = doc(
        {
            "Effect": "Allow",
            "Action": "*",
            "Resource": "*",
            "Condition": {"StringNotLike": {"aws:RequestTag/env": "prod*"}},
        }
    )
    assert iam.allowed(policy, Check("a:b", "*", {}))
    assert not iam.allowed(policy, Check("a:b", "*", {"aws:RequestTag/env": "prod-1"}))


def test_arn_like_condition() -> None:
    policy = doc(
        {
            "Effect": "Allow",
            "Action": "*",
            "Resource": "*",
            "Condition": {"ArnLike": {"aws:SourceArn": "arn:aws:events:*:123456789012:rule/x-*"}},
        }
    )
    assert iam.allowed(
        policy,
        Check("sqs:SendMessage", "*", {"aws:SourceArn": "arn:aws:events:us-east-1:123456789012:rule/x-1"}),
    )
    assert not iam.allowed(
        policy, Check("sqs:SendMessage", "*", {"aws:SourceArn": "arn:aws:events:us-east-1:1:rule/y"})
    )
    # Each ARN component is matched on its own: "*" does not swallow the account's colon.
    spans = doc(
        {
            "Effect": "Allow",
            "Action": "*",
            "Resource": "*",
            "Condition": {"ArnLike": {"aws:SourceArn": "arn:aws:events:*"}},
        }
    )
    assert not iam.allowed(spans, Check("a:b", "*", {"aws:SourceArn": "arn:aws:events:us-east-1:1:rule/y"}))


def test_an_unvetted_operator_never_allows_and_always_denies() -> None:
    odd = {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"NumericLessThan": {"k": "5"}}}
    assert not iam.allowed(doc(odd), Check("a:b", "*", {"k": "1"}))
    deny = {**odd, "Effect": "Deny"}
    assert not iam.allowed(doc(ALLOW_ALL, deny), Check("a:b", "*", {"k": "9"}))


def test_resource_policy_variables_resolve_from_the_context() -> None:
    policy = doc(
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/${aws:username}/*"}
    )
    assert iam.allowed(policy, Check("s3:GetObject", "arn:aws:s3:::b/alice/x", {"aws:username": "alice"}))
    assert not iam.allowed(policy, Check("s3:GetObject", "arn:aws:s3:::b/bob/x", {"aws:username": "alice"}))


# --- the refusal on the wire ------------------------------------------------------------


def test_denial_message_is_aws_wording() -> None:
    check = Check("dynamodb:BatchWriteItem", MODEL)
    assert iam.denial_message("arn:aws:sts::1:assumed-role/r/s", check) == (
        "User: arn:aws:sts::1:assumed-role/r/s is not authorized to perform: dynamodb:BatchWriteItem "
        f"on resource: {MODEL} because no identity-based policy allows the dynamodb:BatchWriteItem action"
    )


def test_error_response_json() -> None:
    status, headers, body = iam.error_response(
        call("dynamodb", "PutItem"), "AccessDeniedException", "no", 400
    )
    assert status == 400
    assert ("x-amzn-ErrorType", "AccessDeniedException") in headers
    assert json.loads(body)["__type"].endswith("#AccessDeniedException")


def test_error_response_query_ec2_and_s3() -> None:
    _, _, body = iam.error_response(call("sns", "Publish"), "AuthorizationError", "no <", 403)
    assert ET.fromstring(body).findtext("Error/Code") == "AuthorizationError"
    _, _, body = iam.error_response(call("ec2", "RunInstances"), "UnauthorizedOperation", "no", 403)
    assert ET.fromstring(body).findtext("Errors/Error/Code") == "UnauthorizedOperation"
    _, _, body = iam.error_response(call("s3", "GetObject"), "AccessDenied", "no", 403)
    assert ET.fromstring(body).findtext("Code") == "AccessDenied"
    assert iam.error_response(call("s3", "HeadObject"), "AccessDenied", "no", 403)[2] == b""


@pytest.mark.parametrize("operation", ["GetObject", "HeadObject"])
def test_reading_a_missing_object_also_needs_list_bucket_to_learn_it_is_missing(operation: str) -> None:
    world = FakeWorld(missing_objects=frozenset({"models/v9/model.json"}))
    found = checks(call("s3", operation, Bucket=BUCKET, Key="models/v1/model.json"), world)
    missing = checks(call("s3", operation, Bucket=BUCKET, Key="models/v9/model.json"), world)
    assert [c.action for c in found] == ["s3:GetObject"]
    assert [c.action for c in missing] == ["s3:GetObject", "s3:ListBucket"]
    assert missing[1].resource == f"arn:aws:s3:::{BUCKET}"
    # the proxy and the registry may list the bucket: a missing file is their 404 / 409
    assert all(iam.allowed(policies("S3ProxyFunctionRole"), c) for c in missing)
    assert all(iam.allowed(policies("RegistryFunctionRole"), c) for c in missing)
    assert not all(iam.allowed(policies("TrainInstanceRole"), c) for c in missing)
