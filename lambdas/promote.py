"""Registry operations: what people do to ``latest`` (the gate does the automatic part).

Routes (one function, ``registry`` in infra/serverless.yml):

- ``POST /models/{version}/promote`` — make ``version`` latest (a rollback when it is older).
  Body, all optional: ``{"reason": str, "pin": bool, "force": bool}``. Published runs only;
  ``force`` also allows a rejected run. ``pin`` omitted keeps the pin as it is.
- ``POST /models/pin`` / ``POST /models/unpin`` — stop / resume automatic promotions.
  Body, optional: ``{"reason": str, "version": str}`` (``version``: refuse unless it is latest).
- ``GET /models/history?limit=&cursor=&order=asc|desc`` — every change of latest, in order.

The three POST routes require an API key when deployed (``private: true``); the caller's
identity (IAM user, API key id, else source IP) is recorded as the actor of the change. Every
change is appended to the history in the same transaction as the pointer and announced on the
notifications topic. ``scripts/models.py`` calls the same functions from a terminal.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from lambdas.core import aws, log, notify, registry, settings
from lambdas.core.errors import BadRequest, Conflict, Forbidden
from lambdas.core.http import Event, Response, guarded, json_body, response

MAX_REASON = 500
DEFAULT_HISTORY = 50
MAX_HISTORY = 100


@dataclass(frozen=True)
class RegistrySettings:
    table: str
    bucket: str
    prefix: str
    notify: notify.NotifySettings
    # The API keys whose callers may change latest (OPERATOR_API_KEY_ID, comma-separated: the
    # stack's key of the `operators` usage plan). Every key of the stage passes API Gateway's
    # check on every private route, the clients' keys that post samples included: a key is
    # bound to a usage plan, not to routes (API Gateway Developer Guide, "Usage plans and API
    # keys for REST APIs"). So the function itself tells operators from clients.
    operator_keys: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> RegistrySettings:
        env = settings.environ() if env is None else env
        prefix = settings.optional(env, "MODEL_PREFIX", "models/")
        return cls(
            table=settings.required(env, "MODEL_TABLE"),
            bucket=settings.required(env, "MODEL_BUCKET"),
            prefix=prefix if prefix.endswith("/") else prefix + "/",
            notify=notify.NotifySettings.from_env(env),
            operator_keys=frozenset(
                k.strip() for k in settings.optional(env, "OPERATOR_API_KEY_ID", "").split(",") if k.strip()
            ),
        )


@dataclass(frozen=True)
class Options:
    reason: str
    pin: bool | None = None
    force: bool = False
    version: str | None = None


# plain functions (the CLI uses them too) ---------------------------------------------------


def options(body: Any, *, allowed: frozenset[str], default_reason: str) -> Options:
    """Check an optional JSON object body; unknown fields are refused, not ignored."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}", field=unknown[0]
        )
    reason = body.get("reason", default_reason)
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise BadRequest(
            f"reason must be a non-empty string of at most {MAX_REASON} characters", field="reason"
        )
    for name in ("pin", "force"):
        if name in body and not isinstance(body[name], bool):
            raise BadRequest(f"{name} must be true or false", field=name)
    version = body.get("version")
    if version is not None and not (isinstance(version, str) and registry.is_version(version)):
        raise BadRequest("version must be a model version like v20261123T091432Z-1a2b", field="version")
    return Options(reason.strip(), body.get("pin"), bool(body.get("force", False)), version)


def check_artifacts(s3: Any, bucket: str, prefix: str, version: str) -> None:
    """A version whose model.json is gone cannot become what every client loads."""
    try:
        s3.head_object(Bucket=bucket, Key=f"{prefix}{version}/model.json")
    except ClientError as err:
        if err.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            raise Conflict(
                f"run {version} has no model.json in the bucket; not promoted", version=version
            ) from err
        raise


def promote(
    cfg: RegistrySettings,
    version: str,
    opts: Options,
    actor: str,
    *,
    ddb: Any = None,
    s3: Any = None,
    sns: Any = None,
) -> dict[str, Any]:
    reg = registry.Registry(cfg.table, ddb)
    reg.check_promotable(version, force=opts.force)  # NotFound / Conflict before touching S3
    check_artifacts(s3 or aws.s3(), cfg.bucket, cfg.prefix, version)
    change = reg.promote(version, reason=opts.reason, actor=actor, force=opts.force, pin=opts.pin)
    return _announce(cfg, change, sns)


def set_pin(
    cfg: RegistrySettings, pinned: bool, opts: Options, actor: str, *, ddb: Any = None, sns: Any = None
) -> dict[str, Any]:
    reg = registry.Registry(cfg.table, ddb)
    op = reg.pin if pinned else reg.unpin
    return _announce(cfg, op(reason=opts.reason, actor=actor, version=opts.version), sns)


def _announce(cfg: RegistrySettings, change: dict[str, Any], sns: Any) -> dict[str, Any]:
    if change["changed"]:
        log.log("latest_changed", **change)
        notify.latest_changed(change, cfg=cfg.notify, client=sns)
    return change


def history(cfg: RegistrySettings, query: dict[str, Any] | None, *, ddb: Any = None) -> dict[str, Any]:
    query = query or {}
    unknown = sorted(set(query) - {"limit", "cursor", "order"})
    if unknown:
        raise BadRequest(
            f"unknown query parameter {unknown[0]!r}; use limit, cursor and order", field=unknown[0]
        )
    raw = query.get("limit")
    try:
        limit = DEFAULT_HISTORY if raw in (None, "") else int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_HISTORY:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_HISTORY}, got {raw!r}", field="limit")
    order = query.get("order") or "asc"
    if order not in ("asc", "desc"):
        raise BadRequest("order must be asc (oldest first) or desc (newest first)", field="order")
    cursor = query.get("cursor") or None
    if cursor is not None and not _is_history_cursor(cursor):
        raise BadRequest("cursor must be the 'next' value of a previous page", field="cursor")
    reg = registry.Registry(cfg.table, ddb)
    items, next_cursor = reg.list_history(limit, cursor, newest_first=order == "desc")
    pointer = reg.latest()
    latest = {k: v for k, v in pointer.items() if k != "pk"} if pointer else None
    return {"items": items, "next": next_cursor, "latest": latest}


def _is_history_cursor(text: str) -> bool:
    seq, sep, at = text.partition("#")
    return bool(sep) and seq.isascii() and seq.isdigit() and len(seq) == 10 and 0 < len(at) <= 40


def check_operator(cfg: RegistrySettings, event: Event) -> None:
    """Forbidden unless the caller holds an operators' API key. An IAM principal is not enough:
    clients that send samples may be IAM principals too (README, "Keys, trust and revocation")."""
    identity = (event.get("requestContext") or {}).get("identity") or {}
    if identity.get("apiKeyId") and identity["apiKeyId"] in cfg.operator_keys:
        return
    raise Forbidden("changing latest needs an operator's API key (the operators usage plan's)")


def actor_of(event: Event) -> str:
    """Who asked, as API Gateway authenticated them: IAM caller, else API key, else address."""
    identity = (event.get("requestContext") or {}).get("identity") or {}
    if identity.get("userArn"):
        return f"iam:{identity['userArn']}"
    if identity.get("apiKeyId"):
        return f"api-key:{identity['apiKeyId']}"
    return f"anonymous@{identity.get('sourceIp') or 'unknown'}"


# handler ------------------------------------------------------------------------------------


@functools.cache
def _settings() -> RegistrySettings:
    return RegistrySettings.from_env()


def reset() -> None:
    _settings.cache_clear()


def _optional_body(event: Event) -> Any:
    body = event.get("body")
    return None if body in (None, "") else json_body(event)


def _route(event: Event) -> str:
    resource = event.get("resource") or (event.get("requestContext") or {}).get("resourcePath") or ""
    return f"{event.get('httpMethod', '')} {resource}"


@guarded
def _handle(event: Event) -> Response:
    cfg = _settings()
    route = _route(event)
    if route == "GET /models/history":
        return response(200, history(cfg, event.get("queryStringParameters")))
    if route.startswith("POST "):
        check_operator(cfg, event)
    if route == "POST /models/{version}/promote":
        version = (event.get("pathParameters") or {}).get("version")
        if not (isinstance(version, str) and version.isascii() and registry.is_version(version)):
            raise BadRequest("version must be a model version like v20261123T091432Z-1a2b", field="version")
        opts = options(
            _optional_body(event),
            allowed=frozenset({"reason", "pin", "force"}),
            default_reason="promoted by hand",
        )
        return response(200, promote(cfg, version, opts, actor_of(event)))
    if route in ("POST /models/pin", "POST /models/unpin"):
        pinned = route.endswith("/pin")
        opts = options(
            _optional_body(event),
            allowed=frozenset({"reason", "version"}),
            default_reason="pinned by hand" if pinned else "unpinned by hand",
        )
        return response(200, set_pin(cfg, pinned, opts, actor_of(event)))
    raise BadRequest(f"no registry operation for {route!r}")


def handler(event: Event, context: Any = None) -> Response:
    return _handle(event)
