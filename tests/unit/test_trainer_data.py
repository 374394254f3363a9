from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trainer import data


def item(sample_id: str, temp: str = "70", label: str = "ok", created: str = "1700000000000") -> dict:
    return {
        "id": {"S": sample_id},
        "temp": {"N": temp},
        "rh": {"N": "40"},
        "wind": {"N": "0.1"},
        "clo": {"N": "0.5"},
        "label": {"S": label},
        "created": {"N": created},
    }


def test_data_to_samples_converts_and_sorts_by_id() -> None:
    samples = data.to_samples([item("b", "71.5", "warm", "20"), item("a", "60", "cold", "10")])
    assert samples.ids == ["a", "b"]
    assert samples.x.dtype == np.float32
    np.testing.assert_allclose(samples.x, [[60, 40, 0.1, 0.5], [71.5, 40, 0.1, 0.5]], rtol=1e-6)
    assert samples.y.tolist() == [0, 2]
    assert samples.watermark == 20


@pytest.mark.parametrize(
    "bad",
    [
        {k: v for k, v in item("x").items() if k != "temp"},
        {**item("x"), "label": {"S": "hot"}},
        {**item("x"), "rh": {"S": "40"}},
        {**item("x"), "temp": {"N": "NaN"}},
    ],
)
def test_data_to_samples_skips_unusable_items(bad: dict) -> None:
    samples = data.to_samples([item("good"), bad])
    assert samples.ids == ["good"]
    assert samples.skipped == 1


def test_data_one_hot_follows_label_order() -> None:
    assert data.one_hot(np.array([2, 0])).tolist() == [[0, 0, 1], [1, 0, 0]]


def test_data_holdout_is_deterministic_and_about_the_requested_share() -> None:
    ids = [f"s-{i}" for i in range(5000)]
    first = [data.in_holdout(i, 10) for i in ids]
    assert first == [data.in_holdout(i, 10) for i in ids]
    assert 0.08 < sum(first) / len(ids) < 0.12


def test_data_split_keeps_holdout_fixed_and_trains_on_most_of_the_rest() -> None:
    samples = data.to_samples([item(f"s-{i}", created=str(i)) for i in range(1000)])
    a = data.split(samples, holdout_percent=10, validation_fraction=0.15, seed=1)
    b = data.split(samples, holdout_percent=10, validation_fraction=0.15, seed=2)
    assert a.holdout.ids == b.holdout.ids
    rest = len(samples) - len(a.holdout)
    assert len(a.validation) == round(rest * 0.15)
    assert len(a.train) == rest - len(a.validation)
    assert set(a.train.ids).isdisjoint(a.validation.ids)
    assert set(a.train.ids).isdisjoint(a.holdout.ids)
    assert a.validation.ids != b.validation.ids


def test_data_parallel_scan_reads_every_page_of_every_segment(dynamodb, stack) -> None:
    table = stack.physical["DataTable"]
    for start in range(0, 300, 25):
        batch = [
            {"PutRequest": {"Item": item(f"s-{i:04d}", created=str(i))}} for i in range(start, start + 25)
        ]
        dynamodb.batch_write_item(RequestItems={table: batch})
    pages: list[int] = []
    real_scan = dynamodb.scan

    def small_pages(**kwargs):
        page = real_scan(**{**kwargs, "Limit": 20})
        pages.append(kwargs["Segment"])
        return page

    class Client:
        scan = staticmethod(small_pages)

    samples = data.load(table, Client(), segments=4)
    assert samples.ids == [f"s-{i:04d}" for i in range(300)]
    assert samples.watermark == 299
    assert set(pages) == {0, 1, 2, 3}
    assert len(pages) > 4


@pytest.mark.parametrize(
    ("size", "configured", "segments"),
    [
        (None, None, 4),  # size unknown: as before
        (0, None, 4),  # a new table (or moto): DescribeTable says 0
        (150 * 1000 * 1000, None, 4),  # 1,000,000 samples of about 150 bytes
        (1500 * 1000 * 1000, None, 12),  # 10,000,000
        (10**12, None, data.MAX_SEGMENTS),
        (10**12, 2, 2),  # SCAN_SEGMENTS set: as told
    ],
)
def test_data_segments_follow_the_table_size(size: int | None, configured: int | None, segments: int) -> None:
    assert data.segments_for(size, configured) == segments


def test_data_table_size_is_read_from_describe_table_and_unknown_on_error() -> None:
    class Client:
        def __init__(self, reply: dict | Exception) -> None:
            self.reply = reply

        def describe_table(self, TableName: str) -> dict:
            if isinstance(self.reply, Exception):
                raise self.reply
            return self.reply

    assert data.table_bytes("t", Client({"Table": {"TableSizeBytes": 1234}})) == 1234
    assert data.table_bytes("t", Client(RuntimeError("AccessDenied"))) is None


def test_data_scan_decodes_each_page_and_reports_progress() -> None:
    pages = {
        0: [[item("c"), item("a", created="5")], [{**item("x"), "label": {"S": "hot"}}]],
        1: [[item("b", "65.25", "cold", "9")]],
    }
    seen: list[int] = []

    class Client:
        def scan(self, **kwargs: Any) -> dict:
            assert kwargs["Limit"] == data.PAGE_ITEMS and kwargs["ConsistentRead"] is True
            at = int(kwargs.get("ExclusiveStartKey", {}).get("n", 0))
            segment = pages[kwargs["Segment"]]
            reply: dict[str, Any] = {"Items": segment[at]}
            if at + 1 < len(segment):
                reply["LastEvaluatedKey"] = {"n": at + 1}
            return reply

    samples = data.load("t", Client(), segments=2, on_page=seen.append)
    assert samples.ids == ["a", "b", "c"] and samples.skipped == 1
    assert samples.y.tolist() == [1, 0, 1] and samples.created.tolist() == [5, 9, 1700000000000]
    np.testing.assert_allclose(samples.x[1], [65.25, 40, 0.1, 0.5], rtol=1e-6)
    assert sorted(seen) == [1, 1, 2]


def _arrivals(n: int) -> data.Samples:
    """``n`` samples, the i-th ingested at i ms (``created`` says otherwise: it is the client's)."""
    items = [{**item(f"s-{i:04d}", created="1"), "ingested": {"N": str(i)}} for i in range(n)]
    return data.to_samples(items)


def test_data_reads_ingested_and_falls_back_to_created() -> None:
    samples = data.to_samples([{**item("a", created="5"), "ingested": {"N": "9"}}, item("b", created="7")])
    assert samples.arrived.tolist() == [9, 7]
    assert samples.subset(np.array([1])).arrived.tolist() == [7]


def test_data_a_bulk_imported_row_arrived_when_it_was_created_not_when_it_was_imported() -> None:
    # History imported today must not count as the newest data: not in the gate's recent window,
    # not in the drift rule's reference of the newest samples.
    imported = {**item("old", created="5"), "ingested": {"N": "900"}, "import_id": {"S": "imp-1"}}
    live = {**item("new", created="600"), "ingested": {"N": "800"}}
    samples = data.to_samples([imported, live])
    assert dict(zip(samples.ids, samples.arrived.tolist(), strict=True)) == {"old": 5, "new": 800}


def test_data_recent_window_is_never_trained_on_and_leaves_the_holdout_fixed() -> None:
    samples = _arrivals(4000)
    window = data.RecentWindow(after_ms=2999, percent=10, max_count=2000)
    plain = data.split(samples, holdout_percent=10, validation_fraction=0.15, seed=1)
    parts = data.split(samples, holdout_percent=10, validation_fraction=0.15, seed=1, recent=window)
    assert parts.recent is not None and plain.recent is None
    recent = set(parts.recent.ids)
    assert recent.isdisjoint(parts.train.ids) and recent.isdisjoint(parts.validation.ids)
    assert parts.holdout.ids == plain.holdout.ids  # fixed whatever the window
    # The window: every sample after the snapshot in the holdout or the next 10 % of ids.
    expected = {
        i for i, t in zip(samples.ids, samples.arrived, strict=True) if t > 2999 and data.id_bucket(i) < 20
    }
    assert recent == expected and 150 < len(recent) < 250
    assert recent & set(parts.holdout.ids)  # holdout members count in the window too
    in_both = len(recent & set(parts.holdout.ids))
    assert len(parts.train) + len(parts.validation) + len(parts.holdout) + len(recent) - in_both == len(
        samples
    )
    # Before the snapshot the recent share of ids trains as usual.
    older = [
        i
        for i, t in zip(samples.ids, samples.arrived, strict=True)
        if t <= 2999 and 10 <= data.id_bucket(i) < 20
    ]
    assert set(older) <= set(parts.train.ids) | set(parts.validation.ids)


def test_data_recent_window_keeps_the_newest_max_count() -> None:
    samples = _arrivals(4000)
    parts = data.split(
        samples,
        holdout_percent=10,
        validation_fraction=0.15,
        seed=1,
        recent=data.RecentWindow(after_ms=0, percent=10, max_count=50),
    )
    assert parts.recent is not None and len(parts.recent) == 50
    eligible = sorted(
        (t, i) for i, t in zip(samples.ids, samples.arrived, strict=True) if t > 0 and data.id_bucket(i) < 20
    )
    assert set(parts.recent.ids) == {i for _, i in eligible[-50:]}


def test_data_recent_window_is_empty_when_nothing_arrived_since() -> None:
    samples = _arrivals(500)
    parts = data.split(
        samples,
        holdout_percent=10,
        validation_fraction=0.15,
        seed=1,
        recent=data.RecentWindow(after_ms=499, percent=10, max_count=2000),
    )
    assert parts.recent is not None and len(parts.recent) == 0
    assert len(parts.train) + len(parts.validation) + len(parts.holdout) == 500
