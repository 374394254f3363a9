"""Scoring labelled samples as they arrive: which version, which model, what it predicts.

A sample is scored by the version that was latest when it was **ingested** (its ``ingested``
time, set by the upload function), not by the one latest when the stream delivers it: a sample
uploaded a second before a promotion counts for the model that answered its neighbours' requests.
``LatestHistory`` answers "which version was latest at time t" from the promotion history (the
registry's history items: one per change of latest, written with the pointer in one
transaction), read once per container and then only for its new entries. Samples ingested before
any model was published are left unscored (logged, not an error).

Each version's model is loaded through the same source as ``infer`` (the S3 proxy by default,
``MODEL_SOURCE``), kept in a small LRU (``modelstore.VersionCache``) and run with infer's numpy
forward pass (``modelstore.predict``). The outcomes are counted by ``lambdas.core.live``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lambdas.core import live, log, registry, settings
from lambdas.core.drift import Profile
from lambdas.core.modelstore import SourceSettings, VersionCache, predict
from lambdas.core.schema import FEATURE_NAMES, LABELS

# A sample ingested this long before the history was read may still be missing a promotion made
# just before it: the upload function's and the promoter's clocks differ a little, and the history
# is read from the by-kind index, which DynamoDB updates asynchronously (usually well under a
# second: DynamoDB Developer Guide, "Global secondary indexes", read consistency).
HISTORY_MARGIN_MS = 5_000


@dataclass(frozen=True)
class ScoreSettings:
    data_table: str
    model_table: str
    model: SourceSettings
    bucket_s: int
    models_kept: int

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> ScoreSettings:
        env = settings.environ() if env is None else env
        return cls(
            data_table=settings.required(env, "DATA_TABLE"),
            model_table=settings.required(env, "MODEL_TABLE"),
            model=SourceSettings.from_env(env),
            bucket_s=settings.integer(env, "LIVE_BUCKET_S", live.DEFAULT_BUCKET_S, minimum=1),
            models_kept=settings.integer(env, "LIVE_MODELS_KEPT", 2, minimum=1),
        )


# stream records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """A labelled sample as its INSERT record carries it."""

    sample_id: str
    sequence: str  # the record's SequenceNumber: what a partial batch failure names
    features: tuple[float, ...]  # in FEATURE_NAMES order, raw units
    label: str
    at_ms: int  # ingestion time (epoch ms)
    ingested: str | None  # the ``ingested`` number as written; None when the item has none


def observation(record: dict[str, Any]) -> Observation | None:
    """The sample of an INSERT record; None for any other record or an item that is no sample
    (a missing or non-numeric feature, an unknown label)."""
    if record.get("eventName") != "INSERT":
        return None
    change = record.get("dynamodb") or {}
    image = change.get("NewImage") or {}
    sample_id = (change.get("Keys") or {}).get("id", {}).get("S") or image.get("id", {}).get("S")
    label = image.get("label", {}).get("S")
    sequence = change.get("SequenceNumber")
    if not sample_id or label not in LABELS or not sequence:
        return None
    try:
        features = tuple(float(image[name]["N"]) for name in FEATURE_NAMES)
        ingested = image.get("ingested", {}).get("N")
        if ingested is not None:
            at_ms = int(float(ingested))
        else:  # an item written without ``ingested``: when the stream saw it
            at_ms = int(float(change["ApproximateCreationDateTime"]) * 1000)
    except (KeyError, TypeError, ValueError):
        return None
    if not all(map(math.isfinite, features)):
        return None
    return Observation(str(sample_id), str(sequence), features, str(label), at_ms, ingested)


# which version was latest -------------------------------------------------------------------


class LatestHistory:
    """Which version was latest at a given time, from the promotion history.

    The history is read whole once, then, whenever a sample is recent enough to postdate what
    was read (``HISTORY_MARGIN_MS``), only the entries after the newest one known (a Query on
    ``sk >``: usually an empty page). Changes are taken in the order of their sequence number,
    the pointer's true order. A sample belongs to the last change made at or before its
    ingestion; a sample older than every change, to the version latest before the first one
    (its ``previous``: None for the first promotion ever, the old pointer's version for a table
    whose pointer predates the history). Without any history item the pointer's version is
    used for every sample."""

    def __init__(
        self,
        reg: registry.Registry,
        *,
        margin_ms: int = HISTORY_MARGIN_MS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = reg
        self._margin_ms = margin_ms
        self._clock = clock
        self._changes: list[tuple[int, str]] = []  # (at ms, version), oldest first
        self._before: str | None = None  # latest before the oldest change
        self._newest_sk: str | None = None
        self._pointer: str | None = None
        self._read_at_ms: int | None = None
        self.reads = 0

    def refresh_for(self, newest_ms: int) -> None:
        """Make sure the changes up to ``newest_ms`` are known."""
        if self._read_at_ms is not None and newest_ms < self._read_at_ms - self._margin_ms:
            return
        read_at = int(self._clock() * 1000)
        new: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:  # only the changes after the newest one known, oldest first
            page, cursor = self._registry.list_history(limit=100, cursor=cursor, after=self._newest_sk)
            new += page
            if not cursor:
                break
        if new and not self._changes:
            previous = new[0].get("previous")
            self._before = str(previous) if previous else None
        for entry in new:
            self._changes.append((registry.epoch_ms(str(entry["at"])), str(entry["version"])))
        if new:
            self._newest_sk = str(new[-1]["sk"])
        self._pointer = None if self._changes else self._registry.latest_version()
        self._read_at_ms = read_at
        self.reads += 1

    def version_at(self, at_ms: int) -> str | None:
        for changed_ms, version in reversed(self._changes):
            if changed_ms <= at_ms:
                return version
        return self._before if self._changes else self._pointer


# scoring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    outcomes: list[tuple[Observation, live.Outcome]] = field(default_factory=list)
    unscored: list[Observation] = field(default_factory=list)  # no model was latest yet
    failed: list[Observation] = field(default_factory=list)  # their version's model did not load


def _no_profile(version: str) -> Profile | None:
    return None


@dataclass
class Scorer:
    history: LatestHistory
    models: VersionCache
    # The training profile of a version, to bin its samples' inputs (the drift rule's window).
    profiles: Callable[[str], Profile | None] = _no_profile

    def score(self, observations: list[Observation]) -> Scored:
        out = Scored()
        if not observations:
            return out
        self.history.refresh_for(max(o.at_ms for o in observations))
        by_version: dict[str, list[Observation]] = {}
        for o in observations:
            version = self.history.version_at(o.at_ms)
            if version is None:
                out.unscored.append(o)
            else:
                by_version.setdefault(version, []).append(o)
        for version, group in by_version.items():
            try:
                loaded = self.models.get(version)
                probabilities = predict(loaded, np.array([o.features for o in group], dtype=np.float64))
                profile = self.profiles(version)
            except Exception as err:  # noqa: BLE001 - these records are retried; the others go on
                log.error("live_model_unavailable", version=version, samples=len(group), error=repr(err))
                out.failed.extend(group)
                continue
            for o, index in zip(group, probabilities.argmax(axis=1).tolist(), strict=True):
                bins = profile.bins(o.features) if profile else ()
                outcome = live.Outcome(
                    o.sample_id, version, o.label, LABELS[index], o.at_ms, o.ingested, bins=bins
                )
                out.outcomes.append((o, outcome))
        return out


@dataclass(frozen=True)
class Report:
    records: int
    counted: int
    duplicates: int
    unscored: int
    skipped: int
    failures: list[str]  # sequence numbers to retry
    versions: dict[str, int]  # samples counted per version


def process(records: Iterable[dict[str, Any]], scorer: Scorer, store: live.LiveStore) -> Report:
    """Score and count a batch of data-table stream records; the sequence numbers of the records
    to retry come back in ``failures`` (the batch's partial failure)."""
    started = time.perf_counter()
    records = list(records)
    observations = []
    for record in records:
        found = observation(record)
        if found is not None:
            observations.append(found)
        elif record.get("eventName") == "INSERT":
            log.warning(
                "live_sample_unscorable", sequence=(record.get("dynamodb") or {}).get("SequenceNumber")
            )
    scored = scorer.score(observations)
    recorded = store.record([outcome for _, outcome in scored.outcomes])
    sequences: dict[live.Outcome, list[str]] = {}
    for o, outcome in scored.outcomes:
        sequences.setdefault(outcome, []).append(o.sequence)
    failures = [o.sequence for o in scored.failed]
    failures += [sequence for outcome in recorded.failed for sequence in sequences[outcome]]
    versions: dict[str, int] = {}
    for outcome in recorded.counted:
        versions[outcome.version] = versions.get(outcome.version, 0) + 1
    report = Report(
        records=len(records),
        counted=len(recorded.counted),
        duplicates=len(recorded.duplicates),
        unscored=len(scored.unscored),
        skipped=len(records) - len(observations),
        failures=sorted(set(failures), key=lambda s: (len(s), s)),
        versions=versions,
    )
    if scored.unscored:
        log.log("live_no_model_yet", samples=len(scored.unscored))
    log.log(
        "live_scored",
        records=report.records,
        counted=report.counted,
        duplicates=report.duplicates,
        unscored=report.unscored,
        skipped=report.skipped,
        failed=len(report.failures),
        versions=versions,
        ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return report
