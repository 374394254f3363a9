"""Single-flight retraining: the lock item of the model table (``pk = "lock"``).

The item holds everything the trigger decides on, so one conditional write changes it
atomically:

- ``holder``/``instance_id``/``expires_at``: the run in flight, if any. A lock past its expiry
  belongs to a dead run and may be taken over.
- ``pending_ids``/``pending_ms``: the samples no finished run is known to have trained on: ids
  (distinct, so a re-delivered batch adds nothing) and, aligned with them, their ``ingested``
  epoch ms. Capped at the ``cap`` newest (only "enough or not yet" matters, and the newest are
  the ones that outlive a run's scan). An item written before ``pending_ms`` existed has only
  the ids: they count as ingested after any scan (``UNKNOWN_MS``), so they are never dropped
  unseen (at worst one redundant run, the old behaviour). The ids stay where the previous code
  reads them.
- ``watermark_ms``: every sample ingested at or before it was trained on (or given up on), so
  a record replayed later is not new data and never counts again. A launch does not move it:
  the run's own samples stay pending while it runs, so a run that fails for an
  infrastructure reason leaves them pending for its retry. When a run ends having trained (or
  failed on its data), the watermark moves to what its trainer scanned: its
  ``scan_started_ms`` less ``margin_ms`` (coalescing by what was trained on: samples that
  arrived between the launch and the scan were trained on and do not start a second run).
  A run record without ``scan_started_ms`` (an older trainer) moves it to the launch time.
- ``failures``/``retry_at``/``retry_from_ms``: consecutive infrastructure failures of the
  pending data, when the next attempt may start, and the launch of the failed attempt
  (samples ingested after it are fresh data, which does not wait for the backoff).
- ``last_launch_at``: for the minimum interval between launches.
- ``request``: a retrain asked for by a rule other than the count (``rule``: ``"quality"`` or
  ``"drift"``) with its figures, written by the score function (``request``, below) while no
  run is in flight. It lets a run start with fewer than ``MIN_NEW_SAMPLES`` pending, under the
  same lock, minimum interval and retry backoff; the launch consumes it. It counts only while
  its evidence starts at or after the last launch (``from_ms >= last_launch_at``): evidence
  older than a run was that run's to answer, so a duplicated or late request never starts a
  second run. It judged one serving version (its ``version``): when it would start a run and
  that version is no longer latest (a person promoted or rolled back, another run published), it
  is dropped instead (``outdated``); the new latest is judged afresh on its own window.
- ``holds``: bulk imports in progress (``{import_id: until_ms}``), written by the importer
  through ``LockStore.set_holds`` (``hold`` when it takes an import, so at every part, until
  the end of its lease; ``unhold`` when the import is done or failed). While any hold is
  unexpired no run starts (``why_not_launch``: "import <id> in progress"): an import's rows
  reach the data table's stream over minutes, and one run on all of them is worth more than a run on its first
  ``MIN_NEW_SAMPLES``. The rows still count as pending; once the last hold is gone the train
  function's schedule (``due``) launches one run. A hold past ``until_ms`` (its importer died
  and nothing resumed it) is ignored, so a dead import cannot block training for longer than
  one lease of the importer.
- ``rev``: incremented by every write; a write succeeds only if ``rev`` is still the one read
  (optimistic concurrency), so concurrent batches serialise on this item.

The transitions are pure functions of ``LockState``; ``LockStore`` reads and writes the item.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from lambdas.core import aws, log
from lambdas.core.errors import Unavailable
from lambdas.core.registry import INFRASTRUCTURE, from_item, to_item

LOCK_PK = "lock"
# The ingested time of a pending id stored without one (by the previous code): later than any
# scan, so it is never taken for seen. 2**53 stays exact as a JSON number and a float.
UNKNOWN_MS = 2**53
T = TypeVar("T")

Sample = tuple[str, int]  # (id, ingested epoch ms)
# The lock keeps up to MIN_NEW_SAMPLES pending ids (66 characters each) and their times: about
# 76 bytes a sample against DynamoDB's 400 KB item limit (Developer Guide, "Service, account,
# and table quotas": item size), so at most some 5,000. A larger MIN_NEW_SAMPLES is refused at
# start (lambdas/train.py) rather than failing every stream batch with a ValidationException.
MAX_PENDING = 2000


@dataclass(frozen=True)
class LockState:
    holder: str | None = None
    instance_id: str | None = None
    expires_at: float = 0.0
    pending_samples: tuple[Sample, ...] = ()  # sorted by (ingested ms, id)
    watermark_ms: int = 0
    last_launch_at: float = 0.0
    failures: int = 0
    retry_at: float = 0.0
    retry_from_ms: int = 0
    request: dict[str, Any] | None = None  # see ``wanted``
    holds: tuple[tuple[str, int], ...] = ()  # (import id, until epoch ms), sorted by id
    rev: int = 0

    def held(self, now: float) -> bool:
        return self.holder is not None and self.expires_at > now

    def expired(self, now: float) -> bool:
        return self.holder is not None and self.expires_at <= now

    def live_hold(self, now: float) -> str | None:
        """The import (id) holding back launches at ``now`` (epoch s), if any."""
        now_ms = now * 1000
        return next((import_id for import_id, until_ms in self.holds if until_ms > now_ms), None)

    @property
    def pending(self) -> int:
        return len(self.pending_samples)

    @property
    def pending_ids(self) -> tuple[str, ...]:
        return tuple(sample_id for sample_id, _ in self.pending_samples)

    def fresh(self, since_ms: int) -> int:
        """Pending samples ingested after ``since_ms``."""
        return sum(1 for _, ingested_ms in self.pending_samples if ingested_ms > since_ms)

    @property
    def launch_ms(self) -> int:
        return int(self.last_launch_at * 1000)

    @property
    def wanted(self) -> dict[str, Any] | None:
        """The rule request that may start a run: one whose evidence postdates the last launch."""
        request = self.request
        if request is None or int(request.get("from_ms", 0)) < self.launch_ms:
            return None
        return request


# retries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` attempts after an infrastructure failure, ``backoff_s`` before the first,
    doubling after each (60 s: 1, 2, 4 minutes)."""

    retries: int = 3
    backoff_s: float = 60.0

    def delay_s(self, attempt: int) -> float:
        return self.backoff_s * 2 ** (attempt - 1)


@dataclass(frozen=True)
class Retry:
    """What follows an infrastructure failure: retry ``attempt`` of ``of`` at ``next_at``, or,
    with ``next_at`` None, nothing: the retries are used up and the data is given up on."""

    attempt: int
    of: int
    next_at: float | None

    @property
    def gave_up(self) -> bool:
        return self.next_at is None

    def to_dict(self) -> dict[str, Any]:
        at = self.next_at
        return {
            "attempt": self.attempt,
            "of": self.of,
            "next_at": None if at is None else _iso(at),
            "gave_up": self.gave_up,
        }


def plan_retry(failures: int, now: float, policy: RetryPolicy) -> Retry:
    """The plan after the ``failures``-th consecutive infrastructure failure (1: the first)."""
    if failures > policy.retries:
        return Retry(attempt=policy.retries, of=policy.retries, next_at=None)
    return Retry(attempt=failures, of=policy.retries, next_at=now + policy.delay_s(failures))


@dataclass(frozen=True)
class RunEnd:
    """How the holder's run ended. ``failure_kind`` INFRASTRUCTURE: it is retried with its
    samples; anything else (a model, or a failure of the data or the code): its samples are
    consumed up to what it scanned (``scan_started_ms``; unknown: its launch)."""

    version: str
    failure_kind: str | None = None
    scan_started_ms: int | None = None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# transitions --------------------------------------------------------------------------------


def add_samples(state: LockState, samples: Iterable[Sample], cap: int) -> LockState:
    """Note new samples ``(id, ingested_ms)``; those at or before the watermark are ignored.

    Only the ``cap`` newest are kept: a run's scan makes the oldest ones seen first, so the
    newest are the ones that can still count once it ends (and an id dropped here is older than
    all kept ones, so its replay is dropped again)."""
    entries = list(state.pending_samples)
    known = {sample_id for sample_id, _ in entries}
    for sample_id, ingested_ms in samples:
        if ingested_ms > state.watermark_ms and sample_id not in known:
            entries.append((sample_id, ingested_ms))
            known.add(sample_id)
    entries.sort(key=lambda entry: (entry[1], entry[0]))
    return dataclasses.replace(state, pending_samples=tuple(entries[-cap:] if cap > 0 else entries))


def why_not_launch(state: LockState, now: float, *, min_new: int, min_interval_s: float) -> str | None:
    """None when a run may start now, else the reason it may not."""
    if state.held(now):
        return f"run {state.holder} in flight"
    importing = state.live_hold(now)
    if importing is not None:
        return f"import {importing} in progress"
    if state.pending < min_new and state.wanted is None:
        return f"{state.pending} new samples pending, {min_new} needed"
    if now - state.last_launch_at < min_interval_s:
        return f"last launch {now - state.last_launch_at:.0f}s ago, {min_interval_s:.0f}s minimum"
    # The backoff is for the infrastructure; enough data that arrived after the failed attempt
    # is a run of its own and does not wait for it.
    if state.failures and now < state.retry_at and state.fresh(state.retry_from_ms) < min_new:
        return f"retry {state.failures} due in {state.retry_at - now:.0f}s"
    return None


def due(state: LockState, now: float, *, min_new: int, min_interval_s: float) -> bool:
    """Whether a step with no new event would change anything: a launch (a retry that came due)
    or the takeover of an expired lock. What the schedule checks with one read."""
    return (
        state.expired(now)
        or why_not_launch(state, now, min_new=min_new, min_interval_s=min_interval_s) is None
    )


COUNT = "count"  # the rule of a run started by MIN_NEW_SAMPLES new samples


def rule(state: LockState, min_new: int) -> str:
    """Which rule starts the run ``state`` may launch: the count first (it would have started
    the run anyway), else the request's."""
    wanted = state.wanted
    if state.pending >= min_new or wanted is None:
        return COUNT
    return str(wanted.get("rule"))


def outdated(state: LockState, min_new: int, latest: str | None) -> str | None:
    """Why the rule request that would start the run ``state`` may launch is not worth one (the
    version it judged is no longer ``latest``), else None. A run the count starts is never
    outdated: its samples are new data whichever version serves."""
    wanted = state.wanted
    if wanted is None or rule(state, min_new) == COUNT or wanted.get("version") == latest:
        return None
    return f"the {wanted.get('rule')} request judged {wanted.get('version')}, latest is now {latest}"


def drop_request(state: LockState) -> LockState:
    """Forget the rule request (an outdated one: see ``outdated``)."""
    return dataclasses.replace(state, request=None)


def acquire(state: LockState, version: str, now: float, ttl_s: float) -> LockState:
    """Hand the lock to ``version``. Its samples stay pending until it ends (see ``end_run``);
    a rule's request is answered by this run (consumed)."""
    return dataclasses.replace(
        state, holder=version, instance_id=None, expires_at=now + ttl_s, last_launch_at=now, request=None
    )


def release(state: LockState, version: str) -> LockState:
    """Free the lock if ``version`` holds it (a late or repeated release changes nothing)."""
    if state.holder != version:
        return state
    return dataclasses.replace(state, holder=None, instance_id=None, expires_at=0.0)


def end_run(
    state: LockState, end: RunEnd, now: float, *, policy: RetryPolicy, margin_ms: int
) -> tuple[LockState, Retry | None]:
    """The holder's run ended: free the lock; consume what it trained on, or plan its retry.
    A run that does not hold the lock (a late or repeated end) changes nothing.

    ``margin_ms``: a sample's ``ingested`` time is taken before its write, which may land
    later (the upload function retries for up to its timeout) and on another clock, so only
    samples ingested ``margin_ms`` before the scan started are taken for seen."""
    if state.holder != end.version:
        return state, None
    launch_ms = state.launch_ms
    freed = release(state, end.version)
    if end.failure_kind == INFRASTRUCTURE:
        return _failed(freed, launch_ms, now, policy)
    seen_ms = launch_ms if end.scan_started_ms is None else end.scan_started_ms - margin_ms
    return _consume(freed, seen_ms), None


def undo_acquire(
    state: LockState, version: str, before: LockState, now: float, policy: RetryPolicy
) -> tuple[LockState, Retry | None]:
    """A launch failed (an infrastructure failure): free the lock, give the launch interval
    and a rule's request back (unless a newer one came), plan the retry."""
    if state.holder != version:
        return state, None
    launch_ms = state.launch_ms
    freed = dataclasses.replace(
        release(state, version),
        last_launch_at=before.last_launch_at,
        request=state.request or before.request,
    )
    return _failed(freed, launch_ms, now, policy)


def _consume(state: LockState, seen_ms: int) -> LockState:
    watermark = max(state.watermark_ms, seen_ms)
    return dataclasses.replace(
        state,
        watermark_ms=watermark,
        pending_samples=tuple(e for e in state.pending_samples if e[1] > watermark),
        failures=0,
        retry_at=0.0,
        retry_from_ms=0,
    )


def _failed(state: LockState, launch_ms: int, now: float, policy: RetryPolicy) -> tuple[LockState, Retry]:
    failures = state.failures + 1
    retry = plan_retry(failures, now, policy)
    if retry.next_at is None:  # given up: what the failed attempts had is consumed
        return _consume(state, launch_ms), retry
    return dataclasses.replace(
        state, failures=failures, retry_at=retry.next_at, retry_from_ms=launch_ms
    ), retry


def hold(state: LockState, import_id: str, until_ms: int, now: float) -> LockState:
    """Set (or move) the hold of ``import_id``; expired holds of other imports are dropped."""
    kept = {i: ms for i, ms in state.holds if ms > now * 1000 and i != import_id}
    kept[import_id] = until_ms
    return dataclasses.replace(state, holds=tuple(sorted(kept.items())))


def unhold(state: LockState, import_id: str, now: float) -> LockState:
    """Remove the hold of ``import_id`` (and expired ones); no hold of it changes nothing."""
    kept = tuple((i, ms) for i, ms in state.holds if ms > now * 1000 and i != import_id)
    if not any(i == import_id for i, _ in state.holds):
        return state
    return dataclasses.replace(state, holds=kept)


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
        ids = [str(i) for i in data.get("pending_ids", ())]
        times = [int(ms) for ms in data.get("pending_ms", ())]
        if len(times) != len(ids):  # written by the previous code (or by it after this code)
            times = [UNKNOWN_MS] * len(ids)
        return LockState(
            holder=data.get("holder"),
            instance_id=data.get("instance_id"),
            expires_at=float(data.get("expires_at", 0)),
            pending_samples=tuple(sorted(zip(ids, times, strict=True), key=lambda e: (e[1], e[0]))),
            watermark_ms=int(data.get("watermark_ms", 0)),
            last_launch_at=float(data.get("last_launch_at", 0)),
            failures=int(data.get("failures", 0)),
            retry_at=float(data.get("retry_at", 0)),
            retry_from_ms=int(data.get("retry_from_ms", 0)),
            request=data.get("request"),
            holds=tuple(sorted((str(i), int(ms)) for i, ms in (data.get("holds") or {}).items())),
            rev=int(data.get("rev", 0)),
        )

    def write(self, old: LockState, new: LockState) -> bool:
        """Store ``new`` if the item is still at ``old.rev``; False if someone wrote first."""
        record = dataclasses.asdict(dataclasses.replace(new, rev=old.rev + 1))
        del record["pending_samples"]
        record["pending_ids"] = list(new.pending_ids)
        record["pending_ms"] = [ms for _, ms in new.pending_samples]
        record["holds"] = dict(new.holds) or None
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

    def request(self, request: dict[str, Any]) -> bool:
        """Ask for a run (a rule's request, see the module docstring): True when stored, False
        when a run is in flight (it will be judged afresh once that run ends and serves).

        One conditional update that also bumps ``rev``, so a trigger step that read the item
        before it fails its own condition and reads it again: neither write is lost. ADD on a
        missing item starts from 0 (DynamoDB API reference, AttributeValueUpdate: "DynamoDB uses
        0 as the initial value"), so a first request creates the lock item. Sent as a
        one-action TransactWriteItems: the score function may update the model table only
        inside a transaction (its role's dynamodb:EnclosingOperation condition). The same
        request twice stores the same item: duplicates are harmless."""
        update = {
            "TableName": self.table,
            "Key": {"pk": {"S": LOCK_PK}},
            "UpdateExpression": "SET #q = :q ADD #rev :one",
            "ConditionExpression": "attribute_not_exists(#h)",
            "ExpressionAttributeNames": {"#q": "request", "#rev": "rev", "#h": "holder"},
            "ExpressionAttributeValues": {":q": to_item({"q": request})["q"], ":one": {"N": "1"}},
        }
        try:
            self.ddb.transact_write_items(TransactItems=[{"Update": update}])
        except ClientError as err:
            # A failed condition cancels the transaction with the one action's reason.
            if aws.cancellation_reasons(err) == ["ConditionalCheckFailed"]:
                return False
            raise
        return True

    def set_holds(self, step: Callable[[LockState], LockState]) -> LockState:
        """Apply ``step`` (``hold`` or ``unhold`` with its arguments bound) to the ``holds`` of
        the item, with the same optimistic concurrency as ``write`` (read, change, write only
        if ``rev`` is unchanged, else read again) but as an UpdateItem of ``holds`` and ``rev``
        alone: the importer's role may update the lock item, not replace it. Returns the
        state stored."""
        for _ in range(self.attempts):
            old = self.read()
            new = step(old)
            if new.holds == old.holds:
                return old
            update: dict[str, Any] = {
                "TableName": self.table,
                "Key": {"pk": {"S": LOCK_PK}},
                "ExpressionAttributeNames": {"#rev": "rev", "#holds": "holds"},
                "ExpressionAttributeValues": {":one": {"N": "1"}},
            }
            if new.holds:
                update["UpdateExpression"] = "SET #holds = :holds ADD #rev :one"
                update["ExpressionAttributeValues"][":holds"] = to_item({"h": dict(new.holds)})["h"]
            else:
                update["UpdateExpression"] = "REMOVE #holds ADD #rev :one"
            if old.rev == 0:
                update["ConditionExpression"] = "attribute_not_exists(pk)"
            else:
                update["ConditionExpression"] = "#rev = :rev"
                update["ExpressionAttributeValues"][":rev"] = {"N": str(old.rev)}
            try:
                self.ddb.update_item(**update)
            except ClientError as err:
                if err.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
                log.log("lock_contended", rev=old.rev)
                continue
            return dataclasses.replace(new, rev=old.rev + 1)
        raise Unavailable("the training lock is contended; retry the import")

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
