"""``POST /imports`` and ``GET /imports/{import_id}``: start a bulk import, then follow it.

``POST /imports`` with ``{"format": "csv" | "jsonl", "filename": "history.csv"}`` creates the
import's status item (``waiting_upload``) in the import table and answers 201 with a SigV4
presigned S3 POST that accepts exactly one object, ``imports/<import_id>.<format>``, of 1 to
``IMPORT_MAX_BYTES`` bytes, for ``IMPORT_URL_EXPIRES_S`` seconds. The client posts the file
there; S3's ObjectCreated event starts the importer (``lambdas/importer.py``).

``GET /imports/{import_id}`` answers the status item's public view (``public_status`` of the
shared status store, ``lambdas/core/imports.py``: every field but the importer's internals,
plus ``progress``). See lambdas/README.md, "imports".

Both routes need an authenticated client (``clients.Resolver``, as ``POST /upload``: 403 without
one, for an unregistered key or a revoked client). The status item records the client that
created the import (``client``); the importer writes every row as that client's. Another
client's import is answered 404, exactly as one that does not exist: its id reveals nothing.
"""

from __future__ import annotations

import functools
import secrets
import time
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from lambdas.core import aws, clients, log, registry, settings
from lambdas.core import imports as store
from lambdas.core.errors import BadRequest, ConfigError, NotFound, Unavailable
from lambdas.core.http import Event, Response, guarded, json_body, request_id, response

FORMATS = store.FORMATS
FIELDS = ("format", "filename")
MAX_FILENAME = 255
DEFAULT_MAX_BYTES = 104_857_600  # 100 MiB
DEFAULT_URL_EXPIRES_S = 900
# A presigned POST also dies with the session that signed it, a Lambda role's whose lifetime is
# not the role's session duration (AWS re:Post knowledge center, "Why is my presigned URL for an
# Amazon S3 bucket expiring before the expiration time that I specified?"): a longer promise
# than an hour is refused at start-up rather than broken later.
MAX_URL_EXPIRES_S = 3600
DEFAULT_EXPIRY_DAYS = 7
_CREATE_ATTEMPTS = 3


@dataclass(frozen=True)
class ImportsSettings:
    bucket: str
    table: str
    api_url: str
    max_bytes: int
    url_expires_s: int
    expiry_days: int  # 0: status items never expire

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> ImportsSettings:
        env = settings.environ() if env is None else env
        api_url = settings.required(env, "API_URL").rstrip("/")
        if not api_url.startswith(("http://", "https://")):
            raise ConfigError(f"environment variable API_URL must be an http(s) URL, got {api_url!r}")
        expires = settings.integer(env, "IMPORT_URL_EXPIRES_S", DEFAULT_URL_EXPIRES_S, minimum=1)
        if expires > MAX_URL_EXPIRES_S:
            raise ConfigError(f"IMPORT_URL_EXPIRES_S must be <= {MAX_URL_EXPIRES_S}, got {expires}")
        return cls(
            bucket=settings.required(env, "IMPORT_BUCKET"),
            table=settings.required(env, "IMPORT_TABLE"),
            api_url=api_url,
            max_bytes=settings.integer(env, "IMPORT_MAX_BYTES", DEFAULT_MAX_BYTES, minimum=1),
            url_expires_s=expires,
            expiry_days=settings.integer(env, "IMPORT_EXPIRY_DAYS", DEFAULT_EXPIRY_DAYS, minimum=0),
        )


@dataclass(frozen=True)
class ImportRequest:
    format: str
    filename: str


def parse_request(body: Any) -> ImportRequest:
    """The body of ``POST /imports``; a 400 naming the first bad field."""
    if not isinstance(body, dict):
        raise BadRequest(
            'request body must be a JSON object like {"format": "csv", "filename": "history.csv"}'
        )
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; use {', '.join(FIELDS)}", field=unknown[0])
    fmt = body.get("format")
    if fmt not in FORMATS:
        raise BadRequest(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}", field="format")
    filename = body.get("filename")
    if filename is None or filename == "":
        raise BadRequest("filename is required: the name of the file you import", field="filename")
    if not isinstance(filename, str):
        raise BadRequest(f"filename must be a string, got {type(filename).__name__}", field="filename")
    if len(filename) > MAX_FILENAME:
        raise BadRequest(
            f"filename must be at most {MAX_FILENAME} characters, got {len(filename)}", field="filename"
        )
    if any(unicodedata.category(c) == "Cc" for c in filename):  # C0, DEL and C1 controls
        raise BadRequest("filename must not contain control characters", field="filename")
    return ImportRequest(format=fmt, filename=filename)


def new_import_id() -> str:
    return f"imp-{secrets.token_hex(8)}"


def object_key(import_id: str, fmt: str) -> str:
    return f"{store.KEY_PREFIX}{import_id}.{fmt}"


def status_item(
    import_id: str, request: ImportRequest, *, client: str, expiry_days: int, now: float | None = None
) -> dict[str, Any]:
    """The status item of a new import by ``client`` (its name), waiting for its upload (plain
    values)."""
    now = time.time() if now is None else now
    created = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    item: dict[str, Any] = {
        "import_id": import_id,
        "client": client,
        "status": store.WAITING_UPLOAD,
        "format": request.format,
        "filename": request.filename,
        "key": object_key(import_id, request.format),
        "created_at": created,
        "updated_at": created,
        "rows_read": 0,
        "written": 0,
        "duplicates": 0,
        "rejected": 0,
        "rejections": [],
    }
    if expiry_days:
        item["expires_at"] = int(now) + expiry_days * 86_400  # the table's TTL attribute
    return item


def create_import(
    cfg: ImportsSettings, request: ImportRequest, *, client: str, ddb: Any = None, s3: Any = None
) -> dict[str, Any]:
    """Write ``client``'s status item (never over an existing one), then presign the upload."""
    ddb = ddb or aws.dynamodb()
    s3 = s3 or aws.s3()
    for _ in range(_CREATE_ATTEMPTS):
        import_id = new_import_id()
        item = status_item(import_id, request, client=client, expiry_days=cfg.expiry_days)
        try:
            ddb.put_item(
                TableName=cfg.table,
                Item=registry.to_item(item),
                ConditionExpression="attribute_not_exists(import_id)",
            )
            break
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code")
            if code == "ConditionalCheckFailedException":
                continue  # 64 random bits collided: draw again
            if code in (
                "ProvisionedThroughputExceededException",
                "ThrottlingException",
                "RequestLimitExceeded",
            ):
                raise Unavailable("the import table is busy; retry shortly") from err
            raise
    else:
        raise Unavailable("could not allocate an import id; retry")
    upload = presign_upload(cfg, item["key"], s3=s3)
    return {
        "import_id": import_id,
        "upload": upload,
        "expires_in": cfg.url_expires_s,
        "status_url": f"{cfg.api_url}/imports/{import_id}",
    }


def presign_upload(cfg: ImportsSettings, key: str, *, s3: Any = None) -> dict[str, Any]:
    """``{"url", "fields"}`` of a presigned POST for exactly ``key`` and 1..max_bytes bytes.

    The project's S3 client signs with SigV4 (``lambdas/core/aws.py``); for a POST botocore then
    uses its ``s3v4-presign-post`` signer (botocore/auth.py, ``S3SigV4PostAuth``), whose fields are
    ``x-amz-algorithm``, ``x-amz-credential``, ``x-amz-date``, ``policy``, ``x-amz-signature`` and,
    with temporary credentials such as a Lambda role's, ``x-amz-security-token`` (also a policy
    condition). The form fields S3 expects are those of "Authenticating Requests: Browser-Based
    Uploads Using POST (AWS Signature Version 4)", Amazon S3 API Reference. botocore adds the
    ``bucket`` and ``key`` conditions itself; the ``eq`` on ``$key`` says the same in the form
    the spec fixes. S3 authorizes the upload as the signer's s3:PutObject on the key.
    """
    s3 = s3 or aws.s3()
    signed = s3.generate_presigned_post(
        Bucket=cfg.bucket,
        Key=key,
        Conditions=[["eq", "$key", key], ["content-length-range", 1, cfg.max_bytes]],
        ExpiresIn=cfg.url_expires_s,
    )
    return {"url": signed["url"], "fields": signed["fields"]}


def check_import_id(value: Any) -> str:
    if not isinstance(value, str) or not store.ID_PATTERN.fullmatch(value):
        raise BadRequest("import_id must look like imp-0123456789abcdef", field="import_id")
    return value


def get_import(cfg: ImportsSettings, import_id: str, *, client: str, ddb: Any = None) -> dict[str, Any]:
    """The public status of ``client``'s import ``import_id``. NotFound when there is none, and
    when it is another client's (or from before clients existed): the same answer, so an id
    tells nothing about someone else's import."""
    item = store.ImportTable(cfg.table, ddb).get(import_id)  # a consistent read
    if item is None or item.get("client") != client:
        raise NotFound(f"no import {import_id}", import_id=import_id)
    return store.public_status(item)


@functools.cache
def _settings() -> ImportsSettings:
    return ImportsSettings.from_env()


@functools.cache
def _resolver() -> clients.Resolver:
    """One per execution environment, so its answers are cached across requests."""
    return clients.Resolver.from_env()


def reset() -> None:
    _settings.cache_clear()
    _resolver.cache_clear()


@guarded
def _handle(event: Event) -> Response:
    method = str(event.get("httpMethod") or "").upper()
    if method not in ("POST", "GET"):
        raise BadRequest(
            f"{method or 'this method'} is not supported; use POST /imports or GET /imports/{{import_id}}"
        )
    client = _resolver().client_for(event)
    if method == "POST":
        created = create_import(_settings(), parse_request(json_body(event)), client=client.name)
        log.log(
            "import_created", import_id=created["import_id"], client=client.name, request_id=request_id(event)
        )
        return response(201, created)
    import_id = check_import_id((event.get("pathParameters") or {}).get("import_id"))
    return response(200, get_import(_settings(), import_id, client=client.name))


def handler(event: Event, context: Any = None) -> Response:
    return _handle(event)
