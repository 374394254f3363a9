"""Scheduled synthetic traffic: PMV-labelled samples posted like a client.

Each call makes ``TRAFFIC_MIN_SAMPLES``..``TRAFFIC_MAX_SAMPLES`` samples (1-20) with
``comfort.generate`` and label noise ``TRAFFIC_LABEL_NOISE``. With ``API_URL`` set they go
over HTTP to ``$API_URL/upload`` (standard library only, so the function needs no extra
package) as the ``traffic`` client: its API key, read once per execution environment from the
Secrets Manager secret ``API_KEY_SECRET`` names, goes in the ``x-api-key`` header, and the upload
function knows the key's id as the traffic client's (source ``traffic``). Without ``API_URL``
they go straight through the same ingestion function the upload handler calls, as the
``traffic`` client. A seed (``TRAFFIC_SEED``, or ``"seed"`` in the event for one call) makes the
samples reproducible.

**The drift scenario's switch**: from ``TRAFFIC_SHIFT_AT`` (an ISO-8601 UTC time such as
``2026-12-01T09:00:00Z``; empty, the default, never) the samples come from ``comfort.SHIFTED``
instead of ``comfort.OFFICE``: other input ranges and another metabolic rate in the PMV labels
(``lambdas/core/comfort.py``). A moment rather than a count of samples, because every execution
environment of the function (and every restart of one) agrees on the time, not on a count.
"""

from __future__ import annotations

import functools
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from botocore.exceptions import ClientError

from lambdas.core import aws, clients, comfort, ingest, log, registry, settings
from lambdas.core.errors import BadRequest, ConfigError, Unavailable

MAX_PER_CALL = 20
# API Gateway reads a REST API's key from this header (API key source HEADER, the default: "Choose
# an API key source in API Gateway", API Gateway Developer Guide,
# https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-api-key-source.html).
API_KEY_HEADER = "x-api-key"


class DeliveryError(Unavailable):
    """The upload API did not accept the samples."""

    code = "delivery_failed"


@dataclass(frozen=True)
class TrafficSettings:
    api_url: str | None
    api_key_secret: str | None = None  # the secret (ARN) holding the API key; with api_url only
    min_samples: int = 1
    max_samples: int = MAX_PER_CALL
    label_noise: float = 0.05
    seed: int | None = None
    timeout_s: float = 10.0
    shift_at_ms: int | None = None  # samples made from then on come from comfort.SHIFTED

    def world(self, now_ms: int) -> comfort.World:
        """The world samples made at ``now_ms`` come from."""
        shifted = self.shift_at_ms is not None and now_ms >= self.shift_at_ms
        return comfort.SHIFTED if shifted else comfort.OFFICE

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> TrafficSettings:
        env = settings.environ() if env is None else env
        api_url = settings.optional(env, "API_URL", "") or None
        if api_url and urllib.parse.urlsplit(api_url).scheme not in {"http", "https"}:
            raise ConfigError(f"environment variable API_URL must be an http(s) URL, got {api_url!r}")
        api_key_secret = settings.optional(env, "API_KEY_SECRET", "") or None
        if api_url and not api_key_secret:
            raise ConfigError(
                "environment variable API_KEY_SECRET is required when API_URL is set: the ARN of the "
                "Secrets Manager secret holding the traffic client's API key (POST /upload needs one)"
            )
        low = settings.integer(env, "TRAFFIC_MIN_SAMPLES", cls.min_samples, minimum=1)
        high = settings.integer(env, "TRAFFIC_MAX_SAMPLES", cls.max_samples, minimum=1)
        if not low <= high <= MAX_PER_CALL:
            raise ConfigError(
                f"TRAFFIC_MIN_SAMPLES ({low}) <= TRAFFIC_MAX_SAMPLES ({high}) <= {MAX_PER_CALL} must hold"
            )
        noise = settings.number(env, "TRAFFIC_LABEL_NOISE", cls.label_noise, minimum=0.0)
        if noise > 1.0:
            raise ConfigError(f"environment variable TRAFFIC_LABEL_NOISE must be in [0, 1], got {noise}")
        seed_text = settings.optional(env, "TRAFFIC_SEED", "")
        shift_text = settings.optional(env, "TRAFFIC_SHIFT_AT", "")
        return cls(
            api_url=api_url,
            api_key_secret=api_key_secret if api_url else None,
            min_samples=low,
            max_samples=high,
            label_noise=noise,
            seed=settings.integer(env, "TRAFFIC_SEED", 0, minimum=0) if seed_text else None,
            timeout_s=settings.number(env, "TRAFFIC_HTTP_TIMEOUT", cls.timeout_s, minimum=0.1),
            shift_at_ms=_moment("TRAFFIC_SHIFT_AT", shift_text) if shift_text else None,
        )


def _moment(name: str, text: str) -> int:
    """An ISO-8601 UTC time (``Z`` or ``+00:00``) in epoch ms; ConfigError otherwise."""
    if not text.endswith(("Z", "+00:00")):
        raise ConfigError(f"environment variable {name} must be a UTC time such as 2026-12-01T09:00:00Z")
    try:
        return registry.epoch_ms(text)
    except ValueError as err:
        raise ConfigError(f"environment variable {name} must be an ISO-8601 UTC time, got {text!r}") from err


@functools.cache
def config() -> TrafficSettings:
    return TrafficSettings.from_env()


@functools.cache
def _stream(seed: int | None) -> np.random.Generator:
    """One generator per container: successive calls continue the seeded sequence."""
    return np.random.default_rng(seed)


def make_samples(
    config: TrafficSettings, rng: np.random.Generator, *, now_ms: int | None = None
) -> list[dict[str, Any]]:
    """One call's samples, from the world of the moment (``TrafficSettings.world``)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    count = int(rng.integers(config.min_samples, config.max_samples + 1))
    return comfort.generate(count, rng, config.label_noise, now_ms=now_ms, world=config.world(now_ms))


@functools.cache
def api_key(secret_id: str) -> str:
    """The traffic client's API key: the secret's current value (``SecretString`` of
    GetSecretValue, AWSCURRENT when no version is named: Secrets Manager API Reference,
    GetSecretValue), read once per execution environment; ``run`` forgets it when the gateway
    refuses it (403: the key was rotated or disabled), so the next call reads the secret again."""
    try:
        reply = aws.client("secretsmanager").get_secret_value(SecretId=secret_id)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        raise ConfigError(
            f"cannot read the API key from secret {secret_id} ({code})", secret=secret_id
        ) from err
    value = str(reply.get("SecretString") or "").strip()
    if not value:
        raise ConfigError(f"secret {secret_id} holds no API key (no SecretString)", secret=secret_id)
    return value


Opener = Callable[..., Any]


def post(
    api_url: str,
    samples: list[dict[str, Any]],
    *,
    api_key: str,
    timeout: float,
    opener: Opener = urllib.request.urlopen,
) -> dict[str, Any]:
    """POST ``{"samples": [...]}`` to ``$api_url/upload`` with ``api_key``; the parsed 2xx answer or
    DeliveryError."""
    url = api_url.rstrip("/") + "/upload"
    request = urllib.request.Request(
        url,
        data=json.dumps({"samples": samples}).encode("utf-8"),
        method="POST",
        headers={"Content-Type": "application/json", API_KEY_HEADER: api_key},
    )
    try:
        with opener(request, timeout=timeout) as reply:
            body = reply.read()
    except urllib.error.HTTPError as err:
        detail = err.read()[:500].decode("utf-8", "replace")
        raise DeliveryError(f"POST {url} answered {err.code}: {detail}", url=url, status=err.code) from err
    except (urllib.error.URLError, OSError) as err:
        raise DeliveryError(f"POST {url} failed: {getattr(err, 'reason', err)}", url=url) from err
    try:
        answer = json.loads(body)
    except json.JSONDecodeError as err:
        raise DeliveryError(f"POST {url} answered with a body that is not JSON", url=url) from err
    if not isinstance(answer, dict):
        raise DeliveryError(f"POST {url} answered with an unexpected JSON body", url=url)
    return answer


def run(
    config: TrafficSettings,
    *,
    seed: int | None = None,
    ingest_settings: ingest.IngestSettings | None = None,
    ddb: Any = None,
    opener: Opener = urllib.request.urlopen,
    key: str | None = None,
) -> dict[str, Any]:
    """Make one batch of samples and send it; a summary of what was sent and written. Over
    HTTP with ``key`` (default: read from ``config.api_key_secret``), else directly as the
    ``traffic`` client (``ddb``: the DynamoDB client to write with)."""
    rng = np.random.default_rng(seed) if seed is not None else _stream(config.seed)
    now_ms = int(time.time() * 1000)
    samples = make_samples(config, rng, now_ms=now_ms)
    if config.api_url:
        via = "http"
        if key is None:
            if not config.api_key_secret:
                raise ConfigError("API_KEY_SECRET is required when API_URL is set")
            key = api_key(config.api_key_secret)
        try:
            answer = post(config.api_url, samples, api_key=key, timeout=config.timeout_s, opener=opener)
        except DeliveryError as err:
            if err.details.get("status") == 403:
                api_key.cache_clear()  # a rotated or disabled key: read the secret again next call
            raise
    else:
        via = "direct"
        direct = ingest_settings or ingest.IngestSettings.from_env()
        answer = ingest.ingest(
            {"samples": samples}, direct, source="traffic", client=clients.TRAFFIC, ddb=ddb
        ).to_dict()
    summary = {
        "via": via,
        "sent": len(samples),
        "written": answer.get("written"),
        "ids": answer.get("ids", []),
    }
    log.log(
        "traffic_sent",
        via=via,
        sent=len(samples),
        written=summary["written"],
        labels=dict(Counter(s["label"] for s in samples)),
        noise=config.label_noise,
        world=config.world(now_ms).name,
    )
    return summary


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    seed = event.get("seed") if isinstance(event, dict) else None
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise BadRequest(f"event field 'seed' must be a non-negative integer, got {seed!r}")
    return run(config(), seed=seed)
