"""The synthetic-traffic function, direct and over HTTP, against the serverless.yml data table."""

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


@pytest.fixture(autouse=True)
def traffic_env(stack: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("API_URL", raising=False)
    monkeypatch.setenv("TRAFFIC_MIN_SAMPLES", "1")
    monkeypatch.setenv("TRAFFIC_MAX_SAMPLES", "20")
    monkeypatch.setenv("TRAFFIC_LABEL_NOISE", "0")
    for cached in (traffic.config, traffic._stream, upload.config):
        cached.cache_clear()
    yield
    for cached in (traffic.config, traffic._stream, upload.config):
        cached.cache_clear()


def test_traffic_writes_pmv_labelled_samples_directly(dynamodb: Any) -> None:
    summary = traffic.handler(dict(SCHEDULE, seed=3), None)
    assert summary["via"] == "direct"
    assert 1 <= summary["sent"] == summary["written"] <= 20
    items = scan(dynamodb)
    assert sorted(i["id"] for i in items) == sorted(summary["ids"])
    for item in items:
        assert item["source"] == "traffic"
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


class UploadApi(BaseHTTPRequestHandler):
    """Turns each POST into the canned API Gateway event for the real upload handler."""

    seen: list[tuple[str, dict[str, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append((self.path, dict(self.headers)))
        event = copy.deepcopy(UPLOAD_EVENT)
        event.update(path=self.path, headers=dict(self.headers), body=body.decode("utf-8"))
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
def test_traffic_posts_over_http_to_the_upload_route(
    dynamodb: Any, api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_URL", api + "/")
    summary = traffic.handler(dict(SCHEDULE, seed=8), None)
    assert summary["via"] == "http"
    [(path, headers)] = UploadApi.seen
    assert path == "/dev/upload"
    assert headers["X-Sample-Source"] == "traffic"
    items = scan(dynamodb)
    assert len(items) == summary["sent"] == summary["written"]
    assert {i["source"] for i in items} == {"traffic"}
    for item in items:
        assert item["label"] == comfort.label(item["temp"], item["rh"], item["wind"], item["clo"])


@pytest.mark.slow
def test_traffic_over_http_reports_a_rejection(
    dynamodb: Any, api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPLOAD_MAX_SAMPLES", "1")
    config = traffic.TrafficSettings(api_url=api, min_samples=2, max_samples=2)
    with pytest.raises(traffic.DeliveryError, match=r"answered 413: .*limit is 1") as caught:
        traffic.run(config, seed=1)
    assert caught.value.details["status"] == 413
    assert scan(dynamodb) == []


def test_traffic_reports_an_unreachable_api() -> None:
    def refuse(request: Any, timeout: float) -> Any:
        raise urllib.error.URLError("connection refused")

    config = traffic.TrafficSettings(api_url="http://127.0.0.1:9")
    with pytest.raises(traffic.DeliveryError, match="failed: connection refused"):
        traffic.run(config, seed=1, opener=refuse)


def test_traffic_reports_a_reply_that_is_not_json() -> None:
    def html(request: Any, timeout: float) -> Any:
        return io.BytesIO(b"<html>gateway</html>")

    config = traffic.TrafficSettings(api_url="http://127.0.0.1:9")
    with pytest.raises(traffic.DeliveryError, match="not JSON"):
        traffic.run(config, seed=1, opener=html)


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
