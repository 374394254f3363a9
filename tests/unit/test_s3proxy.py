"""GET /s3proxy/{version}/{filename}: only model files, latest through the pointer, never mixed."""

from __future__ import annotations

import json
import posixpath
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from lambdas import s3proxy
from lambdas.core import registry
from lambdas.core.errors import ConfigError

EVENTS = Path(__file__).resolve().parents[1] / "events"
V1 = "v20261123T091432Z-1a2b"
V2 = "v20261124T101500Z-3c4d"


@pytest.fixture(autouse=True)
def fresh() -> Any:
    s3proxy.reset()
    yield
    s3proxy.reset()


def put_version(s3: Any, bucket: str, version: str) -> None:
    manifest = [{"paths": [f"../{version}/group1-shard1of1.bin"], "weights": []}]
    s3.put_object(
        Bucket=bucket, Key=f"models/{version}/model.json", Body=json.dumps({"weightsManifest": manifest})
    )
    s3.put_object(Bucket=bucket, Key=f"models/{version}/group1-shard1of1.bin", Body=version.encode())
    s3.put_object(Bucket=bucket, Key=f"models/{version}/metadata.json", Body=b"{}")


def promote(table: str, version: str) -> None:
    reg = registry.Registry(table)
    reg.set_latest(version, expected=reg.latest_version(), reason="test", actor="test")


def event(version: str, filename: str, **extra: Any) -> dict[str, Any]:
    return {
        "httpMethod": "GET",
        "path": f"/s3proxy/{version}/{filename}",
        "pathParameters": {"version": version, "filename": filename},
        "requestContext": {"requestId": "r-1"},
        **extra,
    }


def follow(s3: Any, bucket: str, location: str) -> bytes:
    """Fetch what a presigned URL points at (moto does not serve URLs in-process)."""
    key = urllib.parse.unquote(urllib.parse.urlsplit(location).path).lstrip("/")
    key = key.removeprefix(f"{bucket}/")
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_s3proxy_redirects_a_version_file_to_a_presigned_url(s3: Any, stack: Any) -> None:
    bucket = stack.physical["ModelBucket"]
    put_version(s3, bucket, V1)
    out = s3proxy.handler(event(V1, "group1-shard1of1.bin"))
    assert out["statusCode"] == 302
    location = out["headers"]["Location"]
    assert f"models/{V1}/group1-shard1of1.bin" in location and "Expires=" in location
    assert out["headers"]["X-Model-Version"] == V1
    assert out["headers"]["Cache-Control"] == "private, max-age=60"
    assert out["headers"]["Access-Control-Allow-Origin"] == "*"
    assert follow(s3, bucket, location) == V1.encode()


def test_s3proxy_resolves_latest_through_the_pointer_and_never_caches_it(s3: Any, stack: Any) -> None:
    bucket = stack.physical["ModelBucket"]
    put_version(s3, bucket, V1)
    promote(stack.physical["ModelTable"], V1)
    canned = json.loads((EVENTS / "s3proxy_latest_model.json").read_text())
    out = s3proxy.handler(canned)
    assert out["statusCode"] == 302
    assert f"models/{V1}/model.json" in out["headers"]["Location"]
    assert out["headers"]["Cache-Control"] == "no-store"
    assert out["headers"]["X-Model-Version"] == V1


def test_s3proxy_latest_before_any_model_is_404(stack: Any) -> None:
    out = s3proxy.handler(event("latest", "model.json"))
    assert out["statusCode"] == 404
    assert json.loads(out["body"])["message"] == "no model has been published yet; latest is not set"


@pytest.mark.parametrize(("version", "filename"), [(V2, "model.json"), (V1, "group2-shard1of1.bin")])
def test_s3proxy_missing_object_is_404(s3: Any, stack: Any, version: str, filename: str) -> None:
    put_version(s3, stack.physical["ModelBucket"], V1)
    out = s3proxy.handler(event(version, filename))
    assert out["statusCode"] == 404
    assert json.loads(out["body"])["message"] == f"model version {version} has no {filename}"


BAD_VERSIONS = [
    "..",
    ".",
    "",
    "%2e%2e",
    "..%2f..",
    "../models",
    "..\\v20261123T091432Z-1a2b",
    "/etc",
    "v20261123T091432Z-1a2b/..",
    "v20261123T091432Z-1a2b/",
    "//v20261123T091432Z-1a2b",
    "LATEST",
    "latest/",
    "latest?x=1",
    "v20261123T091432Z-1A2B",
    "v20261123T091432Z-1a2b\n",
    "v20261123T091432Z-1a2b\x00",
    "v\uff120261123T091432Z-1a2b",  # fullwidth digit two
    "\uff4catest",  # fullwidth small l
    "other-bucket",
    "s3:",
    "models",
    "v" * 5000,
]
BAD_FILENAMES = [
    "..",
    "../model.json",
    "..%2fmodel.json",
    "%2e%2e%2fmodel.json",
    "model.json/..",
    "model.json%00",
    "model.json?X-Amz-Expires=99999",
    "model.json#",
    "/model.json",
    "\\model.json",
    "..\\..\\secret",
    "model.JSON",
    "model.json ",
    "keras.h5",
    "index.html",
    "",
    "group1-shard1of1.bin.exe",
    "group0-shard1of1.bin",
    "group1-shard1of1.bin/../../../etc/passwd",
    "group1-shard1of1\u2024bin",  # one-dot leader, not a full stop
    "group\uff11-shard1of1.bin",  # fullwidth digit one
    "group\u0661-shard1of1.bin",  # Arabic-Indic digit one
    "group1\u0661-shard1of1.bin",
    "g" * 5000 + ".bin",
]


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_s3proxy_refuses_a_version_outside_the_allow_list(stack: Any, version: str) -> None:
    out = s3proxy.handler(event(version, "model.json"))
    assert out["statusCode"] == 400
    assert json.loads(out["body"])["message"] == s3proxy.BAD_VERSION


@pytest.mark.parametrize("filename", BAD_FILENAMES)
def test_s3proxy_refuses_a_filename_outside_the_allow_list(stack: Any, filename: str) -> None:
    out = s3proxy.handler(event(V1, filename))
    assert out["statusCode"] == 400
    assert json.loads(out["body"])["message"] == s3proxy.BAD_FILENAME


def test_s3proxy_refuses_the_canned_traversal_event(stack: Any) -> None:
    out = s3proxy.handler(json.loads((EVENTS / "s3proxy_traversal.json").read_text()))
    assert out["statusCode"] == 400
    assert json.loads(out["body"])["message"] == s3proxy.BAD_FILENAME


@pytest.mark.parametrize(
    "extra",
    [
        {"queryStringParameters": {"key": "../secret"}},
        {"multiValueQueryStringParameters": {"prefix": ["other/"]}},
        {"queryStringParameters": {"X-Amz-Expires": "604800"}},
    ],
)
def test_s3proxy_refuses_query_parameters(s3: Any, stack: Any, extra: dict[str, Any]) -> None:
    put_version(s3, stack.physical["ModelBucket"], V1)
    out = s3proxy.handler(event(V1, "model.json", **extra))
    assert out["statusCode"] == 400
    assert json.loads(out["body"])["message"] == s3proxy.BAD_QUERY


@pytest.mark.parametrize(
    "path", ["/s3proxy/x/../v20261123T091432Z-1a2b/model.json/extra", "/other/model.json", 7]
)
def test_s3proxy_refuses_params_that_are_not_the_literal_path(s3: Any, stack: Any, path: Any) -> None:
    put_version(s3, stack.physical["ModelBucket"], V1)
    out = s3proxy.handler({**event(V1, "model.json"), "path": path})
    assert out["statusCode"] == 400
    assert json.loads(out["body"])["message"] == s3proxy.BAD_PATH


def test_s3proxy_client_mid_load_never_mixes_versions(s3: Any, stack: Any) -> None:
    """Load latest's model.json, publish a new latest, then fetch the weights as TF.js would."""
    bucket, table = stack.physical["ModelBucket"], stack.physical["ModelTable"]
    put_version(s3, bucket, V1)
    promote(table, V1)
    model_url = "/s3proxy/latest/model.json"
    first = s3proxy.handler(event("latest", "model.json"))
    manifest = json.loads(follow(s3, bucket, first["headers"]["Location"]))["weightsManifest"]

    put_version(s3, bucket, V2)
    promote(table, V2)
    s3proxy.reset()  # the pointer cache must not be what saves us
    assert s3proxy.handler(event("latest", "model.json"))["headers"]["X-Model-Version"] == V2

    weight_url = posixpath.normpath(posixpath.join(posixpath.dirname(model_url), manifest[0]["paths"][0]))
    _, _, version, filename = weight_url.split("/")
    weights = s3proxy.handler(event(version, filename))
    assert weights["statusCode"] == 302
    assert follow(s3, bucket, weights["headers"]["Location"]) == V1.encode()


def test_s3proxy_caches_the_latest_pointer_briefly() -> None:
    now = [100.0]
    reads: list[int] = []

    class Pointer:
        def latest_version(self) -> str:
            reads.append(1)
            return V1

    cache = s3proxy.LatestCache(clock=lambda: now[0])
    assert cache.get(Pointer(), ttl=1.0) == V1  # type: ignore[arg-type]
    now[0] += 0.5
    cache.get(Pointer(), ttl=1.0)  # type: ignore[arg-type]
    assert len(reads) == 1
    now[0] += 0.6
    cache.get(Pointer(), ttl=1.0)  # type: ignore[arg-type]
    assert len(reads) == 2


@pytest.mark.parametrize("expiry", ["301", "0", "ten"])
def test_s3proxy_settings_refuse_a_bad_url_expiry(
    stack: Any, monkeypatch: pytest.MonkeyPatch, expiry: str
) -> None:
    monkeypatch.setenv("PROXY_URL_EXPIRY_S", expiry)
    with pytest.raises(ConfigError, match="PROXY_URL_EXPIRY_S"):
        s3proxy.ProxySettings.from_env()
