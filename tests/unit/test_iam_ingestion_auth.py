"""IAM of authenticated ingestion: the mapping of secretsmanager:GetSecretValue, and the roles of
the upload, imports and traffic functions as infra/serverless.yml declares them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from localcloud import iam, infra
from localcloud.awsapi import ApiCall
from localcloud.iam import Check

ACCOUNT = "123456789012"
REGION = "us-east-1"
STACK = infra.load(stage="test", region=REGION, account=ACCOUNT)
MODEL = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{STACK.table_name('ModelTable')}"
SECRETS = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:"
TRAFFIC_SECRET = f"{SECRETS}autoretrain-test/traffic-api-key-AbC123"
HOLDOUT_SECRET = f"{SECRETS}autoretrain-test/holdout-key-XyZ789"
STACK.physical.update(
    {
        "TrafficApiKeySecret": TRAFFIC_SECRET,
        "HoldoutKeySecret": HOLDOUT_SECRET,
        "TrafficApiKey": "trafficid1",
    }
)
STACK.arns.update(
    {
        "ModelTable.Arn": MODEL,
        "DataTable.Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{STACK.table_name('DataTable')}",
        "ImportTable.Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{STACK.table_name('ImportTable')}",
        "ImportBucket.Arn": f"arn:aws:s3:::autoretrain-test-imports-{ACCOUNT}",
    }
)


class Secrets:
    """The secrets that exist, by full ARN; a SecretId is resolved as Secrets Manager does: the
    name, the full ARN, or the ARN without its 6 random characters."""

    def __init__(self, *arns: str) -> None:
        self.arns = arns

    def secret_arn(self, secret_id: str) -> str | None:
        for arn in self.arns:
            name = arn.split(":secret:", 1)[1][: -len("-XXXXXX")]
            if secret_id in (arn, name, arn[: -len("-XXXXXX")]):
                return arn
        return None

    def instance_tags(self, instance_id: str) -> Mapping[str, str] | None:
        return None

    def instance_profile_role_arns(self, profile: str) -> list[str]:
        return []

    def service_linked_role_exists(self, service_name: str) -> bool:
        return True

    def object_exists(self, bucket: str, key: str) -> bool:
        return True


WORLD = Secrets(TRAFFIC_SECRET, HOLDOUT_SECRET)


def get_secret(secret_id: str, **params: Any) -> ApiCall:
    return ApiCall("secretsmanager", "GetSecretValue", {"SecretId": secret_id, **params}, REGION, "AKID")


def checks(call: ApiCall) -> list[Check]:
    return iam.checks(call, account=ACCOUNT, region=REGION, world=WORLD)


def allowed(role: str, call: ApiCall) -> bool:
    policies = list(STACK.role_policies(role).values())
    return all(iam.allowed(policies, check) for check in checks(call))


# the mapping --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret_id",
    [TRAFFIC_SECRET, "autoretrain-test/traffic-api-key", TRAFFIC_SECRET[: -len("-AbC123")]],
    ids=["full-arn", "name", "partial-arn"],
)
def test_get_secret_value_is_authorized_on_the_secrets_full_arn(secret_id: str) -> None:
    assert checks(get_secret(secret_id)) == [Check("secretsmanager:GetSecretValue", TRAFFIC_SECRET)]


class NoSecrets(Secrets):
    def secret_arn(self, secret_id: str) -> str | None:
        raise AssertionError(f"a complete ARN needs no lookup, got {secret_id}")


def test_get_secret_value_by_complete_arn_is_checked_on_it_without_a_lookup() -> None:
    call = get_secret(TRAFFIC_SECRET)
    found = iam.checks(call, account=ACCOUNT, region=REGION, world=NoSecrets())
    assert found == [Check("secretsmanager:GetSecretValue", TRAFFIC_SECRET)]


def test_get_secret_value_of_a_version_is_still_the_secrets_action() -> None:
    call = get_secret(TRAFFIC_SECRET, VersionStage="AWSPREVIOUS")
    assert checks(call) == [Check("secretsmanager:GetSecretValue", TRAFFIC_SECRET)]


@pytest.mark.parametrize(
    ("secret_id", "resource"),
    [
        ("no-such-secret", f"{SECRETS}no-such-secret"),
        (f"{SECRETS}no-such-secret-QwErTy", f"{SECRETS}no-such-secret-QwErTy"),
    ],
)
def test_get_secret_value_of_an_unknown_secret_is_checked_on_what_was_named(
    secret_id: str, resource: str
) -> None:
    assert checks(get_secret(secret_id)) == [Check("secretsmanager:GetSecretValue", resource)]


def test_get_secret_value_denial_is_secrets_managers_json_error() -> None:
    call = get_secret(TRAFFIC_SECRET)
    [check] = checks(call)
    status, headers, body = iam.denial(call, "arn:aws:sts::1:assumed-role/r/s", check)
    assert status == 400
    assert ("Content-Type", "application/x-amz-json-1.1") in headers
    error = json.loads(body)
    assert error["__type"].endswith("#AccessDeniedException")
    assert f"secretsmanager:GetSecretValue on resource: {TRAFFIC_SECRET}" in error["message"]


def test_get_secret_value_is_mapped() -> None:
    assert ("secretsmanager", "GetSecretValue") in iam.MAPPED


# the roles ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret_id", [TRAFFIC_SECRET, "autoretrain-test/traffic-api-key"], ids=["arn", "name"]
)
def test_traffic_role_reads_its_api_key_secret(secret_id: str) -> None:
    assert allowed("TrafficFunctionRole", get_secret(secret_id))


def test_traffic_role_reads_no_other_secret() -> None:
    assert not allowed("TrafficFunctionRole", get_secret(HOLDOUT_SECRET))
    assert not allowed("TrafficFunctionRole", get_secret("no-such-secret"))


@pytest.mark.parametrize("role", ["UploadFunctionRole", "ImportsFunctionRole", "ImporterFunctionRole"])
def test_no_other_ingestion_role_reads_the_traffic_key(role: str) -> None:
    assert not allowed(role, get_secret(TRAFFIC_SECRET))


def get_item(pk: str) -> ApiCall:
    return ApiCall(
        "dynamodb",
        "GetItem",
        {"TableName": STACK.table_name("ModelTable"), "Key": {"pk": {"S": pk}}},
        REGION,
        "AKID",
    )


@pytest.mark.parametrize("role", ["UploadFunctionRole", "ImportsFunctionRole"])
@pytest.mark.parametrize("pk", ["apikey#k3y1d", f"principal#arn:aws:iam::{ACCOUNT}:role/partner"])
def test_ingestion_roles_read_an_identitys_pointer(role: str, pk: str) -> None:
    assert allowed(role, get_item(pk))


@pytest.mark.parametrize("role", ["UploadFunctionRole", "ImportsFunctionRole"])
@pytest.mark.parametrize("pk", ["client#acme", "latest", "lock", "run#v1", "client-event#x", "apikey"])
def test_ingestion_roles_read_nothing_else_of_the_model_table(role: str, pk: str) -> None:
    assert not allowed(role, get_item(pk))


@pytest.mark.parametrize("role", ["UploadFunctionRole", "ImportsFunctionRole"])
def test_ingestion_roles_cannot_write_a_pointer(role: str) -> None:
    put = ApiCall(
        "dynamodb",
        "UpdateItem",
        {"TableName": STACK.table_name("ModelTable"), "Key": {"pk": {"S": "apikey#k3y1d"}}},
        REGION,
        "AKID",
    )
    assert not allowed(role, put)
