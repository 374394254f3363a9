"""localcloud.sigv4: presigned URLs checked as S3 checks them.

The URLs are real: boto3 presigns them against the local cloud's kind of endpoint (presigning
needs no network), and each test changes one thing S3 would notice.
"""

from __future__ import annotations

import functools
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.config import Config

from lambdas import s3proxy
from lambdas.core import aws
from localcloud import sigv4

ENDPOINT = "http://127.0.0.1:4566"
BUCKET = "models-bucket"
KEY = "models/v20261123T091432Z-1a2b/model.json"
ACCESS_KEY = "AKIDLOCALCLOUD"
SECRET = "local-secret/with+odd=chars"
SECRETS = {ACCESS_KEY: SECRET, "AKIDOTHER": "other-secret"}
EXPIRES = 300


@functools.cache
def presigner(
    *,
    region: str = "us-east-1",
    endpoint: str | None = ENDPOINT,
    signature_version: str = "s3v4",
    token: str | None = None,
) -> Any:
    session = boto3.Session(
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
        aws_session_token=token,
        region_name=region,
    )
    config = Config(signature_version=signature_version, s3={"addressing_style": "path"})
    return session.client("s3", endpoint_url=endpoint, config=config)


@dataclass(frozen=True)
class Request:
    method: str
    host: str
    raw_path: str
    raw_query: str
    headers: dict[str, str]

    @classmethod
    def of(cls, url: str, method: str = "GET") -> Request:
        parts = urllib.parse.urlsplit(url)
        return cls(method, parts.netloc, parts.path, parts.query, {"User-Agent": "tfjs"})

    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.raw_query, keep_blank_values=True))

    def with_param(self, name: str, value: str | None) -> Request:
        """The same request with one query parameter set (or removed, if value is None)."""
        pairs = [
            (k, v) for k, v in urllib.parse.parse_qsl(self.raw_query, keep_blank_values=True) if k != name
        ]
        if value is not None:
            pairs.append((name, value))
        return replace(self, raw_query=urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote))

    def signed_at(self) -> float:
        return datetime.strptime(self.query()["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


def url_for(key: str = KEY, *, method: str = "get_object", expires: int = EXPIRES, **kwargs: Any) -> str:
    client = presigner(**kwargs)
    return str(
        client.generate_presigned_url(method, Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=expires)
    )


def verify(request: Request, *, now: float | None = None, secrets: Callable[[str], str | None] = SECRETS.get):
    return sigv4.verify_presigned(
        method=request.method,
        host=request.host,
        raw_path=request.raw_path,
        raw_query=request.raw_query,
        headers=request.headers,
        secret_for=secrets,
        now=time.time() if now is None else now,
    )


def refused(request: Request, *, now: float | None = None) -> sigv4.PresignError:
    with pytest.raises(sigv4.PresignError) as caught:
        verify(request, now=now)
    return caught.value


# what passes ------------------------------------------------------------------------------


def test_sigv4_a_real_presigned_url_verifies() -> None:
    request = Request.of(url_for())
    assert request.host == "127.0.0.1:4566" and request.raw_path == f"/{BUCKET}/{KEY}"
    out = verify(request)
    assert out == sigv4.Presigned(
        access_key=ACCESS_KEY,
        session_token=None,
        region="us-east-1",
        service="s3",
        expires_at=request.signed_at() + EXPIRES,
        signed_at=request.signed_at(),
    )


@pytest.mark.parametrize(("client_method", "http_method"), [("head_object", "HEAD"), ("put_object", "PUT")])
def test_sigv4_urls_for_other_methods_verify_with_their_method(client_method: str, http_method: str) -> None:
    assert verify(Request.of(url_for(method=client_method), http_method)).access_key == ACCESS_KEY


@pytest.mark.parametrize("region", ["eu-west-1", "ap-southeast-2"])
def test_sigv4_carries_the_region_of_the_credential_scope(region: str) -> None:
    assert verify(Request.of(url_for(region=region))).region == region


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "ap-southeast-2"])
def test_sigv4_the_proxys_own_url_on_the_regional_virtual_host_verifies(
    monkeypatch: pytest.MonkeyPatch, region: str
) -> None:
    """Cross-check with the project's S3 client (lambdas/core/aws.py) as it presigns in AWS, with
    the fake credentials every test runs with (tests/conftest.py)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    aws.reset()
    cfg = s3proxy.ProxySettings(bucket=BUCKET, table="t", prefix="models/", url_expiry_s=60, latest_cache_s=1)
    target = s3proxy.Target(version="v1", filename="model.json", key=KEY, via_latest=False)
    request = Request.of(s3proxy.signed_redirect(cfg, target)["headers"]["Location"])
    assert request.host == f"{BUCKET}.s3.{region}.amazonaws.com" and request.raw_path == f"/{KEY}"
    assert verify(request, secrets={"testing": "testing"}.get).region == region


KEYS = [
    "a b/with spaces.json",
    "plus+sign+key",
    "ünïcödé/ключ/模型.json",
    "deep/er/and/deeper/group1-shard1of1.bin",
    "emoji 🚀 rocket",
    "reserved !$&'()*,;=:@[] chars",
    "tilde~and%percent",
    "double//slash/../dots/./here",
    "question?hash#mark",
]


@pytest.mark.parametrize("key", KEYS)
def test_sigv4_keys_that_need_encoding_verify(key: str) -> None:
    request = Request.of(url_for(key))
    assert urllib.parse.unquote(request.raw_path) == f"/{BUCKET}/{key}"
    assert verify(request).access_key == ACCESS_KEY


@pytest.mark.parametrize("key", KEYS)
def test_sigv4_a_url_moved_to_a_look_alike_key_is_refused(key: str) -> None:
    request = Request.of(url_for(key))
    for other in (key + "x", key.replace(" ", "+"), key.replace("/", "", 1), key.upper()):
        if other == key:
            continue
        moved = replace(request, raw_path=f"/{BUCKET}/{urllib.parse.quote(other, safe='/~%')}")
        assert refused(moved).code == "SignatureDoesNotMatch"


def test_sigv4_an_encoded_slash_is_the_same_key_as_a_slash() -> None:
    """S3 decodes the path once: /a%2Fb and /a/b name one object, so both carry its signature."""
    request = Request.of(url_for("deep/er.json"))
    assert verify(replace(request, raw_path=request.raw_path.replace("deep/er", "deep%2Fer"))).access_key == (
        ACCESS_KEY
    )


def test_sigv4_the_path_is_encoded_once_as_s3_does_not_twice() -> None:
    """A signer that double-encodes (the generic SigV4 rule for other services) is refused."""
    request = Request.of(url_for("a b.json"))
    assert request.raw_path.endswith("/a%20b.json")
    assert refused(replace(request, raw_path=request.raw_path.replace("%20", "%2520"))).code == (
        "SignatureDoesNotMatch"
    )


def test_sigv4_a_session_token_is_carried_and_signed() -> None:
    token = "FwoGZXIvYXdzE+/session/token=="
    request = Request.of(url_for(token=token))
    assert request.query()["X-Amz-Security-Token"] == token
    assert verify(request).session_token == token
    assert refused(request.with_param("X-Amz-Security-Token", token + "x")).code == "SignatureDoesNotMatch"
    assert refused(request.with_param("X-Amz-Security-Token", None)).code == "SignatureDoesNotMatch"


def test_sigv4_the_longest_expiry_s3_allows_verifies() -> None:
    request = Request.of(url_for(expires=sigv4.MAX_EXPIRES_S))
    assert verify(request).expires_at == request.signed_at() + 604800


def test_sigv4_a_host_on_the_default_port_verifies() -> None:
    request = Request.of(url_for(endpoint="http://127.0.0.1"))
    assert request.host == "127.0.0.1"
    assert verify(request).access_key == ACCESS_KEY


# expiry, against `now` --------------------------------------------------------------------


def test_sigv4_is_valid_until_date_plus_expires_and_not_after() -> None:
    request = Request.of(url_for())
    assert verify(request, now=request.signed_at() + EXPIRES).access_key == ACCESS_KEY
    err = refused(request, now=request.signed_at() + EXPIRES + 1)
    assert isinstance(err, sigv4.RequestExpired)
    assert (err.status, err.code, err.message) == (403, "AccessDenied", "Request has expired")
    assert err.extra["X-Amz-Expires"] == str(EXPIRES)
    document = ET.fromstring(err.xml())
    assert [child.tag for child in document] == ["Code", "Message", "X-Amz-Expires", "Expires", "ServerTime"]
    expires_at = datetime.fromtimestamp(request.signed_at() + EXPIRES, tz=UTC)
    assert document.findtext("Expires") == expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_sigv4_expiry_is_checked_against_now_not_the_clock() -> None:
    request = Request.of(url_for())
    assert isinstance(refused(request, now=request.signed_at() + 10 * 365 * 86400), sigv4.RequestExpired)


def test_sigv4_a_url_signed_in_the_future_is_not_yet_valid() -> None:
    request = Request.of(url_for())
    assert verify(request, now=request.signed_at() - sigv4.NOT_YET_VALID_SKEW_S).access_key == ACCESS_KEY
    err = refused(request, now=request.signed_at() - sigv4.NOT_YET_VALID_SKEW_S - 1)
    assert (type(err), err.status, err.code, err.message) == (
        sigv4.RequestNotYetValid,
        403,
        "AccessDenied",
        "Request is not yet valid",
    )


def test_sigv4_a_later_date_in_the_query_does_not_extend_the_life() -> None:
    request = Request.of(url_for())
    later = datetime.fromtimestamp(request.signed_at() + 3600, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    assert refused(request.with_param("X-Amz-Date", later), now=request.signed_at() + 3600).code == (
        "SignatureDoesNotMatch"
    )


# tampering ----------------------------------------------------------------------------------


def _other_signature(request: Request) -> Request:
    signature = request.query()["X-Amz-Signature"]
    return request.with_param("X-Amz-Signature", ("0" if signature[0] != "0" else "1") + signature[1:])


def _other_access_key(request: Request) -> Request:
    credential = request.query()["X-Amz-Credential"].replace(ACCESS_KEY, "AKIDNOBODY")
    return request.with_param("X-Amz-Credential", credential)


def _other_account(request: Request) -> Request:
    credential = request.query()["X-Amz-Credential"].replace(ACCESS_KEY, "AKIDOTHER")
    return request.with_param("X-Amz-Credential", credential)


TAMPERINGS: dict[str, tuple[Callable[[Request], Request], type[sigv4.PresignError], int, str]] = {
    "another key": (
        lambda r: replace(r, raw_path=r.raw_path.replace("model.json", "group1-shard1of1.bin")),
        sigv4.SignatureDoesNotMatch,
        403,
        "SignatureDoesNotMatch",
    ),
    "another bucket": (
        lambda r: replace(r, raw_path=r.raw_path.replace(BUCKET, "other-bucket")),
        sigv4.SignatureDoesNotMatch,
        403,
        "SignatureDoesNotMatch",
    ),
    "an added parameter": (
        lambda r: r.with_param("response-content-type", "text/html"),
        sigv4.SignatureDoesNotMatch,
        403,
        "SignatureDoesNotMatch",
    ),
    "a longer expiry": (
        lambda r: r.with_param("X-Amz-Expires", "604800"),
        sigv4.SignatureDoesNotMatch,
        403,
        "SignatureDoesNotMatch",
    ),
    "another signature": (_other_signature, sigv4.SignatureDoesNotMatch, 403, "SignatureDoesNotMatch"),
    "another account's key": (_other_account, sigv4.SignatureDoesNotMatch, 403, "SignatureDoesNotMatch"),
    "an unknown access key": (_other_access_key, sigv4.InvalidAccessKeyId, 403, "InvalidAccessKeyId"),
    "another method": (
        lambda r: replace(r, method="DELETE"),
        sigv4.SignatureDoesNotMatch,
        403,
        "SignatureDoesNotMatch",
    ),
    "another port": (
        lambda r: replace(r, host="127.0.0.1:4567"),
        sigv4.SignatureDoesNotMatch,
        403,
        "SignatureDoesNotMatch",
    ),
    "another region": (
        lambda r: r.with_param(
            "X-Amz-Credential", r.query()["X-Amz-Credential"].replace("us-east-1", "eu-west-1")
        ),
        sigv4.SignatureDoesNotMatch,
        403,
        "SignatureDoesNotMatch",
    ),
    "an Authorization header too": (
        lambda r: replace(r, headers={**r.headers, "Authorization": "Bearer token"}),
        sigv4.MixedAuthentication,
        400,
        "InvalidArgument",
    ),
    "an expiry over a week": (
        lambda r: r.with_param("X-Amz-Expires", "604801"),
        sigv4.AuthorizationQueryParametersError,
        400,
        "AuthorizationQueryParametersError",
    ),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_sigv4_a_tampered_url_is_refused(name: str) -> None:
    tamper, kind, status, code = TAMPERINGS[name]
    err = refused(tamper(Request.of(url_for())))
    assert (type(err), err.status, err.code) == (kind, status, code)
    assert ET.fromstring(err.xml()).findtext("Code") == code


def test_sigv4_a_signature_mismatch_shows_what_was_signed() -> None:
    err = refused(replace(Request.of(url_for()), raw_path=f"/{BUCKET}/elsewhere"))
    assert err.message == (
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method."
    )
    assert err.extra["AWSAccessKeyId"] == ACCESS_KEY
    assert err.extra["CanonicalRequest"].startswith(
        f"GET\n/{BUCKET}/elsewhere\nX-Amz-Algorithm=AWS4-HMAC-SHA256&"
    )
    assert err.extra["CanonicalRequest"].endswith("\nhost:127.0.0.1:4566\n\nhost\nUNSIGNED-PAYLOAD")


def test_sigv4_an_unknown_access_key_is_named() -> None:
    err = refused(_other_access_key(Request.of(url_for())))
    assert err.message == "The AWS Access Key Id you provided does not exist in our records."
    assert err.extra == {"AWSAccessKeyId": "AKIDNOBODY"}


def test_sigv4_a_validly_signed_url_over_a_week_is_refused_before_its_signature() -> None:
    err = refused(Request.of(url_for(expires=sigv4.MAX_EXPIRES_S + 1)))
    assert (err.status, err.code) == (400, "AuthorizationQueryParametersError")
    assert err.message == (
        "X-Amz-Expires must be less than a week (in seconds); that is, the given X-Amz-Expires "
        "must be less than 604800 seconds"
    )


@pytest.mark.parametrize("name", sigv4.SIGV4_PARAMS)
def test_sigv4_a_missing_parameter_is_refused(name: str) -> None:
    err = refused(Request.of(url_for()).with_param(name, None))
    assert (err.status, err.code) == (400, "AuthorizationQueryParametersError")
    if name != "X-Amz-Algorithm":
        assert err.message == sigv4.MISSING_PARAMS


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA1", 'X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"'),
        ("X-Amz-Expires", "ten", "X-Amz-Expires should be a number"),
        ("X-Amz-Expires", "-1", "X-Amz-Expires must be non-negative"),
        ("X-Amz-Date", "2026-11-30T10:00:00Z", "X-Amz-Date must be in the ISO8601 Long Format"),
        ("X-Amz-Date", "20261340T250000Z", "X-Amz-Date must be in the ISO8601 Long Format"),
        ("X-Amz-Credential", "AKID/20261130/us-east-1/s3", "the Credential is mal-formed"),
        ("X-Amz-Credential", f"{ACCESS_KEY}/20261130/us-east-1/ec2/aws4_request", 'incorrect service "ec2"'),
        ("X-Amz-Credential", f"{ACCESS_KEY}/20261130/us-east-1/s3/aws5_request", 'incorrect terminal "aws5'),
        ("X-Amz-Credential", f"{ACCESS_KEY}/2026-11-30/us-east-1/s3/aws4_request", "incorrect date format"),
        (
            "X-Amz-Credential",
            f"{ACCESS_KEY}/19990101/us-east-1/s3/aws4_request",
            "not the same as X-Amz-Date",
        ),
        ("X-Amz-SignedHeaders", "range", "X-Amz-SignedHeaders must include host"),
    ],
)
def test_sigv4_a_malformed_parameter_is_refused(name: str, value: str, message: str) -> None:
    err = refused(Request.of(url_for()).with_param(name, value))
    assert (err.status, err.code) == (400, "AuthorizationQueryParametersError")
    assert message in err.message


def test_sigv4_a_parameter_given_twice_is_refused() -> None:
    request = Request.of(url_for())
    doubled = replace(request, raw_query=request.raw_query + "&X-Amz-Expires=604800")
    err = refused(doubled)
    assert (err.status, err.code) == (400, "AuthorizationQueryParametersError")


# SigV2 ---------------------------------------------------------------------------------------


def test_sigv4_a_sigv2_url_is_refused() -> None:
    request = Request.of(url_for(signature_version="s3"))
    assert {"AWSAccessKeyId", "Signature", "Expires"} <= request.query().keys()
    assert sigv4.is_presigned(urllib.parse.parse_qs(request.raw_query))
    err = refused(request, now=0)
    assert (type(err), err.status, err.code) == (sigv4.SignatureVersionNotSupported, 400, "InvalidRequest")
    assert err.message == (
        "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
    )


# recognising query authentication ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_query", "expected"),
    [
        ("", False),
        ("prefix=models%2F&list-type=2", False),
        ("X-Amz-Expires=60", False),
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256", True),
        ("X-Amz-Signature=abc", True),
        ("AWSAccessKeyId=AKID&Expires=1", True),
        ("Signature=abc", True),
    ],
)
def test_sigv4_is_presigned_recognises_query_authentication(raw_query: str, expected: bool) -> None:
    assert sigv4.is_presigned(sigv4.query_params(raw_query)) is expected
    assert sigv4.is_presigned(urllib.parse.parse_qs(raw_query)) is expected


def test_sigv4_a_request_without_query_authentication_is_not_verified() -> None:
    plain = Request("GET", "127.0.0.1:4566", f"/{BUCKET}/{KEY}", "", {})
    err = refused(plain, now=0)
    assert (err.status, err.code, err.message) == (
        400,
        "AuthorizationQueryParametersError",
        sigv4.MISSING_PARAMS,
    )


def test_sigv4_query_params_decode_like_s3() -> None:
    assert sigv4.query_params("a=1&a=2&b=x%2By+z&c&d=%E2%9C%93") == {
        "a": ["1", "2"],
        "b": ["x+y z"],
        "c": [""],
        "d": ["\u2713"],
    }


# the error document -------------------------------------------------------------------------


def test_sigv4_s3_error_xml_is_s3s_error_document() -> None:
    body = sigv4.s3_error_xml("AccessDenied", "a <b> & 'c'", **{"X-Amz-Expires": "60", "RequestId": "r1"})
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>')
    document = ET.fromstring(body)
    assert document.tag == "Error"
    assert [(child.tag, child.text) for child in document] == [
        ("Code", "AccessDenied"),
        ("Message", "a <b> & 'c'"),
        ("X-Amz-Expires", "60"),
        ("RequestId", "r1"),
    ]


def test_sigv4_s3_error_xml_refuses_a_name_that_is_not_an_element() -> None:
    with pytest.raises(ValueError, match="not an XML element name"):
        sigv4.s3_error_xml("AccessDenied", "m", **{"a b": "x"})


# --- browser POST uploads ----------------------------------------------------------------------


def _post_form(
    fields: dict[str, str], content: bytes | None, filename: str = "history.csv"
) -> tuple[str, bytes]:
    """A multipart/form-data body as a browser sends it: the fields, then the file (if any)."""
    boundary = "----localcloudtestboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    if content is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: text/csv\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    return f"multipart/form-data; boundary={boundary}", b"".join(parts) + f"--{boundary}--\r\n".encode()


def _presigned_post(key: str, conditions: list[Any], expires: int = 60) -> dict[str, Any]:
    client = boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
        config=Config(signature_version="s3v4"),
    )
    return client.generate_presigned_post(BUCKET, key, Conditions=conditions, ExpiresIn=expires)


def _verify_post(fields: dict[str, str], content: bytes | None, **kwargs: Any) -> sigv4.PostUpload:
    content_type, body = _post_form(fields, content, **kwargs)
    return sigv4.verify_post(
        raw_path=f"/{BUCKET}", content_type=content_type, body=body, secret_for=SECRETS.get
    )


def test_post_upload_within_the_policy_passes_with_its_signer_and_size() -> None:
    upload = _presigned_post("imports/a.csv", [["starts-with", "$key", "imports/"]])
    got = _verify_post(upload["fields"], b"abc", filename="a.csv")
    assert (got.bucket, got.key, got.size) == (BUCKET, "imports/a.csv", 3)
    assert got.signer.access_key == ACCESS_KEY and got.signer.region == "us-east-1"


def test_post_upload_field_names_match_conditions_case_insensitively() -> None:
    upload = _presigned_post("imports/x.csv", [["eq", "$Content-Type", "text/csv"]])
    _verify_post({**upload["fields"], "content-type": "text/csv"}, b"a")
    with pytest.raises(sigv4.PolicyConditionFailed, match=r'\["eq", "\$Content-Type", "text/csv"\]'):
        _verify_post({**upload["fields"], "Content-Type": "text/plain"}, b"a")


def test_post_upload_bucket_condition_is_checked_against_the_url() -> None:
    upload = _presigned_post("imports/x.csv", [])
    content_type, body = _post_form(upload["fields"], b"a")
    with pytest.raises(sigv4.PolicyConditionFailed, match=r'\["eq", "\$bucket", "models-bucket"\]'):
        sigv4.verify_post(
            raw_path="/other-bucket", content_type=content_type, body=body, secret_for=SECRETS.get
        )


def test_post_upload_without_a_file_or_a_key_is_refused() -> None:
    upload = _presigned_post("imports/x.csv", [])
    with pytest.raises(sigv4.InvalidPostArgument, match="exactly one file"):
        _verify_post(upload["fields"], None)
    without_key = {k: v for k, v in upload["fields"].items() if k != "key"}
    with pytest.raises(sigv4.InvalidPostArgument, match="'key'"):
        _verify_post(without_key, b"a")


def test_post_upload_by_an_unknown_key_is_refused() -> None:
    upload = _presigned_post("imports/x.csv", [])
    fields = {
        **upload["fields"],
        "x-amz-credential": upload["fields"]["x-amz-credential"].replace(ACCESS_KEY, "AKIDNOBODY"),
    }
    with pytest.raises(sigv4.InvalidAccessKeyId):
        _verify_post(fields, b"a")


# Forms that moto could read otherwise than the gate checked them: refused outright, 400.


def _form_of(parts: list[tuple[str, bytes, str | None]]) -> tuple[str, bytes]:
    """A multipart/form-data body of these parts in this order: (name, value, filename or None)."""
    boundary = "----localcloudtestboundary"
    chunks = []
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
        )
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks) + f"--{boundary}--\r\n".encode()


def _verify_parts(parts: list[tuple[str, bytes, str | None]], raw_query: str = "") -> sigv4.PostUpload:
    content_type, body = _form_of(parts)
    return sigv4.verify_post(
        raw_path=f"/{BUCKET}",
        raw_query=raw_query,
        content_type=content_type,
        body=body,
        secret_for=SECRETS.get,
    )


def _signed_parts(key: str, conditions: list[Any]) -> list[tuple[str, bytes, str | None]]:
    upload = _presigned_post(key, conditions)
    return [(name, value.encode(), None) for name, value in upload["fields"].items()]


_FILE = ("file", b"abc", "a.csv")


def _refused(parts: list[tuple[str, bytes, str | None]], match: str, raw_query: str = "") -> None:
    with pytest.raises(sigv4.InvalidPostArgument, match=match) as caught:
        _verify_parts(parts, raw_query)
    assert (caught.value.status, caught.value.code) == (400, "InvalidArgument")
    assert b"<Code>InvalidArgument</Code>" in caught.value.xml()


def test_post_upload_as_a_browser_sends_it_passes() -> None:
    parts = _signed_parts("imports/imp-x.csv", [["eq", "$key", "imports/imp-x.csv"]])
    got = _verify_parts([*parts, _FILE])
    assert (got.key, got.size) == ("imports/imp-x.csv", 3)
    got = _verify_parts([*parts, ("File", b"abcd", "a.csv")])  # the file's name is case-insensitive
    assert got.size == 4


def test_post_upload_with_a_field_given_twice_in_any_case_is_refused() -> None:
    parts = _signed_parts("imports/imp-x.csv", [["eq", "$key", "imports/imp-x.csv"]])
    key_first = [("key", b"imports/evil.csv", None), *parts, _FILE]
    _refused(key_first, "field 'key' more than once")
    _refused([("KEY", b"imports/evil.csv", None), *parts, _FILE], "field 'key' more than once")
    _refused([*parts, ("Policy", b"x", None), _FILE], "field 'policy' more than once")
    # a text field named file beside the file part: moto would see both
    _refused([*parts, ("file", b"text", None), _FILE], "field 'file' more than once")


def test_post_upload_with_any_file_part_but_one_named_file_is_refused() -> None:
    parts = _signed_parts("imports/imp-x.csv", [["content-length-range", 1, 3]])
    _refused([*parts, _FILE, ("zzz", b"x" * 1000, "big.csv")], r"exactly one file.*'file', 'zzz'")
    _refused([*parts, ("zzz", b"x" * 1000, "big.csv"), _FILE], r"exactly one file.*'zzz', 'file'")
    _refused([*parts, ("upload", b"abc", "a.csv")], r"exactly one file.*'upload'")
    _refused([*parts, _FILE, _FILE], "field 'file' more than once")


def test_post_upload_with_a_field_after_the_file_is_refused() -> None:
    parts = _signed_parts("imports/imp-x.csv", [["eq", "$key", "imports/imp-x.csv"]])
    *before, last = parts
    _refused([*before, _FILE, last], f"last field.*'{last[0]}' comes after it")


def test_post_upload_with_filename_in_its_key_is_refused() -> None:
    parts = _signed_parts("imports/${filename}", [["starts-with", "$key", "imports/"]])
    _refused([*parts, ("file", b"abc", "../../other/evil.csv")], r"does not support \$\{filename\}")


def test_post_upload_with_a_query_string_is_refused() -> None:
    parts = _signed_parts("imports/imp-x.csv", [["eq", "$key", "imports/imp-x.csv"]])
    _refused([*parts, _FILE], "query string", raw_query="delete")


def test_post_upload_that_is_not_multipart_is_refused() -> None:
    with pytest.raises(sigv4.InvalidPostArgument, match="cannot read"):
        sigv4.verify_post(
            raw_path=f"/{BUCKET}", content_type="multipart/form-data", body=b"x", secret_for=SECRETS.get
        )
