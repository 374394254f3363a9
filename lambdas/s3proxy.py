"""GET /s3proxy/{version}/{filename}: a 302 to a short-lived presigned URL for one model file.

Only model artifacts are reachable: ``version`` is ``latest`` or a version string, ``filename``
is ``model.json``, ``metadata.json`` or a weight shard; everything else is a 400 before any
AWS call, and the key is always built as ``<MODEL_PREFIX><version>/<filename>`` in the one
model bucket. A missing object is a 404 (checked with HeadObject rather than letting S3 answer
403 to the client later).

``latest`` resolves through the model table's pointer (cached for LATEST_CACHE_S seconds).
Published model.json files name their shards as ``../<version>/<shard>``, so TensorFlow.js,
which fetches weights relative to the model.json URL it was given, loads
``/s3proxy/latest/model.json`` and then ``/s3proxy/<version>/<shard>``: the weights of exactly
the version it got, even if latest moves in between. The redirect for ``latest`` is never
cached; the one for a version (immutable) is cacheable for a little less than the URL lives.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from lambdas.core import aws, log, registry, settings
from lambdas.core.errors import BadRequest, ConfigError, NotFound, Unavailable
from lambdas.core.http import Event, Response, guarded, redirect, request_id

LATEST = "latest"
FILENAME_PATTERN = re.compile(
    r"model\.json|metadata\.json|group[1-9][0-9]{0,3}-shard[1-9][0-9]{0,3}of[1-9][0-9]{0,3}\.bin"
)
MAX_URL_EXPIRY_S = 300

BAD_VERSION = "version must be 'latest' or a model version like v20261123T091432Z-1a2b"
BAD_FILENAME = "filename must be model.json, metadata.json or a weight shard like group1-shard1of1.bin"
BAD_QUERY = "the model proxy takes no query parameters"
BAD_PATH = "malformed model path; expected /s3proxy/{version}/{filename}"


@dataclass(frozen=True)
class ProxySettings:
    bucket: str
    table: str
    prefix: str
    url_expiry_s: int
    latest_cache_s: float

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> ProxySettings:
        env = settings.environ() if env is None else env
        expiry = settings.integer(env, "PROXY_URL_EXPIRY_S", MAX_URL_EXPIRY_S, minimum=1)
        if expiry > MAX_URL_EXPIRY_S:
            raise ConfigError(f"PROXY_URL_EXPIRY_S must be <= {MAX_URL_EXPIRY_S}, got {expiry}")
        prefix = settings.required(env, "MODEL_PREFIX")
        return cls(
            bucket=settings.required(env, "MODEL_BUCKET"),
            table=settings.required(env, "MODEL_TABLE"),
            prefix=prefix if prefix.endswith("/") else prefix + "/",
            url_expiry_s=expiry,
            latest_cache_s=settings.number(env, "LATEST_CACHE_S", 1.0, minimum=0.0),
        )


@dataclass(frozen=True)
class Target:
    version: str  # resolved, never "latest"
    filename: str
    key: str
    via_latest: bool


def check_path(version: Any, filename: Any) -> tuple[str, str]:
    """The allow-list. Anything but an exact match is refused, whatever its encoding."""
    # isascii: the version pattern's \d would also accept other scripts' digits.
    if not isinstance(version, str) or not version.isascii():
        raise BadRequest(BAD_VERSION, version=_shown(version))
    if not (version == LATEST or registry.is_version(version)):
        raise BadRequest(BAD_VERSION, version=_shown(version))
    if not isinstance(filename, str) or not FILENAME_PATTERN.fullmatch(filename):
        raise BadRequest(BAD_FILENAME, filename=_shown(filename))
    return version, filename


def _shown(value: Any) -> str:
    return repr(value)[:80]


class LatestCache:
    """The latest pointer, re-read at most every ``ttl`` seconds to bound DynamoDB reads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._value: tuple[float, str | None] | None = None
        self._lock = threading.Lock()

    def get(self, reg: registry.Registry, ttl: float) -> str | None:
        now = self._clock()
        cached = self._value
        if cached is not None and now - cached[0] < ttl:
            return cached[1]
        with self._lock:
            version = reg.latest_version()
            self._value = (now, version)
            return version

    def clear(self) -> None:
        self._value = None


_latest_cache = LatestCache()


def locate(
    cfg: ProxySettings,
    version: str,
    filename: str,
    *,
    s3: Any = None,
    reg: registry.Registry | None = None,
    cache: LatestCache | None = None,
) -> Target:
    """Resolve ``latest`` and check that the object exists."""
    s3 = s3 or aws.s3()
    via_latest = version == LATEST
    if via_latest:
        reg = reg or registry.Registry(cfg.table)
        resolved = (cache or _latest_cache).get(reg, cfg.latest_cache_s)
        if resolved is None:
            raise NotFound("no model has been published yet; latest is not set")
        version = resolved
    key = f"{cfg.prefix}{version}/{filename}"
    try:
        s3.head_object(Bucket=cfg.bucket, Key=key)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            raise NotFound(f"model version {version} has no {filename}", version=version) from err
        if code in ("SlowDown", "503", "ServiceUnavailable"):
            raise Unavailable("the model store is busy; retry shortly") from err
        raise
    return Target(version=version, filename=filename, key=key, via_latest=via_latest)


def signed_redirect(cfg: ProxySettings, target: Target, *, s3: Any = None) -> Response:
    s3 = s3 or aws.s3()
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": cfg.bucket, "Key": target.key}, ExpiresIn=cfg.url_expiry_s
    )
    # A version's files never change, but the signed URL dies: cache well within its life.
    cache_seconds = 0 if target.via_latest else max(1, min(60, cfg.url_expiry_s // 2))
    out = redirect(url, cache_seconds=cache_seconds)
    out["headers"]["X-Model-Version"] = target.version
    return out


def _params(event: Event) -> tuple[str, str]:
    if event.get("queryStringParameters") or event.get("multiValueQueryStringParameters"):
        raise BadRequest(BAD_QUERY)
    params = event.get("pathParameters") or {}
    version, filename = check_path(params.get("version"), params.get("filename"))
    path = event.get("path")
    # Defence in depth: the route's parameters must be the literal end of the path.
    if path is not None and not (isinstance(path, str) and path.endswith(f"/s3proxy/{version}/{filename}")):
        raise BadRequest(BAD_PATH)
    return version, filename


@functools.cache
def _settings() -> ProxySettings:
    return ProxySettings.from_env()


def reset() -> None:
    """Forget the settings and the cached latest pointer (tests)."""
    _settings.cache_clear()
    _latest_cache.clear()


@guarded
def _handle(event: Event) -> Response:
    version, filename = _params(event)
    cfg = _settings()
    target = locate(cfg, version, filename)
    log.log(
        "model_file_redirect",
        request_id=request_id(event),
        requested=version,
        version=target.version,
        filename=filename,
    )
    return signed_redirect(cfg, target)


def handler(event: Event, context: Any = None) -> Response:
    return _handle(event)
