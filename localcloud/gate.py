"""The gate in front of moto's server: what AWS checks before it does anything.

moto accepts any credentials, checks IAM by action only (resources only for S3, no
conditions), never verifies a presigned URL and applies few service limits. The gate, a WSGI
middleware in moto's process, does for every request, in AWS's order:
1. **Who is calling.** The access key of the SigV4 ``Authorization`` header (or of a presigned
   URL, whose signature and expiry are verified, or of a browser POST upload's form, whose
   policy signature, expiry and conditions are verified: ``localcloud.sigv4``) names either the local
   cloud's administrator (the key ``testing``: the operator, the drivers, the tests) or a role
   session created by ``sts:AssumeRole`` in moto: a function's role, or the training
   instance's role. Any other key, or a session token that does not match, is refused as
   AWS refuses it.
2. **Service limits** moto does not apply (``localcloud.limits``).
3. **IAM**, for role sessions: every authorization AWS makes for the call
   (``localcloud.iam.checks``: action, resource ARN, condition keys, implicit ones such as
   ``iam:PassRole`` at launch) is evaluated against the role's policies as moto holds them
   (created from serverless.yml); one denial refuses the call with the service's AccessDenied
   error, naming the action and the resource. Nothing reaches moto, so nothing is written.
Every decision can be appended to a JSON-lines file (``record``): the test suite uses it to
report which (role, action) pairs it exercised. Every object created is logged for the S3
event driver (``localcloud.s3events.CreatedLog``), before the client is answered.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from localcloud import awsapi, faults, iam, limits, persistence, s3events, sigv4

ADMIN_ACCESS_KEY = "testing"
ADMIN_SECRET_KEY = "testing"
PARTITION = "aws"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class Principal:
    arn: str
    role_name: str | None  # None: the administrator, allowed everything
    secret_key: str
    session_token: str | None


class _Refused(Exception):
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(status)
        self.status, self.headers, self.body = status, headers, body


class MotoWorld:
    """What an authorization needs to know about existing resources, read from moto's state
    (the gate runs in moto's process)."""

    def __init__(self, account: str, region: str) -> None:
        self.account = account
        self.region = region

    def _iam(self) -> Any:
        from moto.iam.models import iam_backends

        return iam_backends[self.account][PARTITION]

    def instance_tags(self, instance_id: str) -> Mapping[str, str] | None:
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[self.account][self.region]
        try:
            backend.get_instance(instance_id)
        except Exception:  # noqa: BLE001 - moto raises its own not-found error types
            return None
        tags = backend.describe_tags(filters={"resource-id": [instance_id]})
        return {tag["key"]: tag["value"] for tag in tags}

    def instance_profile_role_arns(self, profile: str) -> list[str]:
        backend = self._iam()
        try:
            found = (
                backend.get_instance_profile_by_arn(profile)
                if profile.startswith("arn:")
                else backend.get_instance_profile(profile)
            )
        except Exception:  # noqa: BLE001
            return []
        return [role.arn for role in found.roles]

    def service_linked_role_exists(self, service_name: str) -> bool:
        path = f"/aws-service-role/{service_name}/"
        return any(role.path == path for role in self._iam().roles.values())

    def object_exists(self, bucket: str, key: str) -> bool:
        from moto.s3.models import s3_backends

        found = s3_backends[self.account][PARTITION].buckets.get(bucket)
        return found is not None and key in found.keys

    def object_info(self, bucket: str, key: str) -> tuple[int, str, str | None] | None:
        """The current version's size, ETag and version id (None: no versioning), if any."""
        from moto.s3.models import s3_backends

        found = s3_backends[self.account][PARTITION].buckets.get(bucket)
        obj = found.keys.get(key) if found is not None else None
        if obj is None:
            return None
        version = getattr(obj, "version_id", None)
        return int(obj.size), str(obj.etag), (None if version in (None, "null") else str(version))

    def secret_arn(self, secret_id: str) -> str | None:
        """The full ARN of the secret ``secret_id`` names (a name, a partial or a full ARN, as
        Secrets Manager's SecretId takes), or None when there is none."""
        from moto.secretsmanager.models import secretsmanager_backends

        found = secretsmanager_backends[self.account][self.region].secrets.get(secret_id)
        return None if found is None else str(found.arn)

    def create_service_linked_role(self, service_name: str) -> None:
        if not self.service_linked_role_exists(service_name):
            self._iam().create_service_linked_role(service_name, "", "")

    def principal(self, access_key: str) -> Principal | None:
        if access_key == ADMIN_ACCESS_KEY:
            return Principal(f"arn:aws:iam::{self.account}:root", None, ADMIN_SECRET_KEY, None)
        from moto.sts.models import sts_backends

        assumed = sts_backends[self.account][PARTITION].get_assumed_role_from_access_key(access_key)
        if assumed is None:
            return None
        role_name = assumed.role_arn.split("/")[-1]
        return Principal(
            f"arn:aws:sts::{self.account}:assumed-role/{role_name}/{assumed.session_name}",
            role_name,
            assumed.secret_access_key,
            assumed.session_token,
        )

    def role_policies(self, role_name: str) -> list[dict[str, Any]]:
        backend = self._iam()
        documents = []
        for name in backend.list_role_policies(role_name):
            _, document = backend.get_role_policy(role_name, name)
            documents.append(json.loads(document) if isinstance(document, str) else document)
        role = backend.get_role(role_name)
        for policy in role.managed_policies.values():
            documents.append(json.loads(policy.default_version.document))
        return documents


class Gate:
    def __init__(
        self,
        app: WsgiApp,
        *,
        account: str,
        region: str,
        record: Path | None = None,
        store: persistence.Store | None = None,
    ) -> None:
        """``store``: journal every change moto applies (durable state, localcloud.persistence)."""
        self.app = app
        self.store = store
        self.faults = faults.Faults()
        self.account = account
        self.world = MotoWorld(account, region)
        self._record_path = record
        self._record_lock = threading.Lock()
        self.created = s3events.CreatedLog(store.state_dir / s3events.LOG_FILE if store is not None else None)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if path.startswith("/moto-api"):
            return self.app(environ, start_response)
        body = _read_body(environ)
        if path == faults.PATH:
            status_code, payload = self.faults.handle(str(environ["REQUEST_METHOD"]), body)
            start_response(
                f"{status_code} {_REASONS.get(status_code, 'OK')}", [("Content-Type", "application/json")]
            )
            return [payload]
        if path == s3events.LOG_PATH:
            after = int((parse_qs(str(environ.get("QUERY_STRING", ""))).get("after") or ["0"])[0])
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"records": self.created.after(after)}).encode()]
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        try:
            call, who = self._check(environ, body)
            unprocessed = self._inject(call, who, environ, body)
        except _Refused as refused:
            start_response(f"{refused.status} {_REASONS.get(refused.status, 'Error')}", refused.headers)
            return [refused.body]
        if unprocessed is not None:
            body = environ["wsgi.input"].getvalue()
            return _answer_unprocessed(self._serve(environ, body, call), start_response, unprocessed)
        return self._serve_wsgi(environ, start_response, body, call)

    def _serve_wsgi(
        self, environ: dict[str, Any], start_response: StartResponse, body: bytes, call: awsapi.ApiCall | None
    ) -> Iterable[bytes]:
        status, headers, chunks = self._serve(environ, body, call)
        start_response(status, headers)
        return chunks

    def _inject(
        self, call: awsapi.ApiCall | None, who: str, environ: dict[str, Any], body: bytes
    ) -> dict[str, Any] | None:
        """Apply an injected fault: raise the refusal it asks for, or (BatchWriteItem's
        ``unprocessed``) let moto apply half the items and return the other half."""
        if call is None or not self.faults.rules:
            return None
        try:
            checks = iam.checks(
                call, account=self.account, region=call.region or self.world.region, world=self.world
            )
        except iam.UnmappedCall:
            checks = []
        action = f"{call.service}:{call.operation}"
        fault = self.faults.take(action, faults.resources_of(checks), who)
        if fault is None:
            return None
        if fault.unprocessed and call.operation == "BatchWriteItem":
            request = json.loads(body)
            applied, rest = faults.split_batch(request)
            new_body = json.dumps({**request, "RequestItems": applied}).encode()
            environ["wsgi.input"] = io.BytesIO(new_body)
            environ["CONTENT_LENGTH"] = str(len(new_body))
            return rest
        raise _Refused(*iam.error_response(call, fault.error, fault.message, fault.status))

    def _serve(
        self, environ: dict[str, Any], body: bytes, call: awsapi.ApiCall | None
    ) -> tuple[str, list[tuple[str, str]], list[bytes]]:
        operation = call.operation if call is not None else None
        if self.store is None:
            answer = _run(self.app, environ)
            self._log_created(call, environ, answer[0])
            return answer
        if not persistence.is_mutation(operation, str(environ["REQUEST_METHOD"])):
            with self.store.lock.shared():
                return _run(self.app, environ)
        # A change: applied, journaled and only then answered, one at a time so that the
        # journal's order is the order moto applied them in.
        with self.store.lock:
            random_state = persistence.random_state()
            status, headers, chunks = _run(self.app, environ)
            if int(status.split(" ", 1)[0]) < 400:
                self.store.append(
                    persistence.Entry(
                        method=str(environ["REQUEST_METHOD"]),
                        path=str(environ.get("PATH_INFO", "")),
                        query=str(environ.get("QUERY_STRING", "")),
                        headers=[(k, v) for k, v in _headers(environ).items()],
                        body=body,
                        random_state=random_state,
                        instance_ids=(
                            persistence.instance_ids(b"".join(chunks)) if operation == "RunInstances" else ()
                        ),
                    )
                )
            # After the journal: an event is never logged for a change a crash would undo.
            self._log_created(call, environ, status)
        return status, headers, chunks

    def _log_created(self, call: awsapi.ApiCall | None, environ: dict[str, Any], status: str) -> None:
        """An object that the call created, for the S3 event driver (localcloud.s3events)."""
        if call is None or call.service != "s3" or call.operation not in s3events.EVENT_NAMES:
            return
        if int(status.split(" ", 1)[0]) >= 400:
            return
        bucket, key = str(call.params.get("Bucket", "")), str(call.params.get("Key", ""))
        info = self.world.object_info(bucket, key)
        if info is None:
            return
        size, etag, version = info
        record = s3events.created_record(
            operation=call.operation,
            bucket=bucket,
            key=key,
            size=size,
            etag=etag,
            principal=str(environ.get("localcloud.principal", "")),
            source_ip=str(environ.get("REMOTE_ADDR", "127.0.0.1")),
        )
        if version is not None:
            record["versionId"] = version
        self.created.append(record)

    # --- the checks --------------------------------------------------------------------------

    def _check(self, environ: dict[str, Any], body: bytes) -> tuple[awsapi.ApiCall | None, str]:
        """The call, once the caller, limits and IAM allow it, and who made it; raises
        ``_Refused`` otherwise."""
        headers = _headers(environ)
        raw_path = _raw_path(environ)
        raw_query = str(environ.get("QUERY_STRING", ""))
        query = parse_qs(raw_query, keep_blank_values=True)
        request = awsapi.WireRequest(
            method=str(environ["REQUEST_METHOD"]), path=raw_path, query=raw_query, headers=headers, body=body
        )
        presigned: sigv4.Presigned | None = None
        if sigv4.is_post_upload(request.method, raw_path, headers):
            return self._check_post_upload(environ, request, headers)
        if sigv4.is_presigned(query):
            try:
                presigned = sigv4.verify_presigned(
                    method=request.method,
                    host=headers.get("host", ""),
                    raw_path=raw_path,
                    raw_query=raw_query,
                    headers=headers,
                    secret_for=self._secret_for,
                )
            except sigv4.PresignError as err:
                raise _Refused(err.status, [("Content-Type", "application/xml")], err.xml()) from None
        try:
            call = awsapi.parse(request)
        except awsapi.UnparsableRequest as err:
            # Strict: a signed request the gate cannot read is one it cannot authorize.
            raise _Refused(
                400,
                [("Content-Type", "application/json")],
                json.dumps(
                    {"__type": "UnrecognizedRequest", "message": f"the local cloud refuses it: {err}"}
                ).encode(),
            ) from None
        if call is None:
            if presigned is None and request.method != "OPTIONS":
                # AWS serves no anonymous request here (the bucket blocks public access and
                # every other API needs a signature); CORS preflights are unsigned by design.
                raise _Refused(
                    403,
                    [("Content-Type", "application/xml")],
                    sigv4.s3_error_xml("AccessDenied", "Anonymous access is not allowed here"),
                )
            return None, "anonymous"
        principal = self._identify(call, headers, presigned)
        environ["localcloud.principal"] = principal.arn
        try:
            limits.check(call, len(body))
        except limits.LimitExceeded as err:
            raise _Refused(*iam.error_response(call, err.code, err.message, err.status)) from None
        if principal.role_name is None:
            self._side_effects(call, allowed=True)
            return call, "admin"
        self._authorize(principal, call)
        return call, principal.role_name

    def _check_post_upload(
        self, environ: dict[str, Any], request: awsapi.WireRequest, headers: Mapping[str, str]
    ) -> tuple[awsapi.ApiCall, str]:
        """A browser POST upload: the form's policy and signature as S3 checks them
        (``sigv4.verify_post``), then its signer as any caller (known key, session token, and
        for a role session s3:PutObject on the key: IAM's own evaluation)."""
        try:
            upload = sigv4.verify_post(
                raw_path=request.path,
                raw_query=request.query,
                content_type=headers.get("content-type", ""),
                body=request.body,
                secret_for=self._secret_for,
            )
        except sigv4.PresignError as err:
            raise _Refused(err.status, [("Content-Type", "application/xml")], err.xml()) from None
        call = awsapi.ApiCall(
            service="s3",
            operation="PostObject",
            params={"Bucket": upload.bucket, "Key": upload.key},
            region=upload.signer.region,
            access_key=upload.signer.access_key,
        )
        principal = self._identify(call, headers, upload.signer)
        environ["localcloud.principal"] = principal.arn
        if principal.role_name is None:
            return call, "admin"
        self._authorize(principal, call)
        return call, principal.role_name

    def _secret_for(self, access_key: str) -> str | None:
        principal = self.world.principal(access_key)
        return principal.secret_key if principal is not None else None

    def _identify(
        self, call: awsapi.ApiCall, headers: Mapping[str, str], presigned: sigv4.Presigned | None
    ) -> Principal:
        access_key = presigned.access_key if presigned is not None else call.access_key
        principal = self.world.principal(access_key) if access_key else None
        token = presigned.session_token if presigned is not None else headers.get("x-amz-security-token")
        if principal is None or (principal.session_token is not None and token != principal.session_token):
            code, status = _INVALID_KEY.get(call.service, ("InvalidClientTokenId", 403))
            raise _Refused(
                *iam.error_response(
                    call, code, "The security token included in the request is invalid.", status
                )
            )
        return principal

    def _authorize(self, principal: Principal, call: awsapi.ApiCall) -> None:
        assert principal.role_name is not None
        region = call.region or self.world.region
        try:
            checks = iam.checks(call, account=self.account, region=region, world=self.world)
        except iam.UnmappedCall as err:
            self._record(principal.role_name, f"{call.service}:{call.operation}", "?", False)
            raise _Refused(
                *iam.error_response(
                    call,
                    "AccessDenied",
                    f"the local cloud does not know how to authorize {call.service}:{call.operation} "
                    f"({err}); it refuses what it cannot check",
                    403,
                )
            ) from None
        policies = self.world.role_policies(principal.role_name)
        for check in checks:
            allowed = iam.allowed(policies, check)
            self._record(principal.role_name, check.action, check.resource, allowed)
            if not allowed:
                raise _Refused(*iam.denial(call, principal.arn, check))
        self._side_effects(call, allowed=True)

    def _side_effects(self, call: awsapi.ApiCall, *, allowed: bool) -> None:
        """What an allowed call creates on the way: the first spot launch in an account
        creates the EC2 Spot service-linked role."""
        if allowed and call.service == "ec2" and call.operation == "RunInstances":
            market = ((call.params.get("InstanceMarketOptions") or {}).get("MarketType") or "").lower()
            if market == "spot":
                self.world.create_service_linked_role("spot.amazonaws.com")

    def _record(self, role: str, action: str, resource: str, allowed: bool) -> None:
        if self._record_path is None:
            return
        line = json.dumps({"role": role, "action": action, "resource": resource, "allowed": allowed})
        with self._record_lock, self._record_path.open("a") as out:
            out.write(line + "\n")


# The error AWS gives for an access key it does not know, per service.
_INVALID_KEY = {
    "dynamodb": ("UnrecognizedClientException", 400),
    "dynamodbstreams": ("UnrecognizedClientException", 400),
    "s3": ("InvalidAccessKeyId", 403),
    "sqs": ("InvalidClientTokenId", 403),
    "ecr": ("UnrecognizedClientException", 400),
    "logs": ("UnrecognizedClientException", 400),
    "ec2": ("AuthFailure", 401),
}
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Payload Too Large",
}


def _answer_unprocessed(
    answer: tuple[str, list[tuple[str, str]], list[bytes]],
    start_response: StartResponse,
    unprocessed: dict[str, Any],
) -> Iterable[bytes]:
    status, headers, chunks = answer
    if not status.startswith("200"):
        start_response(status, headers)
        return chunks
    reply = json.loads(b"".join(chunks) or b"{}")
    reply["UnprocessedItems"] = unprocessed
    payload = json.dumps(reply).encode()
    headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "x-amz-crc32")]
    start_response(status, [*headers, ("Content-Length", str(len(payload)))])
    return [payload]


def _run(app: WsgiApp, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], list[bytes]]:
    """Call a WSGI application and collect its whole answer."""
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, headers
        return lambda data: None

    result = app(environ, start_response)
    try:
        chunks = [bytes(chunk) for chunk in result]
    finally:
        close = getattr(result, "close", None)
        if callable(close):
            close()
    return str(captured["status"]), list(captured["headers"]), chunks


def replay(app: WsgiApp, entry: persistence.Entry) -> bytes:
    """Hand a journaled request to moto again (bypassing the gate); returns the answer."""
    from werkzeug.test import EnvironBuilder

    headers = [(k.title(), v) for k, v in entry.headers if k != "content-length"]
    builder = EnvironBuilder(
        path=entry.path, method=entry.method, query_string=entry.query, headers=headers, data=entry.body
    )
    try:
        _, _, chunks = _run(app, builder.get_environ())
    finally:
        builder.close()
    return b"".join(chunks)


def _read_body(environ: dict[str, Any]) -> bytes:
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        return bytes(stream.read())
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return bytes(stream.read(length)) if length else b""


def _headers(environ: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            out[key[5:].replace("_", "-").lower()] = str(value)
    if environ.get("CONTENT_TYPE"):
        out["content-type"] = str(environ["CONTENT_TYPE"])
    if environ.get("CONTENT_LENGTH"):
        out["content-length"] = str(environ["CONTENT_LENGTH"])
    return out


def _raw_path(environ: Mapping[str, Any]) -> str:
    """The path as the client sent it (percent-encoded): what a signature covers."""
    uri = str(environ.get("RAW_URI") or environ.get("REQUEST_URI") or "")
    if uri:
        return uri.split("?", 1)[0]
    from urllib.parse import quote

    return quote(str(environ.get("PATH_INFO", "")))
