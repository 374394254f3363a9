"""Service limits moto does not apply, each at its edge."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from localcloud import limits
from localcloud.awsapi import ApiCall
from localcloud.limits import LimitExceeded


def call(service: str, operation: str, **params: Any) -> ApiCall:
    return ApiCall(service, operation, params, "us-east-1", "AKID")


def put(i: int) -> dict[str, Any]:
    return {"PutRequest": {"Item": {"id": {"S": str(i)}}}}


def item_of_size(size: int) -> dict[str, Any]:
    """An item whose DynamoDB size is exactly ``size``: name "id" (2) + "v" (1) + values."""
    return {"id": {"S": "k"}, "v": {"S": "x" * (size - 4)}}


def test_batch_write_item_accepts_25_items_across_tables() -> None:
    limits.check(
        call(
            "dynamodb",
            "BatchWriteItem",
            RequestItems={"a": [put(i) for i in range(20)], "b": [put(i) for i in range(5)]},
        ),
        1000,
    )


def test_batch_write_item_refuses_26_items_across_tables() -> None:
    c = call(
        "dynamodb",
        "BatchWriteItem",
        RequestItems={"a": [put(i) for i in range(20)], "b": [put(i) for i in range(6)]},
    )
    with pytest.raises(LimitExceeded) as err:
        limits.check(c, 1000)
    assert (err.value.code, err.value.message, err.value.status) == (
        "ValidationException",
        "Too many items requested for the BatchWriteItem call",
        400,
    )


def test_batch_write_item_refuses_26_items_for_one_table_with_the_constraint_message() -> None:
    with pytest.raises(LimitExceeded, match="Member must have length less than or equal to 25"):
        limits.check(
            call("dynamodb", "BatchWriteItem", RequestItems={"a": [put(i) for i in range(26)]}), 1000
        )


def test_batch_write_item_refuses_a_request_over_16_mb() -> None:
    c = call("dynamodb", "BatchWriteItem", RequestItems={"a": [put(1)]})
    limits.check(c, 16 * 1024 * 1024)
    with pytest.raises(LimitExceeded, match="16 MB"):
        limits.check(c, 16 * 1024 * 1024 + 1)


def test_item_size_counts_names_and_values() -> None:
    assert limits.item_size(item_of_size(400 * 1024)) == 400 * 1024
    assert limits.item_size({"n": {"N": "12345"}}) == 1 + 4
    assert limits.item_size({"n": {"N": "1000"}}) == 1 + 2
    assert (
        limits.item_size({"b": {"B": b"\x00\x01\x02"}, "t": {"BOOL": True}, "z": {"NULL": True}})
        == 1 + 3 + 1 + 1 + 1 + 1
    )
    assert limits.item_size({"l": {"L": [{"S": "ab"}, {"N": "1"}]}}) == 1 + 3 + (1 + 2) + (1 + 2)
    assert limits.item_size({"m": {"M": {"k": {"S": "ab"}}}}) == 1 + 3 + 1 + 1 + 2
    assert limits.item_size({"s": {"SS": ["a", "bc"]}}) == 1 + 3


@pytest.mark.parametrize(
    "make",
    [
        lambda item: call("dynamodb", "PutItem", TableName="t", Item=item),
        lambda item: call("dynamodb", "BatchWriteItem", RequestItems={"t": [{"PutRequest": {"Item": item}}]}),
        lambda item: call(
            "dynamodb", "TransactWriteItems", TransactItems=[{"Put": {"TableName": "t", "Item": item}}]
        ),
    ],
    ids=["PutItem", "BatchWriteItem", "TransactWriteItems"],
)
def test_items_up_to_400_kb_pass_and_larger_are_refused(make: Any) -> None:
    limits.check(make(item_of_size(400 * 1024)), 1000)
    with pytest.raises(LimitExceeded) as err:
        limits.check(make(item_of_size(400 * 1024 + 1)), 1000)
    assert (err.value.code, err.value.message) == (
        "ValidationException",
        "Item size has exceeded the maximum allowed size",
    )


def test_transact_write_items_accepts_100_actions_and_refuses_101() -> None:
    actions = [{"Put": {"TableName": "t", "Item": {"id": {"S": str(i)}}}} for i in range(101)]
    limits.check(call("dynamodb", "TransactWriteItems", TransactItems=actions[:100]), 1000)
    with pytest.raises(LimitExceeded, match="less than or equal to 100"):
        limits.check(call("dynamodb", "TransactWriteItems", TransactItems=actions), 1000)


def test_transact_write_items_refuses_more_than_4_mb() -> None:
    actions = [{"Put": {"TableName": "t", "Item": item_of_size(400 * 1024)}} for _ in range(11)]
    limits.check(call("dynamodb", "TransactWriteItems", TransactItems=actions[:10]), 1000)
    with pytest.raises(LimitExceeded, match="4 MB"):
        limits.check(call("dynamodb", "TransactWriteItems", TransactItems=actions), 1000)


def user_data(size: int) -> str:
    return base64.b64encode(b"#" * size).decode()


def test_user_data_of_16_kb_passes_and_more_is_refused() -> None:
    limits.check(
        call("ec2", "RunInstances", ImageId="ami-1", MinCount=1, MaxCount=1, UserData=user_data(16384)), 0
    )
    with pytest.raises(LimitExceeded) as err:
        limits.check(
            call("ec2", "RunInstances", ImageId="ami-1", MinCount=1, MaxCount=1, UserData=user_data(16385)), 0
        )
    assert (err.value.code, err.value.message, err.value.status) == (
        "InvalidParameterValue",
        "User data is limited to 16384 bytes.",
        400,
    )


def test_user_data_limit_is_on_the_decoded_bytes() -> None:
    # 16 KB of raw data is ~21.8 KB of base64: still allowed.
    assert len(user_data(16384)) > 16384
    limits.check(call("ec2", "RunInstances", UserData=user_data(16384)), 0)


def test_other_calls_are_not_limited_here() -> None:
    limits.check(call("s3", "PutObject", Bucket="b", Key="k"), 10**9)
