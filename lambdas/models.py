"""GET /models?limit=&cursor=&live=&buckets=: training runs newest first, each marked latest or not.

Answer: ``{"items": [...], "next": <cursor or null>, "latest": <version or null>}``. Pages come
from a Query on the model table's by-kind index, never a Scan; ``next`` is passed back as
``cursor`` for the following page. A run that has served carries ``live``: how it did on the
labelled samples that arrived while it was latest (``seen``, ``correct``, ``accuracy`` with its
95 % Wilson interval ``ci_low``/``ci_high``, ``confusion``; ``lambdas.core.live``), read for the
whole page with one BatchGetItem.

``live=<version>`` (or ``live=latest``) adds ``timeline``: that version's live accuracy over time,
for a chart. Its ``buckets`` are the version's time buckets, newest first, at most ``buckets``
of them (``more`` says whether older ones exist), each with its counts and Wilson interval; its
``changes`` are the changes of latest (the registry's history, newest first) since the oldest
bucket returned began, and the one in force then, so a chart can mark the retrains on the same
time axis. Both are Queries on the by-kind index, bounded by ``MAX_BUCKETS`` and
``MAX_CHANGES``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from lambdas.core import live, registry, settings
from lambdas.core.errors import BadRequest
from lambdas.core.http import Event, Response, guarded, response

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
DEFAULT_BUCKETS = 120  # 20 minutes of the local cloud's 10 s buckets, 10 hours of AWS's 300 s
MAX_BUCKETS = 500  # ~150 KB of items: one Query page (1 MB) reads them
MAX_CHANGES = 50
HISTORY_PAGE = 20
LATEST = "latest"
_INTERNAL = ("pk", "sk", "kind")
_PARAMETERS = ("limit", "cursor", "live", "buckets")


@dataclass(frozen=True)
class ModelsSettings:
    table: str

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> ModelsSettings:
        env = settings.environ() if env is None else env
        return cls(table=settings.required(env, "MODEL_TABLE"))


@dataclass(frozen=True)
class ModelsRequest:
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    live: str | None = None  # a version, "latest", or None: no timeline
    buckets: int = DEFAULT_BUCKETS


def _bounded(query: dict[str, Any], name: str, default: int, maximum: int) -> int:
    raw = query.get(name)
    try:
        value = default if raw in (None, "") else int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise BadRequest(f"{name} must be an integer from 1 to {maximum}, got {raw!r}", field=name)
    return value


def parse_request(query: dict[str, Any] | None) -> ModelsRequest:
    query = query or {}
    unknown = sorted(set(query) - set(_PARAMETERS))
    if unknown:
        raise BadRequest(
            f"unknown query parameter {unknown[0]!r}; use {', '.join(_PARAMETERS)}", field=unknown[0]
        )
    limit = _bounded(query, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    cursor = query.get("cursor") or None
    if cursor is not None and not registry.is_version(cursor):
        raise BadRequest("cursor must be the 'next' value of a previous page", field="cursor")
    version = query.get("live") or None
    if version is not None and version != LATEST and not registry.is_version(version):
        raise BadRequest("live must be a model version like v20261123T091432Z-1a2b or 'latest'", field="live")
    if version is None and query.get("buckets") not in (None, ""):
        raise BadRequest("buckets needs live=<version or latest>", field="buckets")
    return ModelsRequest(limit, cursor, version, _bounded(query, "buckets", DEFAULT_BUCKETS, MAX_BUCKETS))


def list_models(
    reg: registry.Registry,
    limit: int,
    cursor: str | None,
    *,
    live_version: str | None = None,
    buckets: int = DEFAULT_BUCKETS,
) -> dict[str, Any]:
    runs, next_cursor = reg.list_runs(limit=limit, cursor=cursor)
    latest = reg.latest_version()
    scored = (
        live.LiveStore(reg.table, client=reg.client).totals([str(r["version"]) for r in runs]) if runs else {}
    )
    items = []
    for run in runs:
        item = {k: v for k, v in run.items() if k not in _INTERNAL}
        item["latest"] = run.get("version") == latest
        if run.get("version") in scored:
            item["live"] = scored[str(run["version"])].to_dict()
        items.append(item)
    out: dict[str, Any] = {"items": items, "next": next_cursor, "latest": latest}
    if live_version is not None:
        version = latest if live_version == LATEST else live_version
        out["timeline"] = timeline(reg, version, buckets)
    return out


def timeline(reg: registry.Registry, version: str | None, limit: int) -> dict[str, Any]:
    """``version``'s newest ``limit`` time buckets and the changes of latest over their span
    (without buckets: the change in force now)."""
    if version is None:  # live=latest before the first promotion
        return {"version": None, "buckets": [], "more": False, "changes": []}
    found, more = recent_buckets(reg, version, limit)
    since_ms = int(found[-1]["start_ms"]) if found else None
    return {"version": version, "buckets": found, "more": more, "changes": changes_since(reg, since_ms)}


def recent_buckets(reg: registry.Registry, version: str, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The newest ``limit`` buckets of ``version`` (the items ``lambdas.core.live`` writes) and
    whether older ones exist. One Query: ``sk`` runs ``<version>#<ISO start>``, so newest first
    is descending ``sk`` within the version's range. It asks for one bucket more than it
    returns: DynamoDB gives a LastEvaluatedKey whenever the Limit is reached, even when nothing
    is left, so that key alone would say "more" for a version with exactly ``limit`` buckets."""
    page = reg.ddb.query(
        TableName=reg.table,
        IndexName=registry.INDEX,
        KeyConditionExpression="#k = :k AND #sk BETWEEN :from AND :to",
        ExpressionAttributeNames={"#k": "kind", "#sk": "sk"},
        ExpressionAttributeValues={
            ":k": {"S": live.KIND},
            ":from": {"S": f"{version}#"},
            ":to": {"S": f"{version}#~"},
        },
        ScanIndexForward=False,
        Limit=limit + 1,
    )
    items = page.get("Items", [])
    out = []
    for item in items[:limit]:
        plain = registry.from_item(item)
        counts = live.Counts.from_item(plain).to_dict()
        del counts["confusion"]  # per bucket the chart needs the accuracy; the totals keep the matrix
        out.append(
            {"start": plain["start"], "start_ms": plain["start_ms"], "bucket_s": plain["bucket_s"], **counts}
        )
    return out, len(items) > limit or bool(page.get("LastEvaluatedKey"))


def changes_since(reg: registry.Registry, since_ms: int | None) -> list[dict[str, Any]]:
    """Changes of latest newest first, down to the one in force at ``since_ms`` (included; None:
    the one in force now), at most ``MAX_CHANGES``."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(out) < MAX_CHANGES:
        page, cursor = reg.list_history(HISTORY_PAGE, cursor, newest_first=True)
        for entry in page:
            out.append({k: entry.get(k) for k in ("seq", "at", "action", "version", "previous", "pinned")})
            if since_ms is None or registry.epoch_ms(str(entry["at"])) <= since_ms or len(out) == MAX_CHANGES:
                return out
        if cursor is None:
            return out
    return out


@functools.cache
def _settings() -> ModelsSettings:
    return ModelsSettings.from_env()


def reset() -> None:
    _settings.cache_clear()


@guarded
def _handle(event: Event) -> Response:
    request = parse_request(event.get("queryStringParameters"))
    reg = registry.Registry(_settings().table)
    return response(
        200,
        list_models(reg, request.limit, request.cursor, live_version=request.live, buckets=request.buckets),
    )


def handler(event: Event, context: Any = None) -> Response:
    return _handle(event)
