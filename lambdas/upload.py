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
    if source not in ingest.SOURCES:
        raise BadRequest(f"header X-Sample-Source must be one of {', '.join(ingest.SOURCES)}, got {source!r}")
    return source


@http.guarded
def upload(event: http.Event) -> http.Response:
    settings = config()
    ingest.check_size(len(http.raw_body(event)), settings.max_bytes)
    result = ingest.ingest(http.json_body(event), settings, source=source_of(event))
    return http.response(200, result.to_dict())


def handler(event: http.Event, context: Any = None) -> http.Response:
    return upload(event)
