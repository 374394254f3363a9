"""Single-flight retraining: the lock item of the model table (``pk = "lock"``).

The item holds everything the trigger decides on, so one conditional write changes it
atomically:

- ``holder``/``instance_id``/``expires_at``: the run in flight, if any. A lock past its expiry
  belongs to a dead run and may be taken over.
- ``pending_ids``: distinct ids of samples ingested after ``watermark_ms`` (capped: only
  "enough or not yet" matters). A set, so a re-delivered batch adds nothing.
- ``watermark_ms``: when the last run was launched. Every sample ingested before it was in the
  table when that run's trainer scanned it, so a record replayed after the run finished is not
  new data and never counts again.
- ``last_launch_at``: for the minimum interval between launches.
- ``rev``: incremented by every write; a write succeeds only if ``rev`` is still the one read
  (optimistic concurrency), so concurrent batches serialise on this item.

The transitions are pure functions of ``LockState``; ``LockStore`` reads and writes the item.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from lambdas.core import aws, log
from lambdas.core.errors import Unavailable
from lambdas.core.registry import from_item, to_item

LOCK_PK = "lock"
T = TypeVar("T")


@dataclass(frozen=True)
class LockState:
    holder: str | None = None
    instance_id: str | None = None
    expires_at: float = 0.0
    pending_ids: tuple[str, ...] = ()
    watermark_ms: int = 0
    last_launch_at: float = 0.0
    rev: int = 0

    def held(self, now: float) -> bool:
        return self.holder is not None and self.expires_at > now

    def expired(self, now: float) -> bool:
        return self.holder is not None and self.expires_at <= now

    @property
    def pending(self) -> int:
        return len(self.pending_ids)


def add_samples(state: LockState, samples: Iterable[tuple[str, int]], cap: int) -> LockState:
    """Note new samples ``(id, ingested_ms)``; those from before the last launch are ignored."""
    ids = list(state.pending_ids)
    known = set(ids)
    for sample_id, ingested_ms in samples:
        if len(ids) >= cap:
            break
        if ingested_ms > state.watermark_ms and sample_id not in known:
            ids.append(sample_id)
            known.add(sample_id)
    return dataclasses.replace(state, pending_ids=tuple(ids))


def why_not_launch(state: LockState, now: float, *, min_new: int, min_interval_s: float) -> str | None:
    """None when a run may start now, else the reason it may not."""
    if state.held(now):
        return f"run {state.holder} in flight"
    if state.pending < min_new:
        return f"{state.pending} new samples pending, {min_new} needed"
    if now - state.last_launch_at < min_interval_s:
        return f"last launch {now - state.last_launch_at:.0f}s ago, {min_interval_s:.0f}s minimum"
    return None


def acquire(state: LockState, version: str, now: float, ttl_s: float) -> LockState:
    """Hand the lock to ``version``; the samples pending so far are its data."""
    return dataclasses.replace(
        state,
        holder=version,
        instance_id=None,
        expires_at=now + ttl_s,
        pending_ids=(),
        watermark_ms=int(now * 1000),
        last_launch_at=now,
    )


def release(state: LockState, version: str) -> LockState:
    """Free the lock if ``version`` holds it (a late or repeated release changes nothing)."""
    if state.holder != version:
        return state
    return dataclasses.replace(state, holder=None, instance_id=None, expires_at=0.0)


def undo_acquire(state: LockState, version: str, before: LockState) -> LockState:
    """A launch failed: free the lock and put back the data and timing it had consumed."""
    if state.holder != version:
        return state
    ids = tuple(dict.fromkeys(before.pending_ids + state.pending_ids))
    return dataclasses.replace(
        state,
        holder=None,
        instance_id=None,
        expires_at=0.0,
        pending_ids=ids,
        watermark_ms=before.watermark_ms,
        last_launch_at=before.last_launch_at,
    )


def with_instance(state: LockState, version: str, instance_id: str) -> LockState:
    if state.holder != version:
        return state
    return dataclasses.replace(state, instance_id=instance_id)


@dataclass(frozen=True)
class LockStore:
    table: str
    client: Any = None
    attempts: int = 10

    @property
    def ddb(self) -> Any:
        return self.client or aws.dynamodb()

    def read(self) -> LockState:
        item = self.ddb.get_item(TableName=self.table, Key={"pk": {"S": LOCK_PK}}, ConsistentRead=True).get(
            "Item"
        )
        if not item:
            return LockState()
        data = from_item(item)
        return LockState(
            holder=data.get("holder"),
            instance_id=data.get("instance_id"),
            expires_at=float(data.get("expires_at", 0)),
            pending_ids=tuple(data.get("pending_ids", ())),
            watermark_ms=int(data.get("watermark_ms", 0)),
            last_launch_at=float(data.get("last_launch_at", 0)),
            rev=int(data.get("rev", 0)),
        )

    def write(self, old: LockState, new: LockState) -> bool:
        """Store ``new`` if the item is still at ``old.rev``; False if someone wrote first."""
        record = dataclasses.asdict(dataclasses.replace(new, rev=old.rev + 1))
        record["pending_ids"] = list(new.pending_ids)
        record["pk"] = LOCK_PK
        kwargs: dict[str, Any] = {"TableName": self.table, "Item": to_item(record)}
        if old.rev == 0:
            kwargs["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            kwargs["ConditionExpression"] = "rev = :rev"
            kwargs["ExpressionAttributeValues"] = {":rev": {"N": str(old.rev)}}
        try:
            self.ddb.put_item(**kwargs)
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def transact(self, step: Callable[[LockState], tuple[LockState, T]]) -> tuple[LockState, LockState, T]:
        """Apply the pure ``step`` to the current state until it is stored without a race.

        Returns (state read, state stored, step's result). ``step`` may run several times, so
        it must not have side effects.
        """
        for _ in range(self.attempts):
            old = self.read()
            new, result = step(old)
            if dataclasses.replace(new, rev=old.rev) == old:
                return old, old, result
            if self.write(old, new):
                return old, dataclasses.replace(new, rev=old.rev + 1), result
            log.log("lock_contended", rev=old.rev)
        raise Unavailable("the training lock is contended; retry the batch")
