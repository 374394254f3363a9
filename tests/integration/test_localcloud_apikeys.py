"""API keys, usage plans and secrets in the local cloud: what serverless.yml declares is created
in moto (plans named as osls names them, the traffic function's key whose value is its secret's,
the default client), and the API front checks a private route's key as API Gateway does (403
Forbidden, 429 Too Many Requests, 429 Limit Exceeded; the function is not invoked). One cloud
for the module; each test that needs its own limits makes its own plan and key."""

from __future__ import annotations

import json
import string
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from lambdas.core import clients
from localcloud import infra
from localcloud.apigw import period_start
from localcloud.cloud import LocalCloud
from tests.support.clouds import QUIET

pytestmark = pytest.mark.slow

CALLS: list[dict[str, Any]] = []


def _recording(event: dict[str, Any], context: Any) -> dict[str, Any]:
    CALLS.append(event)
    return {"statusCode": 200, "body": json.dumps({"ok": True})}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloud]:
    folder = tmp_path_factory.mktemp("apikeys")
    local = LocalCloud(
        folder / "state",
        schedule_overrides=QUIET,
        drivers=(),
        function_log=folder / "functions.log",
        handlers={"upload": _recording, "models": _recording},
    )
    local.start()
    yield local
    local.stop()


@pytest.fixture(autouse=True)
def _no_calls() -> None:
    CALLS.clear()


def _post(cloud: LocalCloud, key: str | None = None, header: str = "x-api-key") -> requests.Response:
    headers = {} if key is None else {header: key}
    return requests.post(f"{cloud.api_url}/upload", data="[]", headers=headers, timeout=10)


def _plan_with_key(
    cloud: LocalCloud, *, throttle: dict[str, Any] | None = None, quota: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A new usage plan of the test's own with a new enabled key in it (the key, with its value)."""
    apigateway = cloud.client("apigateway")
    kwargs: dict[str, Any] = {"name": f"test-{uuid.uuid4().hex[:8]}"}
    if throttle:
        kwargs["throttle"] = throttle
    if quota:
        kwargs["quota"] = quota
    plan = apigateway.create_usage_plan(**kwargs)
    key = apigateway.create_api_key(name=f"test-key-{uuid.uuid4().hex[:8]}", enabled=True)
    apigateway.create_usage_plan_key(usagePlanId=plan["id"], keyId=key["id"], keyType="API_KEY")
    return dict(key)


# --- what infra creates from serverless.yml --------------------------------------------------


def test_infra_creates_the_usage_plans_with_osls_names_and_limits(cloud: LocalCloud) -> None:
    plans = {p["name"]: p for p in cloud.client("apigateway").get_usage_plans()["items"]}
    clients_plan = plans["autoretrain-clients-local"]
    assert clients_plan["throttle"] == {"burstLimit": 40, "rateLimit": 20.0}
    assert {k: clients_plan["quota"][k] for k in ("limit", "period")} == {"limit": 20000, "period": "DAY"}
    assert plans["autoretrain-traffic-local"]["quota"]["limit"] == 5000
    assert plans["autoretrain-operators-local"]["quota"]["limit"] == 1000
    assert cloud.stack.physical["ApiGatewayUsagePlanClients"] == clients_plan["id"]


def test_infra_puts_the_registry_key_in_the_operators_plan(cloud: LocalCloud) -> None:
    apigateway = cloud.client("apigateway")
    key_id = cloud.stack.physical["OperatorApiKey"]
    assert apigateway.get_api_key(apiKey=key_id)["name"] == "autoretrain-local-registry"
    assert [p["name"] for p in apigateway.get_usage_plans(keyId=key_id)["items"]] == [
        "autoretrain-operators-local"
    ]


def test_infra_gives_the_traffic_key_its_secrets_value_and_the_traffic_plan(cloud: LocalCloud) -> None:
    apigateway = cloud.client("apigateway")
    secret_arn = cloud.stack.physical["TrafficApiKeySecret"]
    assert secret_arn.startswith("arn:aws:secretsmanager:us-east-1:")
    value = cloud.client("secretsmanager").get_secret_value(SecretId=secret_arn)["SecretString"]
    assert len(value) == 40 and set(value) <= set(string.ascii_letters + string.digits)
    key = apigateway.get_api_key(apiKey=cloud.stack.physical["TrafficApiKey"], includeValue=True)
    assert key["value"] == value
    assert key["enabled"] is True
    assert [p["name"] for p in apigateway.get_usage_plans(keyId=key["id"])["items"]] == [
        "autoretrain-traffic-local"
    ]


def test_infra_resolves_refs_of_keys_plans_and_secrets(cloud: LocalCloud) -> None:
    stack = cloud.stack
    assert stack.resolve_intrinsics({"Ref": "TrafficApiKey"}) == stack.physical["TrafficApiKey"]
    assert (
        stack.resolve_intrinsics({"Ref": "ApiGatewayUsagePlanTraffic"})
        == stack.physical["ApiGatewayUsagePlanTraffic"]
    )
    holdout = stack.resolve_intrinsics({"Ref": "HoldoutKeySecret"})
    assert (
        holdout.startswith("arn:aws:secretsmanager:") and ":secret:autoretrain-local/holdout-key" in holdout
    )
    value = cloud.client("secretsmanager").get_secret_value(SecretId=holdout)["SecretString"]
    assert len(value) == 64 and value.isalnum()


@pytest.mark.parametrize(
    ("spec", "alphabet"),
    [
        ({"PasswordLength": 50, "ExcludePunctuation": True}, string.ascii_letters + string.digits),
        ({"PasswordLength": 20, "ExcludeUppercase": True, "ExcludeNumbers": True}, None),
    ],
)
def test_generated_secret_has_the_asked_length_and_characters(
    spec: dict[str, Any], alphabet: str | None
) -> None:
    value = infra.generate_secret_string(spec)
    assert len(value) == spec["PasswordLength"]
    if alphabet is not None:
        assert set(value) <= set(alphabet)
    else:
        assert not any(c.isupper() or c.isdigit() for c in value)
        assert any(c in string.punctuation for c in value) and any(c.islower() for c in value)


def test_generated_secret_refuses_a_template_it_cannot_apply() -> None:
    with pytest.raises(infra.ApiAccessError, match="SecretStringTemplate"):
        infra.generate_secret_string({"SecretStringTemplate": "{}", "GenerateStringKey": "password"})


# --- the default client ----------------------------------------------------------------------


def test_default_client_has_a_key_in_the_clients_plan_and_a_trusted_record(cloud: LocalCloud) -> None:
    assert json.loads(cloud.endpoints_file.read_text())["api_key"] == cloud.api_key
    record = clients.Clients(cloud.stack.table_name("ModelTable"), cloud.client("dynamodb")).get("default")
    assert record.trust == clients.TRUSTED
    assert record.plan == "clients"
    apigateway = cloud.client("apigateway")
    key = apigateway.get_api_key(apiKey=record.api_key_id, includeValue=True)
    assert key["value"] == cloud.api_key
    assert key["name"] == "autoretrain-local-client-default"
    assert [p["name"] for p in apigateway.get_usage_plans(keyId=key["id"])["items"]] == [
        "autoretrain-clients-local"
    ]


# --- the API front's key check ---------------------------------------------------------------


def test_private_route_without_a_key_is_forbidden_and_nothing_is_written(tmp_path: Path) -> None:
    # The real upload function behind the route: a refused request reaches nothing.
    with LocalCloud(
        tmp_path / "state", schedule_overrides=QUIET, drivers=(), function_log=tmp_path / "f.log"
    ) as real:
        sample = [{"temp": 75, "rh": 60, "wind": 0.6, "clo": 1.0, "label": "ok"}]
        reply = requests.post(f"{real.api_url}/upload", data=json.dumps(sample), timeout=10)
        assert reply.status_code == 403
        assert reply.json() == {"message": "Forbidden"}
        table = real.stack.table_name("DataTable")
        assert real.client("dynamodb").scan(TableName=table, Select="COUNT")["Count"] == 0
        assert real.invocations["upload"] == 0


@pytest.mark.parametrize("key", ["", "not-a-key-of-this-api-000000", "x" * 40])
def test_private_route_with_an_unknown_key_is_forbidden(cloud: LocalCloud, key: str) -> None:
    reply = _post(cloud, key)
    assert (reply.status_code, reply.json()) == (403, {"message": "Forbidden"})
    assert CALLS == []


def test_private_route_with_the_default_key_calls_the_function_with_the_keys_identity(
    cloud: LocalCloud,
) -> None:
    reply = _post(cloud, cloud.api_key, header="X-API-Key")  # header names are case-insensitive
    assert reply.status_code == 200, reply.text
    (event,) = CALLS
    identity = event["requestContext"]["identity"]
    record = clients.Clients(cloud.stack.table_name("ModelTable"), cloud.client("dynamodb")).get("default")
    assert identity["apiKey"] == cloud.api_key
    assert identity["apiKeyId"] == record.api_key_id
    assert clients.identity_of(event) == ("api_key", record.api_key_id)


def test_a_new_key_counts_at_once_and_a_disabled_one_within_a_second(cloud: LocalCloud) -> None:
    key = _plan_with_key(cloud)
    assert _post(cloud, key["value"]).status_code == 200
    cloud.client("apigateway").update_api_key(
        apiKey=key["id"], patchOperations=[{"op": "replace", "path": "/enabled", "value": "false"}]
    )
    time.sleep(1.1)
    reply = _post(cloud, key["value"])
    assert (reply.status_code, reply.json()) == (403, {"message": "Forbidden"})
    assert len(CALLS) == 1


def test_a_key_in_no_usage_plan_is_forbidden(cloud: LocalCloud) -> None:
    key = cloud.client("apigateway").create_api_key(name=f"planless-{uuid.uuid4().hex[:8]}", enabled=True)
    reply = _post(cloud, key["value"])
    assert (reply.status_code, reply.json()) == (403, {"message": "Forbidden"})
    assert CALLS == []


def test_over_the_plans_throttle_is_429_too_many_requests(cloud: LocalCloud) -> None:
    key = _plan_with_key(cloud, throttle={"rateLimit": 1, "burstLimit": 1})
    replies = [_post(cloud, key["value"]) for _ in range(3)]
    assert replies[0].status_code == 200
    refused = [r for r in replies if r.status_code == 429]
    assert refused and all(r.json() == {"message": "Too Many Requests"} for r in refused)
    assert len(CALLS) == 3 - len(refused)
    time.sleep(1.1)  # the bucket refills at rateLimit per second
    assert _post(cloud, key["value"]).status_code == 200


def test_over_the_plans_quota_is_429_limit_exceeded(cloud: LocalCloud) -> None:
    key = _plan_with_key(cloud, quota={"limit": 2, "period": "DAY"})
    statuses = [_post(cloud, key["value"]).status_code for _ in range(2)]
    third = _post(cloud, key["value"])
    assert statuses == [200, 200]
    assert (third.status_code, third.json()) == (429, {"message": "Limit Exceeded"})
    assert len(CALLS) == 2


def test_cors_preflight_of_a_private_route_needs_no_key(cloud: LocalCloud) -> None:
    reply = requests.options(
        f"{cloud.api_url}/upload",
        headers={"Origin": "http://example.test", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert reply.status_code == 200
    assert reply.headers["Access-Control-Allow-Origin"] == "*"
    assert "X-Api-Key" in reply.headers["Access-Control-Allow-Headers"]
    assert CALLS == []


def test_a_public_route_needs_no_key(cloud: LocalCloud) -> None:
    assert requests.get(f"{cloud.api_url}/models", timeout=10).status_code == 200
    (event,) = CALLS
    assert "apiKeyId" not in event["requestContext"]["identity"]


@pytest.mark.parametrize(
    ("period", "when", "start"),
    [
        ("DAY", "2026-11-30T23:59:59Z", "2026-11-30"),
        ("WEEK", "2026-11-29T10:00:00Z", "2026-11-23"),  # a Sunday: the week began on Monday
        ("MONTH", "2026-12-31T00:00:00Z", "2026-12-01"),
    ],
)
def test_quota_periods_start_in_utc(period: str, when: str, start: str) -> None:
    import datetime as dt

    now = dt.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
    assert period_start(period, now) == start


# --- durable restart -------------------------------------------------------------------------


def test_a_durable_restart_reuses_the_default_client_plans_and_keys(tmp_path: Path) -> None:
    def start() -> LocalCloud:
        return LocalCloud(
            tmp_path / "state",
            schedule_overrides=QUIET,
            drivers=(),
            function_log=tmp_path / "f.log",
            durable=True,
        ).start()

    def inventory(local: LocalCloud) -> tuple[list[str], list[str], list[str]]:
        apigateway = local.client("apigateway")
        plans = sorted(p["name"] for p in apigateway.get_usage_plans()["items"])
        keys = sorted(k["name"] for k in apigateway.get_api_keys()["items"])
        secrets = sorted(s["Name"] for s in local.client("secretsmanager").list_secrets()["SecretList"])
        return plans, keys, secrets

    first = start()
    try:
        key, before = first.api_key, inventory(first)
        traffic = first.stack.physical["TrafficApiKey"]
    finally:
        first.stop()
    second = start()
    try:
        assert second.api_key == key
        assert inventory(second) == before
        assert second.stack.physical["TrafficApiKey"] == traffic
        assert requests.post(f"{second.api_url}/upload", data="[]", timeout=10).status_code == 403
    finally:
        second.stop()
