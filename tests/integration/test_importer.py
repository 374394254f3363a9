"""The importer against moto: parts, counts, re-import, bad rows, crashes, the lease, the lock hold."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest

from lambdas import importer, train
from lambdas.core import imports, lock
from lambdas.core.registry import now_iso
from localcloud import infra
from tests.support.trigger import train_settings

ROW = {"temp": 72, "rh": 45, "wind": 0.1, "clo": 0.6, "label": "ok"}
CLIENT = "acme"  # who created the imports here (POST /imports records it)


@dataclass
class Context:
    aws_request_id: str
    remaining_ms: int = 900_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def cfg(stack: infra.Stack, monkeypatch: pytest.MonkeyPatch) -> imports.ImporterSettings:
    """The importer's environment from serverless.yml, parts of 7 rows."""
    for key, value in stack.function_environment("importer", {"IMPORT_PART_ROWS": "7"}).items():
        monkeypatch.setenv(key, value)
    importer._settings.cache_clear()
    return imports.ImporterSettings.from_env()


_invocations = iter(range(10**6))


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    return importer.handler(event, Context(f"req-{next(_invocations)}"))


def schedule() -> dict[str, Any]:
    return invoke({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}})


def s3_event(bucket: str, key: str) -> dict[str, Any]:
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Post",
        "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key), "size": 1}},
    }
    return {"Records": [record]}


def new_import(
    cfg: imports.ImporterSettings, n: int, fmt: str, body: bytes, client: str | None = CLIENT
) -> str:
    """A status item as POST /imports writes it (``client`` None: one written before clients
    existed), then the upload; returns the id."""
    import_id = f"imp-{n:016x}"
    key = f"imports/{import_id}.{fmt}"
    now = now_iso()
    item = {
        "import_id": {"S": import_id},
        "status": {"S": "waiting_upload"},
        "format": {"S": fmt},
        "filename": {"S": f"history.{fmt}"},
        "key": {"S": key},
        "created_at": {"S": now},
        "updated_at": {"S": now},
    }
    if client is not None:
        item["client"] = {"S": client}
    boto3.client("dynamodb").put_item(TableName=cfg.import_table, Item=item)
    boto3.client("s3").put_object(Bucket=cfg.import_bucket, Key=key, Body=body)
    return import_id


def status(cfg: imports.ImporterSettings, import_id: str) -> dict[str, Any]:
    item = imports.ImportTable(cfg.import_table).get(import_id)
    assert item is not None
    return item


def uploaded(cfg: imports.ImporterSettings, import_id: str) -> None:
    invoke(s3_event(cfg.import_bucket, f"imports/{import_id}.{status(cfg, import_id)['format']}"))


def run_to_end(cfg: imports.ImporterSettings, import_id: str, limit: int = 50) -> int:
    """Schedule ticks until the import is final; how many ticks it took."""
    for tick in range(limit):
        if status(cfg, import_id)["status"] in (imports.DONE, imports.FAILED):
            return tick
        schedule()
    raise AssertionError(f"{import_id} still {status(cfg, import_id)['status']} after {limit} ticks")


def data_items(cfg: imports.ImporterSettings) -> list[dict[str, Any]]:
    pages = boto3.client("dynamodb").get_paginator("scan").paginate(TableName=cfg.data_table)
    return [item for page in pages for item in page["Items"]]


def jsonl(rows: list[Any]) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def mixed_rows() -> list[Any]:
    """24 rows and a blank line: 21 valid (20 distinct; one with an id comes twice), 3 invalid."""
    rows: list[Any] = [{**ROW, "temp": 60 + i} for i in range(19)]
    rows[4] = {**ROW, "id": "client-1"}
    rows.insert(7, {**ROW, "temp": 500})
    rows.insert(9, b"{not json")
    rows.insert(10, b"")
    rows.insert(12, {**ROW, "label": "hot"})
    rows.append({**ROW, "id": "client-1"})  # the same id and content again: a duplicate
    rows.append({**ROW, "temp": 90})
    return rows


def assert_balanced(item: dict[str, Any]) -> None:
    assert item["rows_read"] == item["written"] + item["duplicates"] + item["rejected"]


# parts and counts ---------------------------------------------------------------------------


def test_import_in_several_parts_counts_every_row_once(cfg: imports.ImporterSettings) -> None:
    import_id = new_import(cfg, 1, "jsonl", jsonl(mixed_rows()))
    uploaded(cfg, import_id)
    first = status(cfg, import_id)
    assert first["status"] == imports.IMPORTING and first["rows_read"] == 7
    assert first["lease"]["until_ms"] == 0  # released at the end of the part
    ticks = run_to_end(cfg, import_id)
    assert ticks >= 3  # 24 rows in parts of 7
    done = status(cfg, import_id)
    assert done["status"] == imports.DONE
    assert (done["rows_read"], done["written"], done["duplicates"], done["rejected"]) == (24, 20, 1, 3)
    assert_balanced(done)
    assert done["bytes_read"] == done["bytes"] and imports.public_status(done)["progress"] == 1.0
    items = data_items(cfg)
    assert len(items) == 20
    assert {(i["source"]["S"], i["client"]["S"]) for i in items} == {("import", CLIENT)}
    assert {i["import_id"]["S"] for i in items} == {import_id}
    assert lock.LockStore(cfg.model_table).read().holds == ()


def test_reimporting_the_same_file_writes_nothing(cfg: imports.ImporterSettings) -> None:
    body = jsonl(mixed_rows())
    first = new_import(cfg, 1, "jsonl", body)
    uploaded(cfg, first)
    run_to_end(cfg, first)
    second = new_import(cfg, 2, "jsonl", body)
    uploaded(cfg, second)
    run_to_end(cfg, second)
    again = status(cfg, second)
    assert (again["written"], again["duplicates"], again["rejected"]) == (0, 21, 3)
    assert again["digest"] == status(cfg, first)["digest"]
    assert len(data_items(cfg)) == 20


def test_a_row_with_an_id_already_uploaded_is_a_duplicate(cfg: imports.ImporterSettings) -> None:
    from lambdas.core import ingest

    ingest.ingest(
        [{**ROW, "id": "client-1"}], ingest.IngestSettings(cfg.data_table), source="api", client=CLIENT
    )
    import_id = new_import(cfg, 1, "jsonl", jsonl([{**ROW, "id": "client-1"}, ROW]))
    uploaded(cfg, import_id)
    done = status(cfg, import_id)
    assert (done["status"], done["written"], done["duplicates"]) == (imports.DONE, 1, 1)


def test_the_same_row_uploaded_by_another_client_is_not_a_duplicate(cfg: imports.ImporterSettings) -> None:
    from lambdas.core import ingest

    ingest.ingest(
        [{**ROW, "id": "client-1"}], ingest.IngestSettings(cfg.data_table), source="api", client="partner"
    )
    import_id = new_import(cfg, 1, "jsonl", jsonl([{**ROW, "id": "client-1"}]))
    uploaded(cfg, import_id)
    done = status(cfg, import_id)
    assert (done["status"], done["written"], done["duplicates"]) == (imports.DONE, 1, 0)
    assert sorted(i["client"]["S"] for i in data_items(cfg)) == [CLIENT, "partner"]


def test_an_import_from_before_clients_writes_unattributed_rows(cfg: imports.ImporterSettings) -> None:
    import_id = new_import(cfg, 1, "jsonl", jsonl([ROW, {**ROW, "temp": 73}]), client=None)
    uploaded(cfg, import_id)
    assert status(cfg, import_id)["status"] == imports.DONE
    items = data_items(cfg)
    assert len(items) == 2
    assert all("client" not in i and i["source"]["S"] == "import" for i in items)


def test_bad_rows_are_reported_by_line_field_and_reason(cfg: imports.ImporterSettings) -> None:
    body = (
        b"temp,rh,wind,clo,label,created\n"
        b"72,45,0.1,0.6,ok,\n"
        b"72,145,0.1,0.6,ok,\n"
        b"72,45,0.1,0.6,hot,\n"
        b"72,45,0.1,0.6\n"
        b"72,45,0.1,0.6,ok,1700000000\n"
    )
    import_id = new_import(cfg, 1, "csv", body)
    uploaded(cfg, import_id)
    run_to_end(cfg, import_id)
    done = status(cfg, import_id)
    assert (done["status"], done["written"], done["rejected"]) == (imports.DONE, 1, 4)
    assert [(r["line"], r.get("field")) for r in done["rejections"]] == [
        (3, "rh"),
        (4, "label"),
        (5, None),
        (6, "created"),
    ]
    assert done["rejections"][0]["reason"].startswith("field 'rh' is 145 %, outside the accepted range")
    assert done["rejections"][2]["reason"] == "4 cells, the header has 6 columns"
    assert "seconds" in done["rejections"][3]["reason"]


def test_only_the_first_twenty_rejections_are_listed_all_are_counted(cfg: imports.ImporterSettings) -> None:
    import_id = new_import(cfg, 1, "jsonl", jsonl([ROW] + [{**ROW, "temp": 500}] * 30))
    uploaded(cfg, import_id)
    run_to_end(cfg, import_id)
    done = status(cfg, import_id)
    assert done["rejected"] == 30 and len(done["rejections"]) == 20
    assert done["rejections"][-1]["line"] == 21


# the file is not the declared format ---------------------------------------------------------


def test_a_csv_without_its_header_fails_the_import_and_writes_nothing(cfg: imports.ImporterSettings) -> None:
    import_id = new_import(cfg, 1, "csv", b"72,45,0.1,0.6,ok\n73,45,0.1,0.6,ok\n")
    uploaded(cfg, import_id)
    failed = status(cfg, import_id)
    assert failed["status"] == imports.FAILED
    assert failed["error"] == {
        "reason": "not a CSV file: the first line has no header with temp, rh, wind, clo, label"
    }
    assert failed["finished_at"] and data_items(cfg) == []
    assert lock.LockStore(cfg.model_table).read().holds == ()


def test_a_jsonl_that_is_csv_fails_the_import(cfg: imports.ImporterSettings) -> None:
    import_id = new_import(cfg, 1, "jsonl", b"temp,rh,wind,clo,label\n72,45,0.1,0.6,ok\n")
    uploaded(cfg, import_id)
    assert status(cfg, import_id)["error"]["reason"].startswith("not a JSON Lines file")


# crashes, leases, duplicate events ------------------------------------------------------------


class Crash(BaseException):
    """The process dies: nothing after it runs, not even the lease's release."""


def test_a_crash_between_a_write_and_its_checkpoint_loses_nothing_and_counts_nothing_twice(
    cfg: imports.ImporterSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_id = new_import(cfg, 1, "jsonl", jsonl(mixed_rows()))
    uploaded(cfg, import_id)  # the first part: 7 rows written and checkpointed
    real = imports.checkpoint

    def die(job: Any, progress: Any) -> None:
        raise Crash()

    monkeypatch.setattr(imports, "checkpoint", die)
    with pytest.raises(Crash):
        schedule()  # the second part writes its batch and dies before the checkpoint
    monkeypatch.setattr(imports, "checkpoint", real)
    crashed = status(cfg, import_id)
    assert crashed["rows_read"] == 7 and crashed["lease"]["until_ms"] > time.time() * 1000
    assert len(data_items(cfg)) == 11 and crashed["written"] == 7  # 4 valid rows of 7 written, uncounted
    # The lease still holds: the schedule leaves it alone until it expires...
    assert schedule() == {"resumed": []}
    # ...then resumes from the last checkpoint.
    later = time.time() + cfg.lease_s + 1
    clients = imports.Clients.default()
    while status(cfg, import_id)["status"] == imports.IMPORTING:
        imports.resume(cfg, clients, holder=f"resume-{later}", time_left_ms=None, clock=lambda at=later: at)
        later += 1
    done = status(cfg, import_id)
    assert (done["status"], done["rows_read"], done["written"], done["duplicates"], done["rejected"]) == (
        imports.DONE,
        24,
        20,
        1,
        3,
    )
    assert len(data_items(cfg)) == 20


def test_a_failed_checkpoint_releases_the_lease_and_the_next_tick_resumes(
    cfg: imports.ImporterSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_id = new_import(cfg, 1, "jsonl", jsonl(mixed_rows()))
    real = imports.checkpoint

    def fail_once(job: Any, progress: Any) -> None:
        monkeypatch.setattr(imports, "checkpoint", real)
        raise RuntimeError("throttled")

    monkeypatch.setattr(imports, "checkpoint", fail_once)
    with pytest.raises(RuntimeError):
        uploaded(cfg, import_id)
    assert status(cfg, import_id)["lease"]["until_ms"] == 0
    run_to_end(cfg, import_id)
    done = status(cfg, import_id)
    assert (done["written"], done["duplicates"], done["rejected"]) == (20, 1, 3)
    assert len(data_items(cfg)) == 20


def test_a_second_invocation_is_refused_by_the_lease(cfg: imports.ImporterSettings) -> None:
    import_id = new_import(cfg, 1, "jsonl", jsonl([ROW]))
    table = imports.ImportTable(cfg.import_table)
    assert table.take(import_id, "first", int(time.time() * 1000), 60_000) is not None
    assert (
        invoke(s3_event(cfg.import_bucket, f"imports/{import_id}.jsonl"))["imports"][0]["status"] == "skipped"
    )
    assert schedule() == {"resumed": []}
    assert table.take(import_id, "third", int(time.time() * 1000), 60_000) is None
    item = status(cfg, import_id)
    assert item["lease"]["holder"] == "first" and "digest" not in item and data_items(cfg) == []


def test_a_duplicate_event_for_a_finished_import_is_a_no_op(cfg: imports.ImporterSettings) -> None:
    import_id = new_import(cfg, 1, "jsonl", jsonl([ROW]))
    uploaded(cfg, import_id)
    before = status(cfg, import_id)
    assert before["status"] == imports.DONE
    assert (
        invoke(s3_event(cfg.import_bucket, f"imports/{import_id}.jsonl"))["imports"][0]["status"] == "skipped"
    )
    assert status(cfg, import_id) == before


@pytest.mark.parametrize(
    "key",
    [
        "imports/imp-00000000000000ff.jsonl",
        "imports/notours.csv",
        "models/imp-0000000000000001.jsonl",
        "imports/x y.csv",
    ],
)
def test_keys_that_are_not_ours_or_have_no_status_item_are_ignored(
    cfg: imports.ImporterSettings, key: str
) -> None:
    boto3.client("s3").put_object(Bucket=cfg.import_bucket, Key=key, Body=jsonl([ROW]))
    result = invoke(s3_event(cfg.import_bucket, key))
    assert result["imports"] in (
        [],
        [{"import_id": "imp-00000000000000ff", "status": "skipped", "reason": "not found"}],
    )
    assert data_items(cfg) == []


def test_the_event_key_is_url_decoded(cfg: imports.ImporterSettings) -> None:
    event = s3_event(cfg.import_bucket, "imports/imp-0000000000000001.jsonl")
    event["Records"][0]["s3"]["object"]["key"] = "imports%2Fimp-0000000000000001.jsonl"
    assert imports.object_ids(event, cfg.import_bucket) == ["imp-0000000000000001"]


def test_a_file_replaced_during_the_import_fails_it(cfg: imports.ImporterSettings) -> None:
    import_id = new_import(cfg, 1, "jsonl", jsonl([{**ROW, "temp": 60 + i} for i in range(20)]))
    uploaded(cfg, import_id)
    boto3.client("s3").put_object(
        Bucket=cfg.import_bucket, Key=f"imports/{import_id}.jsonl", Body=jsonl([ROW] * 20)
    )
    run_to_end(cfg, import_id)
    failed = status(cfg, import_id)
    assert failed["status"] == imports.FAILED
    assert failed["error"]["reason"] == "the uploaded file was replaced during the import"
    assert_balanced(failed)


# one burst for the retraining trigger --------------------------------------------------------


def data_record(table: str, sample_id: str, seq: int) -> dict[str, Any]:
    image = {
        "id": {"S": sample_id},
        "ingested": {"N": str(int(time.time() * 1000))},
        "source": {"S": "import"},
    }
    return {
        "eventID": f"e{seq}",
        "eventName": "INSERT",
        "eventSource": "aws:dynamodb",
        "eventSourceARN": f"arn:aws:dynamodb:us-east-1:123456789012:table/{table}/stream/2026",
        "dynamodb": {"Keys": {"id": {"S": sample_id}}, "NewImage": image, "SequenceNumber": f"{seq:021d}"},
    }


def instances() -> list[dict[str, Any]]:
    reply = boto3.client("ec2").describe_instances(
        Filters=[{"Name": "tag:service", "Values": ["autoretrain"]}]
    )
    return [i for r in reply["Reservations"] for i in r["Instances"]]


def test_an_import_holds_back_retraining_until_it_ends_then_one_run_starts(
    cfg: imports.ImporterSettings, stack: infra.Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    trigger = train_settings(stack, monkeypatch)  # MIN_NEW_SAMPLES 3
    clients = train.Clients.default()
    import_id = new_import(cfg, 1, "jsonl", jsonl([{**ROW, "temp": 60 + i} for i in range(20)]))
    uploaded(cfg, import_id)  # the first part: 7 rows, then the lease is released
    held = lock.LockStore(cfg.model_table).read()
    assert [i for i, _ in held.holds] == [import_id]
    # The part's rows reach the train function through the data table's stream: enough to
    # launch, but the import holds the lock.
    ids = [item["id"]["S"] for item in data_items(cfg)]
    records = [data_record(trigger.data_table, sample_id, n) for n, sample_id in enumerate(ids)]
    assert train.handler({"Records": records}) == {"batchItemFailures": []}
    assert train.tick(trigger, clients) is None and instances() == []
    state = lock.LockStore(cfg.model_table).read()
    assert state.pending >= 3
    assert (
        lock.why_not_launch(state, time.time(), min_new=3, min_interval_s=0)
        == f"import {import_id} in progress"
    )
    run_to_end(cfg, import_id)
    assert lock.LockStore(cfg.model_table).read().holds == ()
    decision = train.tick(trigger, clients)
    assert decision is not None and decision.launch
    assert len(instances()) == 1


def test_an_expired_hold_is_ignored(cfg: imports.ImporterSettings, stack: infra.Stack, monkeypatch) -> None:
    trigger = train_settings(stack, monkeypatch)
    store = lock.LockStore(cfg.model_table)
    now = time.time()
    store.set_holds(lambda s: lock.hold(s, "imp-00000000000000aa", int(now * 1000) - 1, now - 10))
    records = [data_record(trigger.data_table, f"s{n}", n) for n in range(3)]
    train.handler({"Records": records})
    assert len(instances()) == 1


def test_set_holds_keeps_the_rest_of_the_lock_and_bumps_rev(cfg: imports.ImporterSettings) -> None:
    store = lock.LockStore(cfg.model_table)
    now = time.time()
    store.transact(lambda s: (lock.add_samples(s, [("a", 1), ("b", 2)], cap=10), None))
    before = store.read()
    store.set_holds(lambda s: lock.hold(s, "imp-00000000000000aa", int(now * 1000) + 60_000, now))
    after = store.read()
    assert after.pending_samples == before.pending_samples and after.rev == before.rev + 1
    # A train step's whole-item write keeps the hold.
    store.transact(lambda s: (lock.add_samples(s, [("c", 3)], cap=10), None))
    assert store.read().holds == after.holds
    store.set_holds(lambda s: lock.unhold(s, "imp-00000000000000aa", now))
    assert store.read().holds == () and store.read().pending == 3


def test_a_fault_that_never_clears_fails_the_import_after_five_attempts(
    cfg: imports.ImporterSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_id = new_import(cfg, 1, "jsonl", jsonl([ROW] * 3))

    def denied(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("AccessDenied")

    monkeypatch.setattr(imports, "import_batch", denied)
    with pytest.raises(RuntimeError):
        uploaded(cfg, import_id)
    for _ in range(3):
        assert schedule()["resumed"][0]["status"] == "error"
    assert status(cfg, import_id)["failures"] == 4
    schedule()
    failed = status(cfg, import_id)
    assert failed["status"] == imports.FAILED
    assert failed["error"]["reason"] == "gave up after 5 failed attempts: RuntimeError('AccessDenied')"
    assert lock.LockStore(cfg.model_table).read().holds == ()
    assert schedule() == {"resumed": []}


# through the local cloud: its S3 events, its schedule and its IAM gate (ImporterFunctionRole) ----


def test_importer_through_the_local_cloud_imports_in_parts_under_its_role(make_cloud: Any) -> None:
    import requests

    from tests.support.clouds import wait

    cloud = make_cloud(drivers=("s3events",), environment={"IMPORT_PART_ROWS": "40"})
    rows = [{**ROW, "temp": 50 + i % 40, "created": 1_700_000_000_000 + i} for i in range(100)]
    body = jsonl([*rows[:10], {**ROW, "temp": 500}, *rows[10:]])
    key = {"x-api-key": cloud.api_key}  # the local cloud's default client's
    created = requests.post(
        f"{cloud.api_url}/imports", json={"format": "jsonl", "filename": "h.jsonl"}, headers=key, timeout=30
    )
    assert created.status_code == 201, created.text
    form = created.json()
    posted = requests.post(
        form["upload"]["url"], data=form["upload"]["fields"], files={"file": ("h.jsonl", body)}, timeout=30
    )
    assert posted.status_code == 204, posted.text

    def final() -> dict[str, Any] | None:
        view = requests.get(form["status_url"], headers=key, timeout=30).json()
        return view if view["status"] in (imports.DONE, imports.FAILED) else None

    done = wait(final, 60, "the import to end")
    assert (done["status"], done["rows_read"], done["written"], done["rejected"]) == (
        imports.DONE,
        101,
        100,
        1,
    )
    assert done["rejections"] == [
        {
            "line": 11,
            "field": "temp",
            "reason": "field 'temp' is 500 °F, outside the accepted range -40 to 140",
        }
    ]
    assert "cursor" not in done and "lease" not in done and done["progress"] == 1.0
    assert done["client"] == "default"


# the pipeline: batches in flight at once, merged in file order ---------------------------------


def window_rows(n: int) -> tuple[list[Any], dict[str, int]]:
    """``n`` rows (and a blank line) with bad rows and in-file duplicates that span batches:
    every 7th row is one of 20 client ids (the same content each time), 140 rows apart. Also
    the counts they must end with."""
    rows: list[Any] = []
    ids: set[int] = set()
    expected = {"rows_read": 0, "written": 0, "duplicates": 0, "rejected": 0}
    for i in range(n):
        expected["rows_read"] += 1
        if i % 97 == 5:
            rows.append({**ROW, "temp": 500})
            expected["rejected"] += 1
        elif i % 251 == 9:
            rows.append(b"{not json")
            expected["rejected"] += 1
        elif i % 7 == 0:
            rows.append({**ROW, "id": f"c-{i % 140}", "temp": 50 + (i % 140) // 7})
            expected["duplicates" if i % 140 in ids else "written"] += 1
            ids.add(i % 140)
        else:
            rows.append({**ROW, "temp": 40 + i % 60})
            expected["written"] += 1
        if i == 42:
            rows.append(b"")
    return rows, expected


def pipeline_cfg(cfg: imports.ImporterSettings, **changes: Any) -> imports.ImporterSettings:
    """One part for the whole file unless told otherwise."""
    return dataclasses.replace(cfg, **{"part_rows": 0, **changes})


def counts(item: dict[str, Any]) -> dict[str, int]:
    return {name: item[name] for name in ("rows_read", "written", "duplicates", "rejected")}


def stored_rows(cfg: imports.ImporterSettings) -> dict[str, tuple[Any, ...]]:
    """The data table as {key: (import_line, the sample's fields)}."""
    fields = ("temp", "rh", "wind", "clo", "label", "client_id", "source")
    return {
        item["id"]["S"]: (item["import_line"]["N"], *(json.dumps(item.get(f)) for f in fields))
        for item in data_items(cfg)
    }


def test_concurrent_batches_end_with_the_same_counts_and_items_as_one_at_a_time(
    cfg: imports.ImporterSettings,
) -> None:
    rows, expected = window_rows(1000)
    body = jsonl(rows)
    clients = imports.Clients.default()
    one = new_import(cfg, 1, "jsonl", body)
    outcome = imports.run_import(one, pipeline_cfg(cfg, concurrency=1, checkpoint_s=0), clients, holder="a")
    assert outcome.status == imports.DONE
    sequential, items = status(cfg, one), stored_rows(cfg)
    for key in items:
        boto3.client("dynamodb").delete_item(TableName=cfg.data_table, Key={"id": {"S": key}})
    four = new_import(cfg, 2, "jsonl", body)
    outcome = imports.run_import(four, pipeline_cfg(cfg, concurrency=4), clients, holder="b")
    assert outcome.status == imports.DONE
    concurrent = status(cfg, four)
    assert counts(sequential) == counts(concurrent) == expected
    assert concurrent["rejections"] == sequential["rejections"]
    assert [r["line"] for r in concurrent["rejections"]] == sorted(
        r["line"] for r in concurrent["rejections"]
    )
    assert stored_rows(cfg) == items and len(items) == expected["written"]


def test_a_crash_in_the_middle_of_a_window_then_a_resume_counts_exactly(
    cfg: imports.ImporterSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lambdas.core import ingest

    rows, expected = window_rows(1000)
    import_id = new_import(cfg, 1, "jsonl", jsonl(rows))
    run_cfg = pipeline_cfg(cfg, concurrency=4, checkpoint_s=3600)
    real = ingest.write_items
    later_batch_written = threading.Event()

    def lines(items: Any) -> set[int]:
        return {int(item["import_line"]["N"]) for item in items}

    def crash_in_batch_six(client: Any, table: str, items: Any, **kwargs: Any) -> list[str]:
        if 550 in lines(items):  # the sixth batch: it waits until the seventh is written...
            assert later_batch_written.wait(30)
            real(client, table, items[:25], **kwargs)  # ...writes a quarter of its rows, dies
            raise Crash()
        written = real(client, table, items, **kwargs)
        if 650 in lines(items):
            later_batch_written.set()
        return written

    monkeypatch.setattr(ingest, "write_items", crash_in_batch_six)
    with pytest.raises(Crash):
        imports.run_import(import_id, run_cfg, imports.Clients.default(), holder="first")
    monkeypatch.setattr(ingest, "write_items", real)
    crashed = status(cfg, import_id)
    # Five batches merged and checkpointed; nothing past the sixth, though later ones were written.
    assert crashed["rows_read"] == 500 and crashed["lease"]["until_ms"] > time.time() * 1000
    assert len(data_items(cfg)) >= crashed["written"] + 25 + 50  # the sixth batch's 25, the seventh
    later = time.time() + cfg.lease_s + 1
    outcomes = imports.resume(
        run_cfg, imports.Clients.default(), holder="second", time_left_ms=None, clock=lambda: later
    )
    assert [o.status for o in outcomes] == [imports.DONE]
    done = status(cfg, import_id)
    assert counts(done) == expected
    assert len(data_items(cfg)) == expected["written"]


def test_a_failed_batch_checkpoints_only_the_batches_before_it_and_releases_the_lease(
    cfg: imports.ImporterSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows, expected = window_rows(500)
    import_id = new_import(cfg, 1, "jsonl", jsonl(rows))
    real = imports.import_batch

    def third_fails(job: Any, batch: imports.Batch, **kwargs: Any) -> imports.Stored:
        if batch.line <= 250 < batch.line + batch.rows:
            raise RuntimeError("throttled")
        return real(job, batch, **kwargs)

    monkeypatch.setattr(imports, "import_batch", third_fails)
    with pytest.raises(RuntimeError):
        imports.run_import(
            import_id, pipeline_cfg(cfg, checkpoint_s=3600), imports.Clients.default(), holder="a"
        )
    failed = status(cfg, import_id)
    assert failed["rows_read"] == 200 and failed["lease"]["until_ms"] == 0 and failed["failures"] == 1
    assert_balanced(failed)
    monkeypatch.setattr(imports, "import_batch", real)
    run_to_end(cfg, import_id)
    assert counts(status(cfg, import_id)) == expected


class Ticker:
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = time.time(), step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.mark.parametrize(
    ("rows", "checkpoint_s", "step", "low", "high"),
    [
        (500, 1.0, 0.0, 1, 1),  # a clock that stands still: only the end of the file
        (500, 0.0, 0.0, 5, 5),  # 0: after every batch
        (2000, 1.0, 0.1, 2, 19),  # about every few batches of 20
    ],
)
def test_checkpoints_come_at_most_every_checkpoint_s_and_at_the_end(
    cfg: imports.ImporterSettings,
    monkeypatch: pytest.MonkeyPatch,
    rows: int,
    checkpoint_s: float,
    step: float,
    low: int,
    high: int,
) -> None:
    body, expected = window_rows(rows)
    import_id = new_import(cfg, 1, "jsonl", jsonl(body))
    real = imports.checkpoint
    stored: list[int] = []

    def spy(job: Any, progress: imports.Progress) -> None:
        stored.append(progress.rows_read)
        real(job, progress)

    monkeypatch.setattr(imports, "checkpoint", spy)
    run_cfg = pipeline_cfg(cfg, concurrency=4, checkpoint_s=checkpoint_s)
    imports.run_import(import_id, run_cfg, imports.Clients.default(), holder="a", clock=Ticker(step))
    assert low <= len(stored) <= high
    assert stored == sorted(stored) and stored[-1] == rows and all(n % 100 == 0 for n in stored)
    assert counts(status(cfg, import_id)) == expected


def test_a_row_repeated_in_two_batches_in_flight_is_written_once_and_counted_a_duplicate_once(
    cfg: imports.ImporterSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows: list[Any] = [{**ROW, "temp": 40 + i % 60} for i in range(200)]
    rows[10] = rows[150] = {**ROW, "id": "twin"}
    import_id = new_import(cfg, 1, "jsonl", jsonl(rows))
    real_prepare, real_import = imports.prepare, imports.import_batch
    second_prepared = threading.Event()
    sent: list[str] = []

    def prepare(batch_rows: Any, **kwargs: Any) -> imports.Batch:
        batch = real_prepare(batch_rows, **kwargs)
        if batch.line == 101:
            second_prepared.set()
        return batch

    def import_batch(job: Any, batch: imports.Batch, **kwargs: Any) -> imports.Stored:
        if batch.line == 1:  # the first batch stays in flight until the second is prepared
            assert second_prepared.wait(30)
        sent.extend(batch.keys)
        return real_import(job, batch, **kwargs)

    monkeypatch.setattr(imports, "prepare", prepare)
    monkeypatch.setattr(imports, "import_batch", import_batch)
    imports.run_import(import_id, pipeline_cfg(cfg, concurrency=2), imports.Clients.default(), holder="a")
    done = status(cfg, import_id)
    assert counts(done) == {"rows_read": 200, "written": 199, "duplicates": 1, "rejected": 0}
    assert len(sent) == len(set(sent)) == 199
    twins = [item for item in data_items(cfg) if item.get("client_id", {}).get("S") == "twin"]
    assert [item["import_line"]["N"] for item in twins] == ["11"]


def test_the_schedule_settles_imports_still_waiting_after_their_upload_form_expired(
    cfg: imports.ImporterSettings,
) -> None:
    ddb = boto3.client("dynamodb")
    # Every delivery of S3's event failed: the file is there, the import still waits.
    lost_event = new_import(cfg, 901, "jsonl", jsonl(mixed_rows()))
    # The form expired unused.
    never = new_import(cfg, 902, "jsonl", b"")
    boto3.client("s3").delete_object(Bucket=cfg.import_bucket, Key=f"imports/{never}.jsonl")
    for stale in (lost_event, never):  # created long before the form's 900 s and a minute
        ddb.update_item(
            TableName=cfg.import_table,
            Key={"import_id": {"S": stale}},
            UpdateExpression="SET updated_at = :then",
            ExpressionAttributeValues={":then": {"S": "2026-01-01T00:00:00.000Z"}},
        )
    # A form still valid: left alone, its upload may be under way.
    recent = new_import(cfg, 903, "jsonl", jsonl(mixed_rows()))
    run_to_end(cfg, lost_event)
    done = status(cfg, lost_event)
    assert done["status"] == imports.DONE
    assert_balanced(done)
    failed = status(cfg, never)
    assert failed["status"] == imports.FAILED and "missing" in failed["error"]["reason"]
    assert status(cfg, recent)["status"] == imports.WAITING_UPLOAD


def test_a_revoked_clients_import_stops_at_its_next_part(cfg: imports.ImporterSettings) -> None:
    from lambdas.core.clients import REVOKED, TRUSTED, Clients

    registry = Clients(cfg.model_table)
    registry.create(CLIENT, trust=TRUSTED, api_key_id="k-importer-test", actor="test")
    import_id = new_import(cfg, 1, "jsonl", jsonl(mixed_rows()))
    uploaded(cfg, import_id)  # the first part: 7 rows
    written = len(data_items(cfg))
    assert written > 0
    registry.set_trust(CLIENT, REVOKED, actor="test", reason="wrong labels")
    run_to_end(cfg, import_id)
    stopped = status(cfg, import_id)
    assert stopped["status"] == imports.FAILED
    assert stopped["error"]["reason"] == f"client {CLIENT!r} is revoked"
    assert len(data_items(cfg)) == written  # nothing more of it
    assert lock.LockStore(cfg.model_table).read().holds == ()  # retraining is not held back
