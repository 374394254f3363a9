"""The model table: one item per training run, the latest pointer and the single-flight lock.

Items (hash key ``pk``):

- a run: ``pk = version``, ``kind = "run"``, ``sk = version`` (versions sort by time, so the
  ``by-kind`` index lists runs newest first with a Query), plus ``status`` and its record;
- the latest pointer: ``pk = "latest"``, ``version``, ``updated_at`` — the one source of truth
  for which published version clients get;
- the lock: ``pk = "lock"`` (owned by ``lambdas.core.lock``).

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
LATEST_PK = "latest"
INDEX = "by-kind"

TRAINING = "training"
PUBLISHED = "published"
REJECTED = "rejected"
FAILED = "failed"
INTERRUPTED = "interrupted"
FINAL_STATUSES = frozenset({PUBLISHED, REJECTED, FAILED, INTERRUPTED})

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

    def set_latest(self, version: str, *, expected: str | None, reason: str, actor: str) -> dict[str, Any]:
        """Move latest to ``version`` only if it still is ``expected`` (None: no latest yet).

        The condition makes two concurrent promotions safe: the loser gets Conflict and
        latest reflects exactly one decision made against the state it saw.
        """
        pointer = {
            "pk": LATEST_PK,
            "version": version,
            "previous": expected,
            "updated_at": now_iso(),
            "reason": reason,
            "actor": actor,
        }
        if expected is None:
            condition, values = "attribute_not_exists(pk)", None
        else:
            condition, values = "version = :expected", {":expected": {"S": expected}}
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Item": to_item(pointer),
            "ConditionExpression": condition,
        }
        if values:
            kwargs["ExpressionAttributeValues"] = values
        try:
            self.ddb.put_item(**kwargs)
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise Conflict(
                    f"latest is no longer {expected}; not moved to {version}", version=version
                ) from err
            raise
        return pointer
