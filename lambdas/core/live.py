"""Live model quality: how each served version does on the labelled samples arriving now.

Every sample is scored by the version that was latest when it was ingested (``lambdas.core.scoring``);
this module keeps the counts, per version, in the model table, and reads them back.

Items (model table; the others are described in ``lambdas.core.registry``):

- the totals of a version: ``pk = "live#<version>"``, ``version``, ``seen``, ``correct`` and the
  confusion counts as flat attributes ``cm_<label>_<predicted>`` (an absent cell is 0), plus
  ``updated_at``. No ``kind``: the item stays out of the by-kind index, and ``GET /models`` reads
  the totals of a whole page with one BatchGetItem (``totals``);
- one time bucket of a version: ``pk = "live#<version>#<start>"``, ``kind = "live"``,
  ``sk = "<version>#<start>"``, the same counts for the samples *ingested* in the ``bucket_s``
  seconds from ``start`` (ISO time; also ``start_ms`` and ``bucket_s``). Buckets follow the
  samples' ingestion time, not the scoring time, so a replay lands in the bucket it counted in
  before. A Query on the by-kind index (``kind = live``, ``sk`` between ``<version>#<since>`` and
  ``<version>#~``) sums a rolling window (``window``).

Counted once: a sample's counts and a mark on its own data-table item are written in one
TransactWriteItems. The mark is ``SET scored_by = <version>`` on the condition that the item still
is the one its INSERT created (same ``ingested``: a re-sent upload rewrites the item with a new
one and no mark; its stream record is a MODIFY, which is never scored) and carries no mark yet.
A replayed or duplicated record, a bisected batch or two consumers racing therefore all fail
that condition for the samples already counted. DynamoDB then cancels the whole transaction and
says, per action, which condition failed (``CancellationReasons``): those samples are dropped,
the sums recomputed from the others and the transaction retried. Nothing is counted twice or
half-written: a sample's mark never exists without its counts, nor the counts without it.

A transaction holds at most 100 actions (TransactWriteItems API reference; the local cloud
enforces it, ``localcloud/limits.py``) and never two on one item: a chunk is its samples plus one
totals and one bucket update per (version, bucket) it touches. Each sample costs 2 write units
(transactional writes cost double: DynamoDB Developer Guide, "Capacity units for transactions"),
the two aggregate updates are shared by up to 98 samples.

Accuracy comes with its 95 % Wilson score interval (``wilson``): unlike the normal
approximation it stays inside [0, 1] and keeps its coverage for small counts and accuracies near
1 (Newcombe 1998, "Two-sided confidence intervals for the single proportion").
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any

from botocore.exceptions import ClientError

from lambdas.core import aws, log, registry
from lambdas.core.schema import FEATURE_NAMES, LABELS

PREFIX = "live#"
KIND = "live"
MARK = "scored_by"  # the data-table attribute that says a sample was counted, and by which version
MAX_ACTIONS = 100  # per TransactWriteItems
DEFAULT_BUCKET_S = 300
Z95 = NormalDist().inv_cdf(0.975)  # 1.959963984540054
CELLS: tuple[tuple[str, str], ...] = tuple((true, predicted) for true in LABELS for predicted in LABELS)
# Codes after which the same transaction may succeed (TransactWriteItems API reference, Errors and
# CancellationReasons): another writer held one of the items, or capacity ran short.
RETRYABLE = frozenset(
    {
        "TransactionConflict",
        "TransactionConflictException",
        "TransactionInProgressException",
        "ThrottlingError",
        "ThrottlingException",
        "ProvisionedThroughputExceeded",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "InternalServerError",
    }
)


def drift_attribute(feature: str, index: int) -> str:
    """A time bucket's count of samples in bin ``index`` of ``feature`` (``lambdas.core.drift``)."""
    return f"in_{feature}_{index}"


def cell_name(true: str, predicted: str) -> str:
    return f"cm_{true}_{predicted}"


def totals_key(version: str) -> str:
    return f"{PREFIX}{version}"


def bucket_start_ms(at_ms: int, bucket_s: int) -> int:
    width = bucket_s * 1000
    return at_ms - at_ms % width


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def wilson(correct: int, seen: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` successes in ``seen`` trials."""
    if seen <= 0 or not 0 <= correct <= seen:
        raise ValueError(f"need 0 <= correct <= seen and seen > 0, got {correct}/{seen}")
    p = correct / seen
    z2 = z * z
    scale = 1 + z2 / seen
    centre = (p + z2 / (2 * seen)) / scale
    half = z * math.sqrt(p * (1 - p) / seen + z2 / (4 * seen * seen)) / scale
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Counts:
    """Scored samples: ``cells[i]`` counts the samples of true label ``CELLS[i][0]`` predicted
    ``CELLS[i][1]``."""

    cells: tuple[int, ...] = (0,) * len(CELLS)

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> Counts:
        index = {pair: i for i, pair in enumerate(CELLS)}
        cells = [0] * len(CELLS)
        for pair in pairs:
            cells[index[pair]] += 1
        return cls(tuple(cells))

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Counts:
        """From a live item in plain Python (``registry.from_item``)."""
        return cls(tuple(int(item.get(cell_name(*pair), 0)) for pair in CELLS))

    def __add__(self, other: Counts) -> Counts:
        return Counts(tuple(a + b for a, b in zip(self.cells, other.cells, strict=True)))

    @property
    def seen(self) -> int:
        return sum(self.cells)

    @property
    def correct(self) -> int:
        return sum(n for (true, predicted), n in zip(CELLS, self.cells, strict=True) if true == predicted)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.seen if self.seen else None

    def interval(self, z: float = Z95) -> tuple[float, float] | None:
        return wilson(self.correct, self.seen, z) if self.seen else None

    def confusion(self) -> dict[str, dict[str, int]]:
        """``{true label: {predicted label: count}}``."""
        out: dict[str, dict[str, int]] = {true: {} for true in LABELS}
        for (true, predicted), n in zip(CELLS, self.cells, strict=True):
            out[true][predicted] = n
        return out

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval() or (None, None)
        return {
            "seen": self.seen,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "ci_low": low,
            "ci_high": high,
            "confusion": self.confusion(),
        }


@dataclass(frozen=True)
class Outcome:
    """One scored sample."""

    sample_id: str
    version: str  # the version that was latest when the sample was ingested
    label: str
    predicted: str
    at_ms: int  # ingestion time (epoch ms): which bucket it counts in
    ingested: str | None  # the item's ``ingested`` number as its INSERT recorded it; None: absent
    # The sample's bin per feature under its version's training profile (``lambdas.core.drift``);
    # empty when the version has none. Added to the time bucket as ``in_<feature>_<bin>``.
    bins: tuple[int, ...] = ()


@dataclass(frozen=True)
class Recorded:
    counted: list[Outcome] = field(default_factory=list)
    duplicates: list[Outcome] = field(default_factory=list)  # counted before (or replaced, or gone)
    failed: list[Outcome] = field(default_factory=list)  # not written: retry them


def chunks(outcomes: Sequence[Outcome], bucket_s: int, max_actions: int = MAX_ACTIONS) -> list[list[Outcome]]:
    """Outcomes grouped into transactions: each chunk's samples plus one totals update per
    version and one bucket update per (version, bucket) fit in ``max_actions``; a sample id
    appears once per chunk (two actions on one item are refused)."""
    ordered = sorted(outcomes, key=lambda o: (o.version, bucket_start_ms(o.at_ms, bucket_s)))
    out: list[list[Outcome]] = []
    chunk: list[Outcome] = []
    ids: set[str] = set()
    aggregates: set[tuple[str, int | None]] = set()
    for outcome in ordered:
        new = {(outcome.version, None), (outcome.version, bucket_start_ms(outcome.at_ms, bucket_s))}
        if outcome.sample_id in ids or len(chunk) + 1 + len(aggregates | new) > max_actions:
            out.append(chunk)
            chunk, ids, aggregates = [], set(), set()
        chunk.append(outcome)
        ids.add(outcome.sample_id)
        aggregates |= new
    if chunk:
        out.append(chunk)
    return out


def _jitter_sleep(attempt: int) -> None:
    time.sleep(random.uniform(0.0, min(2.0, 0.05 * 2**attempt)))


@dataclass(frozen=True)
class LiveStore:
    """The live counts in the model table (and the marks on the data table)."""

    model_table: str
    data_table: str | None = None  # needed to record, not to read
    client: Any = None
    bucket_s: int = DEFAULT_BUCKET_S
    attempts: int = 6  # transactions per chunk, the first one included
    backoff: Callable[[int], None] = _jitter_sleep

    @property
    def ddb(self) -> Any:
        return self.client or aws.dynamodb()

    # writing ----------------------------------------------------------------------------

    def record(self, outcomes: Sequence[Outcome]) -> Recorded:
        """Count each outcome once (see the module docstring)."""
        result = Recorded()
        for chunk in chunks(outcomes, self.bucket_s):
            self._record_chunk(chunk, result)
        return result

    def _record_chunk(self, chunk: list[Outcome], result: Recorded) -> None:
        pending = list(chunk)
        attempt = 1
        while pending:
            try:
                self.ddb.transact_write_items(TransactItems=self.actions(pending))
            except ClientError as err:
                code = err.response.get("Error", {}).get("Code", "")
                reasons = aws.cancellation_reasons(err)
                if reasons is not None and len(reasons) >= len(pending):
                    # One reason per action, in the order of the actions; the samples' marks
                    # come first.
                    taken = {
                        i for i, why in enumerate(reasons[: len(pending)]) if why == "ConditionalCheckFailed"
                    }
                    if taken:  # counted before: drop them, the others go again with their own sums
                        result.duplicates.extend(o for i, o in enumerate(pending) if i in taken)
                        pending = [o for i, o in enumerate(pending) if i not in taken]
                        continue
                    retry = bool(set(reasons) & RETRYABLE)
                else:
                    retry = code in RETRYABLE
                if not retry:
                    raise
                if attempt >= self.attempts:
                    log.error("live_transaction_gave_up", samples=len(pending), attempts=attempt, code=code)
                    result.failed.extend(pending)
                    return
                log.warning(
                    "live_transaction_retry", attempt=attempt, code=code, reasons=sorted(set(reasons or ()))
                )
                self.backoff(attempt)
                attempt += 1
                continue
            result.counted.extend(pending)
            return

    def actions(self, chunk: Sequence[Outcome]) -> list[dict[str, Any]]:
        """The TransactItems of one chunk: the samples' marks first (CancellationReasons are
        read by position), then the totals and bucket updates."""
        if self.data_table is None:
            raise ValueError("recording needs the data table")
        out: list[dict[str, Any]] = []
        for o in chunk:
            names = {"#id": "id", "#m": MARK, "#i": "ingested"}
            values: dict[str, Any] = {":v": {"S": o.version}}
            condition = "attribute_exists(#id) AND attribute_not_exists(#m) AND "
            if o.ingested is None:
                condition += "attribute_not_exists(#i)"
            else:
                condition += "#i = :i"
                values[":i"] = {"N": o.ingested}
            out.append(
                {
                    "Update": {
                        "TableName": self.data_table,
                        "Key": {"id": {"S": o.sample_id}},
                        "UpdateExpression": "SET #m = :v",
                        "ConditionExpression": condition,
                        "ExpressionAttributeNames": names,
                        "ExpressionAttributeValues": values,
                    }
                }
            )
        groups: dict[str, list[Outcome]] = {}
        buckets: dict[tuple[str, int], list[Outcome]] = {}
        for o in chunk:
            groups.setdefault(o.version, []).append(o)
            buckets.setdefault((o.version, bucket_start_ms(o.at_ms, self.bucket_s)), []).append(o)
        now = registry.now_iso()
        for version, members in groups.items():
            out.append(self._add(totals_key(version), {"version": version, "updated_at": now}, members))
        for (version, start), members in buckets.items():
            sk = f"{version}#{iso(start)}"
            fields: dict[str, Any] = {
                "version": version,
                "kind": KIND,
                "sk": sk,
                "start": iso(start),
                "start_ms": start,
                "bucket_s": self.bucket_s,
            }
            out.append(self._add(f"{PREFIX}{sk}", fields, members, inputs=True))
        return out

    def _add(
        self, pk: str, fields: Mapping[str, Any], members: Sequence[Outcome], *, inputs: bool = False
    ) -> dict[str, Any]:
        counts = Counts.of((o.label, o.predicted) for o in members)
        added = {"seen": counts.seen, "correct": counts.correct}
        added.update({cell_name(*pair): n for pair, n in zip(CELLS, counts.cells, strict=True) if n})
        if inputs:  # the input histograms of a time bucket (the drift rule's window)
            for o in members:
                for name, index in zip(FEATURE_NAMES, o.bins, strict=False):
                    key = drift_attribute(name, index)
                    added[key] = added.get(key, 0) + 1
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        sets, adds = [], []
        for i, (name, value) in enumerate(fields.items()):
            names[f"#s{i}"] = name
            values[f":s{i}"] = registry.to_item({"v": value})["v"]
            sets.append(f"#s{i} = :s{i}")
        for i, (name, n) in enumerate(added.items()):
            names[f"#a{i}"] = name
            values[f":a{i}"] = {"N": str(n)}
            adds.append(f"#a{i} :a{i}")
        return {
            "Update": {
                "TableName": self.model_table,
                "Key": {"pk": {"S": pk}},
                "UpdateExpression": f"SET {', '.join(sets)} ADD {', '.join(adds)}",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        }

    # reading ----------------------------------------------------------------------------

    def totals(self, versions: Sequence[str], *, attempts: int = 5) -> dict[str, Counts]:
        """The totals of each version that has been scored (BatchGetItem, 100 keys a call);
        versions never scored are absent."""
        out: dict[str, Counts] = {}
        wanted = list(dict.fromkeys(versions))
        for start in range(0, len(wanted), 100):
            keys = [{"pk": {"S": totals_key(v)}} for v in wanted[start : start + 100]]
            for attempt in range(1, attempts + 1):
                reply = self.ddb.batch_get_item(RequestItems={self.model_table: {"Keys": keys}})
                for item in reply.get("Responses", {}).get(self.model_table, []):
                    plain = registry.from_item(item)
                    out[str(plain["version"])] = Counts.from_item(plain)
                keys = (reply.get("UnprocessedKeys") or {}).get(self.model_table, {}).get("Keys") or []
                if not keys:
                    break
                if attempt == attempts:
                    raise RuntimeError(f"DynamoDB left {len(keys)} live totals unread after {attempts} calls")
                self.backoff(attempt)
        return out

    def window(self, version: str, since_ms: int) -> Counts:
        """The counts of ``version`` over the buckets starting at or after ``since_ms`` (a
        rolling window: pass now minus its length)."""
        return self.window_items(version, since_ms)[0]

    def window_items(self, version: str, since_ms: int) -> tuple[Counts, list[dict[str, Any]]]:
        """``window``'s counts and its bucket items in plain Python (their input histograms:
        ``lambdas.core.drift.histograms``)."""
        since = iso(bucket_start_ms(since_ms, self.bucket_s))
        kwargs: dict[str, Any] = {
            "TableName": self.model_table,
            "IndexName": registry.INDEX,
            "KeyConditionExpression": "#k = :k AND #sk BETWEEN :from AND :to",
            "ExpressionAttributeNames": {"#k": "kind", "#sk": "sk"},
            "ExpressionAttributeValues": {
                ":k": {"S": KIND},
                ":from": {"S": f"{version}#{since}"},
                ":to": {"S": f"{version}#~"},
            },
            "ScanIndexForward": False,
        }
        total = Counts()
        items = []
        while True:
            page = self.ddb.query(**kwargs)
            for item in page.get("Items", []):
                plain = registry.from_item(item)
                items.append(plain)
                total = total + Counts.from_item(plain)
            if not page.get("LastEvaluatedKey"):
                return total, items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
