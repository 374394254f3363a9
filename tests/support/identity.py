"""Requests as API Gateway hands them to the ingestion functions once it has checked an API key,
and the clients those keys belong to (lambdas/core/clients.py)."""

from __future__ import annotations

import copy
import os
from typing import Any

from lambdas.core import clients


def identified(
    event: dict[str, Any], api_key_id: str | None, *, api_key: str = "key-value"
) -> dict[str, Any]:
    """A copy of ``event`` whose request context names the API key the gateway accepted
    (``$context.identity.apiKeyId`` / ``apiKey``); None: a request with no key (a public route)."""
    out = copy.deepcopy(event)
    identity = out.setdefault("requestContext", {}).setdefault("identity", {})
    identity.pop("apiKeyId", None)
    identity.pop("apiKey", None)
    if api_key_id is not None:
        identity.update(apiKeyId=api_key_id, apiKey=api_key)
    return out


def register(
    name: str, *, api_key_id: str, trust: str = clients.TRUSTED, source: str = "api"
) -> clients.Client:
    """Record a client and its key's pointer in the model table (MODEL_TABLE), as the CLI does."""
    return clients.Clients(os.environ["MODEL_TABLE"]).create(
        name, trust=trust, source=source, api_key_id=api_key_id, actor="tests", reason="a test client"
    )
