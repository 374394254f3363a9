"""Samples from the data table to arrays: parallel scan, each sample's client, holdout by a keyed
hash of its id (trusted clients only), the gate's recent window, train/validation split."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
from array import array
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lambdas.core import clients, log
from lambdas.core.schema import FEATURE_NAMES, LABELS

_FIELDS = ("id", *FEATURE_NAMES, "label", "created", "ingested", "import_id", "client")
_LABEL_INDEX = {label: i for i, label in enumerate(LABELS)}


@dataclass(frozen=True)
class Samples:
    """Every usable sample: ``x`` raw features in FEATURE_NAMES order, ``y`` label indices."""

    ids: list[str]
    x: np.ndarray  # float32 [n, len(FEATURE_NAMES)]
    y: np.ndarray  # int64 [n], index into LABELS
    created: np.ndarray  # int64 [n], epoch ms
    skipped: int = 0
    # int64 [n], epoch ms: when the upload function wrote each sample (server time, unlike the
    # client's ``created``); None: not read, ``created`` stands in.
    ingested: np.ndarray | None = None
    # Who sent each sample: int32 [n] codes into ``client_names`` (a million samples from a
    # handful of clients cost 4 MB, not a million str references). None: every sample is
    # ``unattributed`` (written before clients existed, or built by hand).
    client: np.ndarray | None = None
    client_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def client_codes(self) -> tuple[np.ndarray, tuple[str, ...]]:
        """Each sample's client as (codes, names): ``names[codes[i]]`` sent sample ``i``."""
        if self.client is None:
            return np.zeros(len(self.ids), dtype=np.int32), (clients.UNATTRIBUTED,)
        return self.client, self.client_names

    def clients_of(self) -> dict[str, int]:
        """How many samples each client sent (only clients with at least one)."""
        codes, all_names = self.client_codes
        counts = np.bincount(codes, minlength=len(all_names))
        return {all_names[c]: int(n) for c, n in enumerate(counts) if n}

    @property
    def watermark(self) -> int | None:
        """The newest ``created`` among the samples: which data trained a model."""
        return int(self.created.max()) if len(self.created) else None

    @property
    def arrived(self) -> np.ndarray:
        """When each sample arrived: ``ingested``, else ``created``."""
        return self.created if self.ingested is None else self.ingested

    def subset(self, index: np.ndarray) -> Samples:
        return Samples(
            ids=[self.ids[i] for i in index],
            x=self.x[index],
            y=self.y[index],
            created=self.created[index],
            ingested=None if self.ingested is None else self.ingested[index],
            client=None if self.client is None else self.client[index],
            client_names=self.client_names,
        )


@dataclass(frozen=True)
class RecentWindow:
    """Which samples form the gate's recent window (trainer/README.md, "Gate"): those that
    arrived after ``after_ms`` (when latest's training data was complete) and whose id falls in
    the fixed holdout or in the next ``percent`` % of ids, the newest ``max_count`` of them."""

    after_ms: int
    percent: int
    max_count: int


@dataclass(frozen=True)
class Split:
    train: Samples
    validation: Samples
    holdout: Samples
    # The gate's recent window: never in train or validation. Its members in the fixed holdout
    # are in ``holdout`` too.
    recent: Samples | None = None
    # Revoked clients' samples left out: {client: count}.
    excluded: dict[str, int] = field(default_factory=dict)
    # The clients whose samples were used: {client: {"trust", "samples", "holdout"}}.
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)


# Parallel scan: one segment per BYTES_PER_SEGMENT of table (DescribeTable's TableSizeBytes),
# within [MIN_SEGMENTS, MAX_SEGMENTS]. A segment reads its pages (1 MB at most: Scan API
# reference) one after another, so segments are what makes a large scan fast; the decode is
# Python (one core at a time), so more threads than MAX_SEGMENTS stop helping. The size is
# updated only about every six hours (DescribeTable) and is 0 on a new table (and always on
# moto), hence the floor. AWS's own rule of thumb, one segment per 2 GB (DynamoDB Developer
# Guide, "Parallel scan"), aims at throughput on tables of 20 GB and more; this one at the time
# of a run over a few GB at most. See trainer/README.md, "Scaling".
BYTES_PER_SEGMENT = 128 * 1024 * 1024
MIN_SEGMENTS = 4
MAX_SEGMENTS = 16
# Items per Scan request (``Limit``): about 300 KB of samples instead of the 1 MB maximum. The
# Developer Guide's "Parallel scan" advises a Limit so that no one worker's large pages hog the
# table's throughput; the cost is the same (capacity is by size read), and the requests are
# 3-4 times as many (on AWS tens of milliseconds each). On the local cloud a page costs about
# 0.5 ms per item in moto (localcloud/README.md, "Scanning a large table"), so 1 MB pages from
# 4 segments at once came near the clients' 30 s read timeout at 100,000 samples.
PAGE_ITEMS = 2000


def segments_for(table_bytes: int | None, configured: int | None = None) -> int:
    """``configured`` if set; else one segment per BYTES_PER_SEGMENT, MIN_SEGMENTS to
    MAX_SEGMENTS (MIN_SEGMENTS when the size is unknown)."""
    if configured:
        return configured
    wanted = math.ceil((table_bytes or 0) / BYTES_PER_SEGMENT)
    return max(MIN_SEGMENTS, min(MAX_SEGMENTS, wanted))


def table_bytes(table: str, client: Any) -> int | None:
    """DescribeTable's TableSizeBytes (updated about every six hours: DynamoDB API reference,
    TableDescription): an estimate, which is all the segment count needs. None if unknown."""
    try:
        size = client.describe_table(TableName=table)["Table"].get("TableSizeBytes")
    except Exception as err:  # noqa: BLE001 - the scan works without it, with the default segments
        log.warning("table_size_unknown", table=table, error=f"{type(err).__name__}: {err}")
        return None
    return None if size is None else int(size)


class _Columns:
    """Decoded samples of one segment, as compact arrays: each page is decoded and dropped, so
    no item dictionaries outlive their page."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.x = array("f")
        self.y = array("b")
        self.created = array("q")
        self.ingested = array("q")
        # Client codes into ``names`` (this segment's own numbering; _join renumbers).
        self.client = array("I")
        self.names: dict[str, int] = {}
        self.skipped = 0

    def add(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            row = _row(item)
            if row is None:
                self.skipped += 1
                continue
            sample_id, features, label, created, ingested, client = row
            self.ids.append(sample_id)
            self.x.extend(features)
            self.y.append(label)
            self.created.append(created)
            self.ingested.append(ingested)
            code = self.names.get(client)
            if code is None:
                code = self.names[client] = len(self.names)
            self.client.append(code)


def scan(table: str, client: Any, segments: int = 4, on_page: Callable[[int], None] | None = None) -> Samples:
    """Every usable sample of ``table``, read by ``segments`` threads, decoded page by page.
    ``on_page(items)`` is called after each page (progress; it must be thread-safe)."""
    names = {f"#a{i}": name for i, name in enumerate(_FIELDS)}

    def read_segment(segment: int) -> _Columns:
        columns = _Columns()
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
            "Limit": PAGE_ITEMS,
        }
        while True:
            page = client.scan(**kwargs)
            items = page.get("Items", [])
            columns.add(items)
            if on_page is not None:
                on_page(len(items))
            last = page.get("LastEvaluatedKey")
            if not last:
                return columns
            kwargs["ExclusiveStartKey"] = last

    with ThreadPoolExecutor(max_workers=segments) as pool:
        parts = list(pool.map(read_segment, range(segments)))
    return _join(parts)


def _join(parts: list[_Columns]) -> Samples:
    """One ``Samples`` sorted by id, so the result does not depend on scan order."""
    ids = [sample_id for part in parts for sample_id in part.ids]
    n = len(FEATURE_NAMES)
    x = np.concatenate([np.frombuffer(part.x, dtype=np.float32) for part in parts]).reshape(-1, n)
    y = np.concatenate([np.frombuffer(part.y, dtype=np.int8) for part in parts]).astype(np.int64)
    created = np.concatenate([np.frombuffer(part.created, dtype=np.int64) for part in parts])
    ingested = np.concatenate([np.frombuffer(part.ingested, dtype=np.int64) for part in parts])
    skipped = sum(part.skipped for part in parts)
    if skipped:
        log.warning("samples_skipped", count=skipped)
    # One numbering of the clients for all segments: their names in order.
    names = tuple(sorted({name for part in parts for name in part.names}))
    number = {name: code for code, name in enumerate(names)}
    codes = [np.zeros(0, dtype=np.int32)]
    for part in parts:
        renumber = np.asarray([number[name] for name in part.names], dtype=np.int32)
        if len(part.client):
            codes.append(renumber[np.frombuffer(part.client, dtype=np.uint32)])
    client = np.concatenate(codes)
    order = sorted(range(len(ids)), key=ids.__getitem__)
    index = np.asarray(order, dtype=np.int64)
    return Samples(
        ids=[ids[i] for i in order],
        x=x[index],
        y=y[index],
        created=created[index],
        skipped=skipped,
        ingested=ingested[index],
        client=client[index],
        client_names=names,
    )


def to_samples(items: list[dict[str, Any]]) -> Samples:
    """Raw items to arrays, sorted by id so the result does not depend on scan order.

    Items that are not usable samples (a missing field, an unknown label, a non-finite
    number) are counted and left out rather than failing the run.
    """
    columns = _Columns()
    columns.add(items)
    return _join([columns])


def _row(item: dict[str, Any]) -> tuple[str, list[float], int, int, int, str] | None:
    try:
        sample_id = item["id"]["S"]
        features = [float(item[name]["N"]) for name in FEATURE_NAMES]
        label = _LABEL_INDEX[item["label"]["S"]]
        created = int(float(item["created"]["N"])) if "created" in item else 0
        # The upload function always writes ``ingested``; an item written some other way arrived,
        # as far as anyone knows, when it says it was created. So did a bulk import's row
        # (``import_id``): its ``ingested`` is when the file was imported, but it is history, and
        # arriving now would put last year's rows in the gate's recent window and the drift
        # rule's reference (the newest samples), ahead of what live traffic brought.
        if "ingested" in item and "import_id" not in item:
            ingested = int(float(item["ingested"]["N"]))
        else:
            ingested = created
        # Who sent it (the upload function writes the authenticated client's name); a sample
        # written before clients existed has none.
        client = item["client"]["S"] if "client" in item else clients.UNATTRIBUTED
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in features):
        return None
    return sample_id, features, label, created, ingested, client


def load(table: str, client: Any, segments: int = 4, on_page: Callable[[int], None] | None = None) -> Samples:
    return scan(table, client, segments, on_page)


def id_bucket(sample_id: str, key: bytes | None = None) -> int:
    """A fixed number in 0-99 for each id: the holdout is buckets below HOLDOUT_PERCENT, the
    recent window's own share the next GATE_RECENT_PERCENT.

    With ``key`` (the holdout key, a secret only the trainer reads): HMAC-SHA256(key, id). A
    sample's id is derived from public inputs a client controls (its sender's name, the body's
    ``id`` and content: lambdas/core/samples.py), so with a public hash it could grind ids that
    land in the holdout and grade the gate's exam itself; under a key it cannot
    tell which ids do, and its samples spread over the buckets like anyone's (trainer/README.md,
    "Holdout and trust"). Without a key (a laptop run): the public sha256(id)."""
    message = sample_id.encode()
    digest = hmac.digest(key, message, "sha256") if key is not None else hashlib.sha256(message).digest()
    return int.from_bytes(digest[:8], "big") % 100


def id_buckets(ids: list[str], key: bytes | None = None) -> np.ndarray:
    """``id_bucket`` of each id, as int64 [n]."""
    return np.fromiter((id_bucket(i, key) for i in ids), dtype=np.int64, count=len(ids))


def in_holdout(sample_id: str, percent: int, key: bytes | None = None) -> bool:
    """A fixed ``percent`` of ids, the same in every run with the same key: runs are compared on
    comparable data. Only a trusted client's sample in these buckets is in the holdout (split)."""
    return id_bucket(sample_id, key) < percent


def trusted_mask(samples: Samples, trust: Mapping[str, str] | None) -> np.ndarray:
    """Which samples a trusted client sent. ``trust`` None: every sample counts as trusted (a
    run without a trust map: benchmarks, the notebook). A client missing from ``trust`` (no
    record, not a built-in) is not trusted."""
    codes, names = samples.client_codes
    if trust is None:
        return np.ones(len(samples), dtype=bool)
    trusted = np.asarray(
        [trust.get(name, clients.UNTRUSTED) == clients.TRUSTED for name in names], dtype=bool
    )
    return trusted[codes] if len(codes) else np.zeros(0, dtype=bool)


def exclude_revoked(samples: Samples, trust: Mapping[str, str] | None) -> tuple[Samples, dict[str, int]]:
    """``samples`` without those of revoked clients, and how many each revoked client lost."""
    if trust is None:
        return samples, {}
    codes, names = samples.client_codes
    revoked = np.asarray([trust.get(name) == clients.REVOKED for name in names], dtype=bool)
    if not revoked.any():
        return samples, {}
    dropped = revoked[codes]
    counts = np.bincount(codes[dropped], minlength=len(names))
    excluded = {names[c]: int(n) for c, n in enumerate(counts) if n}
    kept = samples.subset(np.flatnonzero(~dropped))
    return dataclasses.replace(kept, skipped=samples.skipped), excluded


def split(
    samples: Samples,
    *,
    holdout_percent: int,
    validation_fraction: float,
    seed: int,
    recent: RecentWindow | None = None,
    trust: Mapping[str, str] | None = None,
    key: bytes | None = None,
) -> Split:
    """Revoked clients' samples out first; the holdout: trusted samples whose (keyed) id bucket
    is below ``holdout_percent``; the recent window (if asked, trusted samples only) out of
    training too; the rest, untrusted samples of holdout buckets included, shuffled with
    ``seed`` into train and validation. ``trust`` None: all samples trusted."""
    samples, excluded = exclude_revoked(samples, trust)
    trusted = trusted_mask(samples, trust)
    buckets = id_buckets(samples.ids, key)
    holdout_mask = (buckets < holdout_percent) & trusted
    window_mask = np.zeros(len(samples), dtype=bool)
    if recent is not None and recent.max_count > 0:
        arrived = samples.arrived
        eligible = np.flatnonzero(
            (buckets < holdout_percent + recent.percent) & (arrived > recent.after_ms) & trusted
        )
        # Newest first; ids are sorted, so a stable sort breaks ties the same way in every run.
        newest = eligible[np.argsort(-arrived[eligible], kind="stable")][: recent.max_count]
        window_mask[newest] = True
    rest = np.flatnonzero(~holdout_mask & ~window_mask)
    rest = rest[np.random.default_rng(seed).permutation(len(rest))]
    n_validation = max(1, round(len(rest) * validation_fraction)) if len(rest) > 1 else 0
    holdout = samples.subset(np.flatnonzero(holdout_mask))
    return Split(
        train=samples.subset(np.sort(rest[n_validation:])),
        validation=samples.subset(np.sort(rest[:n_validation])),
        holdout=holdout,
        recent=samples.subset(np.flatnonzero(window_mask)) if recent is not None else None,
        excluded=excluded,
        clients=client_summary(samples, holdout, trust),
    )


def client_summary(
    samples: Samples, holdout: Samples, trust: Mapping[str, str] | None
) -> dict[str, dict[str, Any]]:
    """{client: {"trust", "samples", "holdout"}} for every client with samples in ``samples``."""
    in_holdout = holdout.clients_of()
    return {
        name: {
            "trust": clients.TRUSTED if trust is None else trust.get(name, clients.UNTRUSTED),
            "samples": count,
            "holdout": in_holdout.get(name, 0),
        }
        for name, count in samples.clients_of().items()
    }


def one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(len(LABELS), dtype=np.float32)[y]
