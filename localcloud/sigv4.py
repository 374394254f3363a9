"""Verify S3 presigned URLs (query-string authentication) as S3 does, for the local cloud.

moto never checks a presigned URL's signature or expiry (DESIGN.md), so a URL moved to another
key, a tampered query or an expired URL would all work offline and fail in AWS. This module is
the check; a WSGI middleware in front of moto calls ``verify_presigned`` for requests that
``is_presigned`` and answers a ``PresignError`` with ``s3_error_xml``.

What S3 does, and where it is written down:
- the algorithm (canonical request, string to sign, signing key; query parameters, X-Amz-Expires
  at most 604800 s, payload hash UNSIGNED-PAYLOAD):
  https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html
- UriEncode (every byte but A-Z a-z 0-9 - _ . ~ as %XY in upper case, "/" kept in the path only)
  and "do not normalize URI paths" for S3, which URI-encodes the path once, not twice:
  https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html,
  https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html
- error codes and statuses: https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html;
  the messages are S3's own as quoted in public reports, each named where it is raised.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from werkzeug.formparser import parse_form_data
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData, Preamble

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_EXPIRES_S = 604800  # seven days: the signing key is valid for at most that long (sigv4-query-string-auth)
# How far in the future X-Amz-Date may be before S3 says "Request is not yet valid". S3 allows
# 15 minutes of clock skew for signed requests (RequestTimeTooSkewed, ErrorResponses); that the
# same allowance applies to a presigned URL's X-Amz-Date is our assumption.
NOT_YET_VALID_SKEW_S = 900

SIGV4_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)
SIGV2_PARAMS = ("AWSAccessKeyId", "Signature", "Expires")
_SIGV4_MARKERS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature")
_SIGV2_MARKERS = ("AWSAccessKeyId", "Signature")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_CREDENTIAL_DATE = re.compile(r"\d{8}")
_INTEGER = re.compile(r"[+-]?\d+")


class PresignError(Exception):
    """S3's refusal of a presigned request: the HTTP status, S3's error code and message, and
    the extra elements S3 adds to its <Error> document."""

    status = 403
    code = "AccessDenied"

    def __init__(self, message: str, **extra: str) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def xml(self) -> bytes:
        return s3_error_xml(self.code, self.message, **self.extra)


class SignatureVersionNotSupported(PresignError):
    """SigV2 query authentication (AWSAccessKeyId/Signature/Expires). Buckets created after
    June 24, 2020 refuse SigV2 (https://repost.aws/questions/QU5OKPZ-HnS1SHXX6dUbGi2w). S3's
    answer to a SigV2 request where it does not take SigV2, 400 InvalidRequest with this
    message, is quoted in https://github.com/ravsau/aws-labs/issues/4 and
    https://github.com/nfrastack/db-backup/issues/57."""

    status = 400
    code = "InvalidRequest"


class AuthorizationQueryParametersError(PresignError):
    """Missing or malformed X-Amz-* parameters: 400 (ErrorResponses)."""

    status = 400
    code = "AuthorizationQueryParametersError"


class MixedAuthentication(PresignError):
    """A presigned URL sent with an Authorization header too: S3 answers 400 InvalidArgument
    "Only one auth mechanism allowed" (reported by many clients that forward Authorization
    across a redirect to S3; the full message below is S3's as we remember it)."""

    status = 400
    code = "InvalidArgument"


class InvalidAccessKeyId(PresignError):
    """An access key the account does not have: 403 (ErrorResponses)."""

    code = "InvalidAccessKeyId"


class RequestExpired(PresignError):
    """X-Amz-Date + X-Amz-Expires is past: 403 AccessDenied "Request has expired", with
    X-Amz-Expires, Expires and ServerTime (S3's document quoted in
    https://github.com/aws/aws-sdk-php/issues/1333)."""


class RequestNotYetValid(PresignError):
    """X-Amz-Date is in the future: 403 AccessDenied "Request is not yet valid" (S3's document
    quoted in https://github.com/minio/minio/issues/2638)."""


class SignatureDoesNotMatch(PresignError):
    """The signature is not the one the canonical request gives: 403 (ErrorResponses)."""

    code = "SignatureDoesNotMatch"


MISSING_PARAMS = (
    "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
    "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
)


@dataclass(frozen=True)
class Presigned:
    """A presigned request that passed: who signed it, for where, and when it stops working."""

    access_key: str
    session_token: str | None
    region: str
    service: str
    expires_at: float
    signed_at: float


def query_params(raw_query: str) -> dict[str, list[str]]:
    """The query as S3 reads it: percent-decoded, "+" as a space, blank values kept, in order."""
    out: dict[str, list[str]] = {}
    for name, value in _pairs(raw_query):
        out.setdefault(_text(name), []).append(_text(value))
    return out


def is_presigned(query: Mapping[str, list[str]]) -> bool:
    """Whether a request authenticates in its query (SigV4 or SigV2), e.g. ``parse_qs``'s result."""
    return any(name in query for name in (*_SIGV4_MARKERS, *_SIGV2_MARKERS))


def verify_presigned(
    *,
    method: str,
    host: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    secret_for: Callable[[str], str | None],
    now: float | None = None,
) -> Presigned:
    """Check a presigned request as S3 would, or raise the ``PresignError`` S3 would answer.

    ``host`` is the Host header as received (with its port, e.g. ``127.0.0.1:4566``);
    ``raw_path`` and ``raw_query`` are the request target's path and query as sent, still
    percent-encoded; ``secret_for`` gives an access key's secret, or None if there is no such key.
    """
    now = time.time() if now is None else now
    pairs = _pairs(raw_query)
    names = [_text(name) for name, _ in pairs]
    if not any(marker in names for marker in _SIGV4_MARKERS):
        if any(marker in names for marker in _SIGV2_MARKERS):
            raise SignatureVersionNotSupported(
                "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
            )
        raise AuthorizationQueryParametersError(MISSING_PARAMS)
    if any(name.lower() == "authorization" for name in headers):
        raise MixedAuthentication(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query "
            "string parameter or the Authorization header should be specified"
        )
    params = _auth_params(pairs)

    # The AuthorizationQueryParametersError messages are S3's as S3-compatible servers copy them
    # (minio's cmd/api-errors.go, noobaa, ozone, s3rver agree word for word); those for a
    # credential's date, service and terminal are S3's as we remember them, not checked.
    if params.get("X-Amz-Algorithm") != ALGORITHM:
        raise AuthorizationQueryParametersError('X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
    if any(not params.get(name) for name in SIGV4_PARAMS):
        raise AuthorizationQueryParametersError(MISSING_PARAMS)

    access_key, scope_date, region, service = _credential(params["X-Amz-Credential"])
    amz_date = params["X-Amz-Date"]
    if not _AMZ_DATE.fullmatch(amz_date):
        raise AuthorizationQueryParametersError(
            "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\""
        )
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError as err:
        raise AuthorizationQueryParametersError(
            "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\""
        ) from err
    if scope_date != amz_date[:8]:
        raise AuthorizationQueryParametersError(
            f'Invalid credential date "{scope_date}". '
            f'This date is not the same as X-Amz-Date: "{amz_date[:8]}".'
        )
    expires_in = _expires(params["X-Amz-Expires"])
    signed_headers = params["X-Amz-SignedHeaders"].split(";")
    if "host" not in signed_headers:
        # Our wording: S3 signs the host always, and a URL that does not is not one it issues.
        raise AuthorizationQueryParametersError("X-Amz-SignedHeaders must include host")

    secret = secret_for(access_key)
    if secret is None:
        raise InvalidAccessKeyId(
            "The AWS Access Key Id you provided does not exist in our records.", AWSAccessKeyId=access_key
        )

    expires_at = signed_at + expires_in
    timing = {
        "X-Amz-Expires": str(expires_in),
        "Expires": _iso(expires_at),
        "ServerTime": _iso(now),
    }
    if expires_at < now:
        raise RequestExpired("Request has expired", **timing)
    if signed_at > now + NOT_YET_VALID_SKEW_S:
        raise RequestNotYetValid("Request is not yet valid", **{"X-Amz-Date": amz_date, **timing})

    canonical_request = "\n".join(
        [
            method.upper(),
            _canonical_path(raw_path),
            _canonical_query(pairs),
            "".join(f"{name}:{_header_value(name, host, headers)}\n" for name in signed_headers),
            params["X-Amz-SignedHeaders"],
            UNSIGNED_PAYLOAD,
        ]
    )
    scope = f"{scope_date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = _hmac(f"AWS4{secret}".encode(), scope_date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    provided = params["X-Amz-Signature"]
    if not (provided.isascii() and hmac.compare_digest(expected, provided.lower())):
        # S3's message, quoted in https://github.com/aws/aws-sdk-js/issues/1802; S3 adds these
        # elements too, which is what makes a mismatch debuggable.
        raise SignatureDoesNotMatch(
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method.",
            AWSAccessKeyId=access_key,
            StringToSign=string_to_sign,
            SignatureProvided=provided,
            CanonicalRequest=canonical_request,
        )
    return Presigned(
        access_key=access_key,
        session_token=params.get("X-Amz-Security-Token"),
        region=region,
        service=service,
        expires_at=expires_at,
        signed_at=signed_at,
    )


def s3_error_xml(code: str, message: str, **extra: str) -> bytes:
    """S3's <Error> document (ErrorResponses): Code, Message, then any extra elements in order.
    Extra names such as "X-Amz-Expires" are passed with ``**{"X-Amz-Expires": "60"}``."""
    elements = [("Code", code), ("Message", message), *extra.items()]
    for name, _ in elements:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
            raise ValueError(f"not an XML element name: {name!r}")
    body = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in elements)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>{body}</Error>'.encode()


# internals -------------------------------------------------------------------------------


def _pairs(raw_query: str) -> list[tuple[bytes, bytes]]:
    """Name and value bytes of each query parameter, percent-decoded; "+" means a space, as in
    every form-encoded query (a literal plus arrives as %2B)."""
    out = []
    for item in raw_query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        out.append((_decode(name), _decode(value)))
    return out


def _decode(component: str) -> bytes:
    return urllib.parse.unquote_to_bytes(component.replace("+", "%20"))


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _auth_params(pairs: list[tuple[bytes, bytes]]) -> dict[str, str]:
    params: dict[str, str] = {}
    for raw_name, raw_value in pairs:
        name = _text(raw_name)
        if not name.startswith("X-Amz-"):
            continue
        if name in params:
            # Our wording; one value each is what a signer writes, and two leave it open which counts.
            raise AuthorizationQueryParametersError(f"{name} must appear once in the query")
        params[name] = _text(raw_value)
    return params


def _credential(value: str) -> tuple[str, str, str, str]:
    parts = value.split("/")
    if len(parts) != 5 or not all(parts):
        raise AuthorizationQueryParametersError(
            "Error parsing the X-Amz-Credential parameter; the Credential is mal-formed; "
            'expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'
        )
    access_key, scope_date, region, service, terminal = parts
    if not _CREDENTIAL_DATE.fullmatch(scope_date):
        raise AuthorizationQueryParametersError(
            f'Error parsing the X-Amz-Credential parameter; incorrect date format "{scope_date}". '
            'This date in the credential must be in the format "yyyyMMdd".'
        )
    if service != "s3":
        raise AuthorizationQueryParametersError(
            f'Error parsing the X-Amz-Credential parameter; incorrect service "{service}". '
            'This endpoint belongs to "s3".'
        )
    if terminal != "aws4_request":
        raise AuthorizationQueryParametersError(
            f'Error parsing the X-Amz-Credential parameter; incorrect terminal "{terminal}". '
            'This endpoint uses "aws4_request".'
        )
    return access_key, scope_date, region, service


def _expires(value: str) -> int:
    if not _INTEGER.fullmatch(value):
        raise AuthorizationQueryParametersError("X-Amz-Expires should be a number")
    seconds = int(value)
    if seconds < 0:
        raise AuthorizationQueryParametersError("X-Amz-Expires must be non-negative")
    if seconds > MAX_EXPIRES_S:
        # S3's message, quoted in https://github.com/aws/aws-cli/issues/5464 (604800 itself passes).
        raise AuthorizationQueryParametersError(
            "X-Amz-Expires must be less than a week (in seconds); that is, the given X-Amz-Expires "
            "must be less than 604800 seconds"
        )
    return seconds


def _uri_encode(raw: bytes, *, keep_slash: bool) -> str:
    # quote() leaves A-Z a-z 0-9 _ . - ~ alone and writes upper-case hex: S3's UriEncode.
    return urllib.parse.quote(raw, safe="/" if keep_slash else "")


def _canonical_path(raw_path: str) -> str:
    """S3 encodes the key once and never normalises it ("a//b", "..", "%2F" are key bytes), so
    the canonical path is the sent path decoded once and UriEncoded again."""
    return _uri_encode(urllib.parse.unquote_to_bytes(raw_path or "/"), keep_slash=True)


def _canonical_query(pairs: list[tuple[bytes, bytes]]) -> str:
    encoded = sorted(
        (_uri_encode(name, keep_slash=False), _uri_encode(value, keep_slash=False))
        for name, value in pairs
        if name != b"X-Amz-Signature"
    )
    return "&".join(f"{name}={value}" for name, value in encoded)


def _header_value(name: str, host: str, headers: Mapping[str, str]) -> str:
    # The host is the Host header as received, port included; it is passed apart from the rest.
    value = host if name == "host" else next((v for k, v in headers.items() if k.lower() == name), "")
    return " ".join(value.split())


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- browser-based uploads (POST Object with a SigV4 POST policy) -----------------------------
# What S3 does with a multipart/form-data POST to a bucket, and where it is written down:
# - the form's fields, the signature (HMAC-SHA256 of the base64 policy, the string to sign,
#   with the SigV4 signing key) and the policy's expiration and conditions (eq, starts-with,
#   content-length-range; every form field but policy, x-amz-signature, file and x-ignore-*
#   must be covered by a condition):
#   https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-authentication-HTTPPOST.html,
#   https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-HTTPPOSTConstructPolicy.html
# - the answers: a failed condition is 403 AccessDenied "Invalid according to Policy: Policy
#   Condition failed: [...]" (S3's documents quoted in waynehoover/s3_direct_upload#107 and
#   tj/node-s3-policy#8), a field no condition covers "Invalid according to Policy: Extra input
#   fields: <name>" (quoted by AWS in aws/aws-sdk-php#3292), a size outside
#   content-length-range 400 EntityTooLarge / EntityTooSmall (ErrorResponses); "Policy expired."
#   is S3's wording as S3-compatible servers copy it (minio), not checked against S3 itself.
# - the file must be the form's last field, and S3 ignores any field after it (the "file" form
#   field in https://docs.aws.amazon.com/AmazonS3/latest/API/RESTObjectPOST.html, paraphrased).
#
# The gate checks the form and then hands the same bytes to moto, which reads them its own way
# (moto/core/responses.py, BaseResponse.setup_class: ``form["key"]`` as spelled, the last file
# part of any name as the body, ``${filename}`` replaced by the file name's basename, and
# ``?delete`` in the URL turning the POST into DeleteObjects). Where the two readings could
# differ the gate refuses the form outright (400 InvalidArgument) rather than guess which one
# moto will act on - stricter than S3, as the local cloud must be wherever it differs from AWS:
# a field name given twice in any letter case, any file part but exactly one named "file" and
# last in the form, a key with ${filename}, and a query string on the POST.

_POST_UNSIGNED_FIELDS = ("policy", "x-amz-signature", "file")
_POST_AUTH_FIELDS = ("x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature", "policy")
_POLICY_PREFIX = "Invalid according to Policy: "
_UNREADABLE_FORM = "The local cloud cannot read this POST upload's form as multipart/form-data."


class PolicyConditionFailed(PresignError):
    """The policy refuses the form: 403 AccessDenied, "Invalid according to Policy: ..."."""


class EntityTooLarge(PresignError):
    status = 400
    code = "EntityTooLarge"


class EntityTooSmall(PresignError):
    status = 400
    code = "EntityTooSmall"


class InvalidPolicyDocument(PresignError):
    """A policy that is not base64 JSON with an expiration and conditions: 400 (ErrorResponses)."""

    status = 400
    code = "InvalidPolicyDocument"


class InvalidPostArgument(PresignError):
    """A form S3 cannot read as an upload (no key, no file, no signature fields): 400
    InvalidArgument (ErrorResponses); the messages are ours where S3's were not found."""

    status = 400
    code = "InvalidArgument"


@dataclass(frozen=True)
class PostUpload:
    """A POST upload that passed: who signed it, where it goes, and the file's size."""

    signer: Presigned
    bucket: str
    key: str
    size: int


def is_post_upload(method: str, raw_path: str, headers: Mapping[str, str]) -> bool:
    """A browser-style upload: POST of multipart/form-data to a bucket (path-style, ``/bucket``)."""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    segments = [s for s in raw_path.split("/") if s]
    return (
        method.upper() == "POST"
        and content_type.lower().startswith("multipart/form-data")
        and len(segments) == 1
    )


def verify_post(
    *,
    raw_path: str,
    content_type: str,
    body: bytes,
    secret_for: Callable[[str], str | None],
    now: float | None = None,
    raw_query: str = "",
) -> PostUpload:
    """Check a POST upload's form as S3 would, or raise the ``PresignError`` S3 would answer.
    Forms that S3 would take but that moto could read otherwise than this check did are refused
    too (see the notes above ``_POST_UNSIGNED_FIELDS``)."""
    now = time.time() if now is None else now
    bucket = urllib.parse.unquote(raw_path.strip("/"))
    if raw_query:
        # moto reads the URL's query as well as the form (``?delete`` makes the POST a
        # DeleteObjects of the file's XML); a browser upload has no query, so none is taken.
        raise InvalidPostArgument(
            "The local cloud refuses a POST upload with a query string: post the form to /<bucket>."
        )
    fields, file_size = _form(content_type, body)
    if "x-amz-signature" not in fields and ("awsaccesskeyid" in fields or "signature" in fields):
        raise SignatureVersionNotSupported(
            "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
        )
    missing = [name for name in _POST_AUTH_FIELDS if not fields.get(name)]
    if missing:
        raise InvalidPostArgument(f"Bucket POST must contain a field named '{missing[0]}'.")
    if "key" not in fields:
        raise InvalidPostArgument("Bucket POST must contain a field named 'key'.")
    if file_size is None:
        raise InvalidPostArgument("POST requires exactly one file upload per request.")
    if "${filename}" in fields["key"]:
        # S3 replaces ${filename} with the name the browser gives the file; moto with that
        # name's basename. Rather than follow either, the local cloud (stricter than S3) refuses it.
        raise InvalidPostArgument(
            "The local cloud does not support ${filename} in a POST upload's key "
            "(S3 does): sign the policy for the full key.",
            ArgumentName="key",
            ArgumentValue=fields["key"],
        )
    if fields["x-amz-algorithm"] != ALGORITHM:
        raise InvalidPostArgument('x-amz-algorithm only supports "AWS4-HMAC-SHA256"')
    access_key, scope_date, region, service = _credential(fields["x-amz-credential"])
    amz_date = fields["x-amz-date"]
    if not _AMZ_DATE.fullmatch(amz_date) or amz_date[:8] != scope_date:
        raise InvalidPostArgument("x-amz-date must be yyyyMMdd'T'HHmmss'Z' of the credential's date")
    secret = secret_for(access_key)
    if secret is None:
        raise InvalidAccessKeyId(
            "The AWS Access Key Id you provided does not exist in our records.", AWSAccessKeyId=access_key
        )
    policy_b64 = fields["policy"]
    key = _hmac(f"AWS4{secret}".encode(), scope_date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    expected = hmac.new(key, policy_b64.encode(), hashlib.sha256).hexdigest()
    provided = fields["x-amz-signature"]
    if not (provided.isascii() and hmac.compare_digest(expected, provided.lower())):
        raise SignatureDoesNotMatch(
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method.",
            AWSAccessKeyId=access_key,
            StringToSign=policy_b64,
            SignatureProvided=provided,
        )
    policy = _policy(policy_b64)
    if _policy_time(policy["expiration"]) < now:
        raise PolicyConditionFailed(_POLICY_PREFIX + "Policy expired.")
    object_key = fields["key"]
    values = {**fields, "bucket": bucket, "key": object_key}
    covered = {"bucket"} if "bucket" not in fields else set()
    for condition in policy["conditions"]:
        covered |= _check_condition(condition, values, file_size)
    extra = [
        name
        for name in fields
        if name not in covered and name not in _POST_UNSIGNED_FIELDS and not name.startswith("x-ignore-")
    ]
    if extra:
        raise PolicyConditionFailed(_POLICY_PREFIX + "Extra input fields: " + ", ".join(extra))
    signer = Presigned(
        access_key=access_key,
        session_token=fields.get("x-amz-security-token"),
        region=region,
        service=service,
        expires_at=_policy_time(policy["expiration"]),
        signed_at=datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp(),
    )
    return PostUpload(signer=signer, bucket=bucket, key=object_key, size=file_size)


def _form(content_type: str, body: bytes) -> tuple[dict[str, str], int | None]:
    """The form's fields (names lower-cased: S3 matches them case-insensitively) and its file's
    size (None without a file part). A form that moto could read otherwise than these fields
    and this size say is refused with ``InvalidPostArgument``."""
    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    _, form, files = parse_form_data(environ, max_form_memory_size=None)
    parts = _parts(content_type, body)
    read = [(name, False) for name, _ in form.items(multi=True)]
    read += [(name, True) for name, _ in files.items(multi=True)]
    if sorted(parts) != sorted(read):
        raise InvalidPostArgument(_UNREADABLE_FORM)
    seen: set[str] = set()
    for name, _ in parts:
        # The gate reads names case-insensitively, moto as spelled (form["key"]): a name given
        # twice, in any letter case, could give the two of them different values.
        if name.lower() in seen:
            raise InvalidPostArgument(
                f"The POST upload's form has the field '{name.lower()}' more than once (field names "
                "are case-insensitive); the local cloud refuses such a form.",
                ArgumentName=name,
            )
        seen.add(name.lower())
    fields = {name.lower(): str(value) for name, value in form.items()}
    file_parts = [name for name, is_file in parts if is_file]
    if not file_parts:
        return fields, None
    if len(file_parts) != 1 or file_parts[0].lower() != "file":
        # moto stores the last file part, whatever its name: only the one named "file" is checked.
        raise InvalidPostArgument(
            "POST requires exactly one file upload per request, in the field named 'file'; "
            "this form has file parts named " + ", ".join(repr(name) for name in file_parts) + ".",
        )
    if not parts[-1][1]:
        # S3 ignores every field after the file; moto would act on them, unchecked by S3's rules.
        raise InvalidPostArgument(
            "The file must be the last field of a POST upload's form (S3 ignores the fields after "
            "it; the local cloud refuses them): '" + parts[-1][0] + "' comes after it.",
            ArgumentName=parts[-1][0],
        )
    (uploaded,) = files.values()
    stream = uploaded.stream
    stream.seek(0, 2)
    return fields, stream.tell()


def _parts(content_type: str, body: bytes) -> list[tuple[str, bool]]:
    """The name of each part of a multipart/form-data body in order, and whether it is a file
    (it has a filename), read with the decoder werkzeug's form parser (and so moto's) uses."""
    _, options = parse_options_header(content_type)
    try:
        decoder = MultipartDecoder(options.get("boundary", "").encode("ascii"))
        decoder.receive_data(body)
        decoder.receive_data(None)
        parts: list[tuple[str, bool]] = []
        event = decoder.next_event()
        while not isinstance(event, (Epilogue, NeedData)):
            if isinstance(event, File):
                parts.append((event.name, True))
            elif isinstance(event, Field):
                parts.append((event.name, False))
            elif not isinstance(event, (Data, Preamble)):
                raise ValueError(f"unexpected {event!r}")
            event = decoder.next_event()
    except (ValueError, UnicodeError) as err:
        raise InvalidPostArgument(_UNREADABLE_FORM) from err
    return parts


def _policy(policy_b64: str) -> dict[str, Any]:
    try:
        policy = json.loads(base64.b64decode(policy_b64, validate=True))
    except ValueError as err:
        raise InvalidPolicyDocument("Invalid Policy: Invalid JSON.") from err
    if not isinstance(policy, dict) or "expiration" not in policy:
        raise InvalidPolicyDocument("Invalid Policy: Policy missing expiration.")
    if not isinstance(policy.get("conditions"), list):
        raise InvalidPolicyDocument("Invalid Policy: Policy missing conditions.")
    return policy


def _policy_time(value: Any) -> float:
    """The policy's expiration, ISO 8601 in UTC (boto3 writes ``2026-11-30T12:00:00Z``)."""
    text = str(value)
    for pattern in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise InvalidPolicyDocument(f"Invalid Policy: Invalid 'expiration' value: '{text}'")


def _check_condition(condition: Any, values: Mapping[str, str], size: int) -> set[str]:
    """Check one condition; the form fields it covers. An object ``{"name": "value"}`` is an exact
    match, as ``["eq", "$name", "value"]``."""
    if isinstance(condition, dict) and len(condition) == 1:
        ((name, expected),) = condition.items()
        condition = ["eq", f"${name}", expected]
    shown = json.dumps(condition)
    failed = PolicyConditionFailed(_POLICY_PREFIX + "Policy Condition failed: " + shown)
    if not isinstance(condition, list) or len(condition) != 3:
        raise failed
    op, first, second = condition
    if str(op).lower() == "content-length-range":
        low, high = int(first), int(second)
        if size > high:
            raise EntityTooLarge(
                "Your proposed upload exceeds the maximum allowed size",
                ProposedSize=str(size),
                MaxSizeAllowed=str(high),
            )
        if size < low:
            raise EntityTooSmall(
                "Your proposed upload is smaller than the minimum allowed size",
                ProposedSize=str(size),
                MinSizeAllowed=str(low),
            )
        return set()
    if not (isinstance(first, str) and first.startswith("$")):
        raise failed
    name = first[1:].lower()
    value = values.get(name)
    if value is None:
        raise failed
    if str(op).lower() == "eq":
        ok = value == str(second)
    elif str(op).lower() == "starts-with":
        ok = value.startswith(str(second))
    else:
        raise failed
    if not ok:
        raise failed
    return {name}
