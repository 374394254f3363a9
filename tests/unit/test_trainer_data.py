from __future__ import annotations

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
