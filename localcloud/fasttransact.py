"""DynamoDB TransactWriteItems at the cost of its items, not of its tables: a patch of moto's
``DynamoDBBackend.transact_write_items``.

Why: moto 5.2.5 makes a transaction undoable by deep-copying every table it touches, once per
action (the copy sits inside the loop over the actions), before writing anything. A transaction
of 100 actions on the data table copies that table 100 times: 2.6 s with 1,000 samples in it and
24 s with 10,000, measured here, growing with the table; the live scorer writes one such
transaction per 98 samples, and the moto server (one process, one GIL) would stall every other
caller meanwhile.

What changes: the same checks in the same order, but in two passes. First every action is
checked against the state before the transaction (key, single operation, no two actions on one
item, its condition); if any condition fails, the transaction is cancelled with moto's
``TransactionCanceledException`` and its reasons, and nothing was written, so nothing is undone.
This is DynamoDB's own semantics: the conditions hold against the items as they were, and no two
actions may touch one item, so no action can see another's write. Then the actions are applied
one by one, exactly as moto applies them (its ``put_item``, ``update_item``, ``delete_item``),
each after a deep copy of the one item it changes; if one fails (an update expression moto
rejects, an item grown too large), the items copied so far are put back, the stream records the
transaction appended are removed (as moto's copy-and-swap removes them) and the error is raised
as moto raises it. Cancellation reasons, error types and messages are moto's.

Rolled-back items are put back into the same table objects (moto swaps in whole copies), so the
fast scan's cached order of a table (``localcloud/fastscan.py``) is dropped for each table the
rollback touched. ``tests/integration/test_localcloud_fasttransact.py`` runs the same transactions
on plain moto and on this patch and compares the tables, the streams and the errors.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table

from localcloud import fastscan

_moto_transact_write_items = DynamoDBBackend.transact_write_items
_OPERATIONS = frozenset({"ConditionCheck", "Put", "Delete", "Update"})
Reason = tuple[str, str, dict[str, Any]] | tuple[None, None, None]


@dataclass
class _Action:
    kind: str
    op: dict[str, Any]
    table: Table
    key: dict[str, Any]


@dataclass
class _Backup:
    table: Table
    hash_key: DynamoType
    range_key: DynamoType | None
    item: Item | None  # a deep copy of the item before the action; None: there was none
    had_hash: bool  # a table with a sort key: whether the partition existed


def _key_of(kind: str, op: dict[str, Any], table: Table) -> dict[str, Any]:
    if kind != "Put":
        return dict(op["Key"])
    attrs = op["Item"]
    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attrs[table.range_key_attr]
    return key


def _check(
    backend: DynamoDBBackend, transact_items: list[dict[str, Any]]
) -> tuple[list[_Action], list[Reason]]:
    """Every action against the state before the transaction (moto's checks, moto's order)."""
    targets: set[tuple[str, str]] = set()
    actions: list[_Action] = []
    reasons: list[Reason] = []
    for item in transact_items:
        if len(item) > 1:
            raise TransactWriteSingleOpException
        original_item: dict[str, Any] | None = None
        try:
            kind, op = next(iter(item.items()))
            if kind not in _OPERATIONS:
                raise ValueError("Unsupported transaction operation")
            table_name = op["TableName"]
            table = backend.get_table(table_name)
            key = _key_of(kind, op, table)
            target = (str(table_name), str(dict(sorted(key.items()))))
            if target in targets:
                raise MultipleTransactionsException()
            targets.add(target)
            current = backend.get_item(table_name, key)
            condition = op.get("ConditionExpression")
            if condition is not None:
                check = get_filter_expression(
                    condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
                )
                if not check.expr(current):
                    if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                        original_item = current.to_json()["Attributes"]
                    raise ConditionalCheckFailed(item=original_item)
            actions.append(_Action(kind, op, table, key))
            reasons.append((None, None, None))
        except MockValidationException:
            raise  # nothing written yet: nothing to undo
        except ConditionalCheckFailed as err:
            reasons.append(("ConditionalCheckFailed", str(err.message), original_item))  # type: ignore[arg-type]
        except Exception as err:  # noqa: BLE001 - moto reports any other error as the action's reason
            reasons.append((type(err).__name__, str(err), original_item))  # type: ignore[arg-type]
    return actions, reasons


def _apply(backend: DynamoDBBackend, action: _Action) -> None:
    """One action, exactly as moto's transact_write_items applies it."""
    op, table_name = action.op, action.op["TableName"]
    names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
    condition = op.get("ConditionExpression")
    if action.kind == "Put":
        backend.put_item(
            table_name,
            op["Item"],
            condition_expression=condition,
            expression_attribute_names=names,
            expression_attribute_values=values,
        )
    elif action.kind == "Delete":
        backend.delete_item(
            table_name,
            action.key,
            condition_expression=condition,
            expression_attribute_names=names,
            expression_attribute_values=values,
        )
    elif action.kind == "Update":
        backend.update_item(
            table_name,
            action.key,
            update_expression=op["UpdateExpression"],
            condition_expression=condition,
            expression_attribute_names=names,  # type: ignore[arg-type]  # None, as moto passes it
            expression_attribute_values=values,  # type: ignore[arg-type]
        )


def _restore(backups: list[_Backup], shards: dict[int, tuple[Table, int]]) -> None:
    for backup in reversed(backups):
        items: Any = backup.table.items  # hash -> item, or hash -> {range -> item}
        if backup.range_key is None:
            if backup.item is None:
                items.pop(backup.hash_key, None)
            else:
                items[backup.hash_key] = backup.item
        elif not backup.had_hash:
            items.pop(backup.hash_key, None)
        elif backup.item is None:
            items[backup.hash_key].pop(backup.range_key, None)
        else:
            items[backup.hash_key][backup.range_key] = backup.item
    for table, length in shards.values():
        if table.stream_shard is not None:
            del table.stream_shard.items[length:]
        fastscan.forget(table)


def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """``DynamoDBBackend.transact_write_items`` with moto's signature and answers (see the
    module's docstring)."""
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    actions, reasons = _check(self, transact_items)
    if any(code is not None for code, _, _ in reasons):
        raise TransactionCanceledException(reasons)
    backups: list[_Backup] = []
    shards: dict[int, tuple[Table, int]] = {}
    applied: list[Reason] = []
    for action in actions:
        if action.kind == "ConditionCheck":
            applied.append((None, None, None))  # checked above; it writes nothing
            continue
        table = action.table
        hash_key, range_key = self.get_keys_value(table, action.key)
        had_hash = hash_key in table.items
        before = table.get_item(hash_key, range_key)
        backups.append(_Backup(table, hash_key, range_key, copy.deepcopy(before), had_hash))
        if id(table) not in shards:
            shards[id(table)] = (
                table,
                len(table.stream_shard.items) if table.stream_shard is not None else 0,
            )
        try:
            _apply(self, action)
            applied.append((None, None, None))
        except MockValidationException:
            _restore(backups, shards)
            raise
        except ConditionalCheckFailed as err:
            applied.append(("ConditionalCheckFailed", str(err.message), None))  # type: ignore[arg-type]
        except Exception as err:  # noqa: BLE001 - as moto: the action's reason, the others go on
            applied.append((type(err).__name__, str(err), None))  # type: ignore[arg-type]
    if any(code is not None for code, _, _ in applied):
        _restore(backups, shards)
        raise TransactionCanceledException(applied)


def install() -> None:
    """Patch moto's DynamoDB backend (once per process) before any request is served."""
    if DynamoDBBackend.transact_write_items is transact_write_items:
        return
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def uninstall() -> None:
    """Back to moto's own (tests that compare the two in one process)."""
    DynamoDBBackend.transact_write_items = _moto_transact_write_items  # type: ignore[method-assign]
