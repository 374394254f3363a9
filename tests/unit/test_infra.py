"""The local cloud and the tests build their resources from infra/serverless.yml."""

from __future__ import annotations

import pytest

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
