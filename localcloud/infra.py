"""Read ``infra/serverless.yml`` and create what it declares, against any boto3 endpoint.

The tests (under moto) and the local cloud (against moto's server) both build their tables,
bucket, queue and topic here, from the deployable file itself, so they cannot drift from it.
Only the subset of the Serverless variable syntax that the file uses is supported; anything
else fails loudly instead of being silently left unresolved. A container image function runs
locally as any other, in its own process on this checkout's code: its handler is the CMD of
the Dockerfile that provider.ecr.images names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localcloud import dockerfile

ROOT = Path(__file__).resolve().parents[1]
SERVERLESS_YML = ROOT / "infra" / "serverless.yml"
LOCAL_ACCOUNT = "123456789012"

_NO_VALUE = object()  # AWS::NoValue: removes the property or list item that resolves to it

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


class FunctionImageError(ValueError):
    """An image function the local cloud cannot run: its image is not declared in
    provider.ecr.images, or its Dockerfile does not name a handler."""


@dataclass(frozen=True)
class Function:
    name: str
    handler: str  # "lambdas/upload.handler"; an image function's comes from its Dockerfile's CMD
    environment: dict[str, Any]
    events: list[dict[str, Any]]
    timeout: int
    memory: int
    role: str | None = None  # logical id of the function's AWS::IAM::Role
    reserved_concurrency: int | None = None
    image: str | None = None  # a container image function: its name in provider.ecr.images

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
    # The file the config was read from: an image's path is relative to its folder.
    source: Path = SERVERLESS_YML
    _commands: dict[Path, list[str]] = field(default_factory=dict, init=False, repr=False)

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
            image = _image_name(name, spec)
            out.append(
                Function(
                    name=name,
                    handler=spec["handler"] if image is None else self._image_handler(name, image),
                    environment=env,
                    events=list(spec.get("events") or []),
                    timeout=int(spec.get("timeout", provider.get("timeout", 6))),
                    memory=int(spec.get("memorySize", provider.get("memorySize", 1024))),
                    role=_role_logical_id(spec.get("role", provider.get("role"))),
                    reserved_concurrency=(
                        int(spec["reservedConcurrency"]) if "reservedConcurrency" in spec else None
                    ),
                    image=image,
                )
            )
        return out

    def image_dockerfile(self, image: str) -> Path:
        """The Dockerfile of ``provider.ecr.images[image]``, found as osls finds it: ``path``
        relative to the service folder (where serverless.yml is), ``file`` relative to ``path``
        (default ``Dockerfile``)."""
        images = ((self.config.get("provider") or {}).get("ecr") or {}).get("images") or {}
        if image not in images:
            raise FunctionImageError(
                f'image "{image}" is not defined in provider.ecr.images of {self.source}'
            )
        spec = images[image]
        if isinstance(spec, str):
            spec = {"path": spec}
        if not isinstance(spec, dict) or "path" not in spec:
            raise FunctionImageError(
                f'image "{image}": only a local build (path, file) can run locally, not {spec!r}'
            )
        return (self.source.parent / str(spec["path"]) / str(spec.get("file", "Dockerfile"))).resolve()

    def _image_handler(self, function: str, image: str) -> str:
        """The handler an image function runs: its Dockerfile's CMD, which the AWS base image's
        entrypoint takes as the handler (a Dockerfile with its own ENTRYPOINT is refused)."""
        path = self.image_dockerfile(image)
        if path not in self._commands:
            try:
                instructions = dockerfile.read(path)
                if any(i.keyword == "ENTRYPOINT" for i in instructions):
                    raise dockerfile.DockerfileError(
                        f"{path}: ENTRYPOINT: the local cloud knows only the AWS base image's, "
                        "which runs the CMD as the handler"
                    )
                self._commands[path] = dockerfile.command(path)
            except dockerfile.DockerfileError as err:
                raise FunctionImageError(f'function "{function}", image "{image}": {err}') from err
        return self._commands[path][0]

    def function(self, name: str) -> Function:
        for fn in self.functions():
            if fn.name == name:
                return fn
        raise KeyError(f"no function {name!r} in {SERVERLESS_YML}")

    def table_name(self, logical_id: str) -> str:
        return str(self.resources[logical_id]["Properties"]["TableName"])

    def condition(self, name: str) -> bool:
        """A template condition (``resources.Conditions``), with parameters at their Default."""
        conditions = (self.config.get("resources") or {}).get("Conditions") or {}
        if name not in conditions:
            raise KeyError(f"no condition {name!r} in resources.Conditions")
        return self._truth(conditions[name])

    def _truth(self, expr: Any) -> bool:
        if isinstance(expr, dict) and len(expr) == 1:
            ((fn, args),) = expr.items()
            if fn == "Fn::Equals":
                left, right = (self.resolve_intrinsics(a) for a in args)
                return str(left) == str(right)
            if fn == "Fn::Not":
                return not self._truth(args[0])
            if fn == "Fn::And":
                return all(self._truth(a) for a in args)
            if fn == "Fn::Or":
                return any(self._truth(a) for a in args)
            if fn == "Condition":
                return self.condition(args)
        raise KeyError(f"condition expression not supported locally: {expr!r}")

    def resolve_intrinsics(self, value: Any) -> Any:
        """Resolve Ref / Fn::GetAtt / Fn::Join / Fn::Sub / Fn::If against what was created
        here; an ``Fn::If`` branch that is ``AWS::NoValue`` disappears from lists and maps."""
        if isinstance(value, list):
            resolved = [self.resolve_intrinsics(v) for v in value]
            return [v for v in resolved if v is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if set(value) == {"Fn::If"}:
            name, if_true, if_false = value["Fn::If"]
            return self.resolve_intrinsics(if_true if self.condition(name) else if_false)
        if value == {"Ref": "AWS::NoValue"}:
            return _NO_VALUE
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
        members = {k: self.resolve_intrinsics(v) for k, v in value.items()}
        return {k: v for k, v in members.items() if v is not _NO_VALUE}

    def role_name(self, logical_id: str) -> str:
        """The physical name of an AWS::IAM::Role (CloudFormation would generate one)."""
        service = self.config.get("service", "service")
        return f"{service}-{self.stage}-{logical_id}"[:64]

    def role_policies(self, logical_id: str) -> dict[str, dict[str, Any]]:
        """An AWS::IAM::Role's inline policies, resolved: policy name -> document."""
        props = self.resources[logical_id].get("Properties") or {}
        out = {}
        for policy in self.resolve_intrinsics(props.get("Policies") or []):
            out[str(policy["PolicyName"])] = policy["PolicyDocument"]
        return out

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


def _image_name(function: str, spec: dict[str, Any]) -> str | None:
    """``image: traffic`` or ``image: {name: traffic}`` -> "traffic"; None for a zip function.
    Like osls, exactly one of handler and image. The function's overrides of the image
    (command, entryPoint, workingDirectory) are refused: locally the handler is the
    Dockerfile's CMD, and nothing else."""
    image = spec.get("image")
    if ("handler" in spec) == (image is not None):
        raise FunctionImageError(f'function "{function}" needs either "handler" or "image" (not both)')
    if image is None or isinstance(image, str):
        return image
    if isinstance(image, dict) and set(image) == {"name"}:
        return str(image["name"])
    raise FunctionImageError(f'function "{function}": image {image!r} is not supported locally (only a name)')


def _role_logical_id(role: Any) -> str | None:
    """``role: UploadFunctionRole`` or ``role: {Fn::GetAtt: [UploadFunctionRole, Arn]}``."""
    if role is None:
        return None
    if isinstance(role, str):
        return role
    if isinstance(role, dict) and "Fn::GetAtt" in role:
        return str(role["Fn::GetAtt"][0])
    raise KeyError(f"function role {role!r} is not a logical id the local cloud can resolve")


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
    return Stack(config=config, stage=stage, region=region, account=account, source=path)


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


def _lifecycle(cfn: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation's LifecycleConfiguration (the subset the file uses: Id, Status, Prefix,
    ExpirationInDays) in the S3 API's spelling."""
    rules = []
    for rule in cfn["Rules"]:
        unknown = set(rule) - {"Id", "Status", "Prefix", "ExpirationInDays"}
        if unknown:
            raise KeyError(f"lifecycle rule properties not supported locally: {sorted(unknown)}")
        api_rule: dict[str, Any] = {"Status": rule["Status"], "Filter": {"Prefix": rule.get("Prefix", "")}}
        if "Id" in rule:
            api_rule["ID"] = rule["Id"]
        if "ExpirationInDays" in rule:
            api_rule["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
        rules.append(api_rule)
    return {"Rules": rules}


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
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            # CloudFormation sets TTL after creating the table; moto stores it, and, like
            # DynamoDB (which deletes expired items within days), never deletes by it on time:
            # readers must ignore expired items themselves.
            dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )
        stack.physical[logical] = name
        stack.arns[f"{logical}.Arn"] = desc["TableArn"]
        if desc.get("LatestStreamArn"):
            stack.arns[f"{logical}.StreamArn"] = desc["LatestStreamArn"]

    s3 = session.client("s3", region_name=stack.region)
    for logical, spec in stack.resources_of_type("AWS::S3::Bucket").items():
        props = spec["Properties"]
        name = stack.resolve_intrinsics(props["BucketName"])
        try:
            # In us-east-1 creating a bucket one already owns "succeeds" (and moto replaces it
            # with an empty one): look first, so a restored bucket keeps its objects.
            s3.head_bucket(Bucket=name)
        except s3.exceptions.ClientError:
            try:
                if stack.region == "us-east-1":
                    s3.create_bucket(Bucket=name)
                else:
                    s3.create_bucket(
                        Bucket=name, CreateBucketConfiguration={"LocationConstraint": stack.region}
                    )
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
        if "PublicAccessBlockConfiguration" in props:
            s3.put_public_access_block(
                Bucket=name, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"]
            )
        lifecycle = stack.resolve_intrinsics(props.get("LifecycleConfiguration"))
        if lifecycle and lifecycle is not _NO_VALUE:
            s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration=_lifecycle(lifecycle))
        # NotificationConfiguration is not given to moto (its server would not deliver it): the
        # local cloud's S3 event driver reads it from the stack (localcloud/s3events.py).
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

    ecr = session.client("ecr", region_name=stack.region)
    for logical, spec in stack.resources_of_type("AWS::ECR::Repository").items():
        name = str(stack.resolve_intrinsics(spec["Properties"]["RepositoryName"]))
        try:
            repo = ecr.create_repository(repositoryName=name)["repository"]
        except ecr.exceptions.RepositoryAlreadyExistsException:
            repo = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
        stack.physical[logical] = name
        stack.arns[f"{logical}.Arn"] = repo["repositoryArn"]
        stack.arns[f"{logical}.RepositoryUri"] = repo["repositoryUri"]

    # Before the roles: a policy may name a secret (Ref: its ARN).
    _create_secrets(stack, session)
    _create_api_access(stack, session)
    _create_roles(stack, session)
    _create_instance_profiles(stack, session)
    _create_log_groups(stack, session)
    return stack


def push_trainer_image(stack: Stack, session: Any) -> None:
    """What ``make image`` does in AWS: the trainer image is in the stage's repository under
    the tag the instances pull. Locally the "image" is a manifest standing for this
    checkout's trainer code, which the docker stand-in runs."""
    tag = str((stack.custom.get("train") or {}).get("imageTag", "latest"))
    ecr = session.client("ecr", region_name=stack.region)
    for logical in stack.resources_of_type("AWS::ECR::Repository"):
        with contextlib.suppress(ecr.exceptions.ImageAlreadyExistsException):
            ecr.put_image(
                repositoryName=stack.physical[logical], imageManifest=trainer_manifest(), imageTag=tag
            )


def trainer_manifest() -> str:
    """An image manifest standing for the local trainer (no layers: nothing is pulled)."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["python", "-m", "trainer"]}}
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": len(config),
            "digest": "sha256:" + hashlib.sha256(config.encode()).hexdigest(),
        },
        "layers": [],
    }
    return json.dumps(manifest)


def _create_log_groups(stack: Stack, session: Any) -> None:
    """Each function's log group, as the deployment creates it (osls adds an
    AWS::Logs::LogGroup per function, with provider.logRetentionInDays)."""
    logs = session.client("logs", region_name=stack.region)
    service = stack.config.get("service", "service")
    retention = (stack.config.get("provider") or {}).get("logRetentionInDays")
    for fn in stack.functions():
        group = f"/aws/lambda/{service}-{stack.stage}-{fn.name}"
        try:
            logs.create_log_group(logGroupName=group)
        except logs.exceptions.ResourceAlreadyExistsException:
            continue
        if retention:
            logs.put_retention_policy(logGroupName=group, retentionInDays=int(retention))


def _create_roles(stack: Stack, session: Any) -> None:
    """Every AWS::IAM::Role with its inline policies, as CloudFormation would create them: the
    local cloud's AWS endpoint enforces them on the functions and the trainer
    (localcloud/gate.py). All roles exist before any policy is resolved, since one role's
    policy may name another (iam:PassRole)."""
    iam = session.client("iam", region_name=stack.region)
    roles = stack.resources_of_type("AWS::IAM::Role")
    for logical, spec in roles.items():
        props = spec.get("Properties") or {}
        name = stack.role_name(logical)
        try:
            role = iam.create_role(
                RoleName=name,
                AssumeRolePolicyDocument=json.dumps(props.get("AssumeRolePolicyDocument") or {}),
            )["Role"]
        except iam.exceptions.EntityAlreadyExistsException:
            role = iam.get_role(RoleName=name)["Role"]
        stack.physical[logical] = name
        stack.arns[f"{logical}.Arn"] = role["Arn"]
    for logical in roles:
        for policy_name, document in stack.role_policies(logical).items():
            iam.put_role_policy(
                RoleName=stack.role_name(logical), PolicyName=policy_name, PolicyDocument=json.dumps(document)
            )


def _create_instance_profiles(stack: Stack, session: Any) -> None:
    """Instance profiles and the roles they carry (created by ``_create_roles``), so that a
    function's environment can name a profile ARN (Fn::GetAtt) and run_instances finds it."""
    iam = session.client("iam", region_name=stack.region)
    service = stack.config.get("service", "service")
    for logical, spec in stack.resources_of_type("AWS::IAM::InstanceProfile").items():
        name = f"{service}-{stack.stage}-{logical}"
        try:
            profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        except iam.exceptions.EntityAlreadyExistsException:
            profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        attached = {role["RoleName"] for role in profile.get("Roles") or []}
        for role in (spec.get("Properties") or {}).get("Roles") or []:
            role_name = stack.role_name(str(role.get("Ref") if isinstance(role, dict) else role))
            if role_name not in attached:
                iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role_name)
        stack.physical[logical] = name
        stack.arns[f"{logical}.Arn"] = profile["Arn"]


# --- API keys, usage plans and secrets -----------------------------------------------------------

# Secrets Manager's punctuation set for generated passwords (GetRandomPassword,
# ExcludePunctuation: "! \" # $ % & ' ( ) * + , - . / : ; < = > ? @ [ \\ ] ^ _ ` { | } ~").
SECRET_PUNCTUATION = string.punctuation
# GenerateSecretString properties the local cloud applies; any other is refused, not ignored.
_GENERATE_KEYS = {
    "PasswordLength",
    "ExcludePunctuation",
    "ExcludeCharacters",
    "ExcludeUppercase",
    "ExcludeLowercase",
    "ExcludeNumbers",
    "IncludeSpace",
    "RequireEachIncludedType",
}
# {{resolve:secretsmanager:secret-id[:SecretString[:json-key[:version-stage[:version-id]]]]}}
# (CloudFormation user guide, "Get a secret or secret value from Secrets Manager").
_SECRET_REFERENCE = re.compile(r"\{\{resolve:secretsmanager:([^}]+)\}\}")


class ApiAccessError(ValueError):
    """An API key, usage plan or secret the local cloud cannot create as API Gateway, Secrets
    Manager and CloudFormation would (a key in two plans, a dynamic reference it cannot read)."""


@dataclass(frozen=True)
class UsagePlan:
    """One plan of ``provider.apiGateway.usagePlan``, named as osls names it
    (lib/plugins/aws/package/compile/events/api-gateway/lib/usage-plan.js, naming.js)."""

    key: str  # "clients"; "default" for the single-plan (map) form
    logical_id: str  # ApiGatewayUsagePlanClients
    name: str  # autoretrain-clients-local
    throttle: dict[str, Any] | None  # {"burstLimit": 40, "rateLimit": 20}
    quota: dict[str, Any] | None  # {"limit": 20000, "period": "DAY"[, "offset": 0]}


@dataclass(frozen=True)
class DeclaredApiKey:
    """One key of ``provider.apiGateway.apiKeys`` with its osls logical ids (api-keys.js)."""

    logical_id: str  # ApiGatewayApiKeyOperators1
    plan_key_logical_id: str  # ApiGatewayUsagePlanKeyOperators1
    plan: str  # the usage plan's key ("operators", or "default")
    name: str
    description: str | None
    value: str | None
    enabled: bool


def _upper_first(name: str) -> str:
    return name[:1].upper() + name[1:]


def usage_plan_logical_id(plan: str | None = None) -> str:
    """osls's naming.getUsagePlanLogicalId."""
    return f"ApiGatewayUsagePlan{_upper_first(plan)}" if plan else "ApiGatewayUsagePlan"


def usage_plans(stack: Stack) -> list[UsagePlan]:
    """The usage plans osls would create from ``provider.apiGateway`` (none without usagePlan
    or apiKeys; the single ``default`` plan for the map form or for keys alone)."""
    gateway = (stack.config.get("provider") or {}).get("apiGateway") or {}
    spec = gateway.get("usagePlan")
    service = str(stack.config.get("service", "service"))
    if isinstance(spec, list):
        out = []
        for entry in spec:
            if not isinstance(entry, dict) or len(entry) != 1:
                raise ApiAccessError(f"provider.apiGateway.usagePlan: each entry is one plan, got {entry!r}")
            ((key, plan),) = entry.items()
            plan = plan or {}
            out.append(
                UsagePlan(
                    key=str(key),
                    logical_id=usage_plan_logical_id(str(key)),
                    name=f"{service}-{key}-{stack.stage}",
                    throttle=plan.get("throttle"),
                    quota=plan.get("quota"),
                )
            )
        return out
    if spec is None and not gateway.get("apiKeys"):
        return []
    spec = spec or {}
    return [
        UsagePlan(
            key="default",
            logical_id=usage_plan_logical_id(),
            name=f"{service}-{stack.stage}",
            throttle=spec.get("throttle"),
            quota=spec.get("quota"),
        )
    ]


def declared_api_keys(stack: Stack) -> list[DeclaredApiKey]:
    """``provider.apiGateway.apiKeys`` as osls reads it: a name, a map of properties, or a map
    from a usage plan's name to a list of those (api-keys.js, usage-plan-keys.js)."""
    gateway = (stack.config.get("provider") or {}).get("apiGateway") or {}
    plans = {plan.key for plan in usage_plans(stack)}
    out: list[DeclaredApiKey] = []
    number = 0
    for entry in gateway.get("apiKeys") or []:
        grouped = isinstance(entry, dict) and len(entry) == 1 and isinstance(next(iter(entry.values())), list)
        if grouped:
            ((plan, keys),) = entry.items()
            if plan not in plans:
                raise ApiAccessError(f'API key group "{plan}" has no usage plan defined')
            for n, key in enumerate(keys, start=1):
                out.append(_declared_key(key, f"{_upper_first(plan)}{n}", plan))
            continue
        if "default" not in plans:
            # osls would join it to ApiGatewayUsagePlan, which a plan list never creates.
            raise ApiAccessError(
                f"API key {entry!r} is outside every usage plan: list it under its plan's name"
            )
        number += 1
        out.append(_declared_key(entry, str(number), "default"))
    return out


def _declared_key(spec: Any, suffix: str, plan: str) -> DeclaredApiKey:
    props = {"name": spec} if isinstance(spec, str) else dict(spec)
    if not props.get("name"):
        raise ApiAccessError(f"API key {spec!r} needs a name locally (its key is found by name)")
    return DeclaredApiKey(
        logical_id=f"ApiGatewayApiKey{suffix}",
        plan_key_logical_id=f"ApiGatewayUsagePlanKey{suffix}",
        plan=plan,
        name=str(props["name"]),
        description=props.get("description"),
        value=props.get("value"),
        enabled=bool(props.get("enabled", True)),
    )


def generate_secret_string(spec: dict[str, Any]) -> str:
    """A value as Secrets Manager's GenerateSecretString makes one (password length 32 unless
    told; each included character type at least once unless RequireEachIncludedType is false).
    SecretStringTemplate / GenerateStringKey are not supported locally and refused."""
    unknown = set(spec) - _GENERATE_KEYS
    if unknown:
        raise ApiAccessError(f"GenerateSecretString properties not supported locally: {sorted(unknown)}")
    excluded = set(str(spec.get("ExcludeCharacters", "")))
    groups = []
    for flag, chars in (
        ("ExcludeUppercase", string.ascii_uppercase),
        ("ExcludeLowercase", string.ascii_lowercase),
        ("ExcludeNumbers", string.digits),
        ("ExcludePunctuation", SECRET_PUNCTUATION),
    ):
        if not spec.get(flag):
            group = "".join(c for c in chars if c not in excluded)
            if group:
                groups.append(group)
    if spec.get("IncludeSpace"):
        groups.append(" ")
    if not groups:
        raise ApiAccessError("GenerateSecretString excludes every character")
    length = int(spec.get("PasswordLength", 32))
    alphabet = "".join(groups)
    while True:
        value = "".join(secrets.choice(alphabet) for _ in range(length))
        if not spec.get("RequireEachIncludedType", True) or length < len(groups):
            return value
        if all(any(c in group for c in value) for group in groups):
            return value


def _create_secrets(stack: Stack, session: Any) -> None:
    """Every AWS::SecretsManager::Secret: created once with its generated (or given) value and
    kept (a durable restart finds it by name). Ref is its ARN (CloudFormation template
    reference, AWS::SecretsManager::Secret, "Return values")."""
    resources = stack.resources_of_type("AWS::SecretsManager::Secret")
    if not resources:
        return
    client = session.client("secretsmanager", region_name=stack.region)
    for logical, spec in resources.items():
        props = stack.resolve_intrinsics(spec.get("Properties") or {})
        name = str(props["Name"])
        try:
            arn = client.describe_secret(SecretId=name)["ARN"]
        except client.exceptions.ResourceNotFoundException:
            if "SecretString" in props:
                value = str(props["SecretString"])
            elif "GenerateSecretString" in props:
                value = generate_secret_string(props["GenerateSecretString"])
            else:
                raise ApiAccessError(
                    f"{logical}: a secret needs SecretString or GenerateSecretString"
                ) from None
            kwargs: dict[str, Any] = {"Name": name, "SecretString": value}
            if props.get("Description"):
                kwargs["Description"] = str(props["Description"])
            arn = client.create_secret(**kwargs)["ARN"]
        stack.physical[logical] = arn
        stack.arns[f"{logical}.Id"] = arn


def resolve_secret_references(value: str, client: Any) -> str:
    """``{{resolve:secretsmanager:...}}`` references in ``value`` replaced by what they name,
    as CloudFormation resolves them when it creates the resource."""

    def one(match: re.Match[str]) -> str:
        parts = match.group(1).split(":")
        # An ARN holds colons of its own: arn:aws:secretsmanager:region:account:secret:name
        if parts[0] == "arn":
            secret_id, rest = ":".join(parts[:7]), parts[7:]
        else:
            secret_id, rest = parts[0], parts[1:]
        rest += [""] * (4 - len(rest))
        field_, json_key, stage, version = rest[:4]
        if field_ not in ("", "SecretString"):
            raise ApiAccessError(f"dynamic reference {match.group(0)!r}: only SecretString can be read")
        kwargs: dict[str, Any] = {"SecretId": secret_id}
        if stage:
            kwargs["VersionStage"] = stage
        if version:
            kwargs["VersionId"] = version
        try:
            text = client.get_secret_value(**kwargs)["SecretString"]
        except client.exceptions.ResourceNotFoundException as err:
            raise ApiAccessError(f"dynamic reference {match.group(0)!r}: no secret {secret_id!r}") from err
        if json_key:
            try:
                return str(json.loads(text)[json_key])
            except (ValueError, KeyError, TypeError) as err:
                raise ApiAccessError(
                    f"dynamic reference {match.group(0)!r}: no JSON key {json_key!r}"
                ) from err
        return str(text)

    return _SECRET_REFERENCE.sub(one, value)


def _api_key_named(client: Any, name: str) -> dict[str, Any] | None:
    """The API key called exactly ``name`` (nameQuery matches a prefix), with its value."""
    found = []
    for page in client.get_paginator("get_api_keys").paginate(nameQuery=name, includeValues=True):
        found += [key for key in page.get("items", []) if key.get("name") == name]
    if len(found) > 1:
        raise ApiAccessError(f"{len(found)} API keys are named {name!r}; the local cloud finds keys by name")
    return found[0] if found else None


def ensure_api_key(
    client: Any, name: str, *, description: str | None = None, value: str | None = None, enabled: bool = True
) -> dict[str, Any]:
    """The API key named ``name``, created if there is none (a durable restart reuses it). A
    kept key whose value differs from ``value`` is an error: a key's value cannot change."""
    key = _api_key_named(client, name)
    if key is None:
        kwargs: dict[str, Any] = {"name": name, "enabled": enabled}
        if description:
            kwargs["description"] = description
        if value is not None:
            kwargs["value"] = value
        key = client.create_api_key(**kwargs)
    elif value is not None and key.get("value") != value:
        raise ApiAccessError(f"API key {name!r} exists with another value than its declared one")
    return dict(key)


def join_usage_plan(client: Any, key_id: str, plan_id: str) -> None:
    """Add the key to the plan, unless it is there. API Gateway refuses a key a second usage
    plan on the same API stage; the local cloud's plans all serve its one stage, so a key
    already in another plan is refused here."""
    plans = [plan["id"] for plan in client.get_usage_plans(keyId=key_id).get("items", [])]
    if plan_id in plans:
        return
    if plans:
        raise ApiAccessError(
            f"API key {key_id} is already in usage plan {plans[0]}: a key is in one usage plan per API stage"
        )
    client.create_usage_plan_key(usagePlanId=plan_id, keyId=key_id, keyType="API_KEY")


def _create_api_access(stack: Stack, session: Any) -> None:
    """The usage plans and API keys of provider.apiGateway, then the AWS::ApiGateway::ApiKey and
    AWS::ApiGateway::UsagePlanKey resources, in moto's API Gateway: the API front reads them
    there (localcloud/apigw.py). Plans carry no API stage: moto has no REST API for the local
    API front. Each is found by name first, so a durable restart creates no duplicates. Ref of
    a plan or a key is its id."""
    plans = usage_plans(stack)
    keys = declared_api_keys(stack)
    api_keys = stack.resources_of_type("AWS::ApiGateway::ApiKey")
    plan_keys = stack.resources_of_type("AWS::ApiGateway::UsagePlanKey")
    if not (plans or keys or api_keys or plan_keys):
        return
    client = session.client("apigateway", region_name=stack.region)
    service = str(stack.config.get("service", "service"))
    existing = {
        str(item.get("name")): dict(item)
        for page in client.get_paginator("get_usage_plans").paginate()
        for item in page.get("items", [])
    }
    for plan in plans:
        found = existing.get(plan.name)
        if found is None:
            kwargs: dict[str, Any] = {
                "name": plan.name,
                "description": f'Usage plan "{plan.key}" for {service} {stack.stage} stage',
            }
            if plan.throttle:
                kwargs["throttle"] = {
                    k: v
                    for k, v in (
                        ("burstLimit", plan.throttle.get("burstLimit")),
                        ("rateLimit", plan.throttle.get("rateLimit")),
                    )
                    if v is not None
                }
            if plan.quota:
                kwargs["quota"] = {k: v for k, v in plan.quota.items() if k in ("limit", "offset", "period")}
            found = client.create_usage_plan(**kwargs)
        stack.physical[plan.logical_id] = found["id"]
        stack.arns[f"{plan.logical_id}.Id"] = found["id"]
    by_plan = {plan.key: plan for plan in plans}
    for declared in keys:
        key = ensure_api_key(
            client,
            declared.name,
            description=declared.description,
            value=declared.value,
            enabled=declared.enabled,
        )
        join_usage_plan(client, key["id"], stack.physical[by_plan[declared.plan].logical_id])
        stack.physical[declared.logical_id] = key["id"]
        stack.arns[f"{declared.logical_id}.APIKeyId"] = key["id"]
        stack.physical[declared.plan_key_logical_id] = key["id"]
    secrets_client = session.client("secretsmanager", region_name=stack.region) if api_keys else None
    for logical, spec in api_keys.items():
        props = stack.resolve_intrinsics(spec.get("Properties") or {})
        if not props.get("Name"):
            raise ApiAccessError(f"{logical}: the local cloud finds API keys by Name; give it one")
        value = props.get("Value")
        if value is not None:
            value = resolve_secret_references(str(value), secrets_client)
        # Strict: a key whose Enabled is not set is created disabled (moto's CreateApiKey default
        # too); serverless.yml sets it.
        key = ensure_api_key(
            client,
            str(props["Name"]),
            description=props.get("Description"),
            value=value,
            enabled=bool(props.get("Enabled", False)),
        )
        stack.physical[logical] = key["id"]
        stack.arns[f"{logical}.APIKeyId"] = key["id"]
    for logical, spec in plan_keys.items():
        props = stack.resolve_intrinsics(spec.get("Properties") or {})
        if props.get("KeyType", "API_KEY") != "API_KEY":
            raise ApiAccessError(f"{logical}: KeyType must be API_KEY")
        join_usage_plan(client, str(props["KeyId"]), str(props["UsagePlanId"]))
        stack.physical[logical] = str(props["KeyId"])
