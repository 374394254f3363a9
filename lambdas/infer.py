"""POST /infer: labels and class probabilities from the latest published model.

Body: a JSON array of ``{temp, rh, wind, clo}`` (raw units, see lambdas/core/schema.py) or
``{"inputs": [...]}``; at most INFER_MAX_BATCH items (default 1,000; more is a 413). Inputs are
checked like uploaded samples (a 400 names the field and the index). The answer:

    {"version": "v...", "predictions": [{"label": "ok", "probabilities": {"cold": .., ...}}],
     "simpleResult": ["ok"], "rawResult": [[p_cold, p_ok, p_warm]]}

``simpleResult`` and ``rawResult`` keep the original API's clients working. Before the first
model is published the answer is 503.

The model is loaded once per container (through the S3 proxy like a TensorFlow.js client, or
straight from S3 with MODEL_SOURCE=s3) and re-checked at most every MODEL_REFRESH_S seconds.
The forward pass is numpy only. A scheduled warm-up event is answered without touching the model.
"""

from __future__ import annotations

import functools
import json
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lambdas.core import log, settings
from lambdas.core.errors import BadRequest, PayloadTooLarge
from lambdas.core.http import CORS_HEADERS, Event, Response, guarded, raw_body, request_id
from lambdas.core.modelstore import LoadedModel, ModelCache, SourceSettings, predict
from lambdas.core.samples import parse_features
from lambdas.core.schema import FEATURE_NAMES, FEATURES, LABELS

_LOW = np.array([f.minimum for f in FEATURES])
_HIGH = np.array([f.maximum for f in FEATURES])
_NUMBER_KINDS = frozenset("fiu")
_ROW_OF = operator.itemgetter(*FEATURE_NAMES)
_HEADERS = {**CORS_HEADERS, "Content-Type": "application/json"}

# The answer is JSON text built without json.dumps: turning 3,000 floats into text costs several
# times the forward pass. Probabilities are written with exactly 6 decimals ("0.355533"), which
# makes every number 8 characters wide, so large batches are formatted with numpy in one go.
_SCALE = 1_000_000
_NUM = "%d.%06d"
_PREDICTION = '{"label":"%s","probabilities":{' + ",".join(f'"{k}":{_NUM}' for k in LABELS) + "}}"
_RAW_ROW = "[" + ",".join([_NUM] * len(LABELS)) + "]"
_BODY = '{"version":"%s","predictions":[%s],"simpleResult":[%s],"rawResult":[%s]}'
_VECTOR_FROM = 32  # rows; below this %-formatting is cheaper than numpy's fixed costs


def _fixed_width_rows(template: list[str | int], slots: list[np.ndarray], n: int) -> str:
    """Rows of ``template`` (literal text, or the index of an (n, width) uint8 slot) joined by commas."""
    pieces = [np.frombuffer(t.encode(), np.uint8) if isinstance(t, str) else slots[t] for t in template]
    widths = [p.shape[-1] for p in pieces]
    buf = np.empty((n, sum(widths) + 1), np.uint8)
    at = 0
    for piece, width in zip(pieces, widths, strict=True):
        buf[:, at : at + width] = piece
        at += width
    buf[:, -1] = ord(",")
    return buf.tobytes()[:-1].decode()


def _numbers(scaled: np.ndarray) -> list[np.ndarray]:
    """Per column, the (n, 8) ASCII digits of scaled / 1e6 written as "d.dddddd"."""
    out = []
    for column in scaled.T:
        digits = np.empty((len(column), 8), np.uint8)
        whole, frac = np.divmod(column, _SCALE)
        digits[:, 0] = whole + 48
        digits[:, 1] = ord(".")
        for i in range(7, 1, -1):
            frac, digit = np.divmod(frac, 10)
            digits[:, i] = digit + 48
        out.append(digits)
    return out


_LABEL_WIDTH = max(len(label) for label in LABELS) + 2
_LABEL_BYTES = np.array([list(f'"{label}"'.ljust(_LABEL_WIDTH).encode()) for label in LABELS], np.uint8)


def _format_body(version: str, probabilities: np.ndarray) -> str:
    scaled = np.rint(probabilities * _SCALE).astype(np.int64)
    index = probabilities.argmax(axis=1)
    n, k = scaled.shape
    if n < _VECTOR_FROM:
        parts = np.stack(np.divmod(scaled, _SCALE), axis=-1).reshape(n, 2 * k).tolist()
        labels = [LABELS[i] for i in index.tolist()]
        return _BODY % (
            version,
            ",".join([_PREDICTION % (label, *row) for label, row in zip(labels, parts, strict=True)]),
            '"' + '","'.join(labels) + '"',
            ",".join([_RAW_ROW % tuple(row) for row in parts]),
        )
    numbers = _numbers(scaled)
    label_slot = len(numbers)
    slots = [*numbers, _LABEL_BYTES[index]]
    prediction: list[str | int] = ['{"label":', label_slot, ',"probabilities":{']
    raw: list[str | int] = ["["]
    for i, name in enumerate(LABELS):
        prediction += [("," if i else "") + f'"{name}":', i]
        raw += [("," if i else ""), i]
    prediction.append("}}")
    raw.append("]")
    return _BODY % (
        version,
        _fixed_width_rows(prediction, slots, n),
        _fixed_width_rows([label_slot], slots, n),
        _fixed_width_rows(raw, slots, n),
    )


@dataclass(frozen=True)
class InferSettings:
    model: SourceSettings
    refresh_s: float
    max_batch: int

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> InferSettings:
        env = settings.environ() if env is None else env
        return cls(
            model=SourceSettings.from_env(env),
            refresh_s=settings.number(env, "MODEL_REFRESH_S", 30.0, minimum=0.0),
            max_batch=settings.integer(env, "INFER_MAX_BATCH", 1000, minimum=1),
        )


def input_list(payload: Any, max_batch: int) -> list[Any]:
    if isinstance(payload, dict):
        extra = [key for key in payload if key != "inputs"]
        if extra or not isinstance(payload.get("inputs"), list):
            raise BadRequest(
                'send a JSON array of {"temp", "rh", "wind", "clo"} objects or {"inputs": [...]}'
            )
        payload = payload["inputs"]
    if not isinstance(payload, list):
        raise BadRequest('send a JSON array of {"temp", "rh", "wind", "clo"} objects or {"inputs": [...]}')
    if not payload:
        raise BadRequest("no inputs: the array is empty")
    if len(payload) > max_batch:
        raise PayloadTooLarge(
            f"{len(payload)} inputs in one request; at most {max_batch} are accepted", limit=max_batch
        )
    return payload


def features(items: list[Any], *, may_hold_booleans: bool = True) -> np.ndarray:
    """The (n, 4) input matrix, validated exactly as uploads are.

    The fast path accepts only what is certainly valid (JSON numbers within range); anything
    else goes through the upload's item-by-item check, which names the field and the index.
    JSON booleans would pass numpy's conversion, so a body that may hold one takes the slow path.
    """
    if not may_hold_booleans:
        try:
            matrix = np.array(list(map(_ROW_OF, items)))
        except (KeyError, TypeError, ValueError):
            matrix = None
        if (
            matrix is not None
            and matrix.dtype.kind in _NUMBER_KINDS
            and matrix.ndim == 2
            and ((matrix >= _LOW) & (matrix <= _HIGH)).all()
        ):
            return matrix.astype(np.float64, copy=False)
    return np.array([parse_features(item, index) for index, item in enumerate(items)], dtype=np.float64)


def answer(loaded: LoadedModel, x: np.ndarray) -> str:
    """The response body (JSON text) for inputs ``x``."""
    return _format_body(loaded.version, predict(loaded, x))


@functools.cache
def _settings() -> InferSettings:
    return InferSettings.from_env()


@functools.cache
def model_cache() -> ModelCache:
    cfg = _settings()
    return ModelCache(cfg.model.make_source(), cfg.refresh_s)


def reset() -> None:
    """Forget the settings and the warm model (tests)."""
    _settings.cache_clear()
    model_cache.cache_clear()


def is_warmup(event: Event) -> bool:
    return event.get("source") == "aws.events" or bool(event.get("warmup"))


@guarded
def _handle(event: Event) -> Response:
    body = raw_body(event)
    if not body.strip():
        raise BadRequest("request body is empty; send a JSON array of inputs")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"request body is not valid JSON: {err}") from err
    items = input_list(payload, _settings().max_batch)
    x = features(items, may_hold_booleans=b"true" in body or b"false" in body)
    loaded = model_cache().get()
    return {"statusCode": 200, "headers": dict(_HEADERS), "body": answer(loaded, x)}


def handler(event: Event, context: Any = None) -> Response:
    if is_warmup(event):
        log.log("warmup", request_id=request_id(event))
        return {"warm": True}
    return _handle(event)
