"""GET /models?limit=&cursor=: training runs newest first, each marked latest or not.

Answer: ``{"items": [...], "next": <cursor or null>, "latest": <version or null>}``. Pages come
from a Query on the model table's by-kind index, never a Scan; ``next`` is passed back as
``cursor`` for the following page. A run that has served carries ``live``: how it did on the
labelled samples that arrived while it was latest (``seen``, ``correct``, ``accuracy`` with its
95 % Wilson interval ``ci_low``/``ci_high``, ``confusion``; ``lambdas.core.live``), read for the
whole page with one BatchGetItem.
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
_INTERNAL = ("pk", "sk", "kind")


@dataclass(frozen=True)
class ModelsSettings:
    table: str

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> ModelsSettings:
        env = settings.environ() if env is None else env
        return cls(table=settings.required(env, "MODEL_TABLE"))


def page_request(query: dict[str, Any] | None) -> tuple[int, str | None]:
    query = query or {}
    unknown = sorted(set(query) - {"limit", "cursor"})
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r}; use limit and cursor", field=unknown[0])
    raw = query.get("limit")
    try:
        limit = DEFAULT_LIMIT if raw in (None, "") else int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw!r}", field="limit")
    cursor = query.get("cursor") or None
    if cursor is not None and not registry.is_version(cursor):
        raise BadRequest("cursor must be the 'next' value of a previous page", field="cursor")
    return limit, cursor


def list_models(reg: registry.Registry, limit: int, cursor: str | None) -> dict[str, Any]:
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
    return {"items": items, "next": next_cursor, "latest": latest}


@functools.cache
def _settings() -> ModelsSettings:
    return ModelsSettings.from_env()


def reset() -> None:
    _settings.cache_clear()


@guarded
def _handle(event: Event) -> Response:
    limit, cursor = page_request(event.get("queryStringParameters"))
    return response(200, list_models(registry.Registry(_settings().table), limit, cursor))


def handler(event: Event, context: Any = None) -> Response:
    return _handle(event)
