"""The drift benchmark's stationary part runs on simulated time: its windows, and so its
figures, do not depend on how fast the machine scores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from moto.dynamodb.models import DynamoDBBackend

from lambdas.core import comfort, drift
from lambdas.core.schema import FEATURE_NAMES
from scripts import bench_drift, bench_score, demo_drift

V1 = "v20261120T080000Z-0001"


@pytest.fixture
def isolated() -> Iterator[None]:
    """The benchmark sets the score function's environment and moto's fast transactions for
    its process: both are put back."""
    environ, transact = dict(os.environ), DynamoDBBackend.transact_write_items
    yield
    os.environ.clear()
    os.environ.update(environ)
    DynamoDBBackend.transact_write_items = transact  # type: ignore[method-assign]


def first_model() -> tuple[dict[str, bytes], dict[str, Any]]:
    rows = comfort.generate(1000, 1, demo_drift.NOISE)
    shape = drift.profile(np.array([[r[name] for name in FEATURE_NAMES] for r in rows], dtype=np.float32))
    run = {
        "version": V1,
        "sample_count": 1000,
        "metrics": {"holdout": {"accuracy": 0.9, "count": 2000}},
        "input_profile": shape.to_dict(),
    }
    return bench_score.constant_model(V1, "ok"), run


def test_bench_drift_stationary_windows_follow_the_simulated_rate(isolated: None) -> None:
    """100 samples a second in batches of 20, a window of 2 s of 1 s buckets: a full window
    holds the two whole seconds before the current one (200 samples) and 1 to 5 batches of it."""
    files, run = first_model()
    first = bench_drift.stationary(files, run, 1000, 20, 2, rate=100)
    assert (first["looks"], first["failures"]) == (50, 0)
    assert first["quality_looks"] == first["drift_looks"] == 41  # from the 10th batch on
    assert (first["window_min"], first["window_median"]) == (200, 260)
    assert bench_drift.stationary(files, run, 1000, 20, 2, rate=100) == first


def test_bench_drift_counts_fewer_reasks_with_the_trainers_newest_samples_reference() -> None:
    # After a lasting shift, a reference of the newest 1,000 samples is all shifted after five
    # windows of 200; the whole table (1,000 office samples of history) is not within 30.
    assert bench_drift.reasks(1000, 1000, limit=30) == 5
    assert bench_drift.reasks(1000, None, limit=30) == 30
