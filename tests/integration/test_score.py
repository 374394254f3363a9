"""The score function under moto, on the records the data table's stream really produces: samples
written by the upload path, read back from the stream and shaped as Lambda delivers them."""

from __future__ import annotations

import functools
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from lambdas import score
from lambdas.core import aws, ingest, live, registry
from lambdas.core.modelstore import ProxySource
from scripts.bench_score import constant_model, publish_constant, stream_records

V1 = "v20261120T080000Z-0001"
V2 = "v20261121T080000Z-0002"


class Stream:
    """The data table's stream, read from the start; ``new()`` gives the records not read yet."""

    def __init__(self, stack: Any) -> None:
        self.arn = stack.arns["DataTable.StreamArn"]
        self.client = boto3.client("dynamodbstreams")
        self.read = 0

    def new(self) -> list[dict[str, Any]]:
        records = stream_records(self.client, self.arn)
        fresh, self.read = records[self.read :], len(records)
        return fresh


@pytest.fixture
def cloud(stack: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("MODEL_SOURCE", "s3")
    monkeypatch.setenv("LIVE_BUCKET_S", "300")
    score.reset()
    stack.stream = Stream(stack)
    stack.registry = registry.Registry(stack.physical["ModelTable"])
    stack.live = live.LiveStore(stack.physical["ModelTable"])
    yield stack
    score.reset()


def upload(cloud: Any, labels: list[str]) -> list[str]:
    """Samples through the upload path (one request); their ids. A pause on each side keeps the
    ingestion time apart from a promotion's time."""
    time.sleep(0.005)
    payload = [
        {"temp": 70 + i % 10, "rh": 40, "wind": 0.1, "clo": 0.6, "label": label}
        for i, label in enumerate(labels)
    ]
    result = ingest.ingest(payload, ingest.IngestSettings(cloud.physical["DataTable"]), source="api")
    time.sleep(0.005)
    return list(result.ids)


def publish(cloud: Any, version: str, label: str, **kwargs: Any) -> None:
    publish_constant(aws.s3(), cloud.registry, cloud.physical["ModelBucket"], version, label, **kwargs)


def deliver(records: list[dict[str, Any]]) -> list[str]:
    """The records to the handler as one batch; the sequence numbers it reports failed."""
    return [f["itemIdentifier"] for f in score.handler({"Records": records})["batchItemFailures"]]


def marks(cloud: Any) -> dict[str, str]:
    items = boto3.client("dynamodb").scan(TableName=cloud.physical["DataTable"])["Items"]
    return {i["id"]["S"]: i[live.MARK]["S"] for i in items if live.MARK in i}


def seen(cloud: Any, *versions: str) -> dict[str, tuple[int, int]]:
    return {v: (c.seen, c.correct) for v, c in cloud.live.totals(list(versions)).items()}


def test_score_counts_each_sample_once_for_the_version_latest_at_its_ingestion(cloud: Any) -> None:
    publish(cloud, V1, "ok")  # V1 answers "ok" to everything
    before = upload(cloud, ["ok", "ok", "cold", "warm"] * 3)
    publish(cloud, V2, "warm")  # then V2 answers "warm"
    after = upload(cloud, ["warm", "ok"] * 4)
    records = cloud.stream.new()
    assert [r["eventName"] for r in records] == ["INSERT"] * 20
    assert deliver(records) == []
    assert seen(cloud, V1, V2) == {V1: (12, 6), V2: (8, 4)}
    assert marks(cloud) == {**dict.fromkeys(before, V1), **dict.fromkeys(after, V2)}
    # the same batch again, then the marks' own MODIFY records: nothing more is counted
    assert deliver(records) == []
    modifies = cloud.stream.new()
    assert {r["eventName"] for r in modifies} == {"MODIFY"} and len(modifies) == 20
    assert deliver(modifies + records[:5]) == []
    assert seen(cloud, V1, V2) == {V1: (12, 6), V2: (8, 4)}
    window = cloud.live.window(V1, int(time.time() * 1000) - 600_000)
    assert (window.seen, window.confusion()["cold"]["ok"]) == (12, 3)


def test_score_retries_only_the_records_whose_model_does_not_load(cloud: Any) -> None:
    publish(cloud, V1, "ok")
    upload(cloud, ["ok"] * 3)
    cloud.registry.create_run(V2)
    cloud.registry.update_run(V2, status=registry.PUBLISHED)
    cloud.registry.set_latest(V2, expected=V1, reason="files not there yet", actor="test")
    upload(cloud, ["warm"] * 2)
    records = cloud.stream.new()
    assert deliver(records) == [r["dynamodb"]["SequenceNumber"] for r in records[3:]]
    assert seen(cloud, V1, V2) == {V1: (3, 3)}
    for name, body in constant_model(V2, "warm").items():
        aws.s3().put_object(Bucket=cloud.physical["ModelBucket"], Key=f"models/{V2}/{name}", Body=body)
    assert deliver(records[3:]) == []  # Lambda retries from the first failed record
    assert seen(cloud, V1, V2) == {V1: (3, 3), V2: (2, 2)}


def test_score_leaves_samples_ingested_before_any_model_unscored(cloud: Any) -> None:
    early = upload(cloud, ["ok"] * 4)
    assert deliver(cloud.stream.new()) == []
    publish(cloud, V1, "ok")
    late = upload(cloud, ["ok"])
    records = cloud.stream.new()
    assert deliver(records) == []
    assert seen(cloud, V1) == {V1: (1, 1)}
    assert marks(cloud) == {late[0]: V1} and not set(early) & set(marks(cloud))


def test_score_reports_the_whole_batch_when_it_cannot_read_the_history(cloud: Any, monkeypatch) -> None:
    publish(cloud, V1, "ok")
    upload(cloud, ["ok"] * 2)
    records = cloud.stream.new()
    monkeypatch.setenv("MODEL_TABLE", "no-such-table")
    score.reset()
    assert deliver(records) == [r["dynamodb"]["SequenceNumber"] for r in records]
    monkeypatch.setenv("MODEL_TABLE", cloud.physical["ModelTable"])
    score.reset()
    assert deliver(records) == [] and seen(cloud, V1) == {V1: (2, 2)}


# a version through the S3 proxy, as a TensorFlow.js client gets it -----------------------------


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[str]:
    """A static server laid out as the proxy's URLs: /s3proxy/<version>/<file>."""
    for version, label in ((V1, "ok"), (V2, "warm")):
        folder = tmp_path / "s3proxy" / version
        folder.mkdir(parents=True)
        for name, body in constant_model(version, label).items():
            (folder / name).write_bytes(body)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_proxy_source_loads_a_named_version_with_its_own_weights(proxy: str) -> None:
    import numpy as np

    source = ProxySource(f"{proxy}/s3proxy/latest/model.json")
    assert source.version_url(V2) == f"{proxy}/s3proxy/{V2}/model.json"
    loaded = source.load_version(V2)
    assert loaded.version == V2
    assert loaded.model.predict(np.array([[70.0, 40.0, 0.1, 0.6]])).argmax() == 2  # "warm"
    with pytest.raises(RuntimeError, match=r"does not end in /latest/model\.json"):
        ProxySource(f"{proxy}/models/current.json").load_version(V1)
