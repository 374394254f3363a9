"""The synthetic-traffic function, direct and over HTTP, against the serverless.yml data table.

Over HTTP it is the ``traffic`` client: its API key (the value of TrafficApiKeySecret, read
from Secrets Manager) in x-api-key; a stand-in for API Gateway resolves the key among the API
keys in moto, as a private route does, and hands the upload handler its id."""

from __future__ import annotations

import copy
import io
import json
import threading
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from lambdas import traffic, upload
from lambdas.core import comfort, ingest
from lambdas.core.errors import ConfigError
from lambdas.core.registry import from_item

EVENTS = Path(__file__).resolve().parents[1] / "events"
SCHEDULE = json.loads((EVENTS / "traffic_schedule.json").read_text())
UPLOAD_EVENT = json.loads((EVENTS / "upload_original.json").read_text())


def scan(dynamodb: Any) -> list[dict[str, Any]]:
    table = ingest.IngestSettings.from_env().data_table
    return [from_item(item) for item in dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]]


CACHED = (traffic.config, traffic._stream, traffic.api_key, upload.config, upload.resolver)


@pytest.fixture(autouse=True)
def traffic_env(stack: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("API_URL", raising=False)
    monkeypatch.delenv("API_KEY_SECRET", raising=False)
    monkeypatch.setenv("TRAFFIC_MIN_SAMPLES", "1")
    monkeypatch.setenv("TRAFFIC_MAX_SAMPLES", "20")
    monkeypatch.setenv("TRAFFIC_LABEL_NOISE", "0")
    # The upload function's own TRAFFIC_API_KEY_ID: Ref TrafficApiKey, the key created in moto.
    monkeypatch.setenv("TRAFFIC_API_KEY_ID", stack.function_environment("upload")["TRAFFIC_API_KEY_ID"])
    for cached in CACHED:
        cached.cache_clear()
    yield
    for cached in CACHED:
        cached.cache_clear()


@pytest.fixture
def over_http(stack: Any, api: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The traffic function's environment from serverless.yml, API_URL pointing at ``api``;
    returns its API_KEY_SECRET (the secret's ARN)."""
    env = stack.function_environment("traffic", {"API_URL": api + "/"})
    for key in ("API_URL", "API_KEY_SECRET"):
        monkeypatch.setenv(key, env[key])
    return env["API_KEY_SECRET"]


def secret_value(arn: str) -> str:
    return boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]


def test_traffic_writes_pmv_labelled_samples_directly(dynamodb: Any) -> None:
    summary = traffic.handler(dict(SCHEDULE, seed=3), None)
    assert summary["via"] == "direct"
    assert 1 <= summary["sent"] == summary["written"] <= 20
    items = scan(dynamodb)
    assert sorted(i["id"] for i in items) == sorted(summary["ids"])
    for item in items:
        assert (item["client"], item["source"]) == ("traffic", "traffic")
        assert item["label"] == comfort.label(item["temp"], item["rh"], item["wind"], item["clo"])


def test_traffic_same_seed_same_samples() -> None:
    config = traffic.TrafficSettings(api_url=None, label_noise=0.3)
    now_ms = 1_795_000_000_000  # the clock is not part of the seeded sequence
    first = traffic.make_samples(config, traffic.np.random.default_rng(5), now_ms=now_ms)
    assert first == traffic.make_samples(config, traffic.np.random.default_rng(5), now_ms=now_ms)


def test_traffic_seeded_environment_continues_its_sequence(
    dynamodb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAFFIC_SEED", "11")
    first = traffic.handler(SCHEDULE, None)
    second = traffic.handler(SCHEDULE, None)
    assert not set(first["ids"]) & set(second["ids"])
    assert len(scan(dynamodb)) == first["written"] + second["written"]


def test_traffic_sample_counts_stay_within_the_configured_bounds() -> None:
    config = traffic.TrafficSettings(api_url=None, min_samples=3, max_samples=5)
    rng = traffic.np.random.default_rng(0)
    counts = {len(traffic.make_samples(config, rng)) for _ in range(60)}
    assert counts == {3, 4, 5}


def key_id_of(value: str) -> str | None:
    """The id of the enabled API key with this value in moto, as API Gateway finds it."""
    keys = boto3.client("apigateway").get_api_keys(includeValues=True)["items"]
    return next((k["id"] for k in keys if k.get("value") == value and k.get("enabled")), None)


class UploadApi(BaseHTTPRequestHandler):
    """API Gateway on the private POST /upload route: a request without a known, enabled key
    is answered 403 {"message": "Forbidden"} without invoking the function; otherwise the
    canned API Gateway event, with the key's id in its request context, goes to the real upload
    handler."""

    seen: list[tuple[str, dict[str, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        # Header names are case-insensitive (urllib sends "X-api-key"): recorded lower-cased.
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        key = self.headers.get("x-api-key")
        key_id = key_id_of(key) if key else None
        if key_id is None:
            reply = {"statusCode": 403, "body": json.dumps({"message": "Forbidden"})}
        else:
            event = copy.deepcopy(UPLOAD_EVENT)
            event.update(path=self.path, headers=dict(self.headers), body=body.decode("utf-8"))
            event["requestContext"]["identity"].update(apiKeyId=key_id, apiKey=key)
            reply = upload.handler(event, None)
        payload = reply["body"].encode("utf-8")
        self.send_response(reply["statusCode"])
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), UploadApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    UploadApi.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dev"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.slow
def test_traffic_posts_over_http_to_the_upload_route_with_its_key(dynamodb: Any, over_http: str) -> None:
    summary = traffic.handler(dict(SCHEDULE, seed=8), None)
    assert summary["via"] == "http"
    [(path, headers)] = UploadApi.seen
    assert path == "/dev/upload"
    assert headers["x-api-key"] == secret_value(over_http)
    assert "x-sample-source" not in headers
    items = scan(dynamodb)
    assert len(items) == summary["sent"] == summary["written"]
    assert {(i["client"], i["source"]) for i in items} == {("traffic", "traffic")}
    for item in items:
        assert item["label"] == comfort.label(item["temp"], item["rh"], item["wind"], item["clo"])


@pytest.mark.slow
def test_traffic_reads_its_key_once_per_execution_environment(dynamodb: Any, over_http: str) -> None:
    first = secret_value(over_http)
    traffic.handler(dict(SCHEDULE, seed=1), None)
    boto3.client("secretsmanager").put_secret_value(SecretId=over_http, SecretString="rotated-but-unseen")
    traffic.handler(dict(SCHEDULE, seed=2), None)
    assert [headers["x-api-key"] for _, headers in UploadApi.seen] == [first, first]


@pytest.mark.slow
def test_traffic_with_a_key_the_gateway_does_not_know_is_refused(
    dynamodb: Any, over_http: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = secret_value(over_http)
    secrets = boto3.client("secretsmanager")
    secrets.put_secret_value(SecretId=over_http, SecretString="not-a-key-of-this-api")
    with pytest.raises(traffic.DeliveryError, match=r"answered 403: .*Forbidden") as caught:
        traffic.handler(dict(SCHEDULE, seed=1), None)
    assert caught.value.details["status"] == 403
    assert scan(dynamodb) == []
    # The refused key is forgotten: once the secret holds a good key again, the next call uses it.
    secrets.put_secret_value(SecretId=over_http, SecretString=good)
    assert traffic.handler(dict(SCHEDULE, seed=2), None)["written"] >= 1


@pytest.mark.slow
def test_traffic_over_http_reports_a_rejection(
    dynamodb: Any, api: str, over_http: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPLOAD_MAX_SAMPLES", "1")
    config = traffic.TrafficSettings(api_url=api, api_key_secret=over_http, min_samples=2, max_samples=2)
    with pytest.raises(traffic.DeliveryError, match=r"answered 413: .*limit is 1") as caught:
        traffic.run(config, seed=1)
    assert caught.value.details["status"] == 413
    assert scan(dynamodb) == []


def test_traffic_without_its_secret_fails_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    config = traffic.TrafficSettings(
        api_url="http://127.0.0.1:9", api_key_secret="autoretrain-test/no-such-secret"
    )
    message = r"from secret autoretrain-test/no-such-secret \(ResourceNotFoundException\)"
    with pytest.raises(ConfigError, match=message):
        traffic.run(config, seed=1)


def test_traffic_reports_an_unreachable_api() -> None:
    def refuse(request: Any, timeout: float) -> Any:
        raise urllib.error.URLError("connection refused")

    config = traffic.TrafficSettings(api_url="http://127.0.0.1:9")
    with pytest.raises(traffic.DeliveryError, match="failed: connection refused"):
        traffic.run(config, seed=1, opener=refuse, key="k")


def test_traffic_reports_a_reply_that_is_not_json() -> None:
    def html(request: Any, timeout: float) -> Any:
        return io.BytesIO(b"<html>gateway</html>")

    config = traffic.TrafficSettings(api_url="http://127.0.0.1:9")
    with pytest.raises(traffic.DeliveryError, match="not JSON"):
        traffic.run(config, seed=1, opener=html, key="k")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"TRAFFIC_MIN_SAMPLES": "5", "TRAFFIC_MAX_SAMPLES": "4"},
            "TRAFFIC_MIN_SAMPLES (5) <= TRAFFIC_MAX_SAMPLES",
        ),
        ({"TRAFFIC_MAX_SAMPLES": "21"}, "<= 20 must hold"),
        ({"TRAFFIC_MIN_SAMPLES": "0"}, "TRAFFIC_MIN_SAMPLES must be >= 1"),
        ({"TRAFFIC_LABEL_NOISE": "1.5"}, "TRAFFIC_LABEL_NOISE must be in [0, 1]"),
        ({"TRAFFIC_LABEL_NOISE": "-0.1"}, "TRAFFIC_LABEL_NOISE must be >= 0"),
        ({"TRAFFIC_SEED": "abc"}, "TRAFFIC_SEED must be an integer"),
        ({"API_URL": "file:///etc/passwd"}, "API_URL must be an http(s) URL"),
        ({"API_URL": "https://api.example.test/dev"}, "API_KEY_SECRET is required when API_URL is set"),
        ({"API_URL": "https://api.example.test/dev", "API_KEY_SECRET": " "}, "API_KEY_SECRET is required"),
    ],
)
def test_traffic_settings_reject_bad_configuration(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        traffic.TrafficSettings.from_env(env)
    assert message in caught.value.message


@pytest.mark.parametrize("seed", ["7", -1, True, 1.5])
def test_traffic_handler_rejects_a_bad_event_seed(dynamodb: Any, seed: object) -> None:
    with pytest.raises(traffic.BadRequest, match="'seed' must be a non-negative integer"):
        traffic.handler({"seed": seed}, None)
    assert scan(dynamodb) == []
