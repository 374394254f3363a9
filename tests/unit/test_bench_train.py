"""The training benchmark's own parts: its in-memory table scans like DynamoDB, its slopes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import bench_train
from trainer import data


def test_bench_memory_table_pages_and_segments_like_a_scan(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bench_train, "PAGE_BYTES", 50_000)  # pages of a few hundred items
    monkeypatch.setattr(bench_train, "CHUNK", 1000)  # generated in three chunks
    rows = bench_train.write_rows(3000, tmp_path / "rows.jsonl").read_text().splitlines()
    table = bench_train.MemoryTable(rows)
    pages: list[int] = []
    samples = data.load(bench_train.TABLE, table, segments=3, on_page=pages.append)
    assert samples.ids == sorted(json.loads(row)["id"]["S"] for row in rows)
    assert len(set(samples.ids)) == 3000
    assert samples.skipped == 0
    assert len(pages) > 3 and max(pages) <= bench_train.PAGE_BYTES // table.size
    assert data.table_bytes(bench_train.TABLE, table) == table.size * 3000


def test_bench_slope_is_the_exponent_of_growth() -> None:
    linear = [
        {"variant": "old", "source": "in memory", "samples": n, "fit_s": n / 100}
        for n in (1_000, 10_000, 100_000)
    ]
    flat = [
        {"variant": "new", "source": "in memory", "samples": n, "fit_s": 30.0}
        for n in (1_000, 10_000, 100_000)
    ]
    assert bench_train.slope(linear + flat, "old", "fit_s") == pytest.approx(1.0)
    assert bench_train.slope(linear + flat, "new", "fit_s") == pytest.approx(0.0)
    assert bench_train.slope(flat[:1], "new", "fit_s") is None


def test_retrain_cost_counts_the_instance_by_the_second_and_the_scan_by_the_megabyte() -> None:
    from scripts import retrain_cost

    small = retrain_cost.cost(10_000, scan_s=0.1, fit_s=10.0)
    large = retrain_cost.cost(1_000_000, scan_s=11.0, fit_s=15.0)
    idle = retrain_cost.cost(10_000, scan_s=0.1, fit_s=10.0, idle_s=600)
    assert small.instance_s == pytest.approx(120 + 0.1 + 10_000 / 2000 / 4 * 0.03 + 10 + 30)
    spot_per_s = 0.085 * (1 - 0.59) / 3600
    assert small.instance == pytest.approx(small.instance_s * spot_per_s)
    assert idle.instance == pytest.approx((small.instance_s + 600) * spot_per_s)
    # 1,000,000 items of 180 B: 180 MB, 256 read units each, $0.125 per million units.
    assert large.dynamodb == pytest.approx(180 * 256 * 0.125 / 1e6)
    assert large.lambda_ == small.lambda_ == pytest.approx(10 * (0.2e-6 + 0.125 * 0.3 * 0.0000166667))
    assert large.total > small.total
