"""Samples from the data table to arrays: parallel scan, holdout by id hash, train/validation split."""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from lambdas.core import log
from lambdas.core.schema import FEATURE_NAMES, LABELS

_FIELDS = ("id", *FEATURE_NAMES, "label", "created")
_LABEL_INDEX = {label: i for i, label in enumerate(LABELS)}


@dataclass(frozen=True)
class Samples:
    """Every usable sample: ``x`` raw features in FEATURE_NAMES order, ``y`` label indices."""

    ids: list[str]
    x: np.ndarray  # float32 [n, len(FEATURE_NAMES)]
    y: np.ndarray  # int64 [n], index into LABELS
    created: np.ndarray  # int64 [n], epoch ms
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def watermark(self) -> int | None:
        """The newest ``created`` among the samples: which data trained a model."""
        return int(self.created.max()) if len(self.created) else None

    def subset(self, index: np.ndarray) -> Samples:
        return Samples(
            ids=[self.ids[i] for i in index], x=self.x[index], y=self.y[index], created=self.created[index]
        )


@dataclass(frozen=True)
class Split:
    train: Samples
    validation: Samples
    holdout: Samples


def scan(table: str, client: Any, segments: int = 4) -> list[dict[str, Any]]:
    """Every item of ``table`` (raw DynamoDB attribute maps), read by ``segments`` threads."""
    names = {f"#a{i}": name for i, name in enumerate(_FIELDS)}

    def read_segment(segment: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": table,
            "Segment": segment,
            "TotalSegments": segments,
            "ProjectionExpression": ", ".join(names),
            "ExpressionAttributeNames": names,
            # Every write completed before the Scan began is in its response (Scan API
            # reference, ConsistentRead). Each segment and page is such a Scan, started after
            # the run's scan_started_ms: so every sample written before that moment is seen,
            # which is what the train trigger relies on to count only later samples again.
            # Costs twice the read capacity of an eventually consistent scan.
            "ConsistentRead": True,
        }
        while True:
            page = client.scan(**kwargs)
            items.extend(page.get("Items", []))
            last = page.get("LastEvaluatedKey")
            if not last:
                return items
            kwargs["ExclusiveStartKey"] = last

    with ThreadPoolExecutor(max_workers=segments) as pool:
        return [item for part in pool.map(read_segment, range(segments)) for item in part]


def to_samples(items: list[dict[str, Any]]) -> Samples:
    """Raw items to arrays, sorted by id so the result does not depend on scan order.

    Items that are not usable samples (a missing field, an unknown label, a non-finite
    number) are counted and left out rather than failing the run.
    """
    rows: list[tuple[str, list[float], int, int]] = []
    skipped = 0
    for item in items:
        row = _row(item)
        if row is None:
            skipped += 1
        else:
            rows.append(row)
    rows.sort(key=lambda r: r[0])
    if skipped:
        log.warning("samples_skipped", count=skipped)
    n = len(FEATURE_NAMES)
    return Samples(
        ids=[r[0] for r in rows],
        x=np.array([r[1] for r in rows], dtype=np.float32).reshape(-1, n),
        y=np.array([r[2] for r in rows], dtype=np.int64),
        created=np.array([r[3] for r in rows], dtype=np.int64),
        skipped=skipped,
    )


def _row(item: dict[str, Any]) -> tuple[str, list[float], int, int] | None:
    try:
        sample_id = item["id"]["S"]
        features = [float(item[name]["N"]) for name in FEATURE_NAMES]
        label = _LABEL_INDEX[item["label"]["S"]]
        created = int(float(item["created"]["N"])) if "created" in item else 0
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in features):
        return None
    return sample_id, features, label, created


def load(table: str, client: Any, segments: int = 4) -> Samples:
    return to_samples(scan(table, client, segments))


def in_holdout(sample_id: str, percent: int) -> bool:
    """A fixed ``percent`` of ids, the same in every run: runs are compared on comparable data."""
    bucket = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") % 100
    return bucket < percent


def split(samples: Samples, *, holdout_percent: int, validation_fraction: float, seed: int) -> Split:
    """Holdout by id hash; the rest shuffled with ``seed`` into train and validation."""
    holdout_mask = np.array([in_holdout(i, holdout_percent) for i in samples.ids], dtype=bool)
    rest = np.flatnonzero(~holdout_mask)
    rest = rest[np.random.default_rng(seed).permutation(len(rest))]
    n_validation = max(1, round(len(rest) * validation_fraction)) if len(rest) > 1 else 0
    return Split(
        train=samples.subset(np.sort(rest[n_validation:])),
        validation=samples.subset(np.sort(rest[:n_validation])),
        holdout=samples.subset(np.flatnonzero(holdout_mask)),
    )


def one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(len(LABELS), dtype=np.float32)[y]
