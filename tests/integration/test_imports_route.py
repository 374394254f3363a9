"""POST /imports and GET /imports/{import_id} under moto, with the import table and bucket of
infra/serverless.yml; the presigned POST is used for real against moto's S3. Requests come from
the registered client ``acme`` (its API key id in the request context, as API Gateway passes
it); what the identity changes is tests/integration/test_upload_identity.py's."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any

import boto3
import pytest
import requests

from lambdas import imports
from lambdas.core import aws
from tests.support.identity import identified, register

API = "https://api.example.test/test"
CSV = b"temp,rh,wind,clo,label\n72,40,0.1,0.6,ok\n"
ACME_KEY_ID, ACME_KEY = "acmekey123", "acme-key-value-0123456789"


@pytest.fixture
def env(stack: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The imports function's own environment from serverless.yml (API_URL given: locally the
    API Gateway id does not exist)."""
    resolved = stack.function_environment("imports", {"API_URL": API})
    for key, value in resolved.items():
        monkeypatch.setenv(key, value)
    imports.reset()
    register("acme", api_key_id=ACME_KEY_ID)
    yield resolved
    imports.reset()


def call(method: str, body: Any = None, import_id: Any = None, *, raw: str | None = None) -> tuple[int, Any]:
    event: dict[str, Any] = {"httpMethod": method, "resource": "/imports", "path": "/imports"}
    if method == "POST":
        event["body"] = raw if raw is not None else json.dumps(body)
    else:
        event.update(resource="/imports/{import_id}", path=f"/imports/{import_id}")
        event["pathParameters"] = {"import_id": import_id}
    out = imports.handler(identified(event, ACME_KEY_ID, api_key=ACME_KEY))
    return out["statusCode"], json.loads(out["body"]) if out["body"] else None


def policy_of(fields: dict[str, str]) -> dict[str, Any]:
    return json.loads(base64.b64decode(fields["policy"]))


def stored(env: dict[str, str], import_id: str) -> dict[str, Any]:
    from lambdas.core import registry

    got = boto3.client("dynamodb").get_item(
        TableName=env["IMPORT_TABLE"], Key={"import_id": {"S": import_id}}
    )
    return registry.from_item(got["Item"])


# POST /imports -----------------------------------------------------------------------------------


def test_imports_post_creates_a_waiting_item_and_answers_a_presigned_post(env: dict[str, str]) -> None:
    status, body = call("POST", {"format": "csv", "filename": "history.csv"})
    assert status == 201
    import_id = body["import_id"]
    assert re.fullmatch(r"imp-[0-9a-f]{16}", import_id)
    assert body["expires_in"] == 900
    assert body["status_url"] == f"{API}/imports/{import_id}"
    item = stored(env, import_id)
    assert item["status"] == "waiting_upload"
    assert (item["format"], item["filename"], item["key"]) == (
        "csv",
        "history.csv",
        f"imports/{import_id}.csv",
    )
    assert item["created_at"] == item["updated_at"] and item["created_at"].endswith("Z")
    assert item["expires_at"] > 0  # ImportExpiryDays (7) from now: the table's TTL


def test_imports_post_signs_exactly_the_key_the_size_range_and_the_expiry(env: dict[str, str]) -> None:
    _, body = call("POST", {"format": "jsonl", "filename": "a.jsonl"})
    key = f"imports/{body['import_id']}.jsonl"
    fields = body["upload"]["fields"]
    assert fields["key"] == key
    # SigV4 (the project's s3v4 client), never SigV2's AWSAccessKeyId/signature.
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    assert set(fields) == {
        "key",
        "policy",
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "x-amz-signature",
    }
    _, _, region, service, terminator = fields["x-amz-credential"].split("/")
    assert (region, service, terminator) == ("us-east-1", "s3", "aws4_request")
    policy = policy_of(fields)
    conditions = policy["conditions"]
    assert ["eq", "$key", key] in conditions
    assert ["content-length-range", 1, 104857600] in conditions
    assert {"bucket": env["IMPORT_BUCKET"]} in conditions
    assert not [c for c in conditions if isinstance(c, list) and c[0] == "starts-with"]
    from datetime import datetime

    expires = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    signed = datetime.strptime(fields["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=expires.tzinfo)
    assert 899 <= (expires - signed).total_seconds() <= 901
    assert body["upload"]["url"] == f"https://{env['IMPORT_BUCKET']}.s3.us-east-1.amazonaws.com/"


def test_imports_post_with_temporary_credentials_signs_the_session_token(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Lambda role's credentials are temporary: S3 needs the token in the form and the policy.
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-of-the-role")
    # boto3's default session keeps the credentials it first resolved (registering acme did).
    # Not monkeypatch.setattr: its undo would put the mock's session (FOOBARKEY credentials)
    # back after mock_aws has cleared it on exit, and every later test would sign with them.
    boto3.DEFAULT_SESSION = None
    aws.reset()
    _, body = call("POST", {"format": "csv", "filename": "h.csv"})
    fields = body["upload"]["fields"]
    assert fields["x-amz-security-token"] == "session-token-of-the-role"
    assert {"x-amz-security-token": "session-token-of-the-role"} in policy_of(fields)["conditions"]


def test_imports_post_takes_its_limits_from_the_environment(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMPORT_MAX_BYTES", "1000")
    monkeypatch.setenv("IMPORT_URL_EXPIRES_S", "60")
    monkeypatch.setenv("IMPORT_EXPIRY_DAYS", "0")
    imports.reset()
    _, body = call("POST", {"format": "csv", "filename": "h.csv"})
    assert body["expires_in"] == 60
    assert ["content-length-range", 1, 1000] in policy_of(body["upload"]["fields"])["conditions"]
    assert "expires_at" not in stored(env, body["import_id"])  # 0 days: kept


def test_imports_presigned_post_uploads_the_file_to_s3(env: dict[str, str]) -> None:
    _, body = call("POST", {"format": "csv", "filename": "history.csv"})
    upload = body["upload"]
    reply = requests.post(
        upload["url"], data=upload["fields"], files={"file": ("history.csv", CSV)}, timeout=10
    )
    assert reply.status_code == 204
    key = f"imports/{body['import_id']}.csv"
    got = boto3.client("s3").get_object(Bucket=env["IMPORT_BUCKET"], Key=key)
    assert got["Body"].read() == CSV


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"format": "csv", "filename": "h.csv", "sep": ";"}, "sep", "unknown field 'sep'"),
        ({"filename": "h.csv"}, "format", "format must be one of csv, jsonl"),
        ({"format": "xlsx", "filename": "h.xlsx"}, "format", "format must be one of csv, jsonl"),
        ({"format": "CSV", "filename": "h.csv"}, "format", "format must be one of csv, jsonl"),
        ({"format": "csv"}, "filename", "filename is required"),
        ({"format": "csv", "filename": ""}, "filename", "filename is required"),
        ({"format": "csv", "filename": 7}, "filename", "filename must be a string"),
        ({"format": "csv", "filename": "x" * 256}, "filename", "filename must be at most 255 characters"),
        (
            {"format": "csv", "filename": "a\nb.csv"},
            "filename",
            "filename must not contain control characters",
        ),
        (
            {"format": "csv", "filename": "a\x00.csv"},
            "filename",
            "filename must not contain control characters",
        ),
        (
            {"format": "csv", "filename": "a\x85.csv"},
            "filename",
            "filename must not contain control characters",
        ),
    ],
)
def test_imports_post_rejects_a_bad_field_naming_it(
    env: dict[str, str], body: dict[str, Any], field: str, message: str
) -> None:
    status, answer = call("POST", body)
    assert status == 400
    assert answer["field"] == field and answer["message"].startswith(message)


@pytest.mark.parametrize("raw", ["", "not json", "[1, 2]", '"csv"'])
def test_imports_post_rejects_a_body_that_is_not_an_object(env: dict[str, str], raw: str) -> None:
    status, answer = call("POST", raw=raw)
    assert status == 400 and answer["error"] == "bad_request"


def test_imports_post_accepts_the_longest_filename_and_keeps_it_only_in_the_item(env: dict[str, str]) -> None:
    name = "é" * 250 + ".csv"
    status, body = call("POST", {"format": "csv", "filename": name})
    assert status == 201
    assert stored(env, body["import_id"])["filename"] == name
    assert body["upload"]["fields"]["key"] == f"imports/{body['import_id']}.csv"


def test_imports_post_never_overwrites_an_existing_item(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = "imp-00000000000000aa"
    boto3.client("dynamodb").put_item(
        TableName=env["IMPORT_TABLE"], Item={"import_id": {"S": taken}, "status": {"S": "done"}}
    )
    ids = iter([taken, "imp-00000000000000bb"])
    monkeypatch.setattr(imports, "new_import_id", lambda: next(ids))
    status, body = call("POST", {"format": "csv", "filename": "h.csv"})
    assert status == 201 and body["import_id"] == "imp-00000000000000bb"
    assert stored(env, taken)["status"] == "done"


def test_imports_settings_refuse_a_missing_or_bad_variable() -> None:
    from lambdas.core.errors import ConfigError

    base = {"IMPORT_BUCKET": "b", "IMPORT_TABLE": "t", "API_URL": API}
    assert imports.ImportsSettings.from_env(base).max_bytes == 104857600
    for broken, name in (
        ({k: v for k, v in base.items() if k != "IMPORT_TABLE"}, "IMPORT_TABLE"),
        ({**base, "API_URL": "ftp://x"}, "API_URL"),
        ({**base, "IMPORT_URL_EXPIRES_S": "7200"}, "IMPORT_URL_EXPIRES_S"),
        ({**base, "IMPORT_MAX_BYTES": "0"}, "IMPORT_MAX_BYTES"),
    ):
        with pytest.raises(ConfigError, match=name):
            imports.ImportsSettings.from_env(broken)


# GET /imports/{import_id} ------------------------------------------------------------------------


def test_imports_get_answers_the_public_view_without_cursor_and_lease(env: dict[str, str]) -> None:
    _, created = call("POST", {"format": "csv", "filename": "history.csv"})
    import_id = created["import_id"]
    boto3.client("dynamodb").update_item(
        TableName=env["IMPORT_TABLE"],
        Key={"import_id": {"S": import_id}},
        UpdateExpression="SET #s = :s, #b = :b, bytes_read = :r, rows_read = :n, written = :w, "
        "rejected = :j, rejections = :rj, #c = :c, lease = :l, etag = :e",
        ExpressionAttributeNames={"#s": "status", "#b": "bytes", "#c": "cursor"},
        ExpressionAttributeValues={
            ":s": {"S": "importing"},
            ":b": {"N": "400"},
            ":r": {"N": "100"},
            ":n": {"N": "3"},
            ":w": {"N": "2"},
            ":j": {"N": "1"},
            ":rj": {"L": [{"M": {"line": {"N": "3"}, "field": {"S": "temp"}, "reason": {"S": "too hot"}}}]},
            ":c": {"M": {"offset": {"N": "100"}, "line": {"N": "4"}}},
            ":l": {"M": {"holder": {"S": "req-1"}, "until_ms": {"N": "1"}}},
            ":e": {"S": '"0123abcd"'},
        },
    )
    status, body = call("GET", import_id=import_id)
    assert status == 200
    assert not {"cursor", "lease", "etag"} & set(body)  # the importer's internals
    assert body["import_id"] == import_id and body["status"] == "importing"
    assert (body["rows_read"], body["written"], body["duplicates"], body["rejected"]) == (3, 2, 0, 1)
    assert body["rejections"] == [{"line": 3, "field": "temp", "reason": "too hot"}]
    assert body["progress"] == 0.25
    assert body["filename"] == "history.csv" and body["format"] == "csv"


def test_imports_get_of_a_waiting_import_has_no_progress_yet(env: dict[str, str]) -> None:
    _, created = call("POST", {"format": "jsonl", "filename": "h.jsonl"})
    status, body = call("GET", import_id=created["import_id"])
    assert status == 200
    assert body["status"] == "waiting_upload" and body["progress"] is None


def test_imports_get_of_an_unknown_import_is_a_404(env: dict[str, str]) -> None:
    status, body = call("GET", import_id="imp-0123456789abcdef")
    assert status == 404 and body["error"] == "not_found"


@pytest.mark.parametrize(
    "import_id", ["imp-123", "IMP-0123456789ABCDEF", "../imp-0123456789abcdef", "", None]
)
def test_imports_get_of_a_malformed_id_is_a_400(env: dict[str, str], import_id: Any) -> None:
    status, body = call("GET", import_id=import_id)
    assert status == 400 and body["field"] == "import_id"


# the CLI against the handler and moto's S3 -------------------------------------------------------


class Api:
    """``requests`` for scripts.models: the API's URLs go to the imports handler as proxy events,
    S3's to moto (real requests); each GET first applies the next scripted importer step to the
    status item, standing in for the importer. As API Gateway on a private route, a request
    without a known ``x-api-key`` is answered 403 ``{"message": "Forbidden"}`` and the handler
    is not invoked; a known key's id is in the event's request context."""

    KEYS = {ACME_KEY: ACME_KEY_ID}

    RequestException = requests.RequestException

    def __init__(self, table: str, steps: list[dict[str, Any]]) -> None:
        self.table, self.steps = table, steps
        self.uploads: list[int] = []

    def _reply(self, out: dict[str, Any]) -> requests.Response:
        reply = requests.Response()
        reply.status_code = out["statusCode"]
        reply._content = out["body"].encode()
        return reply

    def _invoke(self, event: dict[str, Any], headers: Mapping[str, str] | None) -> requests.Response:
        sent = {k.lower(): v for k, v in (headers or {}).items()}
        key_id = self.KEYS.get(sent.get("x-api-key", ""))
        if key_id is None:
            return self._reply({"statusCode": 403, "body": '{"message":"Forbidden"}'})
        return self._reply(imports.handler(identified(event, key_id, api_key=sent["x-api-key"])))

    def post(self, url: str, json: Any = None, data: Any = None, **kwargs: Any) -> requests.Response:
        if url.startswith(API):
            event = {"httpMethod": "POST", "body": __import__("json").dumps(json)}
            return self._invoke(event, kwargs.get("headers"))
        self.uploads.append(len(data))
        return requests.post(url, data=data, **kwargs)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        import_id = url.rsplit("/", 1)[1]
        if self.steps:
            step = self.steps.pop(0)
            names = {f"#{k}": k for k in step}
            boto3.client("dynamodb").update_item(
                TableName=self.table,
                Key={"import_id": {"S": import_id}},
                UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in step),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={f":{k}": v for k, v in _to_dynamo(step).items()},
            )
        event = {"httpMethod": "GET", "pathParameters": {"import_id": import_id}}
        return self._invoke(event, kwargs.get("headers"))


def _to_dynamo(step: dict[str, Any]) -> dict[str, Any]:
    from lambdas.core import registry

    return registry.to_item(step)


def run_cli(
    env: dict[str, str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch, steps: list[dict[str, Any]]
) -> tuple[int, Api]:
    from scripts import models as cli

    api = Api(env["IMPORT_TABLE"], steps)
    monkeypatch.setattr(cli, "requests", api)
    monkeypatch.setenv("API_KEY", ACME_KEY)
    monkeypatch.setattr(cli.time, "sleep", lambda s: None)
    path = tmp_path / "history.csv"
    path.write_bytes(CSV * 1000)
    return cli.main(["import", str(path), "--api", API, "--poll", "0.01"]), api


def test_imports_cli_uploads_the_file_follows_the_import_and_exits_0_when_done(
    env: dict[str, str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = [
        {"status": "importing", "bytes": len(CSV) * 1000, "bytes_read": 0},
        {
            "bytes_read": len(CSV) * 500,
            "rows_read": 999,
            "written": 998,
            "rejected": 1,
            "rejections": [{"line": 2, "field": "temp", "reason": "temp must be at most 120"}],
        },
        {
            "status": "done",
            "bytes_read": len(CSV) * 1000,
            "rows_read": 2000,
            "written": 1500,
            "duplicates": 499,
        },
    ]
    code, api = run_cli(env, tmp_path, monkeypatch, steps)
    assert code == 0
    out, err = capsys.readouterr()
    assert "2,000 rows read, 1,500 written, 499 duplicates, 1 rejected" in out
    assert "line 2: temp: temp must be at most 120" in out
    # stderr is not a terminal here: one plain line per poll.
    polls = [line for line in err.splitlines() if "rows read" in line]
    assert [line.split(":")[0] for line in polls] == ["importing", "importing", "done"]
    assert "50% of the bytes" in polls[1] and "100% of the bytes" in polls[2]
    assert len(api.uploads) == 1 and api.uploads[0] > len(CSV) * 1000  # one streamed body
    # The object in S3 is the file, byte for byte.
    (created,) = [line for line in err.splitlines() if line.startswith("import imp-")]
    import_id = created.split()[1].rstrip(":")
    got = boto3.client("s3").get_object(Bucket=env["IMPORT_BUCKET"], Key=f"imports/{import_id}.csv")
    assert got["Body"].read() == CSV * 1000


def test_imports_cli_exits_1_with_the_reason_when_the_import_failed(
    env: dict[str, str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = "not a CSV file: the first line has no header with temp, rh, wind, clo, label"
    code, _ = run_cli(env, tmp_path, monkeypatch, [{"status": "failed", "error": {"reason": reason}}])
    assert code == 1
    assert f"failed: {reason}" in capsys.readouterr().out


def test_imports_cli_exits_1_when_the_api_refuses(
    env: dict[str, str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMPORT_TABLE", "no-such-table")
    imports.reset()
    code, api = run_cli(env, tmp_path, monkeypatch, [])
    assert code == 1 and api.uploads == []
    assert "POST /imports answered 500" in capsys.readouterr().err


# through the local cloud: its API, its gate (the POST policy and the role's IAM) and the importer --


def test_imports_cli_through_the_local_cloud_imports_a_file_and_refuses_one_over_the_limit(
    make_cloud: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from scripts import models as cli

    cloud = make_cloud(drivers=("s3events",), environment={"IMPORT_MAX_BYTES": "100000"})
    path = tmp_path / "history.csv"
    path.write_bytes(CSV + b"75,50,0.2,0.5,warm\n500,40,0.1,0.6,ok\n")
    key = ["--api-key", cloud.api_key]  # the local cloud's default client's
    code = cli.main(["import", str(path), "--api", cloud.api_url, *key, "--poll", "0.3", "--timeout", "60"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "done: 3 rows read, 2 written, 0 duplicates, 1 rejected" in out
    assert "line 4: temp:" in out
    # S3 (the gate) enforces the signed content-length-range: the upload is refused, exit 1.
    big = tmp_path / "big.csv"
    big.write_bytes(b"x" * 100_001)
    assert (
        cli.main(["import", str(big), "--api", cloud.api_url, *key, "--poll", "0.3", "--timeout", "10"]) == 1
    )
    assert "the upload was refused (400): EntityTooLarge" in capsys.readouterr().err
