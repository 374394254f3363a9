"""``POST /upload``: validate labelled samples and write them to the data table.

Body: a JSON array of samples, or ``{"samples": [...]}``. See lambdas/README.md for the
fields, limits and error responses.

Who sent them is the client API Gateway authenticated (``clients.Resolver``: the request
context's API key id, never a header); a request without one, from an unregistered key or from
a revoked client is refused (403) before its body is read. Every sample is written as that
client's, with the source its record names (``api``, or ``traffic`` for synthetic data).
"""

from __future__ import annotations

import functools
from typing import Any

from lambdas.core import clients, http, ingest


@functools.cache
def config() -> ingest.IngestSettings:
    return ingest.IngestSettings.from_env()


@functools.cache
def resolver() -> clients.Resolver:
    """One per execution environment, so its answers are cached across requests."""
    return clients.Resolver.from_env()


def upload(event: http.Event, context: Any = None) -> http.Response:
    @http.guarded
    def run(event: http.Event) -> http.Response:
        client = resolver().client_for(event)
        cfg = config()
        ingest.check_size(len(http.raw_body(event)), cfg.max_bytes)
        time_left = (lambda: context.get_remaining_time_in_millis() / 1000) if context is not None else None
        result = ingest.ingest(
            http.json_body(event), cfg, source=client.source, client=client.name, time_left=time_left
        )
        return http.response(200, result.to_dict())

    return run(event)


def handler(event: http.Event, context: Any = None) -> http.Response:
    return upload(event, context)
