"""Live model quality: the Wilson interval, the counts kept once per sample in the model table
(under moto), and which version scores a sample."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from lambdas.core import aws, live, registry, scoring
from lambdas.core.modelstore import VersionCache
from scripts.bench_score import publish_constant

V1 = "v20261120T080000Z-0001"
V2 = "v20261121T080000Z-0002"
T0 = 1_795_000_000_000  # epoch ms, on a 5-minute boundary
BUCKET_S = 300


# the interval -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("correct", "seen", "low", "high"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857-872, Table II, method 3 (Wilson score)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # the closed forms at the ends: [0, z²/(n+z²)] and [n/(n+z²), 1]
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (8, 10, 0.4902, 0.9433),
    ],
)
def test_wilson_interval_matches_published_values(correct: int, seen: int, low: float, high: float) -> None:
    got = live.wilson(correct, seen)
    assert got == (pytest.approx(low, abs=5e-5), pytest.approx(high, abs=5e-5))


def test_wilson_interval_narrows_with_the_count_and_holds_the_estimate() -> None:
    small, large = live.wilson(93, 100), live.wilson(930, 1000)
    assert small[0] < large[0] < 0.93 < large[1] < small[1]


@pytest.mark.parametrize(("correct", "seen"), [(0, 0), (5, 4), (-1, 3)])
def test_wilson_interval_refuses_impossible_counts(correct: int, seen: int) -> None:
    with pytest.raises(ValueError, match="need 0 <= correct <= seen"):
        live.wilson(correct, seen)


def test_counts_report_accuracy_interval_and_confusion() -> None:
    counts = live.Counts.of([("ok", "ok")] * 8 + [("cold", "ok"), ("warm", "warm")])
    out = counts.to_dict()
    assert (out["seen"], out["correct"], out["accuracy"]) == (10, 9, 0.9)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx(live.wilson(9, 10))
    assert out["confusion"]["cold"] == {"cold": 0, "ok": 1, "warm": 0}
    assert out["confusion"]["ok"]["ok"] == 8
    assert live.Counts().to_dict()["accuracy"] is None and live.Counts().interval() is None


# chunks -------------------------------------------------------------------------------------


def outcome(
    n: int, *, version: str = V1, label: str = "ok", predicted: str = "ok", at_ms: int = T0
) -> live.Outcome:
    return live.Outcome(f"s-{n:04d}", version, label, predicted, at_ms, str(at_ms))


def test_chunks_fit_the_transaction_limit_and_never_repeat_an_item() -> None:
    outcomes = [outcome(n, at_ms=T0 + (n % 3) * BUCKET_S * 1000) for n in range(250)]
    outcomes += [outcome(n, version=V2) for n in range(30)] + [outcome(7)]
    chunks = live.chunks(outcomes, BUCKET_S)
    assert sum(len(c) for c in chunks) == len(outcomes)
    for chunk in chunks:
        aggregates = {o.version for o in chunk} | {
            (o.version, live.bucket_start_ms(o.at_ms, BUCKET_S)) for o in chunk
        }
        assert len(chunk) + len(aggregates) <= live.MAX_ACTIONS
        assert len({o.sample_id for o in chunk}) == len(chunk)


# the store, under moto ----------------------------------------------------------------------


@pytest.fixture
def store(stack: Any, dynamodb: Any) -> live.LiveStore:
    return live.LiveStore(
        stack.physical["ModelTable"],
        stack.physical["DataTable"],
        dynamodb,
        bucket_s=BUCKET_S,
        backoff=lambda n: None,
    )


def put_samples(stack: Any, dynamodb: Any, outcomes: list[live.Outcome]) -> None:
    for o in outcomes:
        dynamodb.put_item(
            TableName=stack.physical["DataTable"],
            Item={"id": {"S": o.sample_id}, "label": {"S": o.label}, "ingested": {"N": str(o.ingested)}},
        )


def marks(stack: Any, dynamodb: Any) -> dict[str, str]:
    items = dynamodb.scan(TableName=stack.physical["DataTable"])["Items"]
    return {i["id"]["S"]: i[live.MARK]["S"] for i in items if live.MARK in i}


def batch(n: int) -> list[live.Outcome]:
    """``n`` outcomes of V1 over two buckets, every third one wrong."""
    return [
        outcome(i, label="ok" if i % 3 else "cold", at_ms=T0 + (i % 2) * BUCKET_S * 1000 + i)
        for i in range(n)
    ]


def test_live_store_counts_a_batch_once_when_it_is_delivered_twice(store, stack, dynamodb) -> None:
    outcomes = batch(150)  # two transactions
    put_samples(stack, dynamodb, outcomes)
    first = store.record(outcomes)
    second = store.record(outcomes)
    assert (len(first.counted), len(first.duplicates), first.failed) == (150, 0, [])
    assert (second.counted, len(second.duplicates), second.failed) == ([], 150, [])
    totals = store.totals([V1])[V1]
    assert (totals.seen, totals.correct) == (150, 100)
    assert totals.confusion()["cold"]["ok"] == 50
    assert marks(stack, dynamodb) == {o.sample_id: V1 for o in outcomes}
    window = store.window(V1, T0)
    assert window == totals
    assert store.window(V1, T0 + BUCKET_S * 1000).seen == 75  # the later bucket only


def test_live_store_counts_only_the_samples_of_a_chunk_not_scored_before(store, stack, dynamodb) -> None:
    outcomes = batch(40)
    put_samples(stack, dynamodb, outcomes)
    early = outcomes[5:25:2]  # 10 of them were counted by an earlier delivery
    assert len(store.record(early).counted) == 10
    recorded = store.record(outcomes)
    assert len(recorded.counted) == 30
    assert {o.sample_id for o in recorded.duplicates} == {o.sample_id for o in early}
    totals = store.totals([V1])[V1]
    assert totals == live.Counts.of((o.label, o.predicted) for o in outcomes)
    assert store.window(V1, T0) == totals


def test_live_store_never_counts_a_sample_rewritten_by_a_resent_upload(store, stack, dynamodb) -> None:
    [old] = batch(1)
    put_samples(stack, dynamodb, [old])
    resent = live.Outcome(
        old.sample_id, V1, old.label, old.predicted, old.at_ms + 60_000, str(old.at_ms + 60_000)
    )
    put_samples(stack, dynamodb, [resent])  # the same key rewritten: its record is a MODIFY
    recorded = store.record([old])  # the first INSERT, delivered late
    assert recorded.duplicates == [old] and store.totals([V1]) == {}
    assert store.record([outcome(99)]).duplicates == [outcome(99)]  # an item that is not there


def test_live_store_keeps_versions_apart_and_reads_all_totals_in_one_call(store, stack, dynamodb) -> None:
    outcomes = batch(10) + [outcome(100 + i, version=V2, predicted="warm") for i in range(4)]
    put_samples(stack, dynamodb, outcomes)
    store.record(outcomes)
    calls: list[str] = []
    dynamodb.meta.events.register("before-call.dynamodb.*", lambda model, **kw: calls.append(model.name))
    totals = store.totals([V2, V1, "v20991231T000000Z-ffff"])
    assert calls == ["BatchGetItem"]
    assert (totals[V1].seen, totals[V2].seen, totals[V2].correct) == (10, 4, 0)
    assert "v20991231T000000Z-ffff" not in totals


class Refusing:
    """A DynamoDB client whose transactions are always cancelled by a conflict."""

    def __init__(self) -> None:
        self.calls = 0

    def transact_write_items(self, TransactItems: list[dict[str, Any]]) -> None:
        self.calls += 1
        reasons = [{"Code": "None"}] * (len(TransactItems) - 1) + [{"Code": "TransactionConflict"}]
        raise ClientError(
            {
                "Error": {"Code": "TransactionCanceledException", "Message": "x"},
                "CancellationReasons": reasons,
            },
            "TransactWriteItems",
        )


def test_live_store_retries_a_conflict_a_bounded_number_of_times_then_reports_the_samples() -> None:
    client, waits = Refusing(), []
    store = live.LiveStore("models", "samples", client, attempts=3, backoff=waits.append)
    recorded = store.record(batch(5))
    assert (client.calls, waits, len(recorded.failed), recorded.counted) == (3, [1, 2], 5, [])


@pytest.mark.parametrize(
    ("response", "reasons"),
    [
        (
            {
                "Error": {"Code": "TransactionCanceledException"},
                "CancellationReasons": [{"Code": "ConditionalCheckFailed"}, {"Code": "None"}],
            },
            ["ConditionalCheckFailed", "None"],
        ),
        ({"Error": {"Code": "TransactionCanceledException"}}, []),
        ({"Error": {"Code": "ConditionalCheckFailedException"}}, None),
    ],
)
def test_cancellation_reasons_are_read_per_action_only_from_a_cancelled_transaction(
    response: dict[str, Any], reasons: list[str] | None
) -> None:
    assert aws.cancellation_reasons(ClientError(response, "TransactWriteItems")) == reasons  # type: ignore[arg-type]


# which version scores a sample --------------------------------------------------------------


@pytest.fixture
def published(stack: Any, dynamodb: Any) -> registry.Registry:
    return registry.Registry(stack.physical["ModelTable"], dynamodb)


def change_times(reg: registry.Registry) -> dict[str, int]:
    items, _ = reg.list_history()
    return {str(h["version"]): registry.epoch_ms(str(h["at"])) for h in items}


def test_the_version_that_was_latest_at_ingestion_scores_a_sample(stack, published) -> None:
    s3, bucket = boto3.client("s3"), stack.physical["ModelBucket"]
    history = scoring.LatestHistory(published)
    history.refresh_for(T0)
    assert history.version_at(T0) is None  # before any model
    publish_constant(s3, published, bucket, V1, "ok")
    publish_constant(s3, published, bucket, V2, "warm")
    at = change_times(published)
    history.refresh_for(at[V2] + 10)
    assert history.version_at(at[V1] - 1) is None
    assert history.version_at(at[V2] - 1) == V1
    assert history.version_at(at[V2]) == V2
    published.promote(V1, reason="rollback", actor="test")
    rollback = max(change_times(published).values())
    history.refresh_for(rollback + 10)
    assert history.version_at(rollback + 10) == V1 and history.version_at(rollback - 1) == V2
    # a sample older than the last read needs no read; a recent one does
    reads = history.reads
    history.refresh_for(rollback - 60_000)
    assert history.reads == reads


def test_a_pointer_without_history_scores_every_sample_until_the_first_change(
    stack, published, dynamodb
) -> None:
    dynamodb.put_item(
        TableName=stack.physical["ModelTable"], Item={"pk": {"S": "latest"}, "version": {"S": V1}}
    )
    history = scoring.LatestHistory(published)
    history.refresh_for(T0)
    assert history.version_at(T0) == V1
    publish_constant(boto3.client("s3"), published, stack.physical["ModelBucket"], V2, "warm")
    changed = change_times(published)[V2]
    fresh = scoring.LatestHistory(published)
    fresh.refresh_for(changed + 10)
    assert (fresh.version_at(changed - 1), fresh.version_at(changed)) == (V1, V2)


def stream_record(n: int, label: str, at_ms: int) -> dict[str, Any]:
    image = {
        "id": {"S": f"s-{n:04d}"},
        "temp": {"N": "72"},
        "rh": {"N": "40"},
        "wind": {"N": "0.1"},
        "clo": {"N": "0.6"},
        "label": {"S": label},
        "ingested": {"N": str(at_ms)},
    }
    return {
        "eventName": "INSERT",
        "dynamodb": {"Keys": {"id": image["id"]}, "NewImage": image, "SequenceNumber": f"{n:021d}"},
    }


def test_before_any_model_samples_are_left_unscored_and_nothing_is_counted(
    stack, published, store, dynamodb
) -> None:
    records = [stream_record(n, "ok", T0 + n) for n in range(5)]
    for r in records:
        dynamodb.put_item(TableName=stack.physical["DataTable"], Item=r["dynamodb"]["NewImage"])
    loads: list[str] = []
    scorer = scoring.Scorer(scoring.LatestHistory(published), VersionCache(loads.append))  # type: ignore[arg-type]
    report = scoring.process(records, scorer, store)
    assert (report.unscored, report.counted, report.failures) == (5, 0, [])
    assert loads == [] and marks(stack, dynamodb) == {}
    assert dynamodb.scan(TableName=stack.physical["ModelTable"])["Items"] == []
