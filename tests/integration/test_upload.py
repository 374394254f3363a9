"""POST /upload against the data table that infra/serverless.yml declares (moto).

Every request here comes from the registered client ``acme`` (its API key id in the request
context, as API Gateway passes it); what an identity changes is tests/integration/
test_upload_identity.py's."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from lambdas import upload
from lambdas.core import comfort, ingest
from lambdas.core.errors import AutoretrainError, Unavailable
from lambdas.core.registry import from_item
from tests.support.identity import identified, register

EVENTS = Path(__file__).resolve().parents[1] / "events"
ORIGINAL = [
    {"created": 1570323309012, "temp": 75, "rh": 60, "wind": 0.6, "clo": 1.0, "label": "ok", "score": -1}
]
VALID = {"temp": 75, "rh": 60, "wind": 0.6, "clo": 1.0, "label": "ok"}
ACME_KEY_ID = "acmekey123"


def canned(name: str) -> dict[str, Any]:
    """A canned API Gateway event, sent with acme's API key."""
    return identified(json.loads((EVENTS / name).read_text()), ACME_KEY_ID)


def event(body: object, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The canned API Gateway event with another body (a str is sent as is)."""
    out = copy.deepcopy(canned("upload_original.json"))
    out["body"] = body if isinstance(body, str) or body is None else json.dumps(body)
    out["headers"].update(headers or {})
    return out


def call(evt: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    reply = upload.handler(evt, None)
    return reply["statusCode"], json.loads(reply["body"])


def scan(dynamodb: Any) -> list[dict[str, Any]]:
    table = ingest.IngestSettings.from_env().data_table
    pages = dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
    return [from_item(item) for page in pages for item in page["Items"]]


@pytest.fixture(autouse=True)
def fresh_settings(stack: Any) -> Any:
    upload.config.cache_clear()
    upload.resolver.cache_clear()
    register("acme", api_key_id=ACME_KEY_ID)
    yield
    upload.config.cache_clear()
    upload.resolver.cache_clear()


def test_upload_accepts_the_original_payload_unchanged(dynamodb: Any) -> None:
    status, body = call(canned("upload_original.json"))
    assert status == 200
    assert body["written"] == 1 and len(body["ids"]) == 1
    [item] = scan(dynamodb)
    assert item["id"] == body["ids"][0]
    fields = ("temp", "rh", "wind", "clo", "label", "created", "score", "source", "client")
    assert {k: item[k] for k in fields} == {
        "temp": 75,
        "rh": 60,
        "wind": 0.6,
        "clo": 1,
        "label": "ok",
        "created": 1570323309012,
        "score": -1,
        "source": "api",
        "client": "acme",
    }
    assert item["ingested"] > item["created"]


def test_upload_accepts_a_samples_object(dynamodb: Any) -> None:
    status, body = call(canned("upload_samples.json"))
    assert (status, body["written"]) == (200, 2)
    items = {item["id"]: item for item in scan(dynamodb)}
    assert set(items) == set(body["ids"])
    first, second = (items[key] for key in body["ids"])
    assert (first["client_id"], first["label"]) == ("sensor-7:0001", "cold")
    assert "client_id" not in second
    # no created sent: the ingestion time stands in
    assert first["created"] == first["ingested"] == second["created"]


def test_upload_accepts_a_base64_body(dynamodb: Any) -> None:
    status, body = call(canned("upload_base64.json"))
    assert (status, body["written"]) == (200, 1)
    assert [item["id"] for item in scan(dynamodb)] == body["ids"]


@pytest.mark.parametrize("count", [1, 2000])
def test_upload_writes_every_sample_of_a_request(dynamodb: Any, count: int) -> None:
    samples = comfort.generate(count, 1, 0.05)
    status, body = call(event(samples))
    assert (status, body["written"], len(set(body["ids"]))) == (200, count, count)
    items = scan(dynamodb)
    assert len(items) == count
    assert sorted(i["id"] for i in items) == sorted(body["ids"])


def test_upload_repeated_request_does_not_duplicate(dynamodb: Any) -> None:
    samples = [*ORIGINAL, VALID, VALID]
    _, first = call(event(samples))
    # the same request again, formatted differently and with other number spellings
    resent = json.dumps({"samples": [dict(s, temp=float(s["temp"])) for s in samples]}, indent=2)
    status, second = call(event(resent))
    assert status == 200
    assert second["ids"] == first["ids"]
    assert len(scan(dynamodb)) == 3


def test_upload_requests_with_identical_sample_content_do_not_overwrite(dynamodb: Any) -> None:
    # The original keyed samples on `created`: these two would have collided and one was lost.
    _, first = call(event([ORIGINAL[0], VALID]))
    _, second = call(event([ORIGINAL[0], dict(VALID, label="warm")]))
    assert not set(first["ids"]) & set(second["ids"])
    items = scan(dynamodb)
    assert len(items) == 4
    assert sum(item["created"] == 1570323309012 for item in items) == 2


def test_upload_client_id_reused_for_other_content_keeps_both(dynamodb: Any) -> None:
    _, first = call(event([dict(VALID, id="c-1")]))
    _, again = call(event([dict(VALID, id="c-1")]))
    _, other = call(event([dict(VALID, id="c-1", label="warm")]))
    assert first["ids"] == again["ids"] != other["ids"]
    assert sorted(item["label"] for item in scan(dynamodb)) == ["ok", "warm"]


BAD_SAMPLE_AT_3 = [VALID, VALID, VALID, dict(VALID, rh=120), VALID]
ERROR_CODES = {413: "payload_too_large"}


def case(
    name: str,
    body: object,
    message: str,
    field: str | None = None,
    index: int | None = None,
    status: int = 400,
) -> Any:
    """One rejection: an index means a sample was invalid, else the request as a whole."""
    error = ERROR_CODES.get(status, "invalid_sample" if index is not None else "bad_request")
    return pytest.param(body, status, error, message, field, index, id=name)


@pytest.mark.parametrize(
    ("body", "status", "error", "message", "field", "index"),
    [
        case("no-body", None, "request body is empty"),
        case("blank-body", "  ", "request body is empty"),
        case("not-json", "temp=75&rh=60", "not valid JSON"),
        case("broken-json", "[{]", "not valid JSON"),
        case("empty-array", [], "the array is empty"),
        case("empty-samples", {"samples": []}, "the array is empty"),
        case("number", 42, "must be a JSON array"),
        case("null", "null", "got null"),
        case("other-object", {"data": ORIGINAL}, 'unknown top-level field "data"', "data"),
        case("samples-string", {"samples": "x"}, '"samples" must be a JSON array'),
        case("not-an-object", [VALID, 7], "sample 1: must be a JSON object", None, 1),
        case(
            "missing",
            [{"rh": 60, "wind": 0.6, "clo": 1, "label": "ok"}],
            "field 'temp' is required",
            "temp",
            0,
        ),
        case("string-number", [dict(VALID, temp="75")], "must be a number, got string", "temp", 0),
        case("boolean", [dict(VALID, clo=True)], "must be a number, got boolean", "clo", 0),
        case("nan", '[{"temp": NaN, "rh": 60, "wind": 0.6, "clo": 1, "label": "ok"}]', "finite", "temp", 0),
        case(
            "infinity",
            '[{"temp": 75, "rh": 60, "wind": Infinity, "clo": 1, "label": "ok"}]',
            "finite",
            "wind",
            0,
        ),
        case("out-of-range", BAD_SAMPLE_AT_3, "outside the accepted range 0 to 100", "rh", 3),
        case("too-cold", [dict(VALID, temp=-41)], "outside the accepted range", "temp", 0),
        case("too-windy", [dict(VALID, wind=21)], "outside the accepted range", "wind", 0),
        case("too-clothed", [dict(VALID, clo=5)], "outside the accepted range", "clo", 0),
        case("label", [dict(VALID, label="hot")], "must be one of cold, ok, warm", "label", 0),
        case("created-seconds", [dict(VALID, created=1570323309)], "looks like seconds", "created", 0),
        case("created-future", [dict(VALID, created=4_102_444_800_000)], "in the future", "created", 0),
        case("id", [dict(VALID, id="has space")], "1-128 characters", "id", 0),
        case("score", [dict(VALID, score=1e12)], "outside", "score", 0),
        case("unknown-field", [VALID, dict(VALID, humidity=60)], 'unknown field "humidity"', "humidity", 1),
        case("repeated-id", [dict(VALID, id="a"), dict(VALID, id="a")], "repeats sample 0", "id", 1),
        case("too-many", [VALID] * 5001, "5001 samples in one request; the limit is 5000", status=413),
        case("too-big", "[" + " " * 4_000_000 + "]", "the limit is 4000000", status=413),
    ],
)
def test_upload_rejects_the_whole_request(
    dynamodb: Any, body: object, status: int, error: str, message: str, field: str | None, index: int | None
) -> None:
    got_status, got = call(event(body))
    assert (got_status, got["error"]) == (status, error)
    assert message in got["message"]
    assert got.get("field") == field
    assert got.get("index") == index
    assert scan(dynamodb) == []


class Unreliable:
    """A real (moto) client whose BatchWriteItem leaves items unprocessed, as DynamoDB may.

    ``leave`` gives, call by call, how many items of the request to hand back unwritten
    (the last entry repeats); the rest are really written.
    """

    def __init__(self, real: Any, leave: list[int], error: str | None = None) -> None:
        self.real, self.leave, self.error, self.calls = real, leave, error, []

    def batch_write_item(self, RequestItems: dict[str, list[Any]]) -> dict[str, Any]:
        [(table, requests)] = RequestItems.items()
        self.calls.append(len(requests))
        if self.error and len(self.calls) > 1:
            raise ClientError({"Error": {"Code": self.error, "Message": "no"}}, "BatchWriteItem")
        keep = self.leave[min(len(self.calls), len(self.leave)) - 1]
        done, left = requests[: len(requests) - keep], requests[len(requests) - keep :]
        if done:
            self.real.batch_write_item(RequestItems={table: done})
        return {"UnprocessedItems": {table: left} if left else {}}


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def test_ingest_retries_unprocessed_items_until_written(dynamodb: Any) -> None:
    client, sleeps = Unreliable(dynamodb, [10, 3, 0]), Sleeps()
    result = ingest.ingest(
        comfort.generate(60, 1, 0.0),
        ingest.IngestSettings.from_env(),
        source="api",
        ddb=client,
        backoff=ingest.Backoff(sleep=sleeps),
    )
    assert result.written == 60
    assert client.calls == [25, 10, 3, 25, 10]  # first chunk retried twice; the rest as the pattern repeats 0
    assert len(sleeps.delays) == 2
    assert len(scan(dynamodb)) == 60


def test_ingest_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    sleeps = Sleeps()
    backoff = ingest.Backoff(base=0.1, cap=0.5, sleep=sleeps)
    for retry in range(1, 7):
        backoff.wait(retry)
    bounds = [min(0.5, 0.1 * 2**r) for r in range(1, 7)]
    assert all(0 <= d <= b for d, b in zip(sleeps.delays, bounds, strict=True))
    assert len(set(sleeps.delays)) == 6  # jittered, not fixed


def test_ingest_gives_up_after_the_bound_and_counts_only_what_was_written(dynamodb: Any) -> None:
    client, sleeps = Unreliable(dynamodb, [0, 5]), Sleeps()
    config = ingest.IngestSettings(data_table=ingest.IngestSettings.from_env().data_table, write_attempts=3)
    with pytest.raises(Unavailable) as caught:
        ingest.ingest(
            comfort.generate(60, 2, 0.0),
            config,
            source="api",
            ddb=client,
            backoff=ingest.Backoff(sleep=sleeps),
        )
    # chunk 1: written; chunk 2: 20 written, the 5 left stay unprocessed for 3 attempts in all
    assert client.calls == [25, 25, 5, 5]
    assert len(sleeps.delays) == 2
    stored = {item["id"] for item in scan(dynamodb)}
    assert caught.value.details["written"] == len(stored) == 45
    assert set(caught.value.details["ids"]) == stored
    assert "wrote 45 of 60 samples" in caught.value.message


def test_ingest_retries_throttling_errors(dynamodb: Any) -> None:
    client = Unreliable(dynamodb, [0], error="ProvisionedThroughputExceededException")
    config = ingest.IngestSettings(data_table=ingest.IngestSettings.from_env().data_table, write_attempts=2)
    with pytest.raises(Unavailable, match="wrote 25 of 30 samples"):
        ingest.ingest(
            comfort.generate(30, 3, 0.0),
            config,
            source="api",
            ddb=client,
            backoff=ingest.Backoff(sleep=Sleeps()),
        )
    assert client.calls == [25, 5, 5]


def test_ingest_stops_at_a_non_retryable_error_and_says_how_far_it_got(dynamodb: Any) -> None:
    client = Unreliable(dynamodb, [0], error="ValidationException")
    with pytest.raises(AutoretrainError) as caught:
        ingest.ingest(
            comfort.generate(30, 3, 0.0), ingest.IngestSettings.from_env(), source="api", ddb=client
        )
    assert not isinstance(caught.value, Unavailable)
    assert caught.value.details["written"] == len(scan(dynamodb)) == 25
    assert client.calls == [25, 5]


def test_upload_answers_503_with_the_partial_count(dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client = Unreliable(dynamodb, [0, 25])
    monkeypatch.setattr(ingest.aws, "client_retrying", lambda service, attempts: client)
    monkeypatch.setenv("UPLOAD_WRITE_ATTEMPTS", "2")
    status, body = call(event(comfort.generate(80, 4, 0.0)))
    assert (status, body["error"]) == (503, "unavailable")
    assert body["written"] == 25 == len(scan(dynamodb))
    assert body["total"] == 80
    assert "wrote 25 of 80 samples" in body["message"]
    assert client.calls == [25, 25, 25]  # stops at the chunk that ran out of attempts
