"""Lazily created, cached AWS clients.

Never create a client at import time: it would escape moto's mock and make tests lie.
``AWS_ENDPOINT_URL`` (honoured by boto3 for every service) points them at the local cloud.
Tests call ``reset()`` between cases.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

_CONFIG = Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=30)

# S3 clients sign with SigV4 on the bucket's regional virtual host, https://<bucket>.s3.<region>.amazonaws.com/<key>,
# in every region. Without this, botocore presigns with SigV2 (AWSAccessKeyId/Signature/Expires)
# wherever S3 still lists SigV2, us-east-1 included, and on the global s3.amazonaws.com host
# (botocore's ClientCreator._default_s3_presign_to_sigv2; https://github.com/boto/botocore/issues/2109,
# https://github.com/boto/boto3/issues/2680, https://github.com/boto/botocore/pull/3791).
# Buckets created after June 24, 2020 refuse SigV2 ("Any new buckets created after June 24, 2020
# will not support SigV2 signed requests": https://repost.aws/questions/QU5OKPZ-HnS1SHXX6dUbGi2w,
# https://docs.aws.amazon.com/AmazonS3/latest/API/specify-signature-version.html), and outside
# us-east-1 the global host answers with a redirect that breaks the signature and browser CORS.
# - signature_version "s3v4": https://docs.aws.amazon.com/botocore/latest/reference/config.html
# - addressing_style "virtual": the regional virtual host in every region but us-east-1, where it
#   still means the global host; us_east_1_regional_endpoint "regional" moves us-east-1 to
#   s3.us-east-1.amazonaws.com too (same Config reference; env AWS_S3_US_EAST_1_REGIONAL_ENDPOINT),
#   so no explicit endpoint_url is needed. Host form:
#   https://docs.aws.amazon.com/AmazonS3/latest/userguide/VirtualHosting.html
# The region is the client's (AWS_DEFAULT_REGION; Lambda sets it to the function's region,
# which is the stack's and so the bucket's). The credential scope of the signature names it,
# so a client in another region than the bucket would be refused by S3.
_S3_ON_AWS = Config(
    signature_version="s3v4",
    s3={"addressing_style": "virtual", "us_east_1_regional_endpoint": "regional"},
)
# A custom endpoint (the local cloud, http://127.0.0.1:PORT): the bucket goes in the path, as
# <bucket>.127.0.0.1 or <bucket>.localhost need not resolve; still SigV4, as on AWS.
_S3_ON_ENDPOINT = Config(signature_version="s3v4", s3={"addressing_style": "path"})


def _custom_s3_endpoint() -> str | None:
    """The endpoint boto3 will use for S3 instead of AWS's, if the environment names one
    (the service-specific variable wins; https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html)."""
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true":
        return None
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def config_for(service: str) -> Config:
    """The client configuration for one service, read when its client is created."""
    if service != "s3":
        return _CONFIG
    return _CONFIG.merge(_S3_ON_ENDPOINT if _custom_s3_endpoint() else _S3_ON_AWS)


@functools.cache
def client(service: str) -> Any:
    return boto3.client(service, config=config_for(service))  # type: ignore[call-overload]


@functools.cache
def client_retrying(service: str, max_attempts: int) -> Any:
    """A client whose own retries stop at ``max_attempts`` calls: for code that retries with
    its own budget (the upload's write loop), so the two do not multiply past the function's
    timeout (botocore's standard mode backs off up to 20 s between attempts:
    https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html)."""
    config = config_for(service).merge(Config(retries={"max_attempts": max_attempts, "mode": "standard"}))
    return boto3.client(service, config=config)  # type: ignore[call-overload]


@functools.cache
def resource(service: str) -> Any:
    return boto3.resource(service, config=config_for(service))  # type: ignore[call-overload]


def cancellation_reasons(err: ClientError) -> list[str] | None:
    """The reason codes of a cancelled TransactWriteItems, one per action in the order of the
    actions ("None" where that action did not fail: TransactWriteItems API reference,
    TransactionCanceledException); None for any other error."""
    if err.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return None
    return [str(reason.get("Code")) for reason in err.response.get("CancellationReasons") or []]


def dynamodb() -> Any:
    return client("dynamodb")


def s3() -> Any:
    return client("s3")


def reset() -> None:
    """Forget every cached client (tests, or after the environment changed)."""
    for cached in (client, client_retrying, resource):
        clear = getattr(cached, "cache_clear", None)  # a test may have replaced one
        if clear is not None:
            clear()
