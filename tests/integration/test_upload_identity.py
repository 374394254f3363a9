"""POST /upload and the imports routes take who sent a request from the identity API Gateway
authenticated (the request context's API key id), never from the request: moto tables of
infra/serverless.yml, clients recorded as the CLI records them (lambdas/core/clients.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import boto3
import pytest

from lambdas import imports, upload
from lambdas.core import clients, ingest
from lambdas.core.registry import from_item
from tests.support.identity import identified, register

EVENTS = Path(__file__).resolve().parents[1] / "events"
SAMPLES = [
    {"temp": 75, "rh": 60, "wind": 0.6, "clo": 1.0, "label": "ok"},
    {"temp": 60, "rh": 40, "wind": 0.1, "clo": 0.5, "label": "cold"},
]
ACME, PARTNER, TRAFFIC_KEY_ID = "acmekey123", "partnerkey456", "traffickey789"


def upload_event(
    api_key_id: str | None, body: Any = SAMPLES, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    event = json.loads((EVENTS / "upload_original.json").read_text())
    event["body"] = body if isinstance(body, str) else json.dumps(body)
    event["headers"].update(headers or {})
    return identified(event, api_key_id)


def call(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    reply = upload.handler(event, None)
    return reply["statusCode"], json.loads(reply["body"])


def scan(dynamodb: Any) -> list[dict[str, Any]]:
    table = ingest.IngestSettings.from_env().data_table
    return [from_item(i) for i in dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]]


@pytest.fixture(autouse=True)
def fresh(stack: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TRAFFIC_API_KEY_ID", TRAFFIC_KEY_ID)
    for cached in (upload.config, upload.resolver):
        cached.cache_clear()
    imports.reset()
    yield
    for cached in (upload.config, upload.resolver):
        cached.cache_clear()
    imports.reset()


# refused ------------------------------------------------------------------------------------


def without_any_identity() -> dict[str, Any]:
    event = upload_event(None)
    del event["requestContext"]
    return event


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(upload_event(None), id="no-api-key-id"),
        pytest.param(without_any_identity(), id="no-request-context"),
        # A key sent as a header proves nothing: only the gateway's request context counts.
        pytest.param(upload_event(None, headers={"x-api-key": "acme-secret-value"}), id="header-only"),
    ],
)
def test_upload_without_an_authenticated_client_is_403_and_writes_nothing(
    dynamodb: Any, event: dict[str, Any]
) -> None:
    register("acme", api_key_id=ACME)
    status, body = call(event)
    assert (status, body["error"]) == (403, "forbidden")
    assert "x-api-key" in body["message"]
    assert scan(dynamodb) == []


def test_upload_with_an_unregistered_key_is_403_and_writes_nothing(dynamodb: Any) -> None:
    register("acme", api_key_id=ACME)
    status, body = call(upload_event("somebody-elses-key"))
    assert (status, body["error"]) == (403, "forbidden")
    assert "not registered" in body["message"]
    assert scan(dynamodb) == []


def test_upload_from_a_revoked_client_is_403_and_writes_nothing(dynamodb: Any) -> None:
    register("acme", api_key_id=ACME, trust=clients.REVOKED)
    status, body = call(upload_event(ACME))
    assert (status, body["error"], body["client"]) == (403, "forbidden", "acme")
    assert "revoked" in body["message"]
    assert scan(dynamodb) == []


def test_upload_is_refused_before_its_body_is_read(dynamodb: Any) -> None:
    status, body = call(upload_event("somebody-elses-key", body="not json at all"))
    assert (status, body["error"]) == (403, "forbidden")


def test_a_revocation_reaches_the_function_once_its_cache_expires(
    dynamodb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIENT_CACHE_S", "0")
    register("acme", api_key_id=ACME)
    assert call(upload_event(ACME))[0] == 200
    clients.Clients(os.environ["MODEL_TABLE"]).set_trust("acme", clients.REVOKED, actor="ops", reason="abuse")
    status, body = call(upload_event(ACME, body=[dict(SAMPLES[0], temp=80)]))
    assert (status, body["error"]) == (403, "forbidden")
    assert len(scan(dynamodb)) == len(SAMPLES)


def test_a_revocation_is_cached_no_longer_than_client_cache_s(
    dynamodb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default: answers kept 10 s per execution environment (lambdas/README.md).
    register("acme", api_key_id=ACME)
    assert call(upload_event(ACME))[0] == 200
    clients.Clients(os.environ["MODEL_TABLE"]).set_trust("acme", clients.REVOKED, actor="ops", reason="abuse")
    assert call(upload_event(ACME, body=[dict(SAMPLES[0], temp=81)]))[0] == 200  # still cached
    assert upload.resolver().ttl_s == 10.0


# accepted -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trust", "source"),
    [(clients.TRUSTED, "api"), (clients.UNTRUSTED, "api"), (clients.TRUSTED, "traffic")],
)
def test_upload_writes_every_sample_as_the_clients_with_its_records_source(
    dynamodb: Any, trust: str, source: str
) -> None:
    register("acme", api_key_id=ACME, trust=trust, source=source)
    status, body = call(upload_event(ACME))
    assert (status, body["written"]) == (200, 2)
    items = scan(dynamodb)
    assert sorted(i["id"] for i in items) == sorted(body["ids"])
    assert {(i["client"], i["source"]) for i in items} == {("acme", source)}


@pytest.mark.parametrize("forged", ["traffic", "import", "robot", "api"])
def test_a_forged_sample_source_header_changes_nothing(dynamodb: Any, forged: str) -> None:
    register("acme", api_key_id=ACME)
    status, body = call(upload_event(ACME, headers={"X-Sample-Source": forged}))
    assert (status, body["written"]) == (200, 2)
    assert {(i["client"], i["source"]) for i in scan(dynamodb)} == {("acme", "api")}


def test_the_traffic_functions_key_is_the_traffic_client_without_a_record(dynamodb: Any) -> None:
    status, body = call(upload_event(TRAFFIC_KEY_ID))
    assert (status, body["written"]) == (200, 2)
    assert {(i["client"], i["source"]) for i in scan(dynamodb)} == {("traffic", "traffic")}


def test_without_traffic_api_key_id_the_traffic_key_is_unregistered(
    dynamodb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRAFFIC_API_KEY_ID")
    status, body = call(upload_event(TRAFFIC_KEY_ID))
    assert (status, body["error"]) == (403, "forbidden")
    assert scan(dynamodb) == []


def test_two_clients_sending_the_same_sample_never_overwrite_each_other(dynamodb: Any) -> None:
    register("acme", api_key_id=ACME)
    register("partner", api_key_id=PARTNER, trust=clients.UNTRUSTED)
    same = [dict(SAMPLES[0], id="reading-1")]
    _, first = call(upload_event(ACME, body=same))
    _, second = call(upload_event(PARTNER, body=same))
    _, again = call(upload_event(ACME, body=same))  # a resend stays idempotent
    assert first["ids"] == again["ids"] != second["ids"]
    owners = {i["id"]: i["client"] for i in scan(dynamodb)}
    assert owners == {first["ids"][0]: "acme", second["ids"][0]: "partner"}


# imports ------------------------------------------------------------------------------------


@pytest.fixture
def imports_env(stack: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    resolved = stack.function_environment("imports", {"API_URL": "https://api.example.test/test"})
    for key, value in resolved.items():
        monkeypatch.setenv(key, value)
    imports.reset()
    return resolved


def imports_call(
    api_key_id: str | None, method: str, body: Any = None, import_id: str = ""
) -> tuple[int, Any]:
    if method == "POST":
        event: dict[str, Any] = {"httpMethod": "POST", "resource": "/imports", "body": json.dumps(body)}
    else:
        event = {
            "httpMethod": "GET",
            "resource": "/imports/{import_id}",
            "pathParameters": {"import_id": import_id},
        }
    reply = imports.handler(identified(event, api_key_id))
    return reply["statusCode"], json.loads(reply["body"])


REQUEST = {"format": "csv", "filename": "history.csv"}


def import_item(env: dict[str, str], import_id: str) -> dict[str, Any]:
    got = boto3.client("dynamodb").get_item(
        TableName=env["IMPORT_TABLE"], Key={"import_id": {"S": import_id}}
    )
    return from_item(got["Item"])


def test_an_import_records_the_client_that_created_it(imports_env: dict[str, str]) -> None:
    register("acme", api_key_id=ACME)
    status, body = imports_call(ACME, "POST", REQUEST)
    assert status == 201
    assert import_item(imports_env, body["import_id"])["client"] == "acme"
    status, view = imports_call(ACME, "GET", import_id=body["import_id"])
    assert (status, view["client"], view["status"]) == (200, "acme", "waiting_upload")


def test_the_traffic_key_creates_imports_as_the_traffic_client(imports_env: dict[str, str]) -> None:
    # TRAFFIC_API_KEY_ID as serverless.yml gives it: Ref TrafficApiKey, the key created in moto.
    traffic_key_id = imports_env["TRAFFIC_API_KEY_ID"]
    _, body = imports_call(traffic_key_id, "POST", REQUEST)
    assert import_item(imports_env, body["import_id"])["client"] == "traffic"


def test_another_clients_import_is_404_as_if_it_did_not_exist(imports_env: dict[str, str]) -> None:
    register("acme", api_key_id=ACME)
    register("partner", api_key_id=PARTNER)
    _, body = imports_call(ACME, "POST", REQUEST)
    status, theirs = imports_call(PARTNER, "GET", import_id=body["import_id"])
    _, unknown = imports_call(PARTNER, "GET", import_id="imp-0000000000000000")
    assert status == 404
    # The same answer as for an id that exists nowhere: nothing tells the two apart.
    for answer, import_id in ((theirs, body["import_id"]), (unknown, "imp-0000000000000000")):
        assert answer == {"error": "not_found", "message": f"no import {import_id}", "import_id": import_id}


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("key", [None, "somebody-elses-key", "revoked"])
def test_imports_routes_refuse_an_unauthenticated_unregistered_or_revoked_client(
    imports_env: dict[str, str], method: str, key: str | None
) -> None:
    register("acme", api_key_id=ACME)
    _, created = imports_call(ACME, "POST", REQUEST)
    register("gone", api_key_id="revoked", trust=clients.REVOKED)
    before = boto3.client("dynamodb").scan(TableName=imports_env["IMPORT_TABLE"])["Count"]
    status, body = imports_call(key, method, REQUEST, import_id=created["import_id"])
    assert (status, body["error"]) == (403, "forbidden")
    assert "upload" not in body and "status" not in body
    assert boto3.client("dynamodb").scan(TableName=imports_env["IMPORT_TABLE"])["Count"] == before


# through the local cloud: its API front checks the key, the functions run under their roles ----


def data_items(cloud: Any) -> list[dict[str, Any]]:
    table = cloud.stack.table_name("DataTable")
    pages = cloud.client("dynamodb").get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
    return [from_item(item) for page in pages for item in page["Items"]]


@pytest.mark.slow
def test_local_cloud_writes_each_request_as_its_keys_client(make_cloud: Any) -> None:
    import requests

    from tests.support.clouds import wait

    cloud = make_cloud(schedule_overrides={"traffic": {"rate": "rate(1 second)"}})
    url = f"{cloud.api_url}/upload"
    forged = {"x-api-key": cloud.api_key, "X-Sample-Source": "traffic"}
    assert requests.post(url, json=SAMPLES, headers=forged, timeout=30).status_code == 200
    refused = requests.post(url, json=SAMPLES, headers={"x-api-key": "not-a-key"}, timeout=30)
    assert (refused.status_code, refused.json()) == (403, {"message": "Forbidden"})
    # The traffic function reads its key from its secret (under its role) and posts over HTTP.
    wait(lambda: any(i.get("client") == "traffic" for i in data_items(cloud)), 30, "traffic samples")
    pairs = {(i.get("client"), i["source"]) for i in data_items(cloud)}
    assert pairs == {("default", "api"), ("traffic", "traffic")}
