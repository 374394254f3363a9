"""From a request on the wire to the AWS API call it makes: service, operation, parameters.

The local cloud's IAM front (and its limits) must reason about *operations* with their
parameters as boto3 takes them, not about HTTP. Each AWS protocol carries the operation
differently, and this module leans on the two parts of the ecosystem that already know them:

- botocore's service models name every operation, its HTTP binding (``requestUri``, method)
  and its input shape;
- moto's request parsers (``moto.core.parse``: ``JSONParser``, ``QueryParser``,
  ``EC2QueryParser``, ``RestXMLParser``) turn a request back into the operation's input, the
  inverse of botocore's serializers, so nested structures (EC2 ``TagSpecifications``,
  DynamoDB ``RequestItems``) come back structured, never flattened by hand here.

What botocore 1.44.5 sends to a custom endpoint (measured with a capturing WSGI app, see
tests/unit/test_localcloud_awsapi.py): DynamoDB, DynamoDB Streams, SQS, ECR, Logs, SSM and
CloudWatch speak JSON with an ``X-Amz-Target`` header (CloudWatch would speak
smithy-rpc-v2-cbor if ``cbor2`` were installed; it is not, and a CBOR request is refused with
:class:`UnparsableRequest`); SNS, IAM and STS speak the query protocol; EC2 its own query
dialect; S3 rest-xml, path-style (``/bucket/key``) on the local endpoint.

The service is named by the SigV4 credential scope (``Credential=AKID/date/region/service/
aws4_request``), which is the *signing* name: DynamoDB and DynamoDB Streams both sign as
``dynamodb`` and CloudWatch signs as ``monitoring``, so the ``X-Amz-Target`` prefix (the
model's ``targetPrefix``) settles which model applies.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import botocore.session
from botocore.model import OperationModel, ServiceModel
from moto.core.parse import PROTOCOL_PARSERS
from moto.core.utils import get_service_model as moto_service_model
from werkzeug.datastructures import Headers, MultiDict

# The services the project's code calls (lambdas/, trainer/, localcloud/); a request for any
# other service is an UnparsableRequest, which the IAM front refuses.
SERVICES = (
    "dynamodb",
    "dynamodbstreams",
    "s3",
    "ec2",
    "cloudwatch",
    "sqs",
    "sns",
    "iam",
    "sts",
    "ecr",
    "logs",
    "ssm",
    # API keys and usage plans (the API front reads them, the clients CLI writes them) and the
    # stack's secrets.
    "apigateway",
    "secretsmanager",
)

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")


@dataclass(frozen=True)
class WireRequest:
    method: str
    path: str  # raw path as sent (percent-encoded)
    query: str  # raw query string
    headers: Mapping[str, str]  # looked up case-insensitively
    body: bytes


@dataclass(frozen=True)
class ApiCall:
    service: str  # botocore service name
    operation: str  # botocore operation name
    params: dict[str, Any]  # the operation's input as boto3 takes it
    region: str | None  # from the SigV4 credential scope
    access_key: str | None  # from the Authorization header or a presigned query


class UnparsableRequest(Exception):
    """A signed AWS request this module cannot turn into an operation (unknown service or
    operation, or a protocol it does not read, such as CBOR). Strict: the caller refuses it."""


@functools.cache
def service_model(name: str) -> ServiceModel:
    return botocore.session.get_session().get_service_model(name)


@functools.cache
def _moto_model(name: str) -> Any:
    return moto_service_model(name)


def parse(request: WireRequest) -> ApiCall | None:
    """The API call a request makes, or None for what is not an AWS API call (moto's own
    ``/moto-api/...`` and anything unsigned that names no operation)."""
    if request.path.startswith("/moto-api"):
        return None
    headers = Headers(list(request.headers.items()))
    query = MultiDict(parse_qsl(request.query, keep_blank_values=True))
    access_key, region, signing_name = _credential(headers, query)
    if signing_name is None:
        return None
    target = headers.get("X-Amz-Target")
    model = _service_for(signing_name, target)
    content_type = headers.get("Content-Type", "")
    if "cbor" in content_type or headers.get("smithy-protocol"):
        # botocore speaks smithy-rpc-v2-cbor to CloudWatch only when cbor2 is installed.
        raise UnparsableRequest(f"{model.service_name}: the CBOR protocol is not supported locally")
    if target:
        operation = _operation(model, target.rsplit(".", 1)[-1])
        protocol = "json"
        values = query
        url_params: dict[str, Any] = {}
    elif model.protocol in ("query", "ec2"):
        values = MultiDict(list(query.items(multi=True)))
        if request.body and "x-www-form-urlencoded" in content_type:
            values.update(parse_qsl(request.body.decode(), keep_blank_values=True))
        action = values.get("Action")
        if not action:
            raise UnparsableRequest(f"{model.service_name}: no Action in the request")
        operation = _operation(model, action)
        protocol = model.protocol
        url_params = {}
    elif model.protocol in ("rest-xml", "rest-json"):
        operation, url_params = _rest_operation(model, request.method, request.path, query, headers)
        protocol = model.protocol
        values = query
    else:
        raise UnparsableRequest(f"{model.service_name}: protocol {model.protocol} is not supported locally")
    # moto's parsers need moto's facade over the same botocore model (it adds is_flattened...).
    parser = PROTOCOL_PARSERS[protocol](_moto_model(model.service_name).operation_model(operation.name))
    params = parser.parse(
        {
            "method": request.method,
            "values": values,
            "headers": headers,
            "body": request.body,
            "url_path": request.path,
            "url_params": url_params,
        }
    )
    return ApiCall(
        service=model.service_name,
        operation=operation.name,
        params=_plain(params),
        region=region,
        access_key=access_key,
    )


def _credential(headers: Headers, query: MultiDict) -> tuple[str | None, str | None, str | None]:
    """(access key, region, signing name) from SigV4 (header or presigned query), or the
    access key alone from a SigV2 presigned S3 URL (botocore still presigns S3 with SigV2 in
    us-east-1 unless told ``s3v4``; see DESIGN.md)."""
    auth = headers.get("Authorization", "")
    match = _CREDENTIAL.search(auth)
    if match:
        return match.group(1), match.group(2), match.group(3)
    scope = query.get("X-Amz-Credential")
    if scope:
        parts = scope.split("/")
        if len(parts) == 5:
            return parts[0], parts[2], parts[3]
    if query.get("AWSAccessKeyId") and query.get("Signature"):
        return query.get("AWSAccessKeyId"), None, "s3"
    if auth.startswith("AWS "):  # SigV2 header: only S3 still accepts it
        return auth[4:].split(":", 1)[0], None, "s3"
    return None, None, None


def _service_for(signing_name: str, target: str | None) -> ServiceModel:
    candidates = [service_model(n) for n in SERVICES if service_model(n).signing_name == signing_name]
    if target:
        prefix = target.rsplit(".", 1)[0]
        candidates = [m for m in candidates if m.metadata.get("targetPrefix") == prefix]
    if len(candidates) != 1:
        raise UnparsableRequest(f"no single service signs as {signing_name!r} with target {target!r}")
    return candidates[0]


def _operation(model: ServiceModel, name: str) -> OperationModel:
    if name not in model.operation_names:
        raise UnparsableRequest(f"{model.service_name} has no operation {name!r}")
    return model.operation_model(name)


@functools.cache
def _rest_routes(service: str) -> list[tuple[str, re.Pattern[str], dict[str, str], OperationModel]]:
    """(method, path regex, query markers, operation) for every operation of a REST service,
    from the model's ``requestUri`` (``/{Bucket}/{Key+}?tagging``)."""
    model = service_model(service)
    routes = []
    for name in model.operation_names:
        op = model.operation_model(name)
        path, _, marker_text = op.http["requestUri"].partition("?")
        markers = dict(parse_qsl(marker_text, keep_blank_values=True))
        pattern = re.sub(
            r"\\\{([A-Za-z0-9_]+)(\\\+)?\\\}",
            lambda m: f"(?P<{m.group(1)}>{'.+' if m.group(2) else '[^/]+'})",
            re.escape(path),
        )
        routes.append((op.http["method"], re.compile(f"^{pattern}$"), markers, op))
    return routes


def _rest_operation(
    model: ServiceModel, method: str, path: str, query: MultiDict, headers: Headers
) -> tuple[OperationModel, dict[str, str]]:
    """Match method, path and query markers against the model's HTTP bindings. Several
    operations share a binding (PutObject, CopyObject and UploadPart are all ``PUT
    /{Bucket}/{Key+}``): the one whose required header and query members are present wins."""
    raw_path = path.split("?", 1)[0]
    best: tuple[int, OperationModel, dict[str, str]] | None = None
    for route_method, pattern, markers, op in _rest_routes(model.service_name):
        if route_method != method:
            continue
        match = pattern.match(raw_path)
        if match is None:
            continue
        if any(k not in query or (v and query.get(k) != v) for k, v in markers.items()):
            continue
        located = _required_located(op)
        if any(not _present(where, name, query, headers) for where, name in located):
            continue
        score = len(markers) * 10 + len(located)
        if best is None or score > best[0]:
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            best = (score, op, params)
    if best is None:
        raise UnparsableRequest(f"{model.service_name}: no operation for {method} {raw_path}")
    return best[1], best[2]


def _required_located(op: OperationModel) -> list[tuple[str, str]]:
    shape = op.input_shape
    if shape is None:
        return []
    out = []
    for name in shape.required_members:
        member = shape.members[name]
        where = member.serialization.get("location")
        if where in ("header", "querystring"):
            out.append((where, member.serialization.get("name", name)))
    return out


def _present(where: str, name: str, query: MultiDict, headers: Headers) -> bool:
    return name in headers if where == "header" else name in query


def _plain(value: Any) -> Any:
    """Parsers may return OrderedDicts and datetimes; keep dicts/lists plain for callers."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
