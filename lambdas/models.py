"""GET /models?limit=&cursor=&live=&buckets=: training runs newest first, each marked latest or not.

Answer: ``{"items": [...], "next": <cursor or null>, "latest": <version or null>}``. Pages come
from a Query on the model table's by-kind index, never a Scan; ``next`` is passed back as
``cursor`` for the following page. A run that has served carries ``live``: how it did on the
labelled samples that arrived while it was latest (``seen``, ``correct``, ``accuracy`` with its
95 % Wilson interval ``ci_low``/``ci_high``, ``confusion``; ``lambdas.core.live``), read for the
whole page with one BatchGetItem.

``live=serving`` adds ``timeline``: the live accuracy of whichever version was serving, over time,
for the page's chart. Each sample is scored by the version that was latest when it arrived, so
the serving model's time buckets are the buckets of the versions that were latest, summed where
a change of latest falls inside a bucket; each bucket names its ``versions`` (samples scored by
each) and the ``version`` that scored most of them. ``runs`` lists the runs started over the
span with their rule (``count``, ``quality``, ``drift``) and status, so a chart can mark the
retrains that were rejected too. A drop and its recovery by a retrain show on one line.

``live=<version>`` (or ``live=latest``) adds ``timeline``: that version's live accuracy over time.
Its ``buckets`` are the version's time buckets, newest first, at most ``buckets``
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
SERVING = "serving"
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
    live: str | None = None  # a version, "latest", "serving", or None: no timeline
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
    if version is not None and version not in (LATEST, SERVING) and not registry.is_version(version):
        raise BadRequest(
            "live must be a model version like v20261123T091432Z-1a2b, 'latest' or 'serving'", field="live"
        )
    if version is None and query.get("buckets") not in (None, ""):
        raise BadRequest("buckets needs live=<version, latest or serving>", field="buckets")
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
    if live_version == SERVING:
        out["timeline"] = serving_timeline(reg, latest, buckets)
    elif live_version is not None:
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
    whether older ones exist."""
    found, more = _bucket_counts(reg, version, limit)
    return [_bucket(plain, counts) for plain, counts in found], more


def _bucket(plain: dict[str, Any], counts: live.Counts, **extra: Any) -> dict[str, Any]:
    out = counts.to_dict()
    del out["confusion"]  # per bucket the chart needs the accuracy; the totals keep the matrix
    where = {key: plain[key] for key in ("start", "start_ms", "bucket_s")}
    return {**where, **out, **extra}


def _bucket_counts(
    reg: registry.Registry, version: str, limit: int
) -> tuple[list[tuple[dict[str, Any], live.Counts]], bool]:
    """``version``'s newest ``limit`` bucket items with their counts, newest first, and whether
    older ones exist. One Query: ``sk`` runs ``<version>#<ISO start>``, so newest first is
    descending ``sk`` within the version's range. It asks for one bucket more than it returns:
    DynamoDB gives a LastEvaluatedKey whenever the Limit is reached, even when nothing is left,
    so that key alone would say "more" for a version with exactly ``limit`` buckets."""
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
    found = []
    for item in items[:limit]:
        plain = registry.from_item(item)
        found.append((plain, live.Counts.from_item(plain)))
    return found, len(items) > limit or bool(page.get("LastEvaluatedKey"))


def serving_timeline(reg: registry.Registry, latest: str | None, limit: int) -> dict[str, Any]:
    """The newest ``limit`` time buckets of the versions that served, summed per bucket, with
    the changes of latest and the runs started over their span.

    It walks the history of latest newest first and reads each version that served once (its
    newest ``limit`` buckets: a version that served again after a rollback has its later
    buckets among them). Once a change is older than the ``limit``-th newest bucket found, every
    version that served since is read, and an older one could only add older buckets. At most
    ``MAX_CHANGES`` changes, so at most that many Queries."""
    empty: dict[str, Any] = {
        "version": latest,
        "serving": True,
        "buckets": [],
        "more": False,
        "changes": [],
        "runs": [],
    }
    if latest is None:
        return empty
    merged: dict[int, tuple[dict[str, Any], live.Counts, dict[str, int]]] = {}
    read: set[str] = set()
    more = older_history = False
    cursor: str | None = None
    walked = 0
    while walked < MAX_CHANGES:
        page, cursor = reg.list_history(HISTORY_PAGE, cursor, newest_first=True)
        for entry in page:
            walked += 1
            version = str(entry["version"])
            if version not in read:
                read.add(version)
                found, version_more = _bucket_counts(reg, version, limit)
                more = more or version_more
                for plain, counts in found:
                    start = int(plain["start_ms"])
                    _, total, versions = merged.get(start, (plain, live.Counts(), {}))
                    merged[start] = (plain, total + counts, {**versions, version: counts.seen})
            starts = sorted(merged, reverse=True)
            if len(starts) >= limit and registry.epoch_ms(str(entry["at"])) <= starts[limit - 1]:
                cursor = None
                break
            if walked >= MAX_CHANGES:
                older_history = cursor is not None
                break
        if cursor is None:
            break
    newest = sorted(merged, reverse=True)
    more = more or older_history or len(newest) > limit
    buckets = []
    for start in newest[:limit]:
        plain, counts, versions = merged[start]
        top = max(versions, key=lambda v: (versions[v], v))
        buckets.append(_bucket(plain, counts, version=top, versions=versions))
    since_ms = int(buckets[-1]["start_ms"]) if buckets else None
    return {
        **empty,
        "buckets": buckets,
        "more": more,
        "changes": changes_since(reg, since_ms),
        "runs": runs_since(reg, since_ms),
    }


def runs_since(reg: registry.Registry, since_ms: int | None) -> list[dict[str, Any]]:
    """The runs started since ``since_ms`` (None: none), newest first, at most ``MAX_CHANGES``:
    version, status, the rule that started it, when it started and ended, the gate's decision."""
    if since_ms is None:
        return []
    runs, _ = reg.list_runs(limit=MAX_CHANGES)
    out = []
    for run in runs:
        started = run.get("started_at")
        if not started or registry.epoch_ms(str(started)) < since_ms:
            continue
        out.append(
            {
                "version": run["version"],
                "status": run.get("status"),
                "rule": (run.get("trigger") or {}).get("rule"),
                "started_at": started,
                "ended_at": run.get("ended_at"),
                "decision": (run.get("gate") or {}).get("decision"),
            }
        )
    return out


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
