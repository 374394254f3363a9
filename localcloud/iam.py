"""The authorizations an AWS call needs, and their evaluation against a role's policies.

The local cloud refuses what AWS refuses: every call a function makes is checked against the
identity-based policies its role has in ``infra/serverless.yml``, on action AND resource ARN
AND the condition keys AWS supplies. moto's own enforcement (``moto/iam/access_control.py``)
matches actions only (resources only for S3) and ignores conditions, so it is not enough.

:func:`checks` maps an :class:`~localcloud.awsapi.ApiCall` to the (action, resource, context)
triples AWS evaluates, per the Service Authorization Reference page of each service (cited
next to each mapping). An operation not mapped here raises :class:`UnmappedCall`: strict
beats lenient, the caller refuses it.

Evaluator: a small one, here, after trying both existing ones.

- principalmapper 1.1.5 (its local policy simulator handles conditions, NotAction, policy
  variables) does not import on Python 3.10+: ``principalmapper/util/case_insensitive_dict.py``
  does ``from collections import Mapping`` (moved to ``collections.abc`` in 3.3, removed in
  3.10), and ``local_policy_simulation`` imports it at module level. It is also wrong where
  it matters here: it matches the Resource element ignoring case and without escaping regex
  characters, where IAM compares ARNs case-sensitively, and StringNotLike on a missing key is
  false (IAM: true). It is not a dependency of the project.
- moto's ``moto/iam/access_control.py`` ``IAMPolicyStatement`` is wrong for identity
  policies with conditions: an Allow statement whose condition fails returns DENIED (an
  explicit deny), so the train role's second, unconditioned RunInstances statement could
  never allow the AMI; a ``NotResource`` statement matches every resource; actions match
  case-sensitively; ``.``, ``?`` are left as regex syntax; its conditions
  (``moto/iam/policy_conditions.py``) know string equality only.

So :func:`allowed` implements IAM's documented logic directly (sources next to the code):
Action/NotAction (case-insensitive globs), Resource/NotResource (case-sensitive globs with
policy variables), and the condition operators the project's policies use plus their near
relatives: String(Not)Equals(IgnoreCase), String(Not)Like, Arn(Not)Equals, Arn(Not)Like,
Bool, Null, with IfExists and ForAnyValue/ForAllValues. A statement with any other operator
never allows and always denies (fail closed).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlparse
from xml.sax.saxutils import escape

from localcloud.awsapi import ApiCall


@dataclass(frozen=True)
class Check:
    action: str  # "dynamodb:BatchWriteItem"
    resource: str  # full ARN, or "*" where the action has no resource type
    context: Mapping[str, str | list[str]] = field(default_factory=dict)
    denied_code: str | None = None  # AWS's error code when this fails, if not the usual one


class World(Protocol):
    """Facts about existing resources an authorization needs (the middleware answers them
    from moto's state)."""

    def instance_tags(self, instance_id: str) -> Mapping[str, str] | None: ...

    def instance_profile_role_arns(self, profile: str) -> list[str]: ...  # profile ARN or name

    def service_linked_role_exists(self, service_name: str) -> bool: ...  # "spot.amazonaws.com"

    def object_exists(self, bucket: str, key: str) -> bool: ...

    # The full ARN (name, hyphen, 6 random characters) of the secret a SecretId names (a name,
    # a partial ARN or a full ARN), None when no secret matches.
    def secret_arn(self, secret_id: str) -> str | None: ...


class UnmappedCall(Exception):
    """An operation this module does not know how to authorize: the middleware refuses it."""


def checks(call: ApiCall, *, account: str, region: str, world: World) -> list[Check]:
    """Every authorization AWS evaluates for ``call``; all must pass. Empty for a call that
    needs no permission (sts:GetCallerIdentity)."""
    region = call.region or region
    mapper = _MAPPERS.get((call.service, call.operation))
    if mapper is None:
        raise UnmappedCall(f"{call.service}:{call.operation} is not mapped to IAM authorizations")
    out: list[Check] = []
    for check in mapper(call.params, account, region, world):
        if check not in out:
            out.append(check)
    return out


# --- DynamoDB --------------------------------------------------------------------------
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazondynamodb.html
# Resource types: table arn:aws:dynamodb:<r>:<a>:table/<t>, index .../table/<t>/index/<i>,
# stream .../table/<t>/stream/<label>. Transactions are authorized per item, as the item's
# own action (TransactWriteItems Put -> dynamodb:PutItem, ConditionCheck ->
# dynamodb:ConditionCheckItem; TransactGetItems Get -> dynamodb:GetItem), with the condition key
# dynamodb:EnclosingOperation naming the transaction, so a policy can allow an action only
# inside one ("Example 2: Allow only transactional operations"; a plain call has no such key):
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis-iam.html


def _table(name: str, account: str, region: str) -> str:
    # Every table parameter also accepts the table's ARN.
    return name if name.startswith("arn:") else f"arn:aws:dynamodb:{region}:{account}:table/{name}"


def _dynamodb_table_op(action: str) -> Any:
    def mapper(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
        arn = _table(p["TableName"], account, region)
        if p.get("IndexName"):
            arn = f"{arn}/index/{p['IndexName']}"
        return [Check(f"dynamodb:{action}", arn, {})]

    return mapper


def _leading_keys(key: Mapping[str, Any] | None) -> dict[str, Any]:
    """``dynamodb:LeadingKeys`` of a call on one item: the partition key's value, as the
    condition compares it ("Using IAM policy conditions for fine-grained access control",
    https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/specifying-conditions.html).
    Known only from a ``Key`` with a single attribute (a table without a sort key, every table
    here); otherwise none, and a ForAllValues condition on it holds vacuously, as on AWS for a
    call without the key."""
    if not key or len(key) != 1:
        return {}
    [value] = key.values()
    scalar = next(iter(value.values())) if isinstance(value, dict) and value else None
    return {"dynamodb:LeadingKeys": [str(scalar)]} if scalar is not None else {}


def _dynamodb_item_op(action: str) -> Any:
    def mapper(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
        arn = _table(p["TableName"], account, region)
        return [Check(f"dynamodb:{action}", arn, _leading_keys(p.get("Key")))]

    return mapper


def _dynamodb_batch(action: str) -> Any:
    def mapper(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
        return [Check(f"dynamodb:{action}", _table(t, account, region), {}) for t in p["RequestItems"]]

    return mapper


_TRANSACT_WRITE_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


_IN_TRANSACT_WRITE = {"dynamodb:EnclosingOperation": "TransactWriteItems"}
_IN_TRANSACT_GET = {"dynamodb:EnclosingOperation": "TransactGetItems"}


def _transact_write(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
    out = []
    for item in p["TransactItems"]:
        for kind, body in item.items():
            action = f"dynamodb:{_TRANSACT_WRITE_ACTIONS[kind]}"
            context = {**_IN_TRANSACT_WRITE, **_leading_keys(body.get("Key"))}
            out.append(Check(action, _table(body["TableName"], account, region), context))
    return out


def _transact_get(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
    return [
        Check("dynamodb:GetItem", _table(i["Get"]["TableName"], account, region), _IN_TRANSACT_GET)
        for i in p["TransactItems"]
    ]


def _stream_op(action: str) -> Any:
    def mapper(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
        return [Check(f"dynamodb:{action}", p["StreamArn"])]

    return mapper


def _get_records(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
    # A shard iterator, in AWS and in moto alike, is "<stream ARN>|1|<opaque>".
    stream_arn = p["ShardIterator"].split("|", 1)[0]
    if not stream_arn.startswith("arn:aws:dynamodb:"):
        raise UnmappedCall("dynamodbstreams:GetRecords: the shard iterator names no stream ARN")
    return [Check("dynamodb:GetRecords", stream_arn)]


# --- S3 --------------------------------------------------------------------------------
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazons3.html
# HeadObject is authorized as s3:GetObject and HeadBucket as s3:ListBucket (API reference,
# "Permissions" of HeadObject / HeadBucket); ListObjects(V2) as s3:ListBucket on the bucket,
# with s3:prefix in the context.


def _s3_object(action: str) -> Any:
    def mapper(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
        out = [Check(f"s3:{action}", f"arn:aws:s3:::{p['Bucket']}/{p['Key']}")]
        if action == "GetObject" and not world.object_exists(p["Bucket"], p["Key"]):
            # A missing object is a 404 only to a caller that may also list the bucket; to
            # anyone else it is a 403 (GetObject / HeadObject API reference, "Permissions":
            # https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html).
            out.append(Check("s3:ListBucket", f"arn:aws:s3:::{p['Bucket']}"))
        return out

    return mapper


def _s3_bucket(action: str) -> Any:
    def mapper(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
        context: dict[str, str | list[str]] = {}
        if action == "ListBucket" and "Prefix" in p:
            context["s3:prefix"] = p["Prefix"]
        return [Check(f"s3:{action}", f"arn:aws:s3:::{p['Bucket']}", context)]

    return mapper


# --- EC2 -------------------------------------------------------------------------------
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonec2.html
# RunInstances: image*, instance*, network-interface*, security-group*, subnet*, volume*
# are required resource types; key-pair and spot-instances-request when used. Tags given at
# launch are authorized twice: aws:RequestTag/aws:TagKeys on RunInstances for the tagged
# resource, and ec2:CreateTags on it with ec2:CreateAction=RunInstances:
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/supported-iam-actions-tagging.html
# Launching with an instance profile needs iam:PassRole on its role:
# https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_use_switch-role-ec2.html
# The first spot launch creates the EC2 Spot service-linked role, failing with
# AuthFailure.ServiceLinkedRoleCreationNotPermitted without iam:CreateServiceLinkedRole:
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/service-linked-roles-spot-instance-requests.html

_EC2_ID_PREFIXES = {
    "i": "instance",
    "vol": "volume",
    "eni": "network-interface",
    "sg": "security-group",
    "subnet": "subnet",
    "sir": "spot-instances-request",
    "ami": "image",
    "snap": "snapshot",
    "lt": "launch-template",
}
SPOT_SERVICE = "spot.amazonaws.com"
_SERVICE_LINKED_ROLE_NAMES = {
    SPOT_SERVICE: "AWSServiceRoleForEC2Spot",
    "events.amazonaws.com": "AWSServiceRoleForCloudWatchEvents",
}


def _ec2_arn(kind: str, ident: str, account: str, region: str) -> str:
    # Public images have no owner account in their ARN.
    owner = "" if kind in ("image", "snapshot") else account
    return f"arn:aws:ec2:{region}:{owner}:{kind}/{ident}"


def _ec2_arn_for_id(ident: str, account: str, region: str) -> str:
    kind = _EC2_ID_PREFIXES.get(ident.split("-", 1)[0])
    if kind is None:
        raise UnmappedCall(f"ec2: cannot tell the resource type of {ident!r}")
    return _ec2_arn(kind, ident, account, region)


def _tag_context(tags: Iterable[Mapping[str, str]]) -> dict[str, str | list[str]]:
    context: dict[str, str | list[str]] = {f"aws:RequestTag/{t['Key']}": t.get("Value", "") for t in tags}
    context["aws:TagKeys"] = [t["Key"] for t in tags]
    return context


def _resource_tag_context(tags: Mapping[str, str] | None) -> dict[str, str | list[str]]:
    context: dict[str, str | list[str]] = {}
    for key, value in (tags or {}).items():
        context[f"aws:ResourceTag/{key}"] = value
        context[f"ec2:ResourceTag/{key}"] = value
    return context


def _run_instances(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
    tags_by_type: dict[str, list[dict[str, str]]] = {}
    for spec in p.get("TagSpecifications") or []:
        tags_by_type.setdefault(spec["ResourceType"], []).extend(spec.get("Tags") or [])
    spot = (p.get("InstanceMarketOptions") or {}).get("MarketType") == "spot"

    created = ["instance", "volume", "network-interface"] + (["spot-instances-request"] if spot else [])
    out = []
    for kind in created:
        context = _tag_context(tags_by_type[kind]) if kind in tags_by_type else {}
        if kind == "instance":
            context = {**context, "ec2:InstanceType": p.get("InstanceType", "m1.small")}
            context["ec2:InstanceMarketType"] = "spot" if spot else "on-demand"
        out.append(Check("ec2:RunInstances", _ec2_arn(kind, "*", account, region), context))
    # Used, not created. Without explicit ids the default subnet/security group is used: its
    # id is not known here, so the check names the type ("*"), which only a statement
    # granting every subnet / security group allows (stricter than AWS, never laxer).
    out.append(Check("ec2:RunInstances", _ec2_arn("image", p["ImageId"], account, region)))
    subnet = p.get("SubnetId") or "*"
    out.append(Check("ec2:RunInstances", _ec2_arn("subnet", subnet, account, region)))
    for group in p.get("SecurityGroupIds") or ["*"]:
        out.append(Check("ec2:RunInstances", _ec2_arn("security-group", group, account, region)))
    if p.get("KeyName"):
        out.append(Check("ec2:RunInstances", _ec2_arn("key-pair", p["KeyName"], account, region)))
    if p.get("LaunchTemplate"):
        raise UnmappedCall("ec2:RunInstances with a launch template is not mapped")

    for kind, tags in tags_by_type.items():
        context = {**_tag_context(tags), "ec2:CreateAction": "RunInstances"}
        out.append(Check("ec2:CreateTags", _ec2_arn(kind, "*", account, region), context))

    profile = p.get("IamInstanceProfile") or {}
    profile_ref = profile.get("Arn") or profile.get("Name")
    if profile_ref:
        for role_arn in world.instance_profile_role_arns(profile_ref):
            out.append(Check("iam:PassRole", role_arn, {"iam:PassedToService": "ec2.amazonaws.com"}))

    if spot and not world.service_linked_role_exists(SPOT_SERVICE):
        out.append(
            Check(
                "iam:CreateServiceLinkedRole",
                _service_linked_role_arn(SPOT_SERVICE, account),
                {"iam:AWSServiceName": SPOT_SERVICE},
                denied_code="AuthFailure.ServiceLinkedRoleCreationNotPermitted",
            )
        )
    return out


def _terminate_instances(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
    return [
        Check(
            "ec2:TerminateInstances",
            _ec2_arn("instance", i, account, region),
            _resource_tag_context(world.instance_tags(i)),
        )
        for i in p["InstanceIds"]
    ]


def _create_tags(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
    out = []
    for ident in p["Resources"]:
        context = _tag_context(p.get("Tags") or [])
        if ident.startswith("i-"):
            context.update(_resource_tag_context(world.instance_tags(ident)))
        out.append(Check("ec2:CreateTags", _ec2_arn_for_id(ident, account, region), context))
    return out


# --- CloudWatch ------------------------------------------------------------------------
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazoncloudwatch.html
# alarm arn:aws:cloudwatch:<r>:<a>:alarm:<name>. PutMetricAlarm with Tags also needs
# cloudwatch:TagResource (botocore's model, PutMetricAlarm Tags: "To be able to associate tags
# with the alarm when you create the alarm, you must have the cloudwatch:TagResource
# permission."). PutMetricData, GetMetricData, GetMetricStatistics, DescribeAlarms: "*".


def _alarm(name: str, account: str, region: str) -> str:
    return f"arn:aws:cloudwatch:{region}:{account}:alarm:{name}"


def _put_metric_alarm(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
    arn = _alarm(p["AlarmName"], account, region)
    tags = p.get("Tags") or []
    context = _tag_context(tags) if tags else {}
    out = [Check("cloudwatch:PutMetricAlarm", arn, context)]
    if tags:
        out.append(Check("cloudwatch:TagResource", arn, context))
    return out


def _delete_alarms(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
    return [Check("cloudwatch:DeleteAlarms", _alarm(n, account, region)) for n in p["AlarmNames"]]


def _put_metric_data(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
    return [Check("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": p["Namespace"]})]


# --- SQS, SNS --------------------------------------------------------------------------
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonsqs.html
# queue arn:aws:sqs:<r>:<a>:<name>; the batch operations are authorized as their single
# forms (SendMessageBatch -> sqs:SendMessage, DeleteMessageBatch -> sqs:DeleteMessage).
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonsns.html
# topic arn:aws:sns:<r>:<a>:<name>.


def _queue_from_url(url: str, account: str, region: str) -> str:
    parts = [s for s in urlparse(url).path.split("/") if s]
    if len(parts) < 2:
        raise UnmappedCall(f"sqs: cannot read a queue from {url!r}")
    return f"arn:aws:sqs:{region}:{parts[-2]}:{parts[-1]}"


def _sqs(action: str) -> Any:
    def mapper(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
        if "QueueUrl" in p:
            return [Check(f"sqs:{action}", _queue_from_url(p["QueueUrl"], account, region))]
        owner = p.get("QueueOwnerAWSAccountId") or account
        return [Check(f"sqs:{action}", f"arn:aws:sqs:{region}:{owner}:{p['QueueName']}")]

    return mapper


def _sns_publish(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
    target = p.get("TopicArn") or p.get("TargetArn")
    if not target:
        raise UnmappedCall("sns:Publish to a phone number is not mapped")
    return [Check("sns:Publish", target)]


def _sns_subscribe(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
    return [Check("sns:Subscribe", p["TopicArn"])]


def _sns_create_topic(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
    tags = p.get("Tags") or []
    return [
        Check(
            "sns:CreateTopic",
            f"arn:aws:sns:{region}:{account}:{p['Name']}",
            _tag_context(tags) if tags else {},
        )
    ]


# --- ECR, Logs, SSM --------------------------------------------------------------------
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonelasticcontainerregistry.html
# repository arn:aws:ecr:<r>:<a>:repository/<name>; GetAuthorizationToken: "*".
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazoncloudwatchlogs.html
# log-stream arn:aws:logs:<r>:<a>:log-group:<group>:log-stream:<stream> for PutLogEvents and
# CreateLogStream (which is why policies grant "log-group:<group>:*").
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_awssystemsmanager.html
# parameter arn:aws:ssm:<r>:<a>:parameter/<name without its leading slash>.


def _ecr_repository(action: str) -> Any:
    def mapper(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
        owner = p.get("registryId") or account
        return [Check(f"ecr:{action}", f"arn:aws:ecr:{region}:{owner}:repository/{p['repositoryName']}")]

    return mapper


def _logs_stream(action: str) -> Any:
    def mapper(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
        group, stream = p["logGroupName"], p["logStreamName"]
        return [
            Check(f"logs:{action}", f"arn:aws:logs:{region}:{account}:log-group:{group}:log-stream:{stream}")
        ]

    return mapper


def _ssm_parameters(action: str) -> Any:
    def mapper(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
        names = p.get("Names") or [p["Name"]]
        return [
            Check(f"ssm:{action}", f"arn:aws:ssm:{region}:{account}:parameter/{n.lstrip('/')}") for n in names
        ]

    return mapper


# --- Secrets Manager -------------------------------------------------------------------
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_awssecretsmanager.html
# GetSecretValue: access level Read, resource type Secret (required),
# arn:${Partition}:secretsmanager:${Region}:${Account}:secret:${SecretId}, where the secret's
# ARN ends in a hyphen and 6 random characters Secrets Manager adds to its name. A request may
# name the secret by name, partial ARN (without those characters) or full ARN (GetSecretValue
# API reference, SecretId; "Finding a secret from a partial ARN", Secrets Manager user guide);
# AWS authorizes against the secret's own full ARN, so a policy that names the full ARN (Ref of
# an AWS::SecretsManager::Secret) allows every form. An ARN that ends in a hyphen and 6
# characters is taken as complete, as Secrets Manager takes it ("if your secret has a name that
# ends in a hyphen followed by six characters ... Secrets Manager assume[s] that you're
# specifying a complete ARN": GetSecretValue, SecretId); a name or a partial ARN is resolved by
# the World. For a SecretId that names no secret, the check is on what the caller named (a
# policy naming a real secret never allows it: stricter than AWS, which answers
# ResourceNotFoundException or AccessDeniedException depending on the caller's permissions).
_COMPLETE_SECRET_ARN = re.compile(r"arn:[^:]+:secretsmanager:[^:]+:[0-9]+:secret:.+-[A-Za-z0-9]{6}")


def _secret(action: str) -> Any:
    def mapper(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
        secret_id = str(p["SecretId"])
        if _COMPLETE_SECRET_ARN.fullmatch(secret_id):
            return [Check(f"secretsmanager:{action}", secret_id)]
        arn = world.secret_arn(secret_id)
        if arn is None:
            arn = (
                secret_id
                if secret_id.startswith("arn:")
                else f"arn:aws:secretsmanager:{region}:{account}:secret:{secret_id}"
            )
        return [Check(f"secretsmanager:{action}", arn)]

    return mapper


# --- IAM, STS --------------------------------------------------------------------------
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsidentityandaccessmanagementiam.html
# iam:CreateServiceLinkedRole on arn:aws:iam::<a>:role/aws-service-role/<service>/<role>,
# with iam:AWSServiceName. sts:GetCallerIdentity needs no permission:
# https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html


def _service_linked_role_arn(service: str, account: str) -> str:
    name = _SERVICE_LINKED_ROLE_NAMES.get(service, "*")
    return f"arn:aws:iam::{account}:role/aws-service-role/{service}/{name}"


def _create_service_linked_role(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
    service = p["AWSServiceName"]
    return [
        Check(
            "iam:CreateServiceLinkedRole",
            _service_linked_role_arn(service, account),
            {"iam:AWSServiceName": service},
        )
    ]


def _assume_role(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
    return [Check("sts:AssumeRole", p["RoleArn"])]


def _no_resource(action: str) -> Any:
    def mapper(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
        return [Check(action, "*")]

    return mapper


def _nothing(p: dict[str, Any], account: str, region: str, world: World) -> list[Check]:
    return []


_MAPPERS: dict[tuple[str, str], Any] = {
    ("dynamodb", "BatchWriteItem"): _dynamodb_batch("BatchWriteItem"),
    ("dynamodb", "BatchGetItem"): _dynamodb_batch("BatchGetItem"),
    ("dynamodb", "GetItem"): _dynamodb_item_op("GetItem"),
    ("dynamodb", "PutItem"): _dynamodb_table_op("PutItem"),
    ("dynamodb", "UpdateItem"): _dynamodb_item_op("UpdateItem"),
    ("dynamodb", "DeleteItem"): _dynamodb_item_op("DeleteItem"),
    ("dynamodb", "Query"): _dynamodb_table_op("Query"),
    ("dynamodb", "Scan"): _dynamodb_table_op("Scan"),
    ("dynamodb", "DescribeTable"): _dynamodb_table_op("DescribeTable"),
    ("dynamodb", "TransactWriteItems"): _transact_write,
    ("dynamodb", "TransactGetItems"): _transact_get,
    ("dynamodbstreams", "DescribeStream"): _stream_op("DescribeStream"),
    ("dynamodbstreams", "GetShardIterator"): _stream_op("GetShardIterator"),
    ("dynamodbstreams", "GetRecords"): _get_records,
    ("dynamodbstreams", "ListStreams"): _no_resource("dynamodb:ListStreams"),
    ("s3", "GetObject"): _s3_object("GetObject"),
    ("s3", "HeadObject"): _s3_object("GetObject"),
    ("s3", "PutObject"): _s3_object("PutObject"),
    # A browser-based POST upload (no botocore operation; the gate names it PostObject) is
    # authorized as s3:PutObject of its key for the policy's signer (POST Object, "Permissions":
    # https://docs.aws.amazon.com/AmazonS3/latest/API/RESTObjectPOST.html).
    ("s3", "PostObject"): _s3_object("PutObject"),
    ("s3", "DeleteObject"): _s3_object("DeleteObject"),
    ("s3", "ListObjectsV2"): _s3_bucket("ListBucket"),
    ("s3", "ListObjects"): _s3_bucket("ListBucket"),
    ("s3", "HeadBucket"): _s3_bucket("ListBucket"),
    ("s3", "CreateBucket"): _s3_bucket("CreateBucket"),
    ("s3", "PutBucketCors"): _s3_bucket("PutBucketCORS"),
    ("s3", "GetBucketLocation"): _s3_bucket("GetBucketLocation"),
    ("ec2", "RunInstances"): _run_instances,
    ("ec2", "TerminateInstances"): _terminate_instances,
    ("ec2", "DescribeInstances"): _no_resource("ec2:DescribeInstances"),
    ("ec2", "CreateTags"): _create_tags,
    ("cloudwatch", "PutMetricAlarm"): _put_metric_alarm,
    ("cloudwatch", "DeleteAlarms"): _delete_alarms,
    ("cloudwatch", "DescribeAlarms"): _no_resource("cloudwatch:DescribeAlarms"),
    ("cloudwatch", "PutMetricData"): _put_metric_data,
    ("cloudwatch", "GetMetricData"): _no_resource("cloudwatch:GetMetricData"),
    ("cloudwatch", "GetMetricStatistics"): _no_resource("cloudwatch:GetMetricStatistics"),
    ("sqs", "SendMessage"): _sqs("SendMessage"),
    ("sqs", "SendMessageBatch"): _sqs("SendMessage"),
    ("sqs", "ReceiveMessage"): _sqs("ReceiveMessage"),
    ("sqs", "DeleteMessage"): _sqs("DeleteMessage"),
    ("sqs", "DeleteMessageBatch"): _sqs("DeleteMessage"),
    ("sqs", "GetQueueUrl"): _sqs("GetQueueUrl"),
    ("sqs", "GetQueueAttributes"): _sqs("GetQueueAttributes"),
    ("sns", "Publish"): _sns_publish,
    ("sns", "Subscribe"): _sns_subscribe,
    ("sns", "CreateTopic"): _sns_create_topic,
    ("ecr", "GetAuthorizationToken"): _no_resource("ecr:GetAuthorizationToken"),
    ("ecr", "BatchGetImage"): _ecr_repository("BatchGetImage"),
    ("ecr", "GetDownloadUrlForLayer"): _ecr_repository("GetDownloadUrlForLayer"),
    ("ecr", "BatchCheckLayerAvailability"): _ecr_repository("BatchCheckLayerAvailability"),
    ("logs", "CreateLogStream"): _logs_stream("CreateLogStream"),
    ("logs", "PutLogEvents"): _logs_stream("PutLogEvents"),
    ("ssm", "GetParameter"): _ssm_parameters("GetParameter"),
    ("ssm", "GetParameters"): _ssm_parameters("GetParameters"),
    ("secretsmanager", "GetSecretValue"): _secret("GetSecretValue"),
    ("iam", "CreateServiceLinkedRole"): _create_service_linked_role,
    ("sts", "AssumeRole"): _assume_role,
    ("sts", "GetCallerIdentity"): _nothing,
}

MAPPED: frozenset[tuple[str, str]] = frozenset(_MAPPERS)


# --- evaluation ------------------------------------------------------------------------
# https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html
# Within one account and identity-based policies only: an explicit Deny wins, then any Allow,
# else the implicit deny.


def allowed(policies: Sequence[Mapping[str, Any]], check: Check) -> bool:
    """Whether the identity-based ``policies`` of one role allow ``check``."""
    context = {k.lower(): ([v] if isinstance(v, str) else list(v)) for k, v in check.context.items()}
    statements = [s for policy in policies for s in _listify(policy.get("Statement"))]
    if any(_statement_matches(s, "Deny", check, context) for s in statements):
        return False
    return any(_statement_matches(s, "Allow", check, context) for s in statements)


def _statement_matches(
    statement: Mapping[str, Any], effect: str, check: Check, context: Mapping[str, list[str]]
) -> bool:
    if statement.get("Effect") != effect:
        return False
    # https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_action.html
    # Action names are case-insensitive.
    if "Action" in statement:
        if not any(_glob(a, check.action, {}, ignore_case=True) for a in _listify(statement["Action"])):
            return False
    elif "NotAction" in statement:
        if any(_glob(a, check.action, {}, ignore_case=True) for a in _listify(statement["NotAction"])):
            return False
    else:
        return False
    if not _resource_matches(statement, check.resource, context):
        return False
    condition = statement.get("Condition") or {}
    if not all(_operator(block) is not None for block in condition):
        return effect == "Deny"  # fail closed on an operator not implemented here
    return all(
        _condition(block, key, _listify(expected), context)
        for block, keys in condition.items()
        for key, expected in keys.items()
    )


def _resource_matches(statement: Mapping[str, Any], resource: str, context: Mapping[str, list[str]]) -> bool:
    # https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_resource.html
    # (and _notresource.html): case-sensitive ARNs, wildcards within them.
    if "Resource" in statement:
        return any(_glob(p, resource, context) for p in _listify(statement["Resource"]))
    if "NotResource" in statement:
        return not any(_glob(p, resource, context) for p in _listify(statement["NotResource"]))
    return False  # an identity-based statement without either is invalid


# https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html
_NEGATED = {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotEquals", "ArnNotLike"}
_OPERATORS = {
    "StringEquals",
    "StringEqualsIgnoreCase",
    "StringLike",
    "ArnEquals",
    "ArnLike",
    "Bool",
    "Null",
    *_NEGATED,
}


def _operator(block: str) -> tuple[str, str, bool] | None:
    """(set qualifier or "", operator, IfExists) of a condition block, None if unknown."""
    qualifier, _, name = block.rpartition(":")
    if qualifier not in ("", "ForAnyValue", "ForAllValues"):
        return None
    if_exists = name.endswith("IfExists") and name != "Null"
    if if_exists:
        name = name[: -len("IfExists")]
    return (qualifier, name, if_exists) if name in _OPERATORS else None


def _condition(block: str, key: str, expected: list[Any], context: Mapping[str, list[str]]) -> bool:
    parsed = _operator(block)
    assert parsed is not None
    qualifier, name, if_exists = parsed
    wanted = [str(v).lower() if isinstance(v, bool) else str(v) for v in expected]
    actual = context.get(key.lower()) or []
    if name == "Null":  # "true": the key must be absent
        return any((not actual) == (w.lower() == "true") for w in wanted)
    # https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-single-vs-multi-valued-context-keys.html
    if qualifier == "ForAllValues":
        return not actual or all(_value_matches(name, a, wanted) for a in actual)
    if qualifier == "ForAnyValue":
        return any(_value_matches(name, a, wanted) for a in actual)
    if not actual:
        # A missing key fails a condition, unless IfExists; negated operators then hold.
        return if_exists or name in _NEGATED
    matched = any(_value_matches(name, a, wanted) for a in actual)
    return not matched if name in _NEGATED else matched


def _value_matches(name: str, actual: str, wanted: list[str]) -> bool:
    """Whether ``actual`` matches any of ``wanted`` for the positive form of operator ``name``."""
    base = name.replace("Not", "", 1) if name in _NEGATED else name
    if base == "StringEquals":
        return actual in wanted
    if base == "StringEqualsIgnoreCase":
        return actual.lower() in {w.lower() for w in wanted}
    if base == "StringLike":
        return any(_glob(w, actual, {}) for w in wanted)
    if base in ("ArnEquals", "ArnLike"):
        return any(_arn_like(w, actual) for w in wanted)
    if base == "Bool":
        return actual.lower() in {w.lower() for w in wanted}
    return False


def _arn_like(pattern: str, arn: str) -> bool:
    """ArnEquals/ArnLike: each of the six colon-separated components matched on its own,
    case-sensitively, with wildcards (the last component keeps its own colons)."""
    want, have = pattern.split(":", 5), arn.split(":", 5)
    if len(want) != 6 or len(have) != 6:
        return False
    return all(_glob(w, h, {}) for w, h in zip(want, have, strict=True))


def _glob(pattern: str, value: str, context: Mapping[str, list[str]], *, ignore_case: bool = False) -> bool:
    """IAM wildcard match: ``*`` any run, ``?`` one character, ``${key}`` a policy variable
    from the request context (``${*}``, ``${?}``, ``${$}`` the literal characters)."""
    out = []
    for piece in re.split(r"(\$\{[^}]+\})", pattern):
        if piece.startswith("${") and piece.endswith("}"):
            key = piece[2:-1]
            if key in ("*", "?", "$"):
                out.append(re.escape(key))
                continue
            found = context.get(key.lower())
            if not found or len(found) != 1:
                return False  # an unresolvable variable matches nothing
            out.append(re.escape(found[0]))
        else:
            out.append(re.escape(piece).replace(r"\*", ".*").replace(r"\?", "."))
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.fullmatch("".join(out), value, flags=flags) is not None


def _listify(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


# --- denial on the wire ----------------------------------------------------------------


def denial_message(principal_arn: str, check: Check) -> str:
    """AWS's wording for an implicit deny by identity-based policies.
    https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_access-denied.html"""
    return (
        f"User: {principal_arn} is not authorized to perform: {check.action} on resource: "
        f"{check.resource} because no identity-based policy allows the {check.action} action"
    )


# The code and status each service answers an authorization failure with (its API
# reference, "Common Errors"; EC2: "Error codes for the Amazon EC2 API").
_DENIED: dict[str, tuple[str, int]] = {
    "dynamodb": ("AccessDeniedException", 400),
    "dynamodbstreams": ("AccessDeniedException", 400),
    "ecr": ("AccessDeniedException", 400),
    "logs": ("AccessDeniedException", 400),
    "ssm": ("AccessDeniedException", 400),
    "secretsmanager": ("AccessDeniedException", 400),
    "sqs": ("AccessDenied", 403),
    "cloudwatch": ("AccessDenied", 403),
    "sns": ("AuthorizationError", 403),
    "iam": ("AccessDenied", 403),
    "sts": ("AccessDenied", 403),
    "s3": ("AccessDenied", 403),
    "ec2": ("UnauthorizedOperation", 403),
}

# How botocore 1.44.5 talks to each service here (localcloud/awsapi.py): the error must come
# back in the protocol the client parses.
_JSON_VERSION = {"dynamodb": "1.0", "dynamodbstreams": "1.0", "cloudwatch": "1.0", "sqs": "1.0"}
_JSON = {"dynamodb", "dynamodbstreams", "sqs", "ecr", "logs", "ssm", "cloudwatch", "secretsmanager"}
_QUERY = {"sns", "iam", "sts"}


def denial(call: ApiCall, principal_arn: str, check: Check) -> tuple[int, list[tuple[str, str]], bytes]:
    """The whole refusal of ``call`` for failing ``check``, in the service's wire format."""
    code, status = _DENIED.get(call.service, ("AccessDenied", 403))
    message = denial_message(principal_arn, check)
    if call.service == "ec2" and check.denied_code is None:
        message = f"You are not authorized to perform this operation. {message}"
    return error_response(call, check.denied_code or code, message, status)


def error_response(
    call: ApiCall, code: str, message: str, status: int
) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of an AWS error in the service's wire format."""
    request_id = str(uuid.uuid4())
    if call.service in _JSON:
        content_type = f"application/x-amz-json-{_JSON_VERSION.get(call.service, '1.1')}"
        body = json.dumps({"__type": f"com.amazonaws.{call.service}#{code}", "message": message}).encode()
        headers = [
            ("Content-Type", content_type),
            ("x-amzn-ErrorType", code),
            ("x-amzn-RequestId", request_id),
        ]
        if call.service == "sqs":  # botocore reads SQS's query-compatible code from here
            headers.append(("x-amzn-query-error", f"{code};Sender"))
        return status, headers, body
    text_code, text_message = escape(code), escape(message)
    if call.service in _QUERY:
        xml = (
            "<ErrorResponse><Error><Type>Sender</Type>"
            f"<Code>{text_code}</Code><Message>{text_message}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
    elif call.service == "ec2":
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Response><Errors><Error><Code>{text_code}</Code><Message>{text_message}</Message>"
            f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
        )
    else:  # s3
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{text_code}</Code><Message>{text_message}</Message>"
            f"<RequestId>{request_id}</RequestId></Error>"
        )
    headers = [("Content-Type", "text/xml"), ("x-amz-request-id", request_id)]
    # A HEAD answer has no body; S3 clients read the status alone.
    body = b"" if call.operation.startswith("Head") else xml.encode()
    return status, headers, body
