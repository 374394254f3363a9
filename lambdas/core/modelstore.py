"""Where the serving side gets its model, and the warm caches that keep it.

Two sources, both answering "which version is latest?", "load latest" and "load version v":

- ``ProxySource`` loads the model exactly as a TensorFlow.js client does: GET the model.json
  URL (``.../s3proxy/latest/model.json``), follow the 302 to the presigned S3 URL, then fetch
  each weight path of the manifest relative to the model.json URL that was asked for. Published
  manifests name shards ``../<version>/<shard>``, so the weights come from the version whose
  model.json was read, never from a newer latest.
- ``S3Source`` reads the latest pointer from the model table and the files from S3 directly.

``ModelCache`` holds the loaded model across warm invocations and asks the source for the
latest version at most every ``refresh_s`` seconds; a newer version is loaded completely, then
swapped in with one assignment. When the check or the load fails, the model already held keeps
serving (and the failure is logged); with no model at all, callers get ``Unavailable``.

``VersionCache`` keeps the few named versions a consumer asked for last (the live scorer needs
the version that was latest when each sample arrived, not the one latest now). A published
version never changes, so a cached one is never re-checked.

``SourceSettings`` reads which source to use from the environment, the same way for every
function that loads models; ``predict`` is the one forward pass they all run.
"""

from __future__ import annotations

import json
import posixpath
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from lambdas.core import log, settings
from lambdas.core.errors import ConfigError, Unavailable
from lambdas.core.schema import LABELS
from lambdas.core.tfjs_model import TfjsModel, parse

_VERSION_IN_PATH = re.compile(r"(?:^|/)(v\d{8}T\d{6}Z-[0-9a-f]{4})/(?:model\.json)?$")
_PINNED = re.compile(r"^\.\./(v\d{8}T\d{6}Z-[0-9a-f]{4})/[^/]+$")

NO_MODEL = "no model has been published yet; retry after the first training run"
SOURCES = ("proxy", "s3")
_LATEST_JSON = "/latest/model.json"


@dataclass(frozen=True)
class LoadedModel:
    version: str
    model: TfjsModel
    loaded_at: float  # time.time()
    load_seconds: float


class Source(Protocol):
    def current_version(self) -> str | None:
        """The version latest points at now, or None when nothing is published."""

    def load(self) -> LoadedModel | None:
        """Load latest (None when nothing is published)."""

    def load_version(self, version: str) -> LoadedModel:
        """Load one published version (an error when it cannot be loaded)."""


def predict(loaded: LoadedModel, x: np.ndarray) -> np.ndarray:
    """The class probabilities of ``loaded`` for inputs ``x`` (n, 4): the numpy forward pass
    every consumer runs, refused when the model gives no usable probabilities over LABELS."""
    probabilities = loaded.model.predict(x)
    if probabilities.shape[1] != len(LABELS) or not np.isfinite(probabilities).all():
        raise Unavailable(f"model {loaded.version} gave no usable probabilities over {len(LABELS)} labels")
    return probabilities


def _version_of_url(url: str) -> str | None:
    match = _VERSION_IN_PATH.search(urllib.parse.urlsplit(url).path)
    return match.group(1) if match else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class ProxySource:
    """Load through the S3 proxy URL, like ``tf.loadLayersModel(url)``."""

    def __init__(self, model_url: str, *, timeout: float = 5.0) -> None:
        self.model_url = model_url
        self.timeout = timeout
        self._follow = urllib.request.build_opener()
        self._no_follow = urllib.request.build_opener(_NoRedirect())

    def _get(self, url: str) -> tuple[bytes, str]:
        with self._follow.open(url, timeout=self.timeout) as resp:
            return resp.read(), resp.geturl()

    def current_version(self) -> str | None:
        request = urllib.request.Request(self.model_url, method="GET")
        try:
            with self._no_follow.open(request, timeout=self.timeout) as resp:
                raise RuntimeError(f"{self.model_url} answered {resp.status}, expected a redirect")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            if err.code not in (301, 302, 303, 307, 308):
                raise
            version = err.headers.get("X-Model-Version") or _version_of_url(err.headers.get("Location", ""))
            if not version:
                raise RuntimeError(f"{self.model_url} redirected to no model version") from err
            return str(version)

    def load(self) -> LoadedModel | None:
        started = time.perf_counter()
        try:
            body, final_url = self._get(self.model_url)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise
        return self._parse(self.model_url, body, final_url, started)

    def version_url(self, version: str) -> str:
        """The model.json URL of ``version``: the latest URL with the version in its place."""
        if not self.model_url.endswith(_LATEST_JSON):
            raise RuntimeError(
                f"cannot address version {version}: {self.model_url} does not end in {_LATEST_JSON}"
            )
        return self.model_url[: -len(_LATEST_JSON)] + f"/{version}/model.json"

    def load_version(self, version: str) -> LoadedModel:
        started = time.perf_counter()
        url = self.version_url(version)
        body, final_url = self._get(url)
        loaded = self._parse(url, body, final_url, started)
        if loaded.version != version:
            raise RuntimeError(f"asked for model {version}, the proxy served {loaded.version}")
        return loaded

    def _parse(self, url: str, body: bytes, final_url: str, started: float) -> LoadedModel:
        model_json = json.loads(body)
        version = _version_of_url(final_url) or _pinned_version(model_json)
        if version is None:
            raise RuntimeError(f"cannot tell which version {url} served")
        # Weights are fetched relative to the URL that was asked for, as TensorFlow.js does. A
        # manifest that is not self-pinning would go back through "latest", so pin it here.
        base = url
        if _pinned_version(model_json) is None:
            base = url.replace(_LATEST_JSON, f"/{version}/model.json")
            log.warning("model_manifest_not_pinned", version=version)
        model = parse(model_json, lambda path: self._get(urllib.parse.urljoin(base, path))[0])
        return LoadedModel(version, model, time.time(), time.perf_counter() - started)


def _pinned_version(model_json: dict[str, Any]) -> str | None:
    versions = {
        match.group(1)
        for group in model_json.get("weightsManifest") or []
        for path in group.get("paths", [])
        if (match := _PINNED.match(path))
    }
    return versions.pop() if len(versions) == 1 else None


class S3Source:
    """Read the latest pointer from the model table and the files straight from S3."""

    def __init__(self, *, bucket: str, prefix: str, table: str, s3: Any = None, ddb: Any = None) -> None:
        from lambdas.core import aws, registry  # boto3 only for this source: the proxy path starts faster

        self.bucket = bucket
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._s3 = s3 or aws.s3()
        self._registry = registry.Registry(table, ddb)

    def current_version(self) -> str | None:
        return self._registry.latest_version()

    def _read(self, key: str) -> bytes:
        if not key.startswith(self.prefix):
            raise RuntimeError(f"model file {key} is outside {self.prefix}")
        return bytes(self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def load(self) -> LoadedModel | None:
        version = self.current_version()
        return None if version is None else self.load_version(version)

    def load_version(self, version: str) -> LoadedModel:
        started = time.perf_counter()
        key = f"{self.prefix}{version}/model.json"
        model_json = json.loads(self._read(key))
        folder = posixpath.dirname(key)
        model = parse(model_json, lambda path: self._read(posixpath.normpath(posixpath.join(folder, path))))
        return LoadedModel(version, model, time.time(), time.perf_counter() - started)


class ModelCache:
    """The model of a warm container; refreshed from ``source`` at most every ``refresh_s``."""

    def __init__(
        self,
        source: Source,
        refresh_s: float,
        *,
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.refresh_s = refresh_s
        # Without a model, look again at most every retry_s: a burst of requests before the
        # first publication must not become a burst of loads.
        self.retry_s = min(retry_s, refresh_s)
        self._clock = clock
        self._current: LoadedModel | None = None
        self._checked_at: float | None = None
        self._missing: tuple[float, str] | None = None  # (when, message) of the last failed first load
        self._lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def get(self) -> LoadedModel:
        current = self._current
        checked = self._checked_at
        if current is not None and checked is not None and self._clock() - checked < self.refresh_s:
            return current
        with self._lock:
            return self._refresh()

    def _refresh(self) -> LoadedModel:
        current = self._current
        now = self._clock()
        if current is None:
            if self._missing is not None and now - self._missing[0] < self.retry_s:
                raise Unavailable(self._missing[1])
        elif self._checked_at is not None and now - self._checked_at < self.refresh_s:
            return current  # another thread refreshed while we waited
        self._checked_at = now
        try:
            if current is not None and self.source.current_version() in (current.version, None):
                return current
            loaded = self.source.load()
        except Exception as err:  # any failure: keep serving what we have
            if current is None:
                log.error("model_load_failed", error=repr(err))
                self._missing = (now, "the model could not be loaded; retry shortly")
                raise Unavailable(self._missing[1]) from err
            log.warning("model_refresh_failed", version=current.version, error=repr(err))
            return current
        if loaded is None:
            if current is not None:
                return current
            self._missing = (now, NO_MODEL)
            raise Unavailable(NO_MODEL)
        self._current, self._missing = loaded, None
        log.log(
            "model_loaded",
            version=loaded.version,
            previous=current.version if current else None,
            load_ms=round(loaded.load_seconds * 1000, 1),
        )
        return loaded


class VersionCache:
    """Models of named versions, the ``size`` most recently used kept loaded.

    A published version is immutable (``models/<version>/`` is never rewritten), so a cached
    model is never checked again; a version that fails to load is not cached and the error goes
    to the caller, which retries later."""

    def __init__(self, load: Callable[[str], LoadedModel], size: int = 2) -> None:
        if size < 1:
            raise ValueError("a version cache keeps at least one model")
        self._load = load
        self.size = size
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self.loads = 0

    def get(self, version: str) -> LoadedModel:
        loaded = self._models.get(version)
        if loaded is not None:
            self._models.move_to_end(version)
            return loaded
        loaded = self._load(version)
        self.loads += 1
        self._models[version] = loaded
        while len(self._models) > self.size:
            evicted, _ = self._models.popitem(last=False)
            log.log("model_evicted", version=evicted)
        log.log("model_loaded", version=version, load_ms=round(loaded.load_seconds * 1000, 1))
        return loaded

    @property
    def versions(self) -> list[str]:
        """Cached versions, least recently used first."""
        return list(self._models)


@dataclass(frozen=True)
class SourceSettings:
    """Where a function loads models from (``MODEL_SOURCE``): through the S3 proxy like any
    TensorFlow.js client (``proxy``, the default when ``API_URL`` is set; the URL of latest is
    ``MODEL_URL`` or ``$API_URL/s3proxy/latest/model.json``), or straight from S3 and the model
    table (``s3``: ``MODEL_BUCKET``, ``MODEL_PREFIX``, ``MODEL_TABLE``)."""

    source: str
    model_url: str | None  # proxy source: the URL of latest's model.json
    bucket: str | None
    prefix: str
    table: str | None

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> SourceSettings:
        env = settings.environ() if env is None else env
        api_url = settings.optional(env, "API_URL", "")
        source = settings.optional(env, "MODEL_SOURCE", "proxy" if api_url else "s3").lower()
        if source not in SOURCES:
            raise ConfigError(f"MODEL_SOURCE must be one of {', '.join(SOURCES)}, got {source!r}")
        model_url = settings.optional(env, "MODEL_URL", "")
        if source == "proxy" and not model_url:
            base = settings.required(env, "API_URL").rstrip("/")
            model_url = f"{base}/s3proxy/latest/model.json"
        return cls(
            source=source,
            model_url=model_url or None,
            bucket=settings.required(env, "MODEL_BUCKET") if source == "s3" else None,
            prefix=settings.optional(env, "MODEL_PREFIX", "models/"),
            table=settings.required(env, "MODEL_TABLE") if source == "s3" else None,
        )

    def make_source(self) -> Source:
        if self.source == "proxy":
            assert self.model_url
            return ProxySource(self.model_url)
        assert self.bucket and self.table
        return S3Source(bucket=self.bucket, prefix=self.prefix, table=self.table)
