"""The local cloud and the tests build their resources from infra/serverless.yml."""

from __future__ import annotations

import fnmatch
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from lambdas.core import launch
from localcloud import dockerfile, infra
from tests.support import serverless

TRAFFIC_DOCKERFILE = infra.ROOT / "lambdas" / "traffic.Dockerfile"


def test_infra_resolves_names_per_stage() -> None:
    stack = infra.load(stage="qa", region="eu-west-1", account="111122223333")
    assert stack.custom["dataTable"] == "autoretrain-qa-samples"
    assert stack.resolve_intrinsics(stack.custom["modelBucket"]) == "autoretrain-qa-models-111122223333"
    assert stack.config["provider"]["environment"]["DATA_TABLE"] == "autoretrain-qa-samples"


def test_infra_keeps_the_type_of_whole_value_references() -> None:
    stack = infra.load()
    assert stack.custom["trafficEnabled"] is False


def test_infra_creates_every_declared_table_with_its_stream(dynamodb, stack: infra.Stack) -> None:
    declared = stack.resources_of_type("AWS::DynamoDB::Table")
    assert set(declared) <= set(stack.physical)
    for logical, spec in declared.items():
        table = dynamodb.describe_table(TableName=stack.physical[logical])["Table"]
        streamed = "StreamSpecification" in spec["Properties"]
        assert table.get("StreamSpecification", {}).get("StreamEnabled", False) is streamed, logical


def test_infra_creates_the_import_table_with_its_index_and_ttl(dynamodb, stack: infra.Stack) -> None:
    name = stack.physical["ImportTable"]
    table = dynamodb.describe_table(TableName=name)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "import_id", "KeyType": "HASH"}]
    assert "StreamSpecification" not in table
    (index,) = table["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "by-status"
    assert index["KeySchema"] == [
        {"AttributeName": "status", "KeyType": "HASH"},
        {"AttributeName": "updated_at", "KeyType": "RANGE"},
    ]
    assert index["Projection"] == {"ProjectionType": "ALL"}
    ttl = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}


def test_infra_creates_the_import_bucket_private_with_cors_for_posts_and_expiry(
    s3, stack: infra.Stack
) -> None:
    name = stack.physical["ImportBucket"]
    assert name == f"autoretrain-test-imports-{stack.account}"
    assert s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = s3.get_bucket_cors(Bucket=name)["CORSRules"]
    assert rule["AllowedMethods"] == ["POST"]
    encryption = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]
    assert encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    (expiry,) = s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]
    assert expiry["Filter"] == {"Prefix": "imports/"}
    assert expiry["Expiration"] == {"Days": int(stack.custom["importExpiryDays"])}
    # The model bucket keeps its files by default (modelExpiryDays 0): no lifecycle rule.
    assert stack.custom["modelExpiryDays"] == 0
    assert "Rules" not in _lifecycle_or_empty(s3, stack.physical["ModelBucket"])


def _lifecycle_or_empty(s3: Any, bucket: str) -> dict[str, Any]:
    try:
        return dict(s3.get_bucket_lifecycle_configuration(Bucket=bucket))
    except s3.exceptions.ClientError:
        return {}


def test_infra_import_notification_has_no_circular_dependency() -> None:
    """The bucket waits for ImporterS3Permission, which names the bucket by its known name (a
    Ref would be a cycle), and the importer and its role name it by that string too."""
    raw = serverless.load_raw()
    resources = raw["resources"]["Resources"]
    bucket = resources["ImportBucket"]
    assert bucket["DependsOn"] == "ImporterS3Permission"
    (target,) = bucket["Properties"]["NotificationConfiguration"]["LambdaConfigurations"]
    assert target["Function"] == {"Fn::GetAtt": ["ImporterLambdaFunction", "Arn"]}
    permission = resources["ImporterS3Permission"]["Properties"]
    assert permission["Principal"] == "s3.amazonaws.com"
    assert "ImportBucket" not in str(permission)

    def names_bucket(node: Any) -> bool:
        return "'ImportBucket'" in repr(node) or "${ImportBucket" in repr(node)

    importer = raw["functions"].get("importer")
    if importer is not None:
        assert not names_bucket(importer), "the importer must name the bucket by custom.importBucket"
        role = importer.get("role")
        if isinstance(role, str) and role in resources:
            assert not names_bucket(resources[role]), f"{role} must name the bucket by custom.importBucket"


def test_infra_leaves_cloudformation_substitutions_to_cloudformation() -> None:
    stack = infra.load(stage="qa", account="111122223333")
    bucket = stack.config["provider"]["environment"]["MODEL_BUCKET"]
    assert bucket == {"Fn::Sub": "autoretrain-qa-models-${AWS::AccountId}"}


def test_infra_rejects_an_unsupported_variable(tmp_path) -> None:
    bad = tmp_path / "serverless.yml"
    bad.write_text("service: x\nprovider:\n  stage: ${env:NOPE}\n")
    with pytest.raises(KeyError, match="not supported"):
        infra.load(bad)


# The traffic function: a container image, run locally from its Dockerfile's CMD ------------


def test_infra_traffic_is_an_image_function_without_zip_settings() -> None:
    raw = serverless.load_raw()
    spec = raw["functions"]["traffic"]
    assert spec["image"] == {"name": "traffic"}
    assert not {"handler", "layers", "package", "runtime"} & set(spec)
    image = raw["provider"]["ecr"]["images"]["traffic"]
    assert (infra.SERVERLESS_YML.parent / image["path"] / image["file"]).resolve() == TRAFFIC_DOCKERFILE
    # Lambda refuses a multi-architecture image or an image index (a provenance attestation).
    assert (raw["provider"]["architecture"], image["platform"]) == ("x86_64", "linux/amd64")
    assert image["provenance"] == "false"  # a string: osls drops a boolean false
    # osls copies provider.layers onto every function, and an image function cannot have any.
    assert "layers" not in raw["provider"]


def test_infra_traffic_environment_leaves_the_images_own_variables_alone() -> None:
    """A function's variable overrides the image's ENV: serverless.yml sets none of them."""
    image_env: dict[str, str] = {}
    for instruction in dockerfile.read(TRAFFIC_DOCKERFILE):
        if instruction.keyword == "ENV":
            image_env.update(dockerfile.env_pairs(instruction, image_env))
    assert "NUMBA_CACHE_DIR" in image_env
    fn = infra.load().function("traffic")
    assert not set(image_env) & set(fn.environment)
    assert "AWS_LAMBDA_EXEC_WRAPPER" not in fn.environment


def test_infra_local_traffic_runs_the_handler_its_dockerfile_names() -> None:
    fn = infra.load().function("traffic")
    assert fn.image == "traffic"
    assert fn.handler == dockerfile.command(TRAFFIC_DOCKERFILE)[0] == "lambdas.traffic.handler"
    assert (fn.module, fn.attribute) == ("lambdas.traffic", "handler")
    assert importlib.util.find_spec(fn.module) is not None
    # A zip function keeps its slashed handler; both forms name a module the same way.
    upload = infra.load().function("upload")
    assert (upload.image, upload.module, upload.attribute) == (None, "lambdas.upload", "handler")


def test_infra_an_edited_copy_still_builds_its_image_from_the_repository(tmp_path: Path) -> None:
    copy = serverless.without_action(tmp_path, "UploadFunctionRole", "dynamodb:BatchWriteItem")
    stack = infra.load(copy)
    assert stack.image_dockerfile("traffic") == TRAFFIC_DOCKERFILE
    assert stack.function("traffic").handler == "lambdas.traffic.handler"


_IMAGE_SERVICE = """
service: x
provider:
  name: aws
  ecr: {{ images: {{ traffic: {{ path: ., file: traffic.Dockerfile }} }} }}
functions:
  traffic: {function}
"""


@pytest.mark.parametrize(
    ("function", "dockerfile_text", "message"),
    [
        (
            "{ image: { name: other } }",
            'FROM base\nCMD ["lambdas.traffic.handler"]\n',
            r'image "other" is not defined in provider\.ecr\.images of .*serverless\.yml',
        ),
        (
            "{ image: { name: traffic } }",
            "FROM base\nRUN true\n",
            r'function "traffic", image "traffic": .*traffic\.Dockerfile: no CMD: the image names no handler',
        ),
        (
            "{ image: { name: traffic } }",
            "FROM base\nCMD python -m lambdas.traffic\n",
            r'function "traffic", image "traffic": line 2: CMD must use the exec \(JSON\) form',
        ),
        (
            "{ image: { name: traffic } }",
            'FROM base\nENTRYPOINT ["python"]\nCMD ["app.handler"]\n',
            r"traffic\.Dockerfile: ENTRYPOINT: the local cloud knows only the AWS base image's",
        ),
        (
            "{ image: { name: traffic, command: [app.other] } }",
            'FROM base\nCMD ["app.handler"]\n',
            r'function "traffic": image .* is not supported locally \(only a name\)',
        ),
        (
            "{ handler: app.handler, image: traffic }",
            'FROM base\nCMD ["app.handler"]\n',
            r'function "traffic" needs either "handler" or "image" \(not both\)',
        ),
    ],
    ids=["undeclared-image", "no-cmd", "shell-form-cmd", "entrypoint", "command-override", "both"],
)
def test_infra_refuses_an_image_function_it_cannot_run(
    tmp_path: Path, function: str, dockerfile_text: str, message: str
) -> None:
    (tmp_path / "traffic.Dockerfile").write_text(dockerfile_text)
    config = tmp_path / "serverless.yml"
    config.write_text(_IMAGE_SERVICE.format(function=function))
    stack = infra.load(config)
    with pytest.raises(infra.FunctionImageError, match=message):
        stack.functions()


# IAM of the train function: what its launch and alarm calls need, no more -------------------

ACCOUNT, REGION = "111122223333", "eu-west-1"


def _sub(value: Any) -> Any:
    """CloudFormation's ``Fn::Sub`` of the pseudo parameters, as a deploy would resolve them."""
    if isinstance(value, list):
        return [_sub(v) for v in value]
    if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
        return value["Fn::Sub"].replace("${AWS::Region}", REGION).replace("${AWS::AccountId}", ACCOUNT)
    return value


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def train_role_allowing(action: str) -> list[dict[str, Any]]:
    """The TrainFunctionRole statements that allow ``action``, Resource resolved to a list."""
    stack = infra.load(stage="qa", region=REGION, account=ACCOUNT)
    out = []
    for policy in stack.resources["TrainFunctionRole"]["Properties"]["Policies"]:
        for statement in _as_list(policy["PolicyDocument"]["Statement"]):
            if statement["Effect"] == "Allow" and action in _as_list(statement["Action"]):
                out.append({**statement, "Resource": _as_list(_sub(statement["Resource"]))})
    return out


def test_infra_train_role_creates_only_the_spot_service_linked_role() -> None:
    # Spot: the first spot request in an account creates AWSServiceRoleForEC2Spot with the
    # caller's permissions (EC2 User Guide, "Service-linked role for Spot Instance requests").
    # The idle alarm's action is a Lambda function, not EC2, so CloudWatch's role for EC2
    # actions (AWSServiceRoleForCloudWatchEvents) is never created (PutMetricAlarm reference).
    granted = train_role_allowing("iam:CreateServiceLinkedRole")
    assert all(_as_list(s["Action"]) == ["iam:CreateServiceLinkedRole"] for s in granted)
    role = f"arn:aws:iam::{ACCOUNT}:role/aws-service-role"
    assert sorted((s["Resource"], s["Condition"]) for s in granted) == [
        (
            [f"{role}/spot.amazonaws.com/AWSServiceRoleForEC2Spot"],
            {"StringEquals": {"iam:AWSServiceName": "spot.amazonaws.com"}},
        ),
    ]


class _Alarms:
    def put_metric_alarm(self, **kwargs: Any) -> None:
        self.request = kwargs


def test_infra_train_role_tags_alarms_only_if_the_alarm_request_carries_tags() -> None:
    """PutMetricAlarm with ``Tags`` also needs cloudwatch:TagResource (botocore's PutMetricAlarm
    documentation, ``Tags``): the role grants it exactly when the code sends tags, on the
    same alarms."""
    cfg = launch.LaunchSettings(
        region=REGION,
        stage="qa",
        ami_id="ami-1",
        instance_type="c5.large",
        instance_profile_arn="arn:aws:iam::111122223333:instance-profile/p",
        subnet_id=None,
        security_group_id=None,
        spot_fallback_on_demand=True,
        alarm_period_s=60,
        alarm_evaluation_periods=2,
        alarm_cpu_threshold=5.0,
        alarm_function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:autoretrain-qa-train",
    )
    alarms = _Alarms()
    name = launch.put_idle_alarm(cfg, "v20261123T091432Z-1a2b", "i-0abc", cloudwatch=alarms)
    pattern = f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:autoretrain-qa-train-*"
    assert fnmatch.fnmatchcase(f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}", pattern)
    assert [s["Resource"] for s in train_role_allowing("cloudwatch:PutMetricAlarm")] == [[pattern]]
    tagging = train_role_allowing("cloudwatch:TagResource")
    assert bool(tagging) == ("Tags" in alarms.request)
    assert all(s["Resource"] == [pattern] for s in tagging)
