"""The local AWS endpoint's TransactWriteItems (``localcloud/fasttransact.py``) answers exactly as
moto's own: the items written, the stream records, the errors and their cancellation reasons, for
transactions that succeed, that a condition cancels, and that fail while being applied (rolled
back). The reference is plain moto (``MotoServer``: this process never installs the patch); the
patched side is the local cloud's own endpoint process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.dynamodb.models import DynamoDBBackend

from localcloud import fasttransact, infra
from localcloud.awsserver import AwsServer
from localcloud.motoserver import MotoServer

pytestmark = pytest.mark.slow

REGION = "us-east-1"
SAMPLES = infra.load(stage="test", region=REGION).resources["DataTable"]["Properties"]
MODELS = infra.load(stage="test", region=REGION).resources["ModelTable"]["Properties"]
PAIRS = {
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    "AttributeDefinitions": [
        {"AttributeName": "pk", "AttributeType": "S"},
        {"AttributeName": "sk", "AttributeType": "N"},
    ],
}


def _client(url: str, service: str = "dynamodb") -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _sample(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": {"S": f"s-{n:03d}"},
        "label": {"S": "ok"},
        "ingested": {"N": str(1_795_000_000_000 + n)},
        **extra,
    }


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        call()
    except ClientError as err:
        return err.response["Error"]["Code"], err.response.get("CancellationReasons")
    return "ok", None


class Twins:
    """The same tables and the same calls on the patched endpoint and on plain moto."""

    def __init__(self, patched_url: str, moto_url: str) -> None:
        self.urls = (patched_url, moto_url)
        self.clients = tuple(_client(url) for url in self.urls)
        self.tables: list[str] = []

    def create(self, name: str, schema: dict[str, Any], items: list[dict[str, Any]]) -> None:
        for client in self.clients:
            client.create_table(
                TableName=name,
                KeySchema=schema["KeySchema"],
                AttributeDefinitions=schema["AttributeDefinitions"],
                BillingMode="PAY_PER_REQUEST",
                StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
                **{k: v for k, v in schema.items() if k == "GlobalSecondaryIndexes"},
            )
            for start in range(0, len(items), 25):
                batch = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
                client.batch_write_item(RequestItems={name: batch})
        self.tables.append(name)

    def transact(self, items: list[dict[str, Any]]) -> tuple[str, Any]:
        """Run the transaction on both; the same outcome (error code and reasons) on each."""
        patched, moto = (
            _outcome(lambda c=client: c.transact_write_items(TransactItems=items)) for client in self.clients
        )
        assert patched == moto
        self.assert_same_state()
        return moto

    def _state(self, url: str, client: Any) -> dict[str, Any]:
        streams = _client(url, "dynamodbstreams")
        out: dict[str, Any] = {}
        for table in self.tables:
            items = client.scan(TableName=table, ConsistentRead=True)["Items"]
            arn = client.describe_table(TableName=table)["Table"]["LatestStreamArn"]
            records = []
            for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
                iterator = streams.get_shard_iterator(
                    StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
                for record in streams.get_records(ShardIterator=iterator, Limit=1000)["Records"]:
                    change = record["dynamodb"]
                    records.append(
                        (
                            record["eventName"],
                            change["SequenceNumber"],
                            change["Keys"],
                            change.get("NewImage"),
                            change.get("OldImage"),
                        )
                    )
            out[table] = (sorted(items, key=repr), records)
        return out

    def assert_same_state(self) -> None:
        patched, moto = (
            self._state(url, client) for url, client in zip(self.urls, self.clients, strict=True)
        )
        assert patched == moto


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[Twins]:
    assert DynamoDBBackend.transact_write_items is not fasttransact.transact_write_items, (
        "the reference must be moto's own transactions"
    )
    moto = MotoServer().start()
    moto.reset()
    patched = AwsServer(state_dir=tmp_path / "aws").start()
    twins = Twins(patched.url, moto.url)
    twins.create("samples", SAMPLES, [_sample(n) for n in range(60)])
    twins.create("models", MODELS, [{"pk": {"S": "run"}, "kind": {"S": "run"}, "sk": {"S": "a"}}])
    twins.create("pairs", PAIRS, [{"pk": {"S": "p"}, "sk": {"N": str(n)}, "v": {"N": "1"}} for n in range(5)])
    yield twins
    patched.stop()
    moto.stop()


def mark(n: int, table: str = "samples") -> dict[str, Any]:
    """The live scorer's mark on a sample (lambdas/core/live.py)."""
    return {
        "Update": {
            "TableName": table,
            "Key": {"id": {"S": f"s-{n:03d}"}},
            "UpdateExpression": "SET #m = :v",
            "ConditionExpression": "attribute_exists(#id) AND attribute_not_exists(#m)",
            "ExpressionAttributeNames": {"#id": "id", "#m": "scored_by"},
            "ExpressionAttributeValues": {":v": {"S": "v1"}},
        }
    }


def add(pk: str, n: int) -> dict[str, Any]:
    return {
        "Update": {
            "TableName": "models",
            "Key": {"pk": {"S": pk}},
            "UpdateExpression": "SET #k = :k ADD #seen :n",
            "ExpressionAttributeNames": {"#k": "kind", "#seen": "seen"},
            "ExpressionAttributeValues": {":k": {"S": "live"}, ":n": {"N": str(n)}},
        }
    }


def test_fasttransact_commits_what_moto_commits(twins: Twins) -> None:
    assert twins.transact([*(mark(n) for n in range(10)), add("live#v1", 10), add("live#v1#b", 10)]) == (
        "ok",
        None,
    )
    assert twins.transact([add("live#v1", 5), mark(10)]) == ("ok", None)  # adds to an existing item
    every_kind = [
        {"Put": {"TableName": "samples", "Item": _sample(500)}},
        {"Put": {"TableName": "samples", "Item": _sample(11, label={"S": "warm"})}},
        {"Delete": {"TableName": "samples", "Key": {"id": {"S": "s-012"}}}},
        {
            "ConditionCheck": {
                "TableName": "samples",
                "Key": {"id": {"S": "s-013"}},
                "ConditionExpression": "attribute_exists(id)",
            }
        },
        {
            "Update": {
                "TableName": "pairs",
                "Key": {"pk": {"S": "p"}, "sk": {"N": "2"}},
                "UpdateExpression": "ADD v :one",
                "ExpressionAttributeValues": {":one": {"N": "1"}},
            }
        },
        {"Put": {"TableName": "pairs", "Item": {"pk": {"S": "q"}, "sk": {"N": "-1"}}}},
    ]
    assert twins.transact(every_kind) == ("ok", None)


def test_fasttransact_cancels_on_a_condition_with_moto_reasons_and_writes_nothing(twins: Twins) -> None:
    twins.transact([mark(1), mark(2), add("live#v1", 2)])
    items = [mark(0), mark(1), mark(2), mark(3), add("live#v1", 4)]
    items[1]["Update"]["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
    code, reasons = twins.transact(items)
    assert code == "TransactionCanceledException"
    assert [r["Code"] for r in reasons] == [
        "None",
        "ConditionalCheckFailed",
        "ConditionalCheckFailed",
        "None",
        "None",
    ]
    assert reasons[1]["Item"]["scored_by"] == {"S": "v1"}
    assert twins.transact([mark(n, "no-such-table") for n in range(2)])[0] == "ResourceNotFoundException"


def test_fasttransact_rolls_back_an_action_that_fails_while_applied(twins: Twins) -> None:
    # The third action adds a number to a string: moto refuses it after the first two were written.
    bad = {
        "Update": {
            "TableName": "samples",
            "Key": {"id": {"S": "s-020"}},
            "UpdateExpression": "ADD #l :one",
            "ExpressionAttributeNames": {"#l": "label"},
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
    }
    new_pair = {"Put": {"TableName": "pairs", "Item": {"pk": {"S": "new"}, "sk": {"N": "1"}}}}
    code, _ = twins.transact([mark(21), add("live#v9", 1), new_pair, bad])
    assert code == "ValidationException"
    scan = twins.clients[1].scan(TableName="models")["Items"]
    assert [i["pk"]["S"] for i in scan] == ["run"]  # nothing of it is left on either


def test_fasttransact_refuses_two_actions_on_one_item_and_too_many_actions(twins: Twins) -> None:
    assert twins.transact([mark(1), mark(1)])[0] == "ValidationException"
    assert twins.transact([mark(n % 60) for n in range(101)])[0] == "ValidationException"
