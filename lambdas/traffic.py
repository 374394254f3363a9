"""Scheduled synthetic traffic: PMV-labelled samples posted like a client.

Each call makes ``TRAFFIC_MIN_SAMPLES``..``TRAFFIC_MAX_SAMPLES`` samples (1-20) with
``comfort.generate`` and label noise ``TRAFFIC_LABEL_NOISE``. With ``API_URL`` set they go
over HTTP to ``$API_URL/upload`` (standard library only, so the function needs no extra
package); without it they go straight through the same ingestion function the upload
handler calls. A seed (``TRAFFIC_SEED``, or ``"seed"`` in the event for one call) makes the
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

from lambdas.core import comfort, ingest, log, registry, settings
from lambdas.core.errors import BadRequest, ConfigError, Unavailable

MAX_PER_CALL = 20
SOURCE_HEADER = "X-Sample-Source"


class DeliveryError(Unavailable):
    """The upload API did not accept the samples."""

    code = "delivery_failed"


@dataclass(frozen=True)
class TrafficSettings:
    api_url: str | None
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


Opener = Callable[..., Any]


def post(
    api_url: str, samples: list[dict[str, Any]], *, timeout: float, opener: Opener = urllib.request.urlopen
) -> dict[str, Any]:
    """POST ``{"samples": [...]}`` to ``$api_url/upload``; the parsed 2xx answer or DeliveryError."""
    url = api_url.rstrip("/") + "/upload"
    request = urllib.request.Request(
        url,
        data=json.dumps({"samples": samples}).encode("utf-8"),
        method="POST",
        headers={"Content-Type": "application/json", SOURCE_HEADER: "traffic"},
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
    client: Any = None,
    opener: Opener = urllib.request.urlopen,
) -> dict[str, Any]:
    """Make one batch of samples and send it; a summary of what was sent and written."""
    rng = np.random.default_rng(seed) if seed is not None else _stream(config.seed)
    now_ms = int(time.time() * 1000)
    samples = make_samples(config, rng, now_ms=now_ms)
    if config.api_url:
        via = "http"
        answer = post(config.api_url, samples, timeout=config.timeout_s, opener=opener)
    else:
        via = "direct"
        direct = ingest_settings or ingest.IngestSettings.from_env()
        answer = ingest.ingest({"samples": samples}, direct, source="traffic", client=client).to_dict()
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
