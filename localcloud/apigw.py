"""An HTTP server that plays API Gateway (REST API, Lambda proxy integration) on loopback.

Every ``http`` event of serverless.yml becomes a route; a request that matches one is turned
into the proxy event API Gateway would send, the function runs in-process, and its proxy
response is written back. What API Gateway does on its own is emulated too: CORS preflights
for ``cors: true`` routes, the 10 MB request limit (413), a failed or malformed function
response (502), Lambda's 6 MB response limit (502) and the 29 s integration timeout (504
"Endpoint request timed out"; the invocation itself runs on in its worker, as in AWS).
Limits: https://docs.aws.amazon.com/apigateway/latest/developerguide/limits.html
("Integration timeout 50 milliseconds - 29 seconds", "Payload size 10 MB").
It accepts up to ``LISTEN_BACKLOG`` waiting connections, so a burst of clients queues
instead of being reset.

API keys and usage plans (``private: true`` routes), read from the local AWS endpoint's API
Gateway (moto) through boto3, at most ``KEY_CACHE_S`` old, so a key the clients CLI creates or
disables there counts at once (a key not yet seen triggers a fresh read). The answers are API
Gateway's default gateway responses ("Gateway response types for API Gateway", developer
guide: INVALID_API_KEY 403, THROTTLED 429, QUOTA_EXCEEDED 429; bodies as AWS re:Post's
"How do I troubleshoot 429 ... errors for my API Gateway REST API" shows them):
- no ``x-api-key`` header (any case), an unknown value, a disabled key, or a key in no usage
  plan: 403 ``{"message": "Forbidden"}``;
- over the plan's throttle: 429 ``{"message": "Too Many Requests"}``. A token bucket per key
  and plan, ``burstLimit`` tokens deep, refilled at ``rateLimit`` per second (API Gateway's
  burst capacity is "provided by the token bucket algorithm": AWS re:Post, the same article);
- over the plan's quota for its period (DAY, WEEK, MONTH; UTC): 429
  ``{"message": "Limit Exceeded"}``.
In none of these is the function invoked. An accepted request's proxy event carries
``requestContext.identity.apiKey`` (the value) and ``apiKeyId``. A CORS preflight needs no key.

Unlike API Gateway, the URL has no stage prefix (``/upload``, not ``/local/upload``), an
unknown path answers 404 and a known path with the wrong method 405 (API Gateway answers 403
"Missing Authentication Token" to both), and ``GET /`` serves static files from ``web/``
when that folder exists. Usage counts live in this process (a restart starts them at zero,
API Gateway keeps them); a quota's ``offset`` is not applied; a WEEK starts on Monday (UTC);
the local plans carry no API stage (moto holds no REST API for this front), so every plan
counts for the one local stage, and a key found in two plans is refused (403), since API
Gateway never lets a key into two plans of one stage. Stricter than AWS: throttling and
quotas are exact here, while AWS applies them "on a best-effort basis" (CloudFormation
template reference, AWS::ApiGateway::UsagePlan: "In some cases clients can exceed the targets
that you set").
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import mimetypes
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from localcloud import infra

MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
MAX_RESPONSE_BYTES = 6 * 1024 * 1024  # Lambda's synchronous response limit
INTEGRATION_TIMEOUT_S = 29
LISTEN_BACKLOG = 1024
# Keys and plans are read again from the local AWS endpoint when older than this.
KEY_CACHE_S = 1.0
API_KEY_HEADER = "x-api-key"
FORBIDDEN = (403, {"message": "Forbidden"})
TOO_MANY_REQUESTS = (429, {"message": "Too Many Requests"})
LIMIT_EXCEEDED = (429, {"message": "Limit Exceeded"})
DEFAULT_CORS_HEADERS = (
    "Content-Type,X-Amz-Date,Authorization,X-Api-Key,X-Amz-Security-Token,X-Amz-User-Agent,X-Amzn-Trace-Id"
)

Invoke = Callable[[str, dict[str, Any]], Any]
# Files the page loads that come from npm (node_modules) rather than from web/, so that no
# vendored copy is ever committed; a folder built by scripts/build_web.py holds its own copies.
VENDOR_FILES = {"/vendor/tf.min.js": infra.ROOT / "node_modules/@tensorflow/tfjs/dist/tf.min.js"}


@dataclass(frozen=True)
class Cors:
    origin: str = "*"
    headers: str = DEFAULT_CORS_HEADERS
    allow_credentials: bool = False

    @classmethod
    def from_event(cls, value: Any) -> Cors | None:
        if value is True:
            return cls()
        if not value:
            return None
        origins = value.get("origins") or [value.get("origin", "*")]
        headers = value.get("headers")
        return cls(
            origin=",".join(origins),
            headers=",".join(headers) if headers else DEFAULT_CORS_HEADERS,
            allow_credentials=bool(value.get("allowCredentials", False)),
        )


@dataclass(frozen=True)
class Route:
    function: str
    method: str  # upper case, or ANY
    resource: str  # "/s3proxy/{version}/{filename}"
    pattern: re.Pattern[str]
    cors: Cors | None
    private: bool = False  # needs an API key in a usage plan (x-api-key)

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.fullmatch(path)
        if found is None:
            return None
        return {k: unquote(v) for k, v in found.groupdict().items()}


def _pattern(resource: str) -> re.Pattern[str]:
    parts = []
    for piece in re.split(r"(\{[^}]+\})", resource):
        if piece.startswith("{") and piece.endswith("+}"):
            parts.append(f"(?P<{piece[1:-2]}>.+)")
        elif piece.startswith("{"):
            parts.append(f"(?P<{piece[1:-1]}>[^/]+)")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


def routes(stack: infra.Stack) -> list[Route]:
    out = []
    for fn in stack.functions():
        for event in fn.events:
            spec = event.get("http")
            if spec is None:
                continue
            if isinstance(spec, str):  # "post upload"
                method, _, path = spec.partition(" ")
                spec = {"method": method, "path": path.strip()}
            resource = "/" + str(spec["path"]).strip("/")
            out.append(
                Route(
                    function=fn.name,
                    method=str(spec["method"]).upper(),
                    resource=resource,
                    pattern=_pattern(resource),
                    cors=Cors.from_event(spec.get("cors")),
                    private=bool(spec.get("private", False)),
                )
            )
    # Literal paths win over parameters, as in API Gateway.
    return sorted(out, key=lambda r: (r.resource.count("{"), -len(r.resource)))


# --- API keys and usage plans ----------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    id: str
    value: str
    name: str
    enabled: bool


@dataclass(frozen=True)
class Plan:
    id: str
    name: str
    rate_limit: float | None  # requests per second; None: no throttle
    burst_limit: int | None
    quota_limit: int | None  # requests per period; None: no quota
    quota_period: str | None  # DAY | WEEK | MONTH

    @classmethod
    def from_api(cls, plan: dict[str, Any]) -> Plan:
        throttle = plan.get("throttle") or {}
        quota = plan.get("quota") or {}
        period = quota.get("period")
        if quota and period not in ("DAY", "WEEK", "MONTH"):
            raise ValueError(
                f"usage plan {plan.get('name')!r}: quota period {period!r} is not DAY, WEEK or MONTH"
            )
        return cls(
            id=str(plan["id"]),
            name=str(plan.get("name", "")),
            rate_limit=float(throttle["rateLimit"]) if "rateLimit" in throttle else None,
            burst_limit=int(throttle["burstLimit"]) if "burstLimit" in throttle else None,
            quota_limit=int(quota["limit"]) if "limit" in quota else None,
            quota_period=period,
        )


@dataclass(frozen=True)
class Snapshot:
    keys: dict[str, Key]  # by value
    plans: dict[str, list[Plan]]  # by key id


def period_start(period: str, now: float) -> str:
    """The UTC start of the quota period that holds ``now``: the day, the week (Monday), or the
    calendar month."""
    day = dt.datetime.fromtimestamp(now, dt.UTC).date()
    if period == "WEEK":
        day -= dt.timedelta(days=day.weekday())
    elif period == "MONTH":
        day = day.replace(day=1)
    return day.isoformat()


MISS_READS = 10  # reads for unknown keys per KEY_CACHE_S, at most


class ApiKeys:
    """API Gateway's API key check of a private route: the key's value, its state and its usage
    plan read from the local AWS endpoint (``client()``: a boto3 API Gateway client), cached
    for at most ``ttl_s``; the plan's throttle (token bucket) and quota counted here."""

    def __init__(
        self,
        client: Callable[[], Any],
        *,
        ttl_s: float = KEY_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._client_factory = client
        self._client: Any = None
        self.ttl_s = ttl_s
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._read_at = float("-inf")
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # (plan, key) -> tokens, at
        self._used: dict[tuple[str, str, str], int] = {}  # (plan, key, period start) -> requests
        # Values a fresh read did not find (or found in no plan), and when: each is read for again
        # only after ttl_s; and at most MISS_READS reads per ttl_s are made for misses at all, so
        # a stream of made-up keys cannot keep the lock busy with reads.
        self._missed: dict[str, float] = {}
        self._miss_reads: deque[float] = deque()

    def check(self, value: str | None) -> tuple[int, dict[str, Any]] | Key:
        """The key a request may go on with, or the (status, body) API Gateway answers."""
        if not value:
            return FORBIDDEN
        with self._lock:
            snapshot = self._snapshot
            if snapshot is None or self._clock() - self._read_at >= self.ttl_s:
                snapshot = self._read()
            elif (
                (cached := snapshot.keys.get(value)) is None or not snapshot.plans.get(cached.id)
            ) and self._may_read_for_miss(value):
                # Unknown here, or in no plan yet: maybe created a moment ago (the clients CLI).
                self._miss_reads.append(self._clock())
                snapshot = self._read()
            key = snapshot.keys.get(value)
            if key is None or not snapshot.plans.get(key.id):
                if len(self._missed) > 10_000:
                    self._missed.clear()
                self._missed[value] = self._read_at
            if key is None or not key.enabled:
                return FORBIDDEN
            plans = snapshot.plans.get(key.id) or []
            if len(plans) != 1:
                # None: the key opens no stage. Two: API Gateway never allows it on one stage.
                return FORBIDDEN
            plan = plans[0]
            if not self._take_token(plan, key):
                return TOO_MANY_REQUESTS
            if not self._count(plan, key):
                return LIMIT_EXCEEDED
            return key

    def _may_read_for_miss(self, value: str) -> bool:
        now = self._clock()
        while self._miss_reads and now - self._miss_reads[0] >= self.ttl_s:
            self._miss_reads.popleft()
        recently_missed = now - self._missed.get(value, float("-inf")) < self.ttl_s
        return not recently_missed and len(self._miss_reads) < MISS_READS

    def _take_token(self, plan: Plan, key: Key) -> bool:
        if plan.rate_limit is None and plan.burst_limit is None:
            return True
        rate = plan.rate_limit or 0.0
        # A plan with a rate and no burst: one request's worth of bucket.
        capacity = float(plan.burst_limit if plan.burst_limit is not None else 1)
        now = self._clock()
        tokens, at = self._buckets.get((plan.id, key.id), (capacity, now))
        tokens = min(capacity, tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[(plan.id, key.id)] = (tokens, now)
            return False
        self._buckets[(plan.id, key.id)] = (tokens - 1.0, now)
        return True

    def _count(self, plan: Plan, key: Key) -> bool:
        if plan.quota_limit is None or plan.quota_period is None:
            return True
        slot = (plan.id, key.id, period_start(plan.quota_period, self._wall()))
        used = self._used.get(slot, 0)
        if used >= plan.quota_limit:
            return False
        self._used[slot] = used + 1
        return True

    def _read(self) -> Snapshot:
        if self._client is None:
            self._client = self._client_factory()
        client = self._client
        keys: dict[str, Key] = {}
        for page in client.get_paginator("get_api_keys").paginate(includeValues=True):
            for item in page.get("items", []):
                if item.get("value"):
                    keys[item["value"]] = Key(
                        id=str(item["id"]),
                        value=str(item["value"]),
                        name=str(item.get("name", "")),
                        enabled=bool(item.get("enabled", False)),
                    )
        plans: dict[str, list[Plan]] = {}
        for page in client.get_paginator("get_usage_plans").paginate():
            for item in page.get("items", []):
                plan = Plan.from_api(item)
                for keys_page in client.get_paginator("get_usage_plan_keys").paginate(usagePlanId=plan.id):
                    for member in keys_page.get("items", []):
                        plans.setdefault(str(member["id"]), []).append(plan)
        self._snapshot = Snapshot(keys=keys, plans=plans)
        self._read_at = self._clock()
        return self._snapshot


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers after stop()
    timeout = 30  # a client that stops sending cannot hold a thread forever

    def do_GET(self) -> None:
        self.server.dispatch(self)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        self.server.access_log(format % args)


class _TooLarge(Exception):
    pass


class ApiServer(ThreadingHTTPServer):
    """``ApiServer(stack, invoke)`` binds at once (so its URL is known before the functions'
    environment is computed); ``start()`` serves from a thread; ``stop()`` closes and joins."""

    daemon_threads = False
    block_on_close = True  # server_close() joins the request threads
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        stack: infra.Stack,
        invoke: Invoke,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        web_dir: Path | None = None,
        log_path: Path | None = None,
        api_keys: ApiKeys | None = None,
    ) -> None:
        """``api_keys`` checks the private routes' keys; without it every private route
        answers 403, as API Gateway does to a request with no valid key."""
        super().__init__((host, port), _Handler)
        self.stack = stack
        self.invoke = invoke
        self.api_keys = api_keys
        self.routes = routes(stack)
        self.web_dir = web_dir
        self.integration_timeout_s: float = INTEGRATION_TIMEOUT_S
        self._log_path = log_path
        self._log_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="localcloud-api"
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self.shutdown()
        self.server_close()
        self._thread.join()
        self._thread = None

    def access_log(self, line: str) -> None:
        if self._log_path is None:
            return
        with self._log_lock, self._log_path.open("a") as out:
            out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")

    # --- request handling -------------------------------------------------------------------

    def dispatch(self, request: _Handler) -> None:
        url = urlsplit(request.path)
        method = request.command.upper()
        try:
            body = _read_body(request)
        except _TooLarge:
            self._send(request, 413, {"Content-Type": "application/json"}, b'{"message":"Request Too Long"}')
            return
        except ValueError as err:
            self._send_json(request, 400, {"message": f"malformed request body: {err}"})
            return

        candidates = [
            (route, params) for route in self.routes if (params := route.match(url.path)) is not None
        ]
        if not candidates:
            if method in {"GET", "HEAD"} and self._serve_static(request, url.path):
                return
            self._send_json(request, 404, {"message": f"no route for {method} {url.path}"})
            return
        if method == "OPTIONS" and not any(route.method in {"OPTIONS", "ANY"} for route, _ in candidates):
            self._preflight(request, [route for route, _ in candidates])
            return
        for route, params in candidates:
            if route.method in {method, "ANY"} or (method == "HEAD" and route.method == "GET"):
                key: Key | None = None
                if route.private:
                    verdict = self._check_key(request)
                    if not isinstance(verdict, Key):
                        status, answer = verdict
                        self.access_log(f"{method} {url.path}: API key refused, {status} {answer['message']}")
                        self._send_json(request, status, answer)
                        return
                    key = verdict
                self._call(request, route, params, url.path, url.query, body, key)
                return
        allowed = sorted({route.method for route, _ in candidates})
        self._send_json(
            request,
            405,
            {"message": f"{method} is not allowed on {url.path}; use {', '.join(allowed)}"},
            {"Allow": ",".join(allowed)},
        )

    def _check_key(self, request: _Handler) -> tuple[int, dict[str, Any]] | Key:
        # HTTP header names are case-insensitive; http.server's headers look them up so.
        value = request.headers.get(API_KEY_HEADER)
        if self.api_keys is None:
            return FORBIDDEN
        try:
            return self.api_keys.check(value)
        except Exception as err:  # noqa: BLE001 - the keys could not be read: refuse, never let through
            self.access_log(f"API keys could not be read: {err!r}")
            return 500, {"message": "Internal server error"}

    def _preflight(self, request: _Handler, matched: list[Route]) -> None:
        cors = next((route.cors for route in matched if route.cors), None)
        if cors is None:
            self._send_json(request, 404, {"message": f"no route for OPTIONS {urlsplit(request.path).path}"})
            return
        methods = sorted({route.method for route in matched} | {"OPTIONS"})
        headers = {
            "Access-Control-Allow-Origin": cors.origin,
            "Access-Control-Allow-Headers": cors.headers,
            "Access-Control-Allow-Methods": ",".join(methods),
        }
        if cors.allow_credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        self._send(request, 200, {**headers, "Content-Type": "application/json"}, b"")

    def _call(
        self,
        request: _Handler,
        route: Route,
        params: dict[str, str],
        path: str,
        query: str,
        body: bytes,
        key: Key | None = None,
    ) -> None:
        event = proxy_event(request, route, params, path, query, body, self.stack.stage, key)
        outcome: dict[str, Any] = {}

        def call() -> None:
            try:
                outcome["result"] = self.invoke(route.function, event)
            except Exception as err:  # noqa: BLE001 - reported below as API Gateway would
                outcome["error"] = err

        worker = threading.Thread(target=call, name=f"api-{route.function}", daemon=True)
        worker.start()
        worker.join(self.integration_timeout_s)
        if worker.is_alive():
            self.access_log(f"{route.function} took over {self.integration_timeout_s:g}s: 504")
            self._send_json(request, 504, {"message": "Endpoint request timed out"})
            return
        try:
            if "error" in outcome:
                raise outcome["error"]
            status, headers, payload = proxy_response(outcome["result"])
        except Exception as err:  # noqa: BLE001 - API Gateway answers 502 whatever the function did
            self.access_log(f"{route.function} failed: {err!r}")
            self._send_json(request, 502, {"message": "Internal server error"})
            return
        if len(payload) > MAX_RESPONSE_BYTES:
            self.access_log(f"{route.function} returned {len(payload)} bytes, over Lambda's 6 MB limit")
            self._send_json(request, 502, {"message": "Internal server error"})
            return
        self._send(request, status, headers, payload)

    def _serve_static(self, request: _Handler, path: str) -> bool:
        if self.web_dir is None or not self.web_dir.is_dir():
            return False
        root = self.web_dir.resolve()
        target = (root / unquote(path).lstrip("/")).resolve()
        if path in VENDOR_FILES and not target.is_file():
            target = root = VENDOR_FILES[path]
        if target.is_dir():
            target = target / "index.html"
        if not target.is_relative_to(root) or not target.is_file():
            return False
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self._send(request, 200, {"Content-Type": content_type}, target.read_bytes())
        return True

    def _send_json(
        self, request: _Handler, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        self._send(
            request,
            status,
            {"Content-Type": "application/json", **(headers or {})},
            json.dumps(body).encode(),
        )

    @staticmethod
    def _send(request: _Handler, status: int, headers: dict[str, Any], payload: bytes) -> None:
        request.send_response(status)
        for name, value in headers.items():
            for one in value if isinstance(value, list) else [value]:
                request.send_header(name, str(one))
        request.send_header("Content-Length", str(len(payload)))
        request.send_header("X-Amzn-RequestId", str(uuid.uuid4()))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(payload)


def _read_body(request: _Handler) -> bytes:
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        body = bytearray()
        while True:
            size = int(request.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while request.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            if len(body) + size > MAX_REQUEST_BYTES:
                raise _TooLarge
            body += request.rfile.read(size)
            request.rfile.readline(8)
    length = int(request.headers.get("Content-Length") or 0)
    if length > MAX_REQUEST_BYTES:
        # Read it anyway, so the client sees the 413 rather than a reset connection.
        remaining = length
        while remaining > 0 and (chunk := request.rfile.read(min(remaining, 1 << 20))):
            remaining -= len(chunk)
        raise _TooLarge
    return request.rfile.read(length) if length else b""


def proxy_event(
    request: _Handler,
    route: Route,
    params: dict[str, str],
    path: str,
    query: str,
    body: bytes,
    stage: str,
    key: Key | None = None,
) -> dict[str, Any]:
    """The REST API (v1) Lambda proxy event for one request; ``key``: the API key a private
    route accepted ($context.identity.apiKey and apiKeyId)."""
    headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        headers[name] = value
        multi_headers.setdefault(name, []).append(value)
    pairs = parse_qsl(query, keep_blank_values=True)
    multi_query: dict[str, list[str]] = {}
    for name, value in pairs:
        multi_query.setdefault(name, []).append(value)
    try:
        text: str | None = body.decode("utf-8") if body else None
        encoded = False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode("ascii"), True
    now = time.time()
    identity: dict[str, Any] = {"sourceIp": request.client_address[0], "userAgent": headers.get("User-Agent")}
    if key is not None:
        identity.update({"apiKey": key.value, "apiKeyId": key.id})
    return {
        "resource": route.resource,
        "path": path,
        "httpMethod": request.command.upper(),
        "headers": headers or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": params or None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": route.resource,
            "httpMethod": request.command.upper(),
            "path": f"/{stage}{path}",
            "stage": stage,
            "requestId": str(uuid.uuid4()),
            "requestTimeEpoch": int(now * 1000),
            "protocol": request.request_version,
            "accountId": infra.LOCAL_ACCOUNT,
            "apiId": "local",
            "domainName": headers.get("Host", "127.0.0.1"),
            "identity": identity,
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


def proxy_response(result: Any) -> tuple[int, dict[str, Any], bytes]:
    """Status, headers and body of a proxy response; ValueError when it is malformed, which
    API Gateway reports as a 502."""
    if not isinstance(result, dict) or "statusCode" not in result:
        raise ValueError(f"malformed Lambda proxy response: {result!r:.200}")
    status = int(result["statusCode"])
    headers: dict[str, Any] = {k: str(v) for k, v in (result.get("headers") or {}).items()}
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers[name] = [str(v) for v in values]
    body = result.get("body") or ""
    if not isinstance(body, str):
        raise ValueError("the proxy response body must be a string")
    payload = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode("utf-8")
    return status, headers, payload
