"""Lazily created, cached AWS clients.

Never create a client at import time: it would escape moto's mock and make tests lie.
``AWS_ENDPOINT_URL`` (honoured by boto3 for every service) points them at the local cloud.
Tests call ``reset()`` between cases.
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=30)


@functools.cache
def client(service: str) -> Any:
    return boto3.client(service, config=_CONFIG)  # type: ignore[call-overload]


@functools.cache
def resource(service: str) -> Any:
    return boto3.resource(service, config=_CONFIG)  # type: ignore[call-overload]


def dynamodb() -> Any:
    return client("dynamodb")


def s3() -> Any:
    return client("s3")


def reset() -> None:
    """Forget every cached client (tests, or after the environment changed)."""
    client.cache_clear()
    resource.cache_clear()
