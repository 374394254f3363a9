"""Service limits AWS enforces and moto does not: refused here with the error AWS gives.

moto accepts a 26-item BatchWriteItem, a 500 KB item and 20 KB of user data; AWS refuses all
three. Strict beats lenient: the local cloud refuses them too, before moto sees the request.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from localcloud.awsapi import ApiCall

KB = 1024
MB = 1024 * KB

# https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchWriteItem.html
# "as many as 25 put or delete requests", "up to 16 MB of data", "Individual items to be
# written can be as large as 400 KB".
BATCH_WRITE_MAX_ITEMS = 25
BATCH_WRITE_MAX_BYTES = 16 * MB
ITEM_MAX_BYTES = 400 * KB
# https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html
# "groups up to 100 action requests", "The aggregate size of the items in the transaction
# cannot exceed 4 MB."
TRANSACT_MAX_ACTIONS = 100
TRANSACT_MAX_BYTES = 4 * MB
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/user-data.html: "User data is limited
# to 16 KB, in raw form, before it is base64-encoded."
USER_DATA_MAX_BYTES = 16 * KB


@dataclass(frozen=True)
class LimitExceeded(Exception):
    code: str
    message: str
    status: int


def check(call: ApiCall, body_size: int) -> None:
    """Raise :class:`LimitExceeded` if AWS would refuse ``call`` for a size or count limit."""
    checker = _CHECKERS.get((call.service, call.operation))
    if checker is not None:
        checker(call.params, body_size)


def _validation(message: str) -> LimitExceeded:
    return LimitExceeded("ValidationException", message, 400)


# Wording, as DynamoDB returns it (seen in public reports: boto/boto3#483,
# gravitational/teleport#38743 for the per-table constraint; 99x/serverless-dynamodb-local#175
# for the across-tables count; the item size message is the one PutItem returns).
_TOO_MANY_ITEMS = "Too many items requested for the BatchWriteItem call"
_ITEM_TOO_LARGE = "Item size has exceeded the maximum allowed size"


def _batch_write_item(params: Mapping[str, Any], body_size: int) -> None:
    requests = params.get("RequestItems") or {}
    for table, writes in requests.items():
        if len(writes) > BATCH_WRITE_MAX_ITEMS:
            raise _validation(
                f"1 validation error detected: Value '{{{table}={len(writes)} write requests}}' "
                "at 'requestItems' failed to satisfy constraint: Map value must satisfy constraint: "
                f"[Member must have length less than or equal to {BATCH_WRITE_MAX_ITEMS}, "
                "Member must have length greater than or equal to 1]"
            )
    if sum(len(w) for w in requests.values()) > BATCH_WRITE_MAX_ITEMS:
        raise _validation(_TOO_MANY_ITEMS)
    if body_size > BATCH_WRITE_MAX_BYTES:
        # The exact wording of this refusal is not published; the code and limit are.
        raise _validation(f"Request size of {body_size} bytes exceeds the BatchWriteItem limit of 16 MB")
    for writes in requests.values():
        for write in writes:
            item = (write.get("PutRequest") or {}).get("Item")
            if item is not None and item_size(item) > ITEM_MAX_BYTES:
                raise _validation(_ITEM_TOO_LARGE)


def _put_item(params: Mapping[str, Any], body_size: int) -> None:
    if item_size(params.get("Item") or {}) > ITEM_MAX_BYTES:
        raise _validation(_ITEM_TOO_LARGE)


def _transact_write_items(params: Mapping[str, Any], body_size: int) -> None:
    actions = params.get("TransactItems") or []
    if len(actions) > TRANSACT_MAX_ACTIONS:
        raise _validation(
            f"1 validation error detected: Value '[{len(actions)} actions]' at 'transactItems' "
            "failed to satisfy constraint: "
            f"Member must have length less than or equal to {TRANSACT_MAX_ACTIONS}"
        )
    total = 0
    for action in actions:
        put = action.get("Put")
        if put is not None:
            size = item_size(put.get("Item") or {})
            if size > ITEM_MAX_BYTES:
                raise _validation(_ITEM_TOO_LARGE)
            total += size
        for kind in ("Update", "Delete", "ConditionCheck"):
            if kind in action:
                total += item_size(action[kind].get("Key") or {})
    if total > TRANSACT_MAX_BYTES or body_size > TRANSACT_MAX_BYTES:
        # The exact wording of this refusal is not published; the code and limit are.
        raise _validation("Transaction request size exceeds the TransactWriteItems limit of 4 MB")


def _run_instances(params: Mapping[str, Any], body_size: int) -> None:
    user_data = params.get("UserData")
    if not user_data:
        return
    raw = user_data if isinstance(user_data, bytes) else user_data.encode()
    try:
        decoded = base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise LimitExceeded(
            "InvalidUserData.Malformed", "Invalid BASE64 encoding of user data.", 400
        ) from None
    if len(decoded) > USER_DATA_MAX_BYTES:
        # Seen as EC2's answer in runs-on/runs-on#9 and supergiant/capacity#148.
        raise LimitExceeded(
            "InvalidParameterValue", f"User data is limited to {USER_DATA_MAX_BYTES} bytes.", 400
        )


_CHECKERS = {
    ("dynamodb", "BatchWriteItem"): _batch_write_item,
    ("dynamodb", "PutItem"): _put_item,
    ("dynamodb", "TransactWriteItems"): _transact_write_items,
    ("ec2", "RunInstances"): _run_instances,
}


# --- DynamoDB item size ----------------------------------------------------------------
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html
# ("Item sizes and formats"): an item's size is the sum of its attribute names' UTF-8
# lengths and its values' sizes. Strings: UTF-8 length. Numbers: about 1 byte per two
# significant digits, plus 1. Binary: raw length. Null and Boolean: 1 byte. List and Map:
# 3 bytes of overhead plus their elements, 1 more byte per element (and a Map's keys count
# as names). Sets: the sum of their elements.


def item_size(item: Mapping[str, Any]) -> int:
    """The size DynamoDB counts for ``item`` (attribute name -> AttributeValue)."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: Mapping[str, Any]) -> int:
    (kind, data), *_ = value.items()
    if kind == "S":
        return len(str(data).encode())
    if kind == "N":
        return _number_size(str(data))
    if kind == "B":
        return len(_binary(data))
    if kind in ("NULL", "BOOL"):
        return 1
    if kind == "SS":
        return sum(len(str(s).encode()) for s in data)
    if kind == "NS":
        return sum(_number_size(str(n)) for n in data)
    if kind == "BS":
        return sum(len(_binary(b)) for b in data)
    if kind == "L":
        return 3 + sum(1 + _value_size(v) for v in data)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _value_size(v) for k, v in data.items())
    raise ValueError(f"unknown DynamoDB attribute type {kind!r}")


def _number_size(text: str) -> int:
    try:
        digits = Decimal(text).normalize().as_tuple().digits
    except InvalidOperation:
        return len(text.encode())
    significant = len("".join(map(str, digits)).strip("0")) or 1
    return (significant + 1) // 2 + 1


def _binary(data: Any) -> bytes:
    # moto's parser decodes blobs; a caller handing the wire form gives base64 text.
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    return base64.b64decode(str(data))
