"""DynamoDB Scan at the cost of the page, not of the table: a patch of moto's ``Table.scan``.

Why: moto 5.2.5 serves every Scan page by sorting all the table's items (``all_items``), then
walking them from the first one, hashing each (``is_within_segment``) and comparing it with
the ExclusiveStartKey until it passes it. A page costs the whole table, so a full paged scan
costs table x pages, which grows with the square of the table: the trainer's 4-segment scan of
100,000 samples spent 31 s walking the table (``scripts/bench_scan.py``), a tenfold table
would spend a hundredfold, and its pages ran into botocore's ReadTimeoutError.

What changes: for a scan of the table itself (no IndexName, no legacy ScanFilter), the keys in
moto's order are kept per table (``_Order``), with, per (Segment, TotalSegments) asked for, the
positions of that segment's items, found with moto's own ``is_within_segment``. A page starts
by bisection just after the ExclusiveStartKey and reads only its own items. The order is
dropped whenever moto's ``Table.put_item`` or ``Table.delete_item`` runs on the table (every
insert, replacement and removal of an item goes through one of them; ``update_item`` changes
an existing item in place, which keeps its key and its place, and creates a new one with
``put_item``), and rebuilt by the next scan: O(n log n)
once per change, not per page. As a safety net, an order is rebuilt too when its table has
swapped its ``items`` dict or holds another number of hash keys. The cache lives beside the
tables, never in them, so snapshots (``persistence.py``) do not carry it and a restored or
rolled-back table (moto's transactions roll back by swapping in a copy) starts without one.

Results are identical to moto's: the same order (moto sorts with ``DynamoType.__lt__``, which
compares ``cast_value``; the key types are one per table, so equality agrees too), the same
items per page (1 MB of item sizes before the filter, or Limit), the same LastEvaluatedKey,
ScannedCount, FilterExpression and ProjectionExpression applied afterwards, deep copies as
moto returns. Anything else (an index, a ScanFilter, an ExclusiveStartKey that is not the
table's key) goes to moto's own scan. ``tests/integration/test_localcloud_fastscan.py``
compares both, page by page, and fails when a moto upgrade makes them differ.
"""

from __future__ import annotations

import bisect
import copy
import functools
import itertools
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import RESULT_SIZE_LIMIT, Table

_moto_scan = Table.scan
_lock = threading.Lock()
_orders: weakref.WeakKeyDictionary[Table, _Order] = weakref.WeakKeyDictionary()
# Bumped by every put/delete: an order built while a change ran is not kept.
_generations: weakref.WeakKeyDictionary[Table, int] = weakref.WeakKeyDictionary()


@dataclass
class _Order:
    """A table's items in moto's scan order (``Table.all_items``), as of one generation."""

    items_dict: Any  # the table's ``items``: a table that swapped it is not this order's
    hash_count: int
    items: list[Item]
    sort_keys: list[Any]
    _segments: dict[tuple[int, int], list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, table: Table) -> _Order:
        items_dict = table.items
        hash_sets = list(items_dict.values())
        if table.range_key_attr:
            items = [item for hash_set in hash_sets for item in list(hash_set.values())]
        else:
            items = hash_sets
        keyed = [(_sort_key(item.hash_key, item.range_key), item) for item in items]
        keyed.sort(key=lambda pair: pair[0])
        return cls(items_dict, len(hash_sets), [i for _, i in keyed], [k for k, _ in keyed])

    def fits(self, table: Table) -> bool:
        return self.items_dict is table.items and self.hash_count == len(table.items)

    def positions(self, segments: tuple[None, None] | tuple[int, int]) -> Sequence[int]:
        if segments[0] is None or segments[1] is None:
            return range(len(self.items))
        segment = (segments[0], segments[1])
        found = self._segments.get(segment)
        if found is None:
            found = [i for i, item in enumerate(self.items) if item.is_within_segment(segment)]
            self._segments[segment] = found
        return found


def _sort_key(hash_key: DynamoType, range_key: DynamoType | None) -> Any:
    # moto sorts on (hash, range) DynamoTypes, whose < is their cast values' <
    if range_key is None:
        return hash_key.cast_value
    return (hash_key.cast_value, range_key.cast_value)


def _order(table: Table) -> _Order:
    with _lock:
        order = _orders.get(table)
        generation = _generations.get(table, 0)
    if order is not None and order.fits(table):
        return order
    order = _Order.of(table)
    with _lock:
        if _generations.get(table, 0) == generation:
            _orders[table] = order
    return order


def _changed(table: Table) -> None:
    with _lock:
        _generations[table] = _generations.get(table, 0) + 1
        _orders.pop(table, None)


def forget(table: Table) -> None:
    """Drop the cached order of ``table``: its items were changed behind moto's put_item and
    delete_item (a rolled-back transaction, ``localcloud/fasttransact.py``)."""
    _changed(table)


def _start_key(table: Table, exclusive_start_key: dict[str, Any]) -> Any:
    """The sort key of an ExclusiveStartKey, or None when it is not this table's key."""
    try:
        hash_key = DynamoType(exclusive_start_key[table.hash_key_attr])
        range_key = DynamoType(exclusive_start_key[table.range_key_attr]) if table.range_key_attr else None
    except (KeyError, TypeError, AttributeError):
        return None
    if hash_key.type != table.hash_key_type:
        return None
    if range_key is not None and range_key.type != table.range_key_type:
        return None
    return _sort_key(hash_key, range_key)


def scan(
    self: Table,
    filters: dict[str, Any],
    limit: int,
    exclusive_start_key: dict[str, Any],
    filter_expression: Any = None,
    index_name: str | None = None,
    consistent_read: bool = False,
    projection_expression: list[list[str]] | None = None,
    segments: tuple[None, None] | tuple[int, int] = (None, None),
) -> tuple[list[Item], int, dict[str, Any] | None]:
    """``Table.scan`` with moto's signature and answers (see the module's docstring)."""
    start_key = None if exclusive_start_key is None else _start_key(self, exclusive_start_key)
    if index_name or filters or (exclusive_start_key is not None and start_key is None):
        return _moto_scan(
            self,
            filters,
            limit,
            exclusive_start_key,
            filter_expression,
            index_name,
            consistent_read,
            projection_expression,
            segments,
        )
    order = _order(self)
    positions = order.positions(segments)
    start = 0
    if exclusive_start_key is not None:
        # moto skips every item up to and including the start key: the first one after it
        start = bisect.bisect_right(positions, start_key, key=order.sort_keys.__getitem__)
    results: list[Item] = []
    size = 0
    last_evaluated_key = None
    for position in itertools.islice(positions, start, None):
        item = order.items[position]
        item_size = item.size()
        if len(results) == limit or size + item_size > RESULT_SIZE_LIMIT:
            last_evaluated_key = self._get_last_evaluated_key(results[-1], None)
            break
        results.append(copy.deepcopy(item))
        size += item_size
    scanned_count = len(results)
    if filter_expression is not None:
        results = [item for item in results if filter_expression.expr(item)]
    if projection_expression:
        results = [item.project(projection_expression) for item in results]
    return results, scanned_count, last_evaluated_key


def _forgets_order(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def changing(self: Table, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            _changed(self)  # after the change: a scan that sees the new generation sees it

    return changing


def install() -> None:
    """Patch moto's Table (once per process) before any request is served or replayed."""
    if Table.scan is scan:
        return
    Table.scan = scan  # type: ignore[method-assign]
    Table.put_item = _forgets_order(Table.put_item)  # type: ignore[method-assign]
    Table.delete_item = _forgets_order(Table.delete_item)  # type: ignore[method-assign]
