"""The model proxy's presigned URLs: SigV4 on the bucket's regional virtual host, in every region.

botocore presigns S3 URLs with SigV2 on the global ``s3.amazonaws.com`` host in us-east-1 and
the other regions that still list SigV2, unless the client asks for ``s3v4``; buckets created
after June 2020 refuse SigV2, and outside us-east-1 the global host redirects, which breaks the
signature and CORS for TensorFlow.js clients (sources in ``lambdas/core/aws.py``). Presigning
is local computation: these tests use fake credentials and no network.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from typing import Any

import pytest

from lambdas import s3proxy
from lambdas.core import aws

BUCKET = "autoretrain-test-models"
V1 = "v20261123T091432Z-1a2b"
EXPIRY_S = 120
REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2"]
LOCAL = "http://127.0.0.1:4566"


@pytest.fixture(autouse=True)
def fresh() -> Any:
    s3proxy.reset()
    yield
    s3proxy.reset()


def in_region(monkeypatch: pytest.MonkeyPatch, region: str) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    monkeypatch.setenv("AWS_REGION", region)
    aws.reset()


def proxy_location(bucket: str = BUCKET) -> str:
    """The URL the proxy redirects to for one model file, presigned by the project's S3 client."""
    cfg = s3proxy.ProxySettings(
        bucket=bucket, table="unused", prefix="models/", url_expiry_s=EXPIRY_S, latest_cache_s=1.0
    )
    target = s3proxy.Target(
        version=V1, filename="model.json", key=f"models/{V1}/model.json", via_latest=False
    )
    return str(s3proxy.signed_redirect(cfg, target)["headers"]["Location"])


def query_of(url: str) -> dict[str, str]:
    pairs = urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query, keep_blank_values=True)
    return dict(pairs)


def assert_sigv4(url: str, region: str) -> None:
    query = query_of(url)
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    access_key, date, scope_region, service, terminator = query["X-Amz-Credential"].split("/")
    assert (access_key, scope_region, service, terminator) == ("testing", region, "s3", "aws4_request")
    assert query["X-Amz-Date"].startswith(date)
    assert query["X-Amz-Expires"] == str(EXPIRY_S)
    assert query["X-Amz-SignedHeaders"] == "host"
    assert len(query["X-Amz-Signature"]) == 64
    assert not {"AWSAccessKeyId", "Signature", "Expires"} & query.keys()


@pytest.mark.parametrize("region", REGIONS)
def test_presign_url_is_on_the_buckets_regional_virtual_host(
    monkeypatch: pytest.MonkeyPatch, region: str
) -> None:
    in_region(monkeypatch, region)
    parts = urllib.parse.urlsplit(proxy_location())
    assert (parts.scheme, parts.netloc) == ("https", f"{BUCKET}.s3.{region}.amazonaws.com")
    assert parts.path == f"/models/{V1}/model.json"


@pytest.mark.parametrize("region", REGIONS)
def test_presign_url_is_sigv4_scoped_to_the_region(monkeypatch: pytest.MonkeyPatch, region: str) -> None:
    in_region(monkeypatch, region)
    assert_sigv4(proxy_location(), region)


@pytest.mark.parametrize("endpoint", [LOCAL, "http://localhost:4566"])
def test_presign_url_on_a_custom_endpoint_is_path_style_sigv4(
    monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    """The local cloud: ``<bucket>.127.0.0.1`` does not resolve, so the bucket goes in the path."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    in_region(monkeypatch, "eu-west-1")
    url = proxy_location()
    assert url.startswith(f"{endpoint}/{BUCKET}/models/{V1}/model.json?")
    assert_sigv4(url, "eu-west-1")


def test_presign_every_s3_client_the_project_creates_signs_with_sigv4(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_region(monkeypatch, "us-east-1")
    clients = [aws.s3(), aws.client("s3"), aws.resource("s3").meta.client]
    for client in clients:
        url = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"}, ExpiresIn=60)
        assert urllib.parse.urlsplit(url).netloc == f"{BUCKET}.s3.us-east-1.amazonaws.com"
        assert query_of(url)["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"


def test_presign_clients_stay_cached_until_reset() -> None:
    assert aws.s3() is aws.client("s3")
    first = aws.s3()
    aws.reset()
    assert aws.s3() is not first


def test_presign_through_the_handler_redirects_to_the_regional_host(s3: Any, stack: Any) -> None:
    bucket = stack.physical["ModelBucket"]
    s3.put_object(Bucket=bucket, Key=f"models/{V1}/model.json", Body=b"{}")
    out = s3proxy.handler(
        {
            "httpMethod": "GET",
            "path": f"/s3proxy/{V1}/model.json",
            "pathParameters": {"version": V1, "filename": "model.json"},
        }
    )
    assert out["statusCode"] == 302
    location = out["headers"]["Location"]
    assert urllib.parse.urlsplit(location).netloc == f"{bucket}.s3.us-east-1.amazonaws.com"
    assert query_of(location)["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"


@pytest.mark.slow
def test_presign_url_on_the_local_cloud_fetches_the_object(
    monkeypatch: pytest.MonkeyPatch, moto_server: str
) -> None:
    """The path-style SigV4 URL works against a moto server, as TF.js and infer follow it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    in_region(monkeypatch, "eu-west-1")
    aws.s3().create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    aws.s3().put_object(Bucket=BUCKET, Key=f"models/{V1}/model.json", Body=b'{"format": "layers-model"}')
    url = proxy_location()
    assert url.startswith(f"{moto_server}/{BUCKET}/")
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b'{"format": "layers-model"}'
