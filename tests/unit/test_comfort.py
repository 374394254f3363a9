"""PMV comfort labels and the synthetic sample generator."""

from __future__ import annotations

import itertools
import warnings
from collections import Counter

import numpy as np
import pytest
from pythermalcomfort.models import pmv_ppd_iso

from lambdas.core import comfort
from lambdas.core.samples import parse_samples
from lambdas.core.schema import LABELS

GRID = list(
    itertools.product(
        [50.0, 60.0, 66.0, 70.0, 72.5, 75.0, 78.0, 82.0, 86.0, 90.0],  # °F, some outside ISO limits
        [10.0, 30.0, 50.0, 70.0, 90.0],  # %
        [0.0, 0.1, 0.3, 0.8],  # m/s
        [0.3, 0.5, 1.0, 1.5],  # clo
    )
)


def reference_label(temp_f: float, rh: float, wind: float, clo: float) -> str:
    """A direct pythermalcomfort call with the documented assumptions (tr = tdb, met = 1.1)."""
    tdb = (temp_f - 32) * 5 / 9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(
            pmv_ppd_iso(
                tdb=tdb, tr=tdb, vr=wind, rh=rh, met=1.1, clo=clo, limit_inputs=False, round_output=False
            ).pmv
        )
    return "cold" if value < -0.5 else "warm" if value > 0.5 else "ok"


def test_label_agrees_with_pythermalcomfort_on_a_grid() -> None:
    expected = [reference_label(*point) for point in GRID]
    assert [comfort.label(*point) for point in GRID] == expected
    columns = [np.array(column) for column in zip(*GRID, strict=True)]
    assert comfort.labels(*columns) == expected
    assert set(expected) == set(LABELS)  # the grid exercises every label


@pytest.mark.parametrize(
    ("point", "expected"),
    [((75.0, 60.0, 0.6, 1.0), "ok"), ((60.0, 40.0, 0.3, 0.5), "cold"), ((86.0, 70.0, 0.05, 1.0), "warm")],
)
def test_label_known_conditions(point: tuple[float, float, float, float], expected: str) -> None:
    assert comfort.label(*point) == expected


def test_generate_noise_free_labels_agree_with_pythermalcomfort() -> None:
    for sample in comfort.generate(300, 7, 0.0):
        assert sample["label"] == reference_label(sample["temp"], sample["rh"], sample["wind"], sample["clo"])


def test_generate_inputs_are_within_ranges_and_rounded() -> None:
    generated = comfort.generate(2000, 3, 0.1)
    assert len(generated) == 2000
    for sample in generated:
        for name, (low, high) in comfort.INPUT_RANGES.items():
            assert low <= sample[name] <= high
            assert round(sample[name], comfort.DECIMALS[name]) == sample[name]
    assert not np.isnan(
        comfort.pmv(*[[s[n] for s in generated] for n in ("temp", "rh", "wind", "clo")], strict=True)
    ).any()


def test_generate_labels_are_all_reasonably_frequent() -> None:
    counts = Counter(s["label"] for s in comfort.generate(3000, 11, 0.0))
    assert set(counts) == set(LABELS)
    assert min(counts.values()) / 3000 > 0.25


def test_generate_same_seed_same_samples() -> None:
    first = comfort.generate(50, 42, 0.2, now_ms=1_795_000_000_000)
    assert first == comfort.generate(50, 42, 0.2, now_ms=1_795_000_000_000)
    assert first != comfort.generate(50, 43, 0.2, now_ms=1_795_000_000_000)


def test_generate_noise_rate_matches_best_accuracy() -> None:
    noise = 0.2
    generated = comfort.generate(5000, 5, noise)
    truth = comfort.labels(*[[s[n] for s in generated] for n in ("temp", "rh", "wind", "clo")])
    agreement = np.mean([s["label"] == t for s, t in zip(generated, truth, strict=True)])
    assert comfort.best_accuracy(noise) == pytest.approx(0.8)
    assert agreement == pytest.approx(comfort.best_accuracy(noise), abs=0.02)


def test_generate_noise_picks_a_different_label_uniformly() -> None:
    generated = comfort.generate(3000, 9, 1.0)
    truth = comfort.labels(*[[s[n] for s in generated] for n in ("temp", "rh", "wind", "clo")])
    pairs = Counter((t, s["label"]) for s, t in zip(generated, truth, strict=True))
    assert all(true != noisy for true, noisy in pairs)
    for true in LABELS:
        others = [pairs[(true, other)] for other in LABELS if other != true]
        assert min(others) / sum(others) > 0.4


def test_generate_samples_pass_upload_validation() -> None:
    generated = comfort.generate(500, 2, 0.05)
    assert len(parse_samples(generated, now_ms=int(generated[0]["created"]), max_samples=5000)) == 500


def test_generate_zero_samples_is_empty() -> None:
    assert comfort.generate(0, 1, 0.0) == []


@pytest.mark.parametrize(("n", "noise"), [(-1, 0.0), (5, -0.1), (5, 1.5)])
def test_generate_rejects_bad_arguments(n: int, noise: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        comfort.generate(n, 1, noise)


def test_labels_from_pmv_refuses_undefined_pmv() -> None:
    with pytest.raises(ValueError, match="undefined"):
        comfort.labels_from_pmv([0.0, float("nan")])
