"""The import engine without AWS: readers, the key scheme, the row policy, the format rule."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lambdas.core import imports, ingest, lock
from lambdas.core.imports import BOM, Cursor, FileFormatError, Rejection
from lambdas.core.samples import import_key, item_keys, parse_sample, parse_samples

NOW_MS = 1_780_000_000_000
ROW = {"temp": 72, "rh": 45, "wind": 0.1, "clo": 0.6, "label": "ok"}


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def read_all(fmt: str, data: bytes, chunk: int = 7) -> tuple[Cursor, list[imports.Row]]:
    start = imports.probe(fmt, imports.split_lines(chunked(data, chunk)))
    return start, list(imports.rows(fmt, chunked(data[start.offset :], chunk), start))


def jsonl(*rows: Any) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


# lines --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 64 * 1024])
def test_split_lines_keeps_exact_offsets_and_numbers_whatever_the_chunking(chunk: int) -> None:
    data = b"ab\n\ncd\r\nlast"
    lines = list(imports.split_lines(chunked(data, chunk)))
    assert [(ln.number, ln.start, ln.end, ln.raw) for ln in lines] == [
        (1, 0, 3, b"ab\n"),
        (2, 3, 4, b"\n"),
        (3, 4, 8, b"cd\r\n"),
        (4, 8, 12, b"last"),
    ]


def test_split_lines_skips_a_line_longer_than_the_limit_without_holding_it() -> None:
    data = b"a\n" + b"x" * 100 + b"\nb\n"
    lines = list(imports.split_lines(chunked(data, 10), max_bytes=20))
    assert [(ln.number, ln.raw) for ln in lines] == [(1, b"a\n"), (2, None), (3, b"b\n")]
    assert lines[1].end == 2 + 101


def test_split_lines_resumes_at_an_offset_with_its_line_number() -> None:
    lines = list(imports.split_lines([b"x\ny\n"], offset=100, line=7))
    assert [(ln.number, ln.start, ln.end) for ln in lines] == [(7, 100, 102), (8, 102, 104)]


# csv ----------------------------------------------------------------------------------------


def test_csv_rows_read_the_header_once_and_parse_cells_as_json_numbers() -> None:
    data = BOM + b"temp,rh,wind,clo,label,id,score\r\n72,45,0.1,0.6,ok,,\r\n1e1,45,0.1,0.6,warm,a-1,-2.5\r\n"
    start, rows = read_all("csv", data)
    assert start == Cursor(len(BOM) + 33, 2, ("temp", "rh", "wind", "clo", "label", "id", "score"))
    assert [r.data for r in rows] == [
        {**ROW},
        {"temp": 10.0, "rh": 45, "wind": 0.1, "clo": 0.6, "label": "warm", "id": "a-1", "score": -2.5},
    ]
    assert [(r.line, r.end, r.next_line) for r in rows] == [(2, len(BOM) + 33 + 20, 3), (3, len(data), 4)]


def test_csv_blank_lines_are_not_rows_and_a_quoted_field_may_span_lines() -> None:
    data = b'temp,rh,wind,clo,label,id\n\n72,45,0.1,0.6,ok,"a\nb"\n\n73,45,0.1,0.6,ok,\n'
    _, rows = read_all("csv", data)
    assert [(r.line, r.next_line) for r in rows] == [(3, 5), (6, 7)]
    assert rows[0].data["id"] == "a\nb"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"72,45,0.1,0.6\n", "4 cells, the header has 5 columns"),
        (b"72,45,0.1,0.6,ok,extra\n", "6 cells, the header has 5 columns"),
        (b"72,45,0.1,0.6,\xffok\n", "not valid UTF-8"),
    ],
)
def test_csv_malformed_record_is_a_rejected_row(line: bytes, reason: str) -> None:
    _, rows = read_all("csv", b"temp,rh,wind,clo,label\n" + line + b"70,40,0.1,0.5,cold\n")
    assert (rows[0].line, rows[0].reason) == (2, reason)
    assert rows[1].data == {"temp": 70, "rh": 40, "wind": 0.1, "clo": 0.5, "label": "cold"}


def test_csv_numbers_that_are_not_json_numbers_stay_text_and_are_rejected() -> None:
    _, rows = read_all("csv", b"temp,rh,wind,clo,label\nNaN,0x10,.5,1.,ok\n")
    assert rows[0].data == {"temp": "NaN", "rh": "0x10", "wind": ".5", "clo": "1.", "label": "ok"}
    assert imports.check_row(rows[0], NOW_MS) == Rejection(
        2, "temp", "field 'temp' must be a number, got string"
    )


# jsonl --------------------------------------------------------------------------------------


def test_jsonl_rows_skip_blank_lines_and_strip_a_bom() -> None:
    data = BOM + jsonl(ROW) + b"\n   \n" + jsonl({**ROW, "label": "cold"})
    start, rows = read_all("jsonl", data)
    assert start.offset == len(BOM)
    assert [(r.line, r.data["label"]) for r in rows] == [(1, "ok"), (4, "cold")]
    assert rows[-1].end == len(data)


def test_jsonl_line_that_is_not_json_is_a_rejected_row_naming_the_line() -> None:
    _, rows = read_all("jsonl", jsonl(ROW, b"{oops", ROW))
    assert rows[1].line == 2 and rows[1].reason is not None and rows[1].reason.startswith("not valid JSON")


# the "not the declared format at all" rule ---------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "data", "message"),
    [
        ("csv", b"", "the file is empty"),
        ("jsonl", b"", "the file is empty"),
        ("jsonl", b"\n \n", "the file has no rows (blank lines only)"),
        (
            "csv",
            b"72,45,0.1,0.6,ok\n",
            "not a CSV file: the first line has no header with temp, rh, wind, clo, label",
        ),
        ("csv", jsonl(ROW), "not a CSV file: the first line has no header with temp, rh, wind, clo, label"),
        ("csv", b"temp,rh,wind,clo,label,colour\n", 'unknown column "colour" in the header; allowed: '),
        ("csv", b"temp,rh,wind,clo,label,rh\n", 'column "rh" appears twice in the header'),
        ("csv", b"\xfftemp,rh\n", "not UTF-8 text: the first line is not valid UTF-8"),
        ("jsonl", b"\xff\xfe{\x00}\x00\n", "not UTF-8 text: the first line is not valid UTF-8"),
        (
            "jsonl",
            b"temp,rh,wind,clo,label\n72,45,0.1,0.6,ok\n",
            "not a JSON Lines file: the first 2 non-blank",
        ),
        (
            "jsonl",
            b"[1]\n" * 10 + jsonl(ROW),
            "not a JSON Lines file: the first 10 non-blank lines are not JSON objects",
        ),
    ],
)
def test_probe_fails_a_file_that_is_not_the_declared_format(fmt: str, data: bytes, message: str) -> None:
    with pytest.raises(FileFormatError) as caught:
        imports.probe(fmt, imports.split_lines([data]))
    assert caught.value.message.startswith(message)


def test_probe_accepts_a_jsonl_with_an_object_among_its_first_ten_non_blank_lines() -> None:
    data = b"not json\n" * 9 + b"\n\n" + jsonl(ROW)
    assert imports.probe("jsonl", imports.split_lines([data])) == Cursor(0, 1)


def test_probe_reads_only_the_head_of_the_file() -> None:
    consumed = []

    def endless() -> Iterator[bytes]:
        for n in range(10**9):
            consumed.append(n)
            yield b"temp,rh,wind,clo,label\n" if n == 0 else b"72,45,0.1,0.6,ok\n"

    imports.probe("csv", imports.split_lines(endless()))
    assert len(consumed) == 1


# the row policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({**ROW, "temp": 500}, "temp", "field 'temp' is 500 °F, outside the accepted range"),
        ({**ROW, "label": "hot"}, "label", "field 'label' must be one of cold, ok, warm, got \"hot\""),
        ({k: v for k, v in ROW.items() if k != "rh"}, "rh", "field 'rh' is required"),
        ({**ROW, "tmp": 1}, "tmp", 'unknown field "tmp"'),
        ([1, 2], None, "must be a JSON object, got array"),
    ],
)
def test_check_row_rejects_by_the_upload_rules_with_line_field_and_reason(
    data: Any, field: Any, reason: str
) -> None:
    checked = imports.check_row(imports.Row(12, 0, 13, data=data), NOW_MS)
    assert isinstance(checked, Rejection)
    assert (checked.line, checked.field) == (12, field)
    assert checked.reason.startswith(reason) and "sample 12" not in checked.reason


def test_check_row_accepts_what_upload_accepts() -> None:
    assert imports.check_row(imports.Row(3, 0, 4, data=ROW), NOW_MS) == parse_sample(ROW, 0, now_ms=NOW_MS)


# keys ---------------------------------------------------------------------------------------

DIGEST = hashlib.sha256(b"file one").hexdigest()


def test_import_key_of_a_row_with_an_id_is_the_key_upload_gives_it() -> None:
    sample = parse_sample({**ROW, "id": "client-7"}, 0, now_ms=NOW_MS)
    (upload_key,) = item_keys(parse_samples([{**ROW, "id": "client-7"}], now_ms=NOW_MS, max_samples=10))
    assert import_key(sample, digest=DIGEST, line=5) == upload_key
    assert import_key(sample, digest="0" * 64, line=9) == upload_key


def test_import_key_without_an_id_is_stable_across_imports_of_the_same_file() -> None:
    sample = parse_sample(ROW, 0, now_ms=NOW_MS)
    assert import_key(sample, digest=DIGEST, line=2) == import_key(sample, digest=DIGEST, line=2)


def test_import_key_without_an_id_differs_by_file_by_line_and_from_upload() -> None:
    sample = parse_sample(ROW, 0, now_ms=NOW_MS)
    other = hashlib.sha256(b"file two").hexdigest()
    keys = {
        import_key(sample, digest=DIGEST, line=2),
        import_key(sample, digest=other, line=2),
        import_key(sample, digest=DIGEST, line=3),
        *item_keys([sample]),
    }
    assert len(keys) == 4


def test_item_keys_unchanged_by_the_shared_helper() -> None:
    # The basis /upload has always hashed: "request\0<digest>\0<index>\0<content>".
    sample = parse_sample(ROW, 0, now_ms=NOW_MS)
    from lambdas.core import samples

    content = samples._canonical_json(sample.canonical())
    digest = samples.request_digest([sample])
    expected = "s-" + hashlib.sha256(f"request\x00{digest}\x000\x00{content}".encode()).hexdigest()
    assert item_keys([sample]) == [expected]


# items --------------------------------------------------------------------------------------


def test_to_items_of_an_import_carry_its_id_and_line() -> None:
    sample = parse_sample(ROW, 0, now_ms=NOW_MS)
    (item,) = ingest.to_items(
        [sample], ["s-1"], ingested_ms=NOW_MS, source="import", import_id="imp-0123456789abcdef", lines=[4]
    )
    assert item["source"] == {"S": "import"}
    assert item["import_id"] == {"S": "imp-0123456789abcdef"} and item["import_line"] == {"N": "4"}


@pytest.mark.parametrize(
    ("source", "import_id", "lines"),
    [("import", None, None), ("api", "imp-0123456789abcdef", [1]), ("import", "imp-0123456789abcdef", None)],
)
def test_to_items_refuses_import_fields_without_source_import_and_vice_versa(
    source, import_id, lines
) -> None:
    sample = parse_sample(ROW, 0, now_ms=NOW_MS)
    with pytest.raises(ValueError):
        ingest.to_items(
            [sample], ["s-1"], ingested_ms=NOW_MS, source=source, import_id=import_id, lines=lines
        )


def test_to_items_of_an_import_carry_its_client() -> None:
    sample = parse_sample(ROW, 0, now_ms=NOW_MS)
    (item,) = ingest.to_items(
        [sample],
        ["s-1"],
        ingested_ms=NOW_MS,
        source="import",
        client="acme",
        import_id="imp-0123456789abcdef",
        lines=[4],
    )
    assert (item["client"], item["source"]) == ({"S": "acme"}, {"S": "import"})


def test_to_items_of_an_import_from_before_clients_have_no_client_attribute() -> None:
    sample = parse_sample(ROW, 0, now_ms=NOW_MS)
    (item,) = ingest.to_items(
        [sample], ["s-1"], ingested_ms=NOW_MS, source="import", import_id="imp-0123456789abcdef", lines=[4]
    )
    assert "client" not in item


@pytest.mark.parametrize("client", ["", "Acme", "-acme", "a" * 64, "has space", 7])
def test_to_items_refuses_a_client_that_is_not_a_client_name(client: Any) -> None:
    sample = parse_sample(ROW, 0, now_ms=NOW_MS)
    with pytest.raises(ValueError, match="client must be a client's name"):
        ingest.to_items([sample], ["s-1"], ingested_ms=NOW_MS, source="api", client=client)


def test_prepare_keys_cover_the_import_client() -> None:
    rows = [imports.Row(1, 10, 2, data=ROW)]
    mine = imports.prepare(rows, digest=DIGEST, now_ms=NOW_MS, in_flight=set(), client="acme")
    theirs = imports.prepare(rows, digest=DIGEST, now_ms=NOW_MS, in_flight=set(), client="other")
    sample = parse_sample(ROW, 0, now_ms=NOW_MS)
    assert mine.keys == [import_key(sample, digest=DIGEST, line=1, client="acme")]
    assert mine.keys != theirs.keys


# the public view ----------------------------------------------------------------------------


def test_public_status_hides_cursor_lease_etag_and_adds_progress() -> None:
    item = {
        "import_id": "imp-0123456789abcdef",
        "status": "importing",
        "bytes": 200,
        "bytes_read": 50,
        "cursor": {"offset": 50, "line": 3},
        "lease": {"holder": "r", "until_ms": 1},
        "etag": '"x"',
    }
    view = imports.public_status(item)
    assert view == {
        "import_id": "imp-0123456789abcdef",
        "status": "importing",
        "bytes": 200,
        "bytes_read": 50,
        "progress": 0.25,
    }


def test_public_status_reads_a_raw_item_and_has_no_progress_before_the_size_is_known() -> None:
    raw = {
        "import_id": {"S": "imp-0123456789abcdef"},
        "status": {"S": "waiting_upload"},
        "rows_read": {"N": "0"},
    }
    assert imports.public_status(raw) == {
        "import_id": "imp-0123456789abcdef",
        "status": "waiting_upload",
        "rows_read": 0,
        "progress": None,
    }


# the lock's holds ---------------------------------------------------------------------------


def test_an_unexpired_hold_blocks_a_launch_and_an_expired_one_is_ignored() -> None:
    now = 1_000_000.0
    state = lock.LockState(pending_samples=tuple((f"s{i}", 1) for i in range(5)))
    held = lock.hold(state, "imp-0123456789abcdef", int(now * 1000) + 60_000, now)
    assert (
        lock.why_not_launch(held, now, min_new=3, min_interval_s=0)
        == "import imp-0123456789abcdef in progress"
    )
    assert not lock.due(held, now, min_new=3, min_interval_s=0)
    assert lock.why_not_launch(held, now + 61, min_new=3, min_interval_s=0) is None
    assert (
        lock.why_not_launch(lock.unhold(held, "imp-0123456789abcdef", now), now, min_new=3, min_interval_s=0)
        is None
    )


def test_hold_replaces_its_own_entry_and_drops_expired_ones_of_others() -> None:
    now = 1_000.0
    state = lock.LockState(holds=(("imp-a", 1), ("imp-b", 5_000_000)))
    assert lock.hold(state, "imp-b", 6_000_000, now).holds == (("imp-b", 6_000_000),)
    assert lock.unhold(state, "imp-c", now) == state


# the pipeline -------------------------------------------------------------------------------


def row(line: int, data: Any) -> imports.Row:
    return imports.Row(line, line * 10, line + 1, data=data)


def test_prepare_counts_a_key_in_flight_or_earlier_in_the_batch_as_a_duplicate_and_does_not_send_it() -> None:
    twin = {**ROW, "id": "twin"}
    in_flight = {import_key(parse_sample(twin, 0, now_ms=NOW_MS), digest=DIGEST, line=1)}
    batch = imports.prepare(
        [
            row(5, twin),
            row(6, ROW),
            row(7, {**ROW, "temp": 500}),
            row(8, {**ROW, "id": "b"}),
            row(9, {**ROW, "id": "b"}),
        ],
        digest=DIGEST,
        now_ms=NOW_MS,
        in_flight=in_flight,
    )
    assert (batch.line, batch.rows, batch.end, batch.next_line) == (5, 5, 90, 10)
    assert batch.duplicates == 2  # line 5 (in flight), line 9 (line 8's twin)
    assert [line for line, _, _ in batch.candidates] == [6, 8]
    assert [r.line for r in batch.rejections] == [7]
    assert not in_flight & set(batch.keys)


def fake_job(concurrency: int, checkpoint_s: float) -> imports.Job:
    cfg = imports.ImporterSettings(
        "bucket", "imports", "data", "models", concurrency=concurrency, checkpoint_s=checkpoint_s
    )
    return imports.Job("imp-0123456789abcdef", "jsonl", "k", "h", DIGEST, '"e"', 1000, cfg, imports.Clients())


def batches_of(n: int, size: int = 3) -> list[list[imports.Row]]:
    """``n`` batches; each one's first row is rejected, so ``rejections`` shows the merge order."""
    lines = iter(range(1, n * size + 1))
    return [
        [
            row(line, {**ROW, "temp": 500} if k == 0 else {**ROW, "temp": line % 100})
            for k, line in enumerate(batch)
        ]
        for batch in ([next(lines) for _ in range(size)] for _ in range(n))
    ]


def test_pipeline_merges_in_file_order_when_later_batches_finish_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    finished: list[int] = []
    stored: list[tuple[int, int]] = []

    def import_batch(job: Any, batch: imports.Batch, **kwargs: Any) -> imports.Stored:
        time.sleep(0.02 * (4 - (batch.line // 3) % 4))  # in each window the last finishes first
        finished.append(batch.line)
        return imports.Stored(written=len(batch.candidates))

    monkeypatch.setattr(imports, "import_batch", import_batch)
    monkeypatch.setattr(imports, "checkpoint", lambda job, p: stored.append((p.cursor.offset, p.rows_read)))
    monkeypatch.setattr(imports, "MAX_REJECTIONS", 5)
    job = fake_job(concurrency=4, checkpoint_s=0)
    progress = imports.Progress(Cursor(0, 1))
    with ThreadPoolExecutor(4) as pool:
        pipeline = imports.Pipeline(job, progress, pool, clock=lambda: 0.0, time_left=None)
        for batch in batches_of(8):
            pipeline.submit(batch, now_ms=NOW_MS)
        pipeline.drain()
    assert finished != sorted(finished)  # they did finish out of order...
    assert stored == [(line * 10, line) for line in range(3, 25, 3)]  # ...and merged in order
    assert [r["line"] for r in progress.rejections] == [1, 4, 7, 10, 13]
    assert progress.counts() == {"rows_read": 24, "written": 16, "duplicates": 0, "rejected": 8}


def test_pipeline_stops_at_a_failed_batch_and_checkpoints_only_the_batches_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def import_batch(job: Any, batch: imports.Batch, **kwargs: Any) -> imports.Stored:
        if batch.line == 7:
            time.sleep(0.05)  # the batches after it finish first
            raise RuntimeError("throttled")
        return imports.Stored(written=len(batch.candidates))

    stored: list[int] = []
    monkeypatch.setattr(imports, "import_batch", import_batch)
    monkeypatch.setattr(imports, "checkpoint", lambda job, p: stored.append(p.rows_read))
    progress = imports.Progress(Cursor(0, 1))
    with pytest.raises(RuntimeError, match="throttled"), ThreadPoolExecutor(4) as pool:
        pipeline = imports.Pipeline(fake_job(4, 3600), progress, pool, clock=lambda: 0.0, time_left=None)
        for batch in batches_of(8):
            pipeline.submit(batch, now_ms=NOW_MS)
        pipeline.drain()
    assert stored == [6] and progress.rows_read == 6 and progress.cursor.offset == 60


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMPORT_CONCURRENCY": "0"}, "IMPORT_CONCURRENCY must be >= 1"),
        ({"IMPORT_CONCURRENCY": "10"}, "IMPORT_CONCURRENCY must be <= 9"),
        ({"IMPORT_CHECKPOINT_S": "-1"}, "IMPORT_CHECKPOINT_S must be >= 0"),
    ],
)
def test_importer_settings_refuse_a_concurrency_or_cadence_out_of_range(
    env: dict[str, str], message: str
) -> None:
    from lambdas.core.errors import ConfigError

    base = {"IMPORT_BUCKET": "b", "IMPORT_TABLE": "i", "DATA_TABLE": "d", "MODEL_TABLE": "m"}
    assert imports.ImporterSettings.from_env(base).concurrency == 4
    assert imports.ImporterSettings.from_env(base).checkpoint_s == 1.0
    with pytest.raises(ConfigError) as caught:
        imports.ImporterSettings.from_env({**base, **env})
    assert message in caught.value.message
