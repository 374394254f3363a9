"""The local cloud and the tests build their resources from infra/serverless.yml."""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest

from lambdas.core import launch
from localcloud import infra


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
    for logical in declared:
        table = dynamodb.describe_table(TableName=stack.physical[logical])["Table"]
        assert table["StreamSpecification"]["StreamEnabled"] is True


def test_infra_leaves_cloudformation_substitutions_to_cloudformation() -> None:
    stack = infra.load(stage="qa", account="111122223333")
    bucket = stack.config["provider"]["environment"]["MODEL_BUCKET"]
    assert bucket == {"Fn::Sub": "autoretrain-qa-models-${AWS::AccountId}"}


def test_infra_rejects_an_unsupported_variable(tmp_path) -> None:
    bad = tmp_path / "serverless.yml"
    bad.write_text("service: x\nprovider:\n  stage: ${env:NOPE}\n")
    with pytest.raises(KeyError, match="not supported"):
        infra.load(bad)


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
