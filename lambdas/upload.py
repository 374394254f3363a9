"""``POST /upload``: validate labelled samples and write them to the data table.

Body: a JSON array of samples, or ``{"samples": [...]}``. See lambdas/README.md for the
fields, limits and error responses.
"""

from __future__ import annotations

import functools
from typing import Any

from lambdas.core import http, ingest
from lambdas.core.errors import BadRequest

SOURCE_HEADER = "x-sample-source"  # "traffic" marks synthetic samples; absent means "api"


@functools.cache
def config() -> ingest.IngestSettings:
    return ingest.IngestSettings.from_env()


def source_of(event: http.Event) -> str:
    headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
    source = str(headers.get(SOURCE_HEADER) or "api").strip().lower()
    if source not in ingest.CLIENT_SOURCES:
        raise BadRequest(
            f"header X-Sample-Source must be one of {', '.join(ingest.CLIENT_SOURCES)}, got {source!r}"
        )
    return source


def upload(event: http.Event, context: Any = None) -> http.Response:
    @http.guarded
    def run(event: http.Event) -> http.Response:
        settings = config()
        ingest.check_size(len(http.raw_body(event)), settings.max_bytes)
        time_left = (lambda: context.get_remaining_time_in_millis() / 1000) if context is not None else None
        result = ingest.ingest(http.json_body(event), settings, source=source_of(event), time_left=time_left)
        return http.response(200, result.to_dict())

    return run(event)


def handler(event: http.Event, context: Any = None) -> http.Response:
    return upload(event, context)
