"""The local cloud's core: moto server, resources from serverless.yml, the API Gateway
stand-in, the scheduler, and a clean stop. Drivers are left out here (they have their own
tests); the end-to-end tests run the whole thing."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from localcloud import infra
from localcloud.cloud import DRIVER_MODULES, LocalCloud, LocalCloudError
from localcloud.scheduler import Cron, ScheduleError, rate_seconds, schedules
from tests.support.clouds import keyed

ORIGINAL_PAYLOAD = [
    {"created": 1570323309012, "temp": 75, "rh": 60, "wind": 0.6, "clo": 1.0, "label": "ok", "score": -1}
]
QUIET = {"traffic": {"enabled": False}}


def _count(cloud: LocalCloud) -> int:
    table = cloud.stack.table_name("DataTable")
    return int(cloud.client("dynamodb").scan(TableName=table, Select="COUNT")["Count"])


def _wait_for(condition: Callable[[], bool], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.fixture
def make_cloud(tmp_path: Path) -> Iterator[Callable[..., LocalCloud]]:
    started: list[LocalCloud] = []

    def make(**kwargs: Any) -> LocalCloud:
        kwargs.setdefault("schedule_overrides", QUIET)
        kwargs.setdefault("drivers", ())
        kwargs.setdefault("function_log", tmp_path / "functions.log")
        cloud = LocalCloud(tmp_path / "state", **kwargs)
        started.append(cloud)
        return cloud.start()

    yield make
    for cloud in started:
        cloud.stop()


@pytest.fixture
def cloud(make_cloud: Callable[..., LocalCloud]) -> LocalCloud:
    return make_cloud()


def _recording_handler(calls: list[tuple[dict[str, Any], Any]], response: Any) -> Callable[..., Any]:
    def handler(event: dict[str, Any], context: Any) -> Any:
        calls.append((event, context))
        if isinstance(response, Exception):
            raise response
        return response

    return handler


# --- start-up -------------------------------------------------------------------------------


@pytest.mark.slow
def test_localcloud_starts_on_ephemeral_ports_and_writes_its_endpoints(cloud: LocalCloud) -> None:
    endpoints = json.loads(cloud.endpoints_file.read_text())
    assert endpoints == {
        "api": cloud.api_url,
        "aws": cloud.aws_url,
        "api_key": cloud.api_key,
        "operator_api_key": cloud.operator_api_key,
    }
    assert cloud.api_key != cloud.operator_api_key
    for url in (endpoints["api"], endpoints["aws"]):
        assert url.startswith("http://127.0.0.1:")
        assert int(url.rsplit(":", 1)[1]) > 0
    assert os.environ["AWS_ENDPOINT_URL"] == cloud.aws_url


@pytest.mark.slow
def test_localcloud_creates_the_resources_of_serverless_yml(cloud: LocalCloud) -> None:
    declared = infra.load(stage="local")
    tables = set(cloud.client("dynamodb").list_tables()["TableNames"])
    assert {declared.table_name(t) for t in declared.resources_of_type("AWS::DynamoDB::Table")} <= tables
    buckets = {b["Name"] for b in cloud.client("s3").list_buckets()["Buckets"]}
    declared_buckets = declared.resources_of_type("AWS::S3::Bucket")
    assert declared_buckets
    assert {cloud.stack.physical[logical] for logical in declared_buckets} <= buckets
    assert cloud.function_environment("s3proxy")["MODEL_BUCKET"] in buckets


@pytest.mark.slow
def test_localcloud_gives_functions_the_local_api_url_and_their_environment(cloud: LocalCloud) -> None:
    assert cloud.function_environment("traffic")["API_URL"] == cloud.api_url
    assert cloud.function_environment("upload")["DATA_TABLE"] == "autoretrain-local-samples"
    # custom.localCloud.environment wins over the function's own value, for the functions
    # that declare the variable; the others never see it
    for key, value in cloud.settings["environment"].items():
        owners = [fn.name for fn in cloud.stack.functions() if key in fn.environment]
        assert owners, f"{key} is declared by no function"
        for fn in cloud.stack.functions():
            env = cloud.function_environment(fn.name)
            if fn.name in owners:
                assert env[key] == str(value)
            else:
                assert key not in env


_TWO_FUNCTIONS = """
service: clash
provider: { name: aws, environment: { SHARED: both } }
functions:
  a: { handler: tests/support/handlers.environment, role: RoleA, environment: { MODE: one, ONLY_A: "1" } }
  b: { handler: tests/support/handlers.environment, role: RoleB, environment: { MODE: two } }
resources:
  Resources:
    RoleA:
      Type: AWS::IAM::Role
      Properties:
        AssumeRolePolicyDocument: { Version: "2012-10-17", Statement: [] }
    RoleB:
      Type: AWS::IAM::Role
      Properties:
        AssumeRolePolicyDocument: { Version: "2012-10-17", Statement: [] }
"""


@pytest.mark.slow
def test_each_function_has_its_own_environment_and_role(
    tmp_path: Path, make_cloud: Callable[..., LocalCloud]
) -> None:
    config = tmp_path / "serverless.yml"
    config.write_text(_TWO_FUNCTIONS)
    cloud = make_cloud(config_path=config)
    env_a, env_b = cloud.invoke("a", {}), cloud.invoke("b", {})
    assert (env_a["MODE"], env_b["MODE"]) == ("one", "two")
    assert env_a["SHARED"] == env_b["SHARED"] == "both"
    assert "ONLY_A" in env_a and "ONLY_A" not in env_b
    assert env_a["AWS_LAMBDA_FUNCTION_NAME"] == "clash-local-a"
    assert env_a["AWS_ACCESS_KEY_ID"] != env_b["AWS_ACCESS_KEY_ID"]  # each its own role's session
    assert env_a["AWS_ACCESS_KEY_ID"] == cloud.role_credentials("RoleA")["AWS_ACCESS_KEY_ID"]
    assert "MODE" not in os.environ  # nothing of a function's leaks into the local cloud


@pytest.mark.slow
def test_an_environment_override_no_function_declares_is_refused(
    make_cloud: Callable[..., LocalCloud],
) -> None:
    threads_before = set(threading.enumerate())
    with pytest.raises(LocalCloudError, match="no function declares NOT_A_SETTING"):
        make_cloud(environment={"NOT_A_SETTING": "1"})
    assert set(threading.enumerate()) == threads_before


# --- API Gateway stand-in -------------------------------------------------------------------


@pytest.mark.slow
def test_localcloud_upload_of_the_original_payload_lands_in_the_data_table(cloud: LocalCloud) -> None:
    reply = requests.post(
        f"{cloud.api_url}/upload", data=json.dumps(ORIGINAL_PAYLOAD), headers=keyed(cloud), timeout=30
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["written"] == 1
    items = cloud.client("dynamodb").scan(TableName=cloud.stack.table_name("DataTable"))["Items"]
    assert len(items) == 1
    assert items[0]["label"] == {"S": "ok"}
    assert float(items[0]["temp"]["N"]) == 75
    assert float(items[0]["wind"]["N"]) == 0.6
    assert int(items[0]["created"]["N"]) == 1570323309012


@pytest.mark.slow
def test_localcloud_api_sends_a_rest_proxy_event_and_returns_the_proxy_response(
    make_cloud: Callable[..., LocalCloud],
) -> None:
    calls: list[tuple[dict[str, Any], Any]] = []
    response = {
        "statusCode": 201,
        "headers": {"X-One": "1"},
        "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
        "body": '{"ok":true}',
    }
    cloud = make_cloud(handlers={"upload": _recording_handler(calls, response)})
    reply = requests.post(
        f"{cloud.api_url}/upload?dry=1&tag=a&tag=b",
        data=b'{"x": 1}',
        headers=keyed(cloud, {"X-Client": "t"}),
        timeout=10,
    )
    assert reply.status_code == 201
    assert reply.json() == {"ok": True}
    assert reply.headers["X-One"] == "1"
    assert reply.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    (event, context), *_ = calls
    assert event["httpMethod"] == "POST"
    assert event["path"] == "/upload"
    assert event["resource"] == "/upload"
    assert event["body"] == '{"x": 1}'
    assert event["isBase64Encoded"] is False
    assert event["headers"]["X-Client"] == "t"
    assert event["queryStringParameters"] == {"dry": "1", "tag": "b"}
    assert event["multiValueQueryStringParameters"] == {"dry": ["1"], "tag": ["a", "b"]}
    assert event["pathParameters"] is None
    assert event["requestContext"]["stage"] == "local"
    assert event["requestContext"]["identity"]["sourceIp"] == "127.0.0.1"
    assert event["requestContext"]["identity"]["apiKey"] == cloud.api_key
    assert event["requestContext"]["requestId"]
    assert context.function_name == "autoretrain-local-upload"
    assert context.aws_request_id
    assert 0 < context.get_remaining_time_in_millis() <= cloud.stack.function("upload").timeout * 1000


@pytest.mark.slow
def test_localcloud_api_base64_encodes_a_binary_body(make_cloud: Callable[..., LocalCloud]) -> None:
    calls: list[tuple[dict[str, Any], Any]] = []
    cloud = make_cloud(handlers={"upload": _recording_handler(calls, {"statusCode": 204, "body": ""})})
    reply = requests.post(f"{cloud.api_url}/upload", data=b"\xff\x00\xfe", headers=keyed(cloud), timeout=10)
    assert reply.status_code == 204
    event = calls[0][0]
    assert event["isBase64Encoded"] is True
    assert event["body"] == "/wD+"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/nope", 404, "no route for GET /nope"),
        ("POST", "/upload/extra", 404, "no route for POST /upload/extra"),
        ("GET", "/upload", 405, "GET is not allowed on /upload; use POST"),
        ("DELETE", "/upload", 405, "DELETE is not allowed on /upload; use POST"),
    ],
)
def test_localcloud_api_rejects_what_no_route_serves(
    make_cloud: Callable[..., LocalCloud], method: str, path: str, status: int, message: str
) -> None:
    calls: list[tuple[dict[str, Any], Any]] = []
    cloud = make_cloud(handlers={"upload": _recording_handler(calls, {"statusCode": 200, "body": ""})})
    reply = requests.request(method, f"{cloud.api_url}{path}", timeout=10)
    assert reply.status_code == status
    assert reply.json() == {"message": message}
    assert calls == []


@pytest.mark.slow
def test_localcloud_api_answers_a_cors_preflight(cloud: LocalCloud) -> None:
    reply = requests.options(
        f"{cloud.api_url}/upload",
        headers={"Origin": "http://example.test", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert reply.status_code == 200
    assert reply.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in reply.headers["Access-Control-Allow-Methods"].split(",")
    assert "Content-Type" in reply.headers["Access-Control-Allow-Headers"].split(",")
    assert _count(cloud) == 0


@pytest.mark.slow
def test_localcloud_api_refuses_a_request_over_10_mb_with_413(make_cloud: Callable[..., LocalCloud]) -> None:
    calls: list[tuple[dict[str, Any], Any]] = []
    cloud = make_cloud(handlers={"upload": _recording_handler(calls, {"statusCode": 200, "body": ""})})
    reply = requests.post(
        f"{cloud.api_url}/upload", data=b"x" * (10 * 1024 * 1024 + 1), headers=keyed(cloud), timeout=30
    )
    assert reply.status_code == 413
    assert reply.json() == {"message": "Request Too Long"}
    assert calls == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "outcome",
    [RuntimeError("boom"), {"body": "no status"}, "not a dict", {"statusCode": 200, "body": b"bytes"}],
    ids=["raises", "no-status", "not-a-dict", "bytes-body"],
)
def test_localcloud_api_answers_502_when_the_function_fails(
    make_cloud: Callable[..., LocalCloud], outcome: Any
) -> None:
    calls: list[tuple[dict[str, Any], Any]] = []
    cloud = make_cloud(handlers={"upload": _recording_handler(calls, outcome)})
    reply = requests.post(f"{cloud.api_url}/upload", data="[]", headers=keyed(cloud), timeout=10)
    assert reply.status_code == 502
    assert reply.json() == {"message": "Internal server error"}
    assert len(calls) == 1


@pytest.mark.slow
def test_localcloud_api_serves_static_files_from_the_web_folder(
    tmp_path: Path, make_cloud: Callable[..., LocalCloud]
) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<h1>comfort</h1>")
    (tmp_path / "secret.txt").write_text("no")
    cloud = make_cloud(web_dir=web)
    page = requests.get(f"{cloud.api_url}/", timeout=10)
    assert page.status_code == 200
    assert page.text == "<h1>comfort</h1>"
    assert page.headers["Content-Type"] == "text/html"
    escape = requests.get(f"{cloud.api_url}/%2e%2e/secret.txt", timeout=10)
    assert escape.status_code == 404


# --- scheduler ------------------------------------------------------------------------------


@pytest.mark.slow
def test_localcloud_fires_the_traffic_schedule_and_samples_keep_arriving(
    make_cloud: Callable[..., LocalCloud],
) -> None:
    cloud = make_cloud(schedule_overrides={"traffic": {"rate": "rate(1 second)"}})
    # the traffic schedule, the train function's retry tick (lambdas/train.py) and the importer's
    # resume tick (lambdas/importer.py)
    scheduled = sorted(s.function for s in cloud.scheduler.items)  # type: ignore[union-attr]
    assert scheduled == ["importer", "traffic", "train"]
    assert _wait_for(lambda: _count(cloud) > 0), "no traffic arrived"
    first = _count(cloud)
    assert _wait_for(lambda: _count(cloud) > first), "traffic stopped after the first firing"
    assert cloud.invocations["traffic"] >= 2
    assert cloud.invocations["upload"] >= 2  # the traffic went through the HTTP API


def test_scheduler_applies_the_local_overrides_of_serverless_yml() -> None:
    stack = infra.load(stage="local")
    # as deployed: traffic disabled; the train function's retry tick and the importer's resume
    # tick every minute
    assert sorted((s.function, s.expression) for s in schedules(stack)) == [
        ("importer", "rate(1 minute)"),
        ("train", "rate(1 minute)"),
    ]
    local = {s.function: s for s in schedules(stack, stack.custom["localCloud"]["schedules"])}
    assert local["traffic"].name == "autoretrain-local-traffic"
    assert rate_seconds(local["traffic"].expression) == 5
    assert rate_seconds(local["train"].expression) == 2
    assert rate_seconds(local["importer"].expression) == 2


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [("rate(1 second)", 1), ("rate(5 seconds)", 5), ("rate(2 minutes)", 120), ("rate(1 hour)", 3600)],
)
def test_scheduler_parses_rates(expression: str, seconds: int) -> None:
    assert rate_seconds(expression) == seconds


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("cron(0/15 * * * ? *)", "2026-03-01T10:07:30", "2026-03-01T10:15:00"),
        ("cron(0 12 * * ? *)", "2026-03-01T12:00:00", "2026-03-02T12:00:00"),
        ("cron(30 8 ? * MON-FRI *)", "2026-02-27T09:00:00", "2026-03-02T08:30:00"),  # Fri -> Mon
        ("cron(0 0 1 JAN,JUL ? *)", "2026-02-10T00:00:00", "2026-07-01T00:00:00"),
        ("cron(5 3 ? * 1 *)", "2026-03-01T04:00:00", "2026-03-08T03:05:00"),  # 1 = Sunday
    ],
)
def test_scheduler_finds_the_next_cron_firing(expression: str, after: str, expected: str) -> None:
    when = dt.datetime.fromisoformat(after).replace(tzinfo=dt.UTC)
    assert Cron.parse(expression).next_after(when) == dt.datetime.fromisoformat(expected).replace(
        tzinfo=dt.UTC
    )


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("cron(0 12 * * ?)", "6 fields"),
        ("cron(0 12 L * ? *)", "not supported"),
        ("cron(0 25 * * ? *)", "outside 0-23"),
        ("cron(0 12 * FOO ? *)", "not a number or a known name"),
        ("every day", "neither rate"),
    ],
)
def test_scheduler_rejects_what_it_cannot_fire(expression: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        Cron.parse(expression)


# --- stop -----------------------------------------------------------------------------------


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


@pytest.mark.slow
def test_localcloud_stop_leaves_no_thread_port_file_or_variable_behind(tmp_path: Path) -> None:
    threads_before = set(threading.enumerate())
    cloud = LocalCloud(
        tmp_path / "state",
        drivers=(),
        schedule_overrides={"traffic": {"rate": "rate(1 second)"}},
        function_log=tmp_path / "functions.log",
    ).start()
    api, aws_url = cloud.api_url, cloud.aws_url
    reply = requests.post(
        f"{api}/upload", data=json.dumps(ORIGINAL_PAYLOAD), headers=keyed(cloud), timeout=30
    )
    assert reply.status_code == 200
    assert _wait_for(lambda: cloud.invocations["traffic"] > 0)
    assert _port_open(api) and _port_open(aws_url)

    cloud.stop()

    assert set(threading.enumerate()) == threads_before
    assert not _port_open(api)
    assert not _port_open(aws_url)
    assert not cloud.endpoints_file.exists()
    assert "AWS_ENDPOINT_URL" not in os.environ
    assert "API_URL" not in os.environ
    cloud.stop()  # a second stop is harmless


@pytest.mark.slow
def test_localcloud_starts_the_drivers_after_the_core_and_stops_them_all(tmp_path: Path) -> None:
    threads_before = set(threading.enumerate())
    lines: list[str] = []
    cloud = LocalCloud(
        tmp_path / "state",
        drivers=DRIVER_MODULES,
        schedule_overrides=QUIET,
        function_log=tmp_path / "functions.log",
        say=lines.append,
    ).start()
    names = [driver.name for driver in cloud.drivers]
    assert cloud.context is not None
    assert cloud.context.api_url == cloud.api_url
    cloud.stop()

    assert set(names) == {"streams", "instances", "alarms", "notifications", "s3events"}
    assert set(threading.enumerate()) == threads_before


@pytest.mark.slow
def test_api_gateway_answers_504_past_its_integration_timeout(make_cloud: Callable[..., LocalCloud]) -> None:
    def slow(event: dict[str, Any], context: Any) -> dict[str, Any]:
        time.sleep(3)
        return {"statusCode": 200, "body": "late"}

    cloud = make_cloud(handlers={"upload": slow})
    assert cloud.api is not None
    cloud.api.integration_timeout_s = 0.5  # 29 s in AWS; shortened so the test is quick
    started = time.monotonic()
    reply = requests.post(f"{cloud.api_url}/upload", data="[]", headers=keyed(cloud), timeout=30)
    assert reply.status_code == 504
    assert reply.json() == {"message": "Endpoint request timed out"}
    assert time.monotonic() - started < 2.5


@pytest.mark.slow
def test_api_front_holds_a_burst_of_connections_without_resetting_any(cloud: LocalCloud) -> None:
    """More simultaneous connections than a default listen backlog (5) holds: none is reset."""
    results: list[int | str] = []

    def call() -> None:
        try:
            results.append(requests.get(f"{cloud.api_url}/models?limit=1", timeout=120).status_code)
        except requests.RequestException as err:
            results.append(repr(err))

    threads = [threading.Thread(target=call) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert results.count(200) == 64, [r for r in results if r != 200][:3]
