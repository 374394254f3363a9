"""API Gateway proxy events in, proxy responses out, errors mapped to status codes."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from lambdas.core import log
from lambdas.core.errors import AutoretrainError, BadRequest

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "Content-Type,Authorization,X-Api-Key",
    "Access-Control-Allow-Methods": "GET,POST,OPTIONS",
}

Event = dict[str, Any]
Response = dict[str, Any]


def response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Response:
    out_headers = {**CORS_HEADERS, "Content-Type": "application/json"}
    out_headers.update(headers or {})
    return {
        "statusCode": status,
        "headers": out_headers,
        "body": "" if body is None else json.dumps(body, separators=(",", ":")),
    }


def redirect(location: str, *, cache_seconds: int = 0) -> Response:
    headers = {**CORS_HEADERS, "Location": location}
    headers["Cache-Control"] = f"private, max-age={cache_seconds}" if cache_seconds else "no-store"
    return {"statusCode": 302, "headers": headers, "body": ""}


def raw_body(event: Event) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body)
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def json_body(event: Event) -> Any:
    data = raw_body(event)
    if not data.strip():
        raise BadRequest("request body is empty; send a JSON document")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"request body is not valid JSON: {err}") from err


def request_id(event: Event) -> str:
    return str((event.get("requestContext") or {}).get("requestId", "-"))


def guarded(fn: Callable[[Event], Response]) -> Callable[[Event], Response]:
    """Run ``fn``; turn our errors into their status, anything else into a logged 500."""

    def run(event: Event) -> Response:
        try:
            return fn(event)
        except AutoretrainError as err:
            log.log("request_rejected", status=err.status, request_id=request_id(event), **err.to_dict())
            return response(err.status, err.to_dict())
        except Exception as err:  # noqa: BLE001 - the last line of defence must catch everything
            log.error("request_failed", request_id=request_id(event), error=repr(err))
            return response(500, {"error": "internal_error", "message": "internal error; see the logs"})

    return run
