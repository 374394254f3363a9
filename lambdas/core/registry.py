"""The model table: one item per training run, the latest pointer and the single-flight lock.

Items (hash key ``pk``):

- a run: ``pk = version``, ``kind = "run"``, ``sk = version`` (versions sort by time, so the
  ``by-kind`` index lists runs newest first with a Query), plus ``status`` and its record;
- the latest pointer: ``pk = "latest"``, ``version``, ``updated_at`` — the one source of truth
  for which published version clients get;
- the lock: ``pk = "lock"`` (owned by ``lambdas.core.lock``);
- the promotion history: one item per change of latest, ``pk = "history#<sk>"``,
  ``kind = "history"``, ``sk = "<seq>#<iso time>"``. ``seq`` counts the pointer's changes:
  each change is a conditional write against the ``seq`` it saw, so the sequence is the true
  order even when the trainer's and a Lambda's clocks disagree. The pointer change and its
  history item are written in one transaction: there is never one without the other.

- live quality (owned by ``lambdas.core.live``): a version's totals, ``pk = "live#<version>"``
  (no ``kind``), and its time buckets, ``pk = "live#<version>#<start>"``, ``kind = "live"``,
  ``sk = "<version>#<start>"``: how each version did on the samples that arrived while it was
  latest.

The pointer may be ``pinned``: automatic promotions (``set_latest``) then refuse to move it;
people still can (``promote``), and only ``unpin`` lets automation move it again.

Statuses move ``training -> published | rejected | failed | interrupted`` and never back.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from lambdas.core import aws
from lambdas.core.errors import Conflict, NotFound

RUN_KIND = "run"
HISTORY_KIND = "history"
LATEST_PK = "latest"
INDEX = "by-kind"

TRAINING = "training"
PUBLISHED = "published"
REJECTED = "rejected"
FAILED = "failed"
INTERRUPTED = "interrupted"
FINAL_STATUSES = frozenset({PUBLISHED, REJECTED, FAILED, INTERRUPTED})
# Why a run ended failed or interrupted (its ``failure_kind``): INFRASTRUCTURE (timeout,
# throttling, spot reclaim, instance death, endpoint unreachable) is retried with its data;
# DATA (too little data, a bad model, the load check, a bug: the same inputs would fail the
# same way) is not, and its data counts as consumed.
INFRASTRUCTURE = "infrastructure"
DATA = "data"

# What a history item says happened to latest.
AUTO = "auto"  # the gate promoted a new run
PROMOTE = "promote"  # a person made a newer version latest
ROLLBACK = "rollback"  # a person made an older version latest
PIN = "pin"
UNPIN = "unpin"
# Run statuses a person may make latest; REJECTED only with force (its artifacts passed the
# load check, the gate just preferred the baseline or latest was pinned).
PROMOTABLE = frozenset({PUBLISHED})
FORCE_PROMOTABLE = frozenset({PUBLISHED, REJECTED})

VERSION_PATTERN = re.compile(r"^v[0-9]{8}T[0-9]{6}Z-[0-9a-f]{4}$")  # ASCII digits only

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def new_version(now: float | None = None) -> str:
    """A version that sorts by creation time: ``v20261123T091432Z-1a2b``."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return f"v{stamp:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def is_version(text: str) -> bool:
    return bool(VERSION_PATTERN.fullmatch(text))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_ms(text: str) -> int:
    """An ISO-8601 time as ``now_iso`` writes it (or with ``+00:00``) in epoch milliseconds;
    ValueError when it is not one."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def to_item(data: Mapping[str, Any]) -> dict[str, Any]:
    """Plain Python (floats included) to a DynamoDB item."""
    return {k: _serializer.serialize(_to_dynamo(v)) for k, v in data.items() if v is not None}


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A DynamoDB item to plain Python: Decimals become int or float."""
    return {k: _from_dynamo(_deserializer.deserialize(v)) for k, v in item.items()}


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _to_dynamo(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    if isinstance(value, set):
        return sorted(_from_dynamo(v) for v in value)
    return value


@dataclass(frozen=True)
class Registry:
    table: str
    client: Any = None

    @property
    def ddb(self) -> Any:
        return self.client or aws.dynamodb()

    # runs -------------------------------------------------------------------------------

    def create_run(self, version: str, **fields: Any) -> dict[str, Any]:
        """Record a new run as ``training``. Fails with Conflict if the version exists."""
        record = {
            "pk": version,
            "kind": RUN_KIND,
            "sk": version,
            "version": version,
            "status": TRAINING,
            "started_at": now_iso(),
            **fields,
        }
        try:
            self.ddb.put_item(
                TableName=self.table, Item=to_item(record), ConditionExpression="attribute_not_exists(pk)"
            )
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise Conflict(f"run {version} already exists", version=version) from err
            raise
        return record

    def update_run(self, version: str, *, expect_status: str | None = TRAINING, **fields: Any) -> None:
        """Set fields of a run; by default only while it is still ``training`` (a finished
        run is never rewritten by a late or duplicated writer)."""
        if not fields:
            return
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        values = {f":v{i}": _serializer.serialize(_to_dynamo(v)) for i, v in enumerate(fields.values())}
        condition = "attribute_exists(pk)"
        if expect_status is not None:
            names["#status_now"] = "status"
            values[":expected"] = _serializer.serialize(expect_status)
            condition += " AND #status_now = :expected"
        try:
            self.ddb.update_item(
                TableName=self.table,
                Key={"pk": {"S": version}},
                UpdateExpression="SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields))),
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise Conflict(
                    f"run {version} is missing or no longer {expect_status}", version=version
                ) from err
            raise

    def get_run(self, version: str) -> dict[str, Any]:
        item = self.ddb.get_item(TableName=self.table, Key={"pk": {"S": version}}, ConsistentRead=True).get(
            "Item"
        )
        if not item or item.get("kind", {}).get("S") != RUN_KIND:
            raise NotFound(f"no model version {version}", version=version)
        return from_item(item)

    def list_runs(
        self, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Runs newest first; ``cursor`` is the last version of the previous page."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": INDEX,
            "KeyConditionExpression": "kind = :kind",
            "ExpressionAttributeValues": {":kind": {"S": RUN_KIND}},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if cursor:
            kwargs["ExclusiveStartKey"] = {"kind": {"S": RUN_KIND}, "sk": {"S": cursor}, "pk": {"S": cursor}}
        page = self.ddb.query(**kwargs)
        runs = [from_item(item) for item in page.get("Items", [])]
        last = page.get("LastEvaluatedKey")
        return runs, (last["sk"]["S"] if last else None)

    # latest -----------------------------------------------------------------------------

    def latest(self) -> dict[str, Any] | None:
        """The latest pointer (``version``, ``updated_at``, ...) or None before any promotion."""
        item = self.ddb.get_item(TableName=self.table, Key={"pk": {"S": LATEST_PK}}, ConsistentRead=True).get(
            "Item"
        )
        return from_item(item) if item else None

    def latest_version(self) -> str | None:
        pointer = self.latest()
        return str(pointer["version"]) if pointer else None

    def set_latest(
        self, version: str, *, expected: str | None, reason: str, actor: str, action: str = AUTO
    ) -> dict[str, Any]:
        """The automatic path: move latest to ``version`` only if it still is ``expected``
        (None: no latest yet) and is not pinned; append the change to the history.

        The condition makes two concurrent promotions safe: the loser gets Conflict and
        latest reflects exactly one decision made against the state it saw. A pinned latest
        is a Conflict with ``pinned=True`` in its details.
        """
        pointer = self.latest()
        seen = pointer["version"] if pointer else None
        if seen != expected:
            raise Conflict(f"latest is no longer {expected}; not moved to {version}", version=version)
        if pointer and pointer.get("pinned"):
            raise Conflict(f"latest {seen} is pinned; not moved to {version}", version=version, pinned=True)
        return self._change(pointer, version, pinned=False, action=action, reason=reason, actor=actor)

    def promote(
        self, version: str, *, reason: str, actor: str, force: bool = False, pin: bool | None = None
    ) -> dict[str, Any]:
        """A person makes ``version`` latest (rollback or forward), pinned or not.

        Allowed for published runs, and for rejected ones with ``force``; never for failed,
        interrupted or training runs. ``pin`` None keeps the pin as it is: a rollback made
        while pinned stays pinned. Promoting the current latest with the same pin is a no-op
        (``changed`` False, no history item). Returns the history entry.
        """
        self.check_promotable(version, force=force)
        pointer = self.latest()
        previous = pointer["version"] if pointer else None
        was_pinned = bool(pointer and pointer.get("pinned"))
        pinned = was_pinned if pin is None else pin
        if previous == version and pinned == was_pinned:
            return self._unchanged(pointer)
        if previous == version:
            action = PIN if pinned else UNPIN
        else:
            action = ROLLBACK if previous is not None and version < previous else PROMOTE
        return self._change(pointer, version, pinned=pinned, action=action, reason=reason, actor=actor)

    def check_promotable(self, version: str, *, force: bool = False) -> dict[str, Any]:
        """The run, if a person may make it latest; NotFound or Conflict otherwise."""
        run = self.get_run(version)
        allowed = FORCE_PROMOTABLE if force else PROMOTABLE
        if run.get("status") not in allowed:
            hint = " (force promotes a rejected run)" if run.get("status") == REJECTED else ""
            raise Conflict(
                f"run {version} is {run.get('status')}; only "
                f"{' or '.join(sorted(allowed))} runs can be promoted{hint}",
                version=version,
                run_status=run.get("status"),
            )
        return run

    def pin(self, *, reason: str, actor: str, version: str | None = None) -> dict[str, Any]:
        """Pin the current latest (``version``, when given, must be it). Idempotent."""
        return self._set_pin(True, reason=reason, actor=actor, version=version)

    def unpin(self, *, reason: str, actor: str, version: str | None = None) -> dict[str, Any]:
        """Let automatic promotions move latest again. Idempotent."""
        return self._set_pin(False, reason=reason, actor=actor, version=version)

    def _set_pin(self, pinned: bool, *, reason: str, actor: str, version: str | None) -> dict[str, Any]:
        pointer = self.latest()
        if pointer is None:
            raise Conflict("no latest version yet; nothing to pin or unpin")
        if version is not None and pointer["version"] != version:
            raise Conflict(f"latest is {pointer['version']}, not {version}; nothing changed", version=version)
        if bool(pointer.get("pinned")) == pinned:
            return self._unchanged(pointer)
        return self._change(
            pointer,
            str(pointer["version"]),
            pinned=pinned,
            action=PIN if pinned else UNPIN,
            reason=reason,
            actor=actor,
        )

    @staticmethod
    def _unchanged(pointer: dict[str, Any] | None) -> dict[str, Any]:
        pointer = pointer or {}
        return {
            "changed": False,
            "version": pointer.get("version"),
            "previous": pointer.get("version"),
            "pinned": bool(pointer.get("pinned")),
        }

    def _change(
        self,
        pointer: dict[str, Any] | None,
        version: str,
        *,
        pinned: bool,
        action: str,
        reason: str,
        actor: str,
    ) -> dict[str, Any]:
        """Write the new pointer (if it is still ``pointer``) and its history item atomically."""
        seen_seq = int(pointer.get("seq", 0)) if pointer else None
        seq = (seen_seq or 0) + 1
        at = now_iso()
        previous = str(pointer["version"]) if pointer else None
        sk = f"{seq:010d}#{at}"
        entry = {
            "seq": seq,
            "at": at,
            "action": action,
            "version": version,
            "previous": previous,
            "pinned": pinned,
            "was_pinned": bool(pointer and pointer.get("pinned")),
            "reason": reason,
            "actor": actor,
        }
        new_pointer = {"pk": LATEST_PK, **entry, "updated_at": at}
        put_pointer: dict[str, Any] = {"TableName": self.table, "Item": to_item(new_pointer)}
        if pointer is None:
            put_pointer["ConditionExpression"] = "attribute_not_exists(pk)"
        elif "seq" in pointer:
            put_pointer["ConditionExpression"] = "#seq = :seq"
            put_pointer["ExpressionAttributeNames"] = {"#seq": "seq"}
            put_pointer["ExpressionAttributeValues"] = {":seq": {"N": str(seen_seq)}}
        else:  # a pointer written before history existed
            put_pointer["ConditionExpression"] = "#v = :expected AND attribute_not_exists(#seq)"
            put_pointer["ExpressionAttributeNames"] = {"#v": "version", "#seq": "seq"}
            put_pointer["ExpressionAttributeValues"] = {":expected": {"S": previous}}
        history = {"pk": f"history#{sk}", "kind": HISTORY_KIND, "sk": sk, **entry}
        try:
            self.ddb.transact_write_items(
                TransactItems=[
                    {"Put": put_pointer},
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": to_item(history),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except ClientError as err:
            if err.response["Error"]["Code"] in (
                "TransactionCanceledException",
                "ConditionalCheckFailedException",
            ):
                raise Conflict(
                    f"latest changed meanwhile (was {previous}); not moved to {version}", version=version
                ) from err
            raise
        return {"changed": True, **entry}

    def list_history(
        self,
        limit: int = 50,
        cursor: str | None = None,
        *,
        newest_first: bool = False,
        after: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Changes of latest in the order they happened (or newest first); ``cursor`` is the
        ``sk`` of the last item of the previous page; ``after`` (an ``sk``) leaves out that
        change and every earlier one."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": INDEX,
            "KeyConditionExpression": "kind = :kind",
            "ExpressionAttributeValues": {":kind": {"S": HISTORY_KIND}},
            "ScanIndexForward": not newest_first,
            "Limit": limit,
        }
        if after is not None:
            kwargs["KeyConditionExpression"] += " AND sk > :after"
            kwargs["ExpressionAttributeValues"][":after"] = {"S": after}
        if cursor:
            kwargs["ExclusiveStartKey"] = {
                "kind": {"S": HISTORY_KIND},
                "sk": {"S": cursor},
                "pk": {"S": f"history#{cursor}"},
            }
        page = self.ddb.query(**kwargs)
        # None is not stored (no latest before the first change): give it back as None.
        items = [
            {"previous": None, **{k: v for k, v in from_item(item).items() if k not in ("pk", "kind")}}
            for item in page.get("Items", [])
        ]
        last = page.get("LastEvaluatedKey")
        return items, (last["sk"]["S"] if last else None)
