"""Read ``infra/serverless.yml`` and create what it declares, against any boto3 endpoint.

The tests (under moto) and the local cloud (against moto's server) both build their tables,
bucket, queue and topic here, from the deployable file itself, so they cannot drift from it.
Only the subset of the Serverless variable syntax that the file uses is supported; anything
else fails loudly instead of being silently left unresolved.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVERLESS_YML = ROOT / "infra" / "serverless.yml"
LOCAL_ACCOUNT = "123456789012"

# Serverless variables; ${AWS::...} and ${Logical.Attr} belong to CloudFormation's Fn::Sub.
_VARIABLE = re.compile(r"\$\{(?!AWS::)([^${}]+:[^${}]*)\}")
_SUB = re.compile(r"\$\{([A-Za-z0-9:.]+)\}")


class _CfnLoader(yaml.SafeLoader):
    """A YAML loader that reads CloudFormation short tags (!Ref, !GetAtt, ...) as their long form."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


@dataclass(frozen=True)
class Function:
    name: str
    handler: str  # "lambdas/upload.handler"
    environment: dict[str, Any]
    events: list[dict[str, Any]]
    timeout: int
    memory: int

    @property
    def module(self) -> str:
        return self.handler.rsplit(".", 1)[0].replace("/", ".")

    @property
    def attribute(self) -> str:
        return self.handler.rsplit(".", 1)[1]


@dataclass
class Stack:
    """The resolved file, plus the physical names of what was created from it."""

    config: dict[str, Any]
    stage: str
    region: str
    account: str
    physical: dict[str, str] = field(default_factory=dict)  # logical id -> name
    arns: dict[str, str] = field(default_factory=dict)  # logical id -> ARN or URL

    @property
    def custom(self) -> dict[str, Any]:
        return dict(self.config.get("custom") or {})

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return dict((self.config.get("resources") or {}).get("Resources") or {})

    def resources_of_type(self, cfn_type: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if v.get("Type") == cfn_type}

    def functions(self) -> list[Function]:
        provider = self.config.get("provider") or {}
        out = []
        for name, spec in (self.config.get("functions") or {}).items():
            env = {**(provider.get("environment") or {}), **(spec.get("environment") or {})}
            out.append(
                Function(
                    name=name,
                    handler=spec["handler"],
                    environment=env,
                    events=list(spec.get("events") or []),
                    timeout=int(spec.get("timeout", provider.get("timeout", 6))),
                    memory=int(spec.get("memorySize", provider.get("memorySize", 1024))),
                )
            )
        return out

    def function(self, name: str) -> Function:
        for fn in self.functions():
            if fn.name == name:
                return fn
        raise KeyError(f"no function {name!r} in {SERVERLESS_YML}")

    def table_name(self, logical_id: str) -> str:
        return str(self.resources[logical_id]["Properties"]["TableName"])

    def resolve_intrinsics(self, value: Any) -> Any:
        """Resolve Ref / Fn::GetAtt / Fn::Join / Fn::Sub against what was created here."""
        if isinstance(value, list):
            return [self.resolve_intrinsics(v) for v in value]
        if not isinstance(value, dict):
            return value
        if set(value) == {"Ref"}:
            ref = value["Ref"]
            if ref in self.physical:
                return self.physical[ref]
            if ref == "AWS::Region":
                return self.region
            if ref == "AWS::AccountId":
                return self.account
            # A template parameter: locally nobody passes one, so it takes its Default, as a
            # deploy without parameter overrides does.
            parameter = ((self.config.get("resources") or {}).get("Parameters") or {}).get(ref)
            if isinstance(parameter, dict) and "Default" in parameter:
                return parameter["Default"]
            raise KeyError(f"cannot resolve Ref {ref!r} locally")
        if set(value) == {"Fn::GetAtt"}:
            logical, attribute = value["Fn::GetAtt"]
            key = f"{logical}.{attribute}"
            if key in self.arns:
                return self.arns[key]
            raise KeyError(f"cannot resolve Fn::GetAtt {key!r} locally")
        if set(value) == {"Fn::Sub"}:
            return _SUB.sub(lambda m: str(self._sub_name(m.group(1))), value["Fn::Sub"])
        if set(value) == {"Fn::Join"}:
            sep, parts = value["Fn::Join"]
            return sep.join(str(self.resolve_intrinsics(p)) for p in parts)
        return {k: self.resolve_intrinsics(v) for k, v in value.items()}

    def _sub_name(self, name: str) -> Any:
        if "." in name:
            return self.resolve_intrinsics({"Fn::GetAtt": name.split(".", 1)})
        return self.resolve_intrinsics({"Ref": name})

    def function_environment(self, name: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
        """A function's environment as strings; values the local cloud cannot resolve are
        left out unless ``overrides`` supplies them (e.g. API_URL, which it knows itself)."""
        env: dict[str, str] = {}
        overrides = overrides or {}
        for key, value in self.function(name).environment.items():
            if key in overrides:
                continue
            try:
                env[key] = str(self.resolve_intrinsics(value))
            except KeyError:
                continue
        env.update(overrides)
        return env


def load(
    path: Path = SERVERLESS_YML,
    *,
    stage: str = "local",
    region: str = "us-east-1",
    account: str = LOCAL_ACCOUNT,
) -> Stack:
    raw = yaml.load(path.read_text(), Loader=_CfnLoader)
    context = {"stage": stage, "region": region, "account": account, "root": raw}
    config = _resolve(raw, context)
    return Stack(config=config, stage=stage, region=region, account=account)


def _lookup(root: dict[str, Any], dotted: str) -> Any:
    node: Any = root
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _variable(expr: str, context: dict[str, Any]) -> Any:
    source, _, default = (s.strip() for s in expr.partition(","))
    fallback = default.strip("'\"") if default else None
    if source == "sls:stage":
        return context["stage"]
    if source == "aws:region":
        return context["region"]
    if source == "aws:accountId":
        return context["account"]
    if source.startswith("opt:"):
        value = {"stage": context["stage"], "region": context["region"]}.get(source[4:])
        if value is None and fallback is None:
            raise KeyError(f"no value for ${{{expr}}}")
        return value if value is not None else fallback
    if source.startswith("self:"):
        try:
            return _resolve(_lookup(context["root"], source[5:]), context)
        except KeyError:
            if fallback is not None:
                return fallback
            raise KeyError(f"${{{expr}}} names nothing in serverless.yml") from None
    raise KeyError(f"variable source ${{{expr}}} is not supported by the local cloud")


def _resolve(value: Any, context: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, context) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = _VARIABLE.fullmatch(value)
    if whole:  # keep the type of a whole-value reference (booleans, numbers, maps)
        return _resolve(_variable(whole.group(1), context), context)
    previous = None
    while previous != value and "${" in value:
        previous = value
        value = _VARIABLE.sub(lambda m: str(_variable(m.group(1), context)), value)
    return value


def _cors(cfn: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation's CorsConfiguration in the S3 API's spelling."""
    rules = []
    for rule in cfn["CorsRules"]:
        api_rule = {k: v for k, v in rule.items() if k != "MaxAge"}
        if "MaxAge" in rule:
            api_rule["MaxAgeSeconds"] = rule["MaxAge"]
        rules.append(api_rule)
    return {"CORSRules": rules}


def create_resources(stack: Stack, session: Any) -> Stack:
    """Create the tables, bucket, queue, topic and instance profiles the file declares. Idempotent."""
    dynamodb = session.client("dynamodb", region_name=stack.region)
    for logical, spec in stack.resources_of_type("AWS::DynamoDB::Table").items():
        props = spec["Properties"]
        name = props["TableName"]
        kwargs: dict[str, Any] = {
            "TableName": name,
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
        }
        if "GlobalSecondaryIndexes" in props:
            kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
        if "StreamSpecification" in props:
            kwargs["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
        try:
            desc = dynamodb.create_table(**kwargs)["TableDescription"]
        except dynamodb.exceptions.ResourceInUseException:
            desc = dynamodb.describe_table(TableName=name)["Table"]
        stack.physical[logical] = name
        stack.arns[f"{logical}.Arn"] = desc["TableArn"]
        if desc.get("LatestStreamArn"):
            stack.arns[f"{logical}.StreamArn"] = desc["LatestStreamArn"]

    s3 = session.client("s3", region_name=stack.region)
    for logical, spec in stack.resources_of_type("AWS::S3::Bucket").items():
        props = spec["Properties"]
        name = stack.resolve_intrinsics(props["BucketName"])
        try:
            if stack.region == "us-east-1":
                s3.create_bucket(Bucket=name)
            else:
                s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": stack.region})
        except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
            pass
        if "CorsConfiguration" in props:
            s3.put_bucket_cors(Bucket=name, CORSConfiguration=_cors(props["CorsConfiguration"]))
        if "BucketEncryption" in props:
            s3.put_bucket_encryption(
                Bucket=name,
                ServerSideEncryptionConfiguration={
                    "Rules": [
                        {"ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"]}
                        for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
                    ]
                },
            )
        stack.physical[logical] = name
        stack.arns[f"{logical}.Arn"] = f"arn:aws:s3:::{name}"

    sqs = session.client("sqs", region_name=stack.region)
    for logical, spec in stack.resources_of_type("AWS::SQS::Queue").items():
        name = spec["Properties"]["QueueName"]
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        stack.physical[logical] = url
        stack.arns[f"{logical}.Arn"] = arn
        stack.arns[f"{logical}.QueueName"] = name

    sns = session.client("sns", region_name=stack.region)
    for logical, spec in stack.resources_of_type("AWS::SNS::Topic").items():
        arn = sns.create_topic(Name=spec["Properties"]["TopicName"])["TopicArn"]
        stack.physical[logical] = arn
        stack.arns[f"{logical}.TopicName"] = spec["Properties"]["TopicName"]

    _create_instance_profiles(stack, session)
    return stack


def _create_instance_profiles(stack: Stack, session: Any) -> None:
    """Instance profiles and the roles they carry, so that a function's environment can name
    a profile ARN (Fn::GetAtt) and run_instances finds it. Roles of functions are not needed
    locally: functions run in-process with the local cloud's credentials."""
    iam = session.client("iam", region_name=stack.region)
    service = stack.config.get("service", "service")
    for logical, spec in stack.resources_of_type("AWS::IAM::InstanceProfile").items():
        name = f"{service}-{stack.stage}-{logical}"
        try:
            profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        except iam.exceptions.EntityAlreadyExistsException:
            profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        for role in (spec.get("Properties") or {}).get("Roles") or []:
            role_logical = str(role.get("Ref") if isinstance(role, dict) else role)
            role_name = f"{name}-{role_logical}"[:64]
            try:
                created = iam.create_role(
                    RoleName=role_name,
                    AssumeRolePolicyDocument=json.dumps(
                        stack.resources.get(role_logical, {})
                        .get("Properties", {})
                        .get("AssumeRolePolicyDocument")
                        or {}
                    ),
                )["Role"]
                iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role_name)
            except iam.exceptions.EntityAlreadyExistsException:
                created = iam.get_role(RoleName=role_name)["Role"]
            stack.physical.setdefault(role_logical, role_name)
            stack.arns.setdefault(f"{role_logical}.Arn", created["Arn"])
        stack.physical[logical] = name
        stack.arns[f"{logical}.Arn"] = profile["Arn"]
