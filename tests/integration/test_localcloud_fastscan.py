"""The local AWS endpoint's DynamoDB Scan (``localcloud/fastscan.py``) answers exactly as moto's
own, page by page: segments, Limit, 1 MB pages, ProjectionExpression, FilterExpression,
ConsistentRead, items put, replaced, updated and deleted between pages, and after a crash whose
restart replays the journal. The reference is plain moto (``moto_server``: this process never
installs the patch); the patched side is the local cloud's own endpoint process."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.dynamodb.models.table import Table

from localcloud import fastscan, infra
from localcloud.awsserver import AwsServer
from localcloud.motoserver import MotoServer

pytestmark = pytest.mark.slow

REGION = "us-east-1"
SAMPLES = infra.load(stage="test", region=REGION).resources["DataTable"]["Properties"]
PAIRS = {  # a table with a sort key: moto orders and pages its items by (hash, range)
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    "AttributeDefinitions": [
        {"AttributeName": "pk", "AttributeType": "S"},
        {"AttributeName": "sk", "AttributeType": "N"},
    ],
}
ITEMS = 2_000
SEGMENTS = (None, 1, 3, 4)  # None: no Segment/TotalSegments at all
VARIANTS: dict[str, dict[str, Any]] = {
    "1 MB pages": {},
    "limit, projection, consistent": {
        "Limit": 97,
        "ProjectionExpression": "#k, #t, #l",
        "ExpressionAttributeNames": {"#k": "id", "#t": "temp", "#l": "label"},
        "ConsistentRead": True,
    },
    "filter and limit": {
        "Limit": 250,
        "FilterExpression": "#l = :ok",
        "ExpressionAttributeNames": {"#l": "label"},
        "ExpressionAttributeValues": {":ok": {"S": "ok"}},
    },
}


def _client(url: str) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _sample(rng: random.Random) -> dict[str, Any]:
    """A sample as the data table holds it, some padded so that a scan needs several 1 MB pages."""
    item = {
        "id": {"S": str(uuid.UUID(int=rng.getrandbits(128)))},
        "temp": {"N": str(rng.randint(60, 90))},
        "rh": {"N": str(rng.randint(10, 90))},
        "wind": {"N": f"{rng.random():.3f}"},
        "clo": {"N": f"{rng.uniform(0.3, 1.5):.2f}"},
        "label": {"S": rng.choice(("cold", "ok", "warm"))},
        "created": {"N": str(1_700_000_000_000 + rng.randrange(10**9))},
        "ingested": {"N": str(1_700_000_000_000 + rng.randrange(10**9))},
        "source": {"S": rng.choice(("upload", "traffic"))},
    }
    if rng.random() < 0.8:
        item["pad"] = {"S": "x" * rng.randrange(9_000)}
    return item


def _pair(rng: random.Random) -> dict[str, Any]:
    # negative and fractional sort keys: moto orders numbers as numbers, not as strings
    item = _sample(rng)
    item["pk"] = {"S": f"p{rng.randrange(150)}"}
    item["sk"] = {"N": rng.choice((str(rng.randint(-1000, 1000)), f"{rng.uniform(-10, 10):.2f}"))}
    return item


class Twins:
    """The same tables and the same changes on the patched endpoint and on plain moto."""

    def __init__(self, patched_url: str, moto_url: str) -> None:
        self.moto_url = moto_url
        self.clients = (_client(patched_url), _client(moto_url))

    def create(self, name: str, schema: dict[str, Any], items: list[dict[str, Any]]) -> None:
        for client in self.clients:
            client.create_table(
                TableName=name,
                KeySchema=schema["KeySchema"],
                AttributeDefinitions=schema["AttributeDefinitions"],
                BillingMode="PAY_PER_REQUEST",
                **{k: v for k, v in schema.items() if k == "GlobalSecondaryIndexes"},
            )
            for start in range(0, len(items), 25):
                batch = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
                assert not client.batch_write_item(RequestItems={name: batch})["UnprocessedItems"]

    def call(self, operation: str, **kwargs: Any) -> None:
        for client in self.clients:
            getattr(client, operation)(**kwargs)

    def assert_same_scan(
        self, between_pages: Callable[[int, dict[str, Any]], None] | None = None, **kwargs: Any
    ) -> int:
        """Page through both to the end, page by page equal; ``between_pages(n, last_key)``
        changes both after page n. Returns the number of pages."""
        pages = 0
        while True:
            patched, moto = (client.scan(**kwargs) for client in self.clients)
            for answer in (patched, moto):
                answer.pop("ResponseMetadata")
            assert patched == moto, f"page {pages} of {kwargs}"
            pages += 1
            last = moto.get("LastEvaluatedKey")
            if last is None:
                return pages
            if between_pages is not None:
                between_pages(pages, last)
            kwargs["ExclusiveStartKey"] = last


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twins]:
    """Both endpoints with a samples table and a pairs table of ITEMS items each."""
    assert Table.scan is not fastscan.scan, "the reference must be moto's own scan"
    moto = MotoServer().start()
    moto.reset()
    patched = AwsServer(state_dir=tmp_path_factory.mktemp("aws")).start()
    twins = Twins(patched.url, moto.url)
    rng = random.Random(7)
    twins.create("samples", SAMPLES, [_sample(rng) for _ in range(ITEMS)])
    twins.create("pairs", PAIRS, [_pair(rng) for _ in range(ITEMS)])
    yield twins
    patched.stop()
    moto.stop()


def _segments(total: int | None) -> list[dict[str, Any]]:
    return [{}] if total is None else [{"Segment": s, "TotalSegments": total} for s in range(total)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("total", SEGMENTS)
@pytest.mark.parametrize("table", ["samples", "pairs"])
def test_fastscan_pages_are_moto_pages(twins: Twins, table: str, total: int | None, variant: str) -> None:
    kwargs = dict(VARIANTS[variant])
    if table == "pairs" and "ProjectionExpression" in kwargs:
        kwargs["ExpressionAttributeNames"] = {**kwargs["ExpressionAttributeNames"], "#k": "sk"}
    pages = [twins.assert_same_scan(TableName=table, **kwargs, **seg) for seg in _segments(total)]
    assert min(pages) > 1, "every segment takes more than one page"


@pytest.mark.parametrize("total", SEGMENTS)
def test_fastscan_pages_match_moto_when_items_change_between_pages(twins: Twins, total: int | None) -> None:
    rng = random.Random(total or 0)
    name = f"changing-{total}"
    items = [_sample(rng) for _ in range(ITEMS // 2)]
    twins.create(name, SAMPLES, items)

    live = [item["id"] for item in items]

    def change(page: int, last_key: dict[str, Any]) -> None:
        # As many items after as before, so that only the put and delete hooks can tell the
        # order changed: the item the next page starts after goes and a new one comes; another
        # is replaced by a put, another grows in place (update).
        twins.call("delete_item", TableName=name, Key=last_key)
        live.remove(last_key["id"])
        new = _sample(rng)
        twins.call("put_item", TableName=name, Item=new)
        live.append(new["id"])
        twins.call("put_item", TableName=name, Item={**_sample(rng), "id": rng.choice(live)})
        twins.call(
            "update_item",
            TableName=name,
            Key={"id": rng.choice(live)},
            UpdateExpression="SET #p = :pad",
            ExpressionAttributeNames={"#p": "pad"},
            ExpressionAttributeValues={":pad": {"S": "y" * rng.randrange(9_000)}},
        )

    for seg in _segments(total):
        twins.assert_same_scan(change, TableName=name, Limit=60, **seg)


def test_fastscan_leaves_index_scans_to_moto(twins: Twins) -> None:
    # the model table's by-kind index, as serverless.yml declares it
    models = infra.load(stage="test", region=REGION).resources["ModelTable"]["Properties"]
    rng = random.Random(5)
    runs = [
        {
            **_sample(rng),
            "pk": {"S": f"v{i:04d}"},
            "kind": {"S": rng.choice(("run", "lock"))},
            "sk": {"S": f"{i}"},
        }
        for i in range(ITEMS // 4)
    ]
    twins.create("models", models, runs)
    for seg in _segments(3):
        twins.assert_same_scan(TableName="models", IndexName="by-kind", Limit=40, **seg)


def test_fastscan_answers_as_moto_after_a_crash_and_a_journal_replay(twins: Twins, tmp_path: Path) -> None:
    state = tmp_path / "aws"
    patched = AwsServer(state_dir=state).start()
    try:
        restarted = Twins(patched.url, twins.moto_url)
        rng = random.Random(11)
        restarted.create("restarted", SAMPLES, [_sample(rng) for _ in range(ITEMS // 2)])
        restarted.assert_same_scan(TableName="restarted", Segment=0, TotalSegments=2)
        patched.kill()  # the writes since the start's snapshot are in the journal only
        patched = AwsServer(state_dir=state).start()
        restarted = Twins(patched.url, twins.moto_url)
        for _ in range(30):
            restarted.call("put_item", TableName="restarted", Item=_sample(rng))
        for seg in _segments(4):
            restarted.assert_same_scan(TableName="restarted", Limit=100, **seg)
    finally:
        patched.stop()
