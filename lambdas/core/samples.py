"""Validation of labelled samples (the upload payload) and of model inputs (the infer payload).

Rules, the same for every caller:

- ``temp``, ``rh``, ``wind``, ``clo``: required JSON numbers (not booleans, not strings),
  finite, inside the physical ranges of ``lambdas.core.schema.FEATURES``;
- ``label``: required, one of ``lambdas.core.schema.LABELS`` (exact spelling);
- ``created``: optional epoch milliseconds, an integer from 2000-01-01T00:00:00Z up to one day
  ahead of the server clock (a value in seconds is rejected with a hint);
- ``id``: optional client idempotency key, 1-128 characters from ``A-Z a-z 0-9 . _ : -``;
- ``score``: optional finite number, ``|score| <= 1e9``;
- ``null`` for an optional field means absent; any other field is rejected (a typo such as
  ``"tmp"`` would otherwise lose data silently).

A request is valid only if every sample is; the first invalid one is reported with its index
and field. Sample keys are derived from content (see ``item_keys``), so no two samples can
overwrite each other and a resent request writes the same keys again.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from lambdas.core.errors import BadRequest, PayloadTooLarge, ValidationError
from lambdas.core.schema import FEATURE_NAMES, FEATURES, LABELS

CREATED_MIN_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
CREATED_MAX_AHEAD_MS = 24 * 60 * 60 * 1000  # client clocks may run ahead; a day is plenty
ID_MAX_LENGTH = 128
ID_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
SCORE_MAX_ABS = 1e9
OPTIONAL_FIELDS = ("created", "id", "score")
ALLOWED_FIELDS = (*FEATURE_NAMES, "label", *OPTIONAL_FIELDS)
KEY_PREFIX = "s-"

Features = tuple[float, float, float, float]


@dataclass(frozen=True)
class Sample:
    temp: float
    rh: float
    wind: float
    clo: float
    label: str
    created: int | None = None  # epoch ms as sent; None: the server fills in ingestion time
    client_id: str | None = None
    score: float | None = None

    @property
    def features(self) -> Features:
        return (self.temp, self.rh, self.wind, self.clo)

    def canonical(self) -> dict[str, Any]:
        """What identifies the sample: every validated value, in a fixed shape."""
        return {
            "temp": self.temp,
            "rh": self.rh,
            "wind": self.wind,
            "clo": self.clo,
            "label": self.label,
            "created": self.created,
            "id": self.client_id,
            "score": self.score,
        }


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _number(value: object, name: str, index: int) -> float:
    """A finite JSON number (bool is not a number here, nor is "75")."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(
            f"sample {index}: field '{name}' must be a number, got {_kind(value)}", index=index, field=name
        )
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValidationError(
            f"sample {index}: field '{name}' must be a finite number, got {value}", index=index, field=name
        )
    return number


def _require_object(item: object, index: int) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ValidationError(
            f"sample {index}: must be a JSON object, got {_kind(item)}", index=index, field=None
        )
    return item


def parse_features(item: object, index: int) -> Features:
    """``(temp, rh, wind, clo)`` of one JSON object, checked; ValidationError names the field."""
    obj = _require_object(item, index)
    values = []
    for feature in FEATURES:
        if obj.get(feature.name) is None:
            raise ValidationError(
                f"sample {index}: field '{feature.name}' is required ({feature.description}, {feature.unit})",
                index=index,
                field=feature.name,
            )
        value = _number(obj[feature.name], feature.name, index)
        if not feature.minimum <= value <= feature.maximum:
            raise ValidationError(
                f"sample {index}: field '{feature.name}' is {value:g} {feature.unit}, outside the accepted "
                f"range {feature.minimum:g} to {feature.maximum:g}",
                index=index,
                field=feature.name,
            )
        values.append(value)
    return (values[0], values[1], values[2], values[3])


def _label(obj: dict[str, Any], index: int) -> str:
    value = obj.get("label")
    if value is None:
        raise ValidationError(
            f"sample {index}: field 'label' is required (one of {', '.join(LABELS)})",
            index=index,
            field="label",
        )
    if not isinstance(value, str) or value not in LABELS:
        shown = json.dumps(value) if isinstance(value, str) else _kind(value)
        raise ValidationError(
            f"sample {index}: field 'label' must be one of {', '.join(LABELS)}, got {shown}",
            index=index,
            field="label",
        )
    return value


def _created(value: object, index: int, now_ms: int) -> int | None:
    if value is None:
        return None
    number = _number(value, "created", index)
    if not number.is_integer():
        raise ValidationError(
            f"sample {index}: field 'created' must be whole epoch milliseconds, got {value}",
            index=index,
            field="created",
        )
    created = int(number)
    latest = now_ms + CREATED_MAX_AHEAD_MS
    if created < CREATED_MIN_MS:
        hint = "; it looks like seconds, send milliseconds" if created >= CREATED_MIN_MS // 1000 else ""
        raise ValidationError(
            f"sample {index}: field 'created' is {created}, before 2000-01-01 in epoch milliseconds{hint}",
            index=index,
            field="created",
        )
    if created > latest:
        raise ValidationError(
            f"sample {index}: field 'created' is {created}, more than a day in the future (now {now_ms})",
            index=index,
            field="created",
        )
    return created


def _client_id(value: object, index: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(
            f"sample {index}: field 'id' must be a string, got {_kind(value)}", index=index, field="id"
        )
    if not ID_PATTERN.fullmatch(value):
        raise ValidationError(
            f"sample {index}: field 'id' must be 1-{ID_MAX_LENGTH} characters from A-Z a-z 0-9 . _ : -",
            index=index,
            field="id",
        )
    return value


def _score(value: object, index: int) -> float | None:
    if value is None:
        return None
    score = _number(value, "score", index)
    if abs(score) > SCORE_MAX_ABS:
        raise ValidationError(
            f"sample {index}: field 'score' is {score:g}, outside -{SCORE_MAX_ABS:g} to {SCORE_MAX_ABS:g}",
            index=index,
            field="score",
        )
    return score


def parse_sample(item: object, index: int, *, now_ms: int) -> Sample:
    """One labelled sample, fully checked (see the module docstring for the rules)."""
    obj = _require_object(item, index)
    for name in obj:
        if name not in ALLOWED_FIELDS:
            raise ValidationError(
                f"sample {index}: unknown field {json.dumps(name)}; allowed: {', '.join(ALLOWED_FIELDS)}",
                index=index,
                field=name,
            )
    temp, rh, wind, clo = parse_features(obj, index)
    return Sample(
        temp=temp,
        rh=rh,
        wind=wind,
        clo=clo,
        label=_label(obj, index),
        created=_created(obj.get("created"), index, now_ms),
        client_id=_client_id(obj.get("id"), index),
        score=_score(obj.get("score"), index),
    )


def sample_list(payload: object) -> list[Any]:
    """The list of samples of an upload body: a JSON array, or ``{"samples": [...]}``."""
    if isinstance(payload, dict):
        extra = [key for key in payload if key != "samples"]
        if extra:
            raise BadRequest(
                f"unknown top-level field {json.dumps(extra[0])}; send a JSON array of samples "
                'or {"samples": [...]}',
                field=extra[0],
            )
        if "samples" not in payload:
            raise BadRequest('missing "samples": send a JSON array of samples or {"samples": [...]}')
        payload = payload["samples"]
        if not isinstance(payload, list):
            raise BadRequest(f'"samples" must be a JSON array, got {_kind(payload)}')
    if not isinstance(payload, list):
        raise BadRequest(
            f'the body must be a JSON array of samples or {{"samples": [...]}}, got {_kind(payload)}'
        )
    if not payload:
        raise BadRequest("no samples: the array is empty")
    return payload


def parse_samples(payload: object, *, now_ms: int, max_samples: int) -> list[Sample]:
    """Every sample of an upload body, or the error of the first invalid one."""
    items = sample_list(payload)
    if len(items) > max_samples:
        raise PayloadTooLarge(
            f"{len(items)} samples in one request; the limit is {max_samples}: split the request",
            count=len(items),
            limit=max_samples,
        )
    samples = [parse_sample(item, i, now_ms=now_ms) for i, item in enumerate(items)]
    seen: dict[str, int] = {}
    for i, sample in enumerate(samples):
        if sample.client_id is None:
            continue
        content = _canonical_json(sample.canonical())
        if content in seen:
            raise ValidationError(
                f"sample {i}: field 'id' repeats sample {seen[content]} (same id and content); send it once",
                index=i,
                field="id",
            )
        seen[content] = i
    return samples


def _canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def request_digest(samples: list[Sample]) -> str:
    """A hash of the validated request: the same samples re-formatted give the same digest."""
    return _sha256(_canonical_json([s.canonical() for s in samples]))


def _key(sample: Sample, origin: str, client: str | None) -> str:
    """``"s-" + sha256(...)`` of a sample: its id and content when it has an id (wherever it
    came from), else its content and ``origin`` (where in which request or file it was sent);
    and the sending client's name, when there is one.

    The client is part of the key so that no client can write over another's sample: the same
    content with the same id, sent by someone else, is another item, attributed to its own
    sender (lambdas/core/clients.py), never a re-attribution of the first."""
    content = _canonical_json(sample.canonical())
    if sample.client_id is not None:
        basis = f"id\x00{sample.client_id}\x00{content}"
    else:
        basis = f"{origin}\x00{content}"
    if client is not None:
        basis = f"client\x00{client}\x00{basis}"
    return KEY_PREFIX + _sha256(basis)


def item_keys(samples: list[Sample], *, client: str | None = None) -> list[str]:
    """The data table key of each sample: ``"s-" + sha256(...)``.

    With a client ``id`` the key covers the id and the content: resending writes the same
    item, and an id reused for different content makes a new item instead of overwriting.
    Without one it covers the content, the request digest and the position in the request:
    resending the same request writes the same items, two identical samples in one request are
    two observations, and two different requests never share a key. ``client``: the sender's
    name (two clients never share a key).
    """
    digest = request_digest(samples)
    return [_key(sample, f"request\x00{digest}\x00{index}", client) for index, sample in enumerate(samples)]


def import_key(sample: Sample, *, digest: str, line: int, client: str | None = None) -> str:
    """The data table key of a sample read from line ``line`` of an imported file whose bytes
    hash to ``digest`` (sha256 hex): ``item_keys``' scheme with the file in place of the request.

    With an ``id`` it is the key ``POST /upload`` gives the same sample from the same
    ``client``. Without one it covers
    the content, the file's digest and the line: importing the same file again writes the same
    keys (nothing new), identical rows on two lines are two observations, and two different
    files never share a key."""
    return _key(sample, f"import\x00{digest}\x00{line}", client)
