from __future__ import annotations

import numpy as np
import pytest

from trainer.gate import (
    BETTER,
    EVEN,
    PINNED,
    PROMOTE,
    REJECT,
    TOO_SMALL,
    WORSE,
    Recent,
    compare_recent,
    decide,
)

LATEST = "v20261123T091432Z-1a2b"


def recent(count: int, candidate_only: int, baseline_only: int, both: int | None = None) -> Recent:
    """A recent window of ``count`` samples on which the two models disagree ``candidate_only +
    baseline_only`` times (``both`` right otherwise: by default 70 % of the samples)."""
    both = round(0.7 * count) if both is None else both
    return Recent(
        after_ms=1_796_000_000_000,
        count=count,
        in_holdout=count // 2,
        candidate_correct=both + candidate_only,
        baseline_correct=both + baseline_only,
        candidate_only=candidate_only,
        baseline_only=baseline_only,
    )


def drift_gate(candidate: float, window: Recent | None, *, pinned: bool = False):
    """Latest had 0.90 on the holdout; tolerance 0.01, drift tolerance 0.05, windows from 100."""
    return decide(
        candidate,
        baseline_version=LATEST,
        baseline_accuracy=0.90,
        tolerance=0.01,
        min_accuracy=0.6,
        pinned=pinned,
        recent=window,
        recent_min=100,
        drift_tolerance=0.05,
    )


@pytest.mark.parametrize(
    ("candidate", "minimum", "expected"),
    [(0.80, 0.6, PROMOTE), (0.60, 0.6, PROMOTE), (0.59, 0.6, REJECT)],
)
def test_gate_first_model_needs_minimum_accuracy(candidate: float, minimum: float, expected: str) -> None:
    decision = decide(
        candidate, baseline_version=None, baseline_accuracy=None, tolerance=0.01, min_accuracy=minimum
    )
    assert decision.decision == expected
    assert decision.reason.startswith("first model")


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [(0.95, PROMOTE), (0.90, PROMOTE), (0.89, PROMOTE), (0.8799, REJECT), (0.5, REJECT)],
)
def test_gate_compares_with_baseline_within_tolerance(candidate: float, expected: str) -> None:
    decision = decide(
        candidate,
        baseline_version="v20261123T091432Z-1a2b",
        baseline_accuracy=0.90,
        tolerance=0.02,
        min_accuracy=0.99,
    )
    assert decision.decision == expected
    assert decision.baseline_version == "v20261123T091432Z-1a2b"
    assert decision.baseline_accuracy == 0.90
    assert decision.candidate_accuracy == candidate
    assert "v20261123T091432Z-1a2b" in decision.reason


def test_gate_rejects_empty_holdout() -> None:
    decision = decide(None, baseline_version=None, baseline_accuracy=None, tolerance=0.01, min_accuracy=0.0)
    assert decision.decision == REJECT
    assert "empty holdout" in decision.reason


def test_gate_compare_recent_counts_paired_outcomes() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    got = compare_recent(
        np.array([0, 1, 2, 1, 1, 0]), np.array([0, 2, 2, 0, 0, 0]), y, after_ms=7, in_holdout=2
    )
    assert (got.count, got.candidate_correct, got.baseline_correct) == (6, 4, 3)
    assert (got.candidate_only, got.baseline_only, got.after_ms, got.in_holdout) == (2, 1, 7, 2)
    assert got.difference == pytest.approx(1 / 6)


def test_gate_promotes_a_candidate_better_on_the_present_though_slightly_worse_on_the_old_holdout() -> None:
    # The world drifted: latest is right on 70 % of what arrives now, the candidate on 85 %.
    window = recent(300, candidate_only=60, baseline_only=15, both=195)
    decision = drift_gate(0.88, window)  # 0.02 below latest on the holdout: today's rule rejects
    assert drift_gate(0.88, None).decision == REJECT
    assert decision.decision == PROMOTE
    assert decision.recent is not None and decision.recent["verdict"] == BETTER
    assert decision.holdout_floor == pytest.approx(0.85)
    assert "better" in decision.reason and "drift tolerance" in decision.reason


def test_gate_rejects_a_candidate_better_on_the_present_whose_holdout_collapsed() -> None:
    decision = drift_gate(0.84, recent(300, candidate_only=60, baseline_only=15, both=195))
    assert decision.decision == REJECT
    assert "0.8400 < 0.8500" in decision.reason


def test_gate_rejects_a_candidate_worse_on_the_present_even_if_better_on_the_holdout() -> None:
    window = recent(300, candidate_only=10, baseline_only=40, both=200)
    decision = drift_gate(0.93, window)
    assert decision.decision == REJECT
    assert decision.recent is not None and decision.recent["verdict"] == WORSE
    assert decision.recent["upper"] < -0.01
    assert "worse" in decision.reason and "0.9300 >= 0.8900" in decision.reason


@pytest.mark.parametrize(("candidate", "expected"), [(0.895, PROMOTE), (0.88, REJECT)])
def test_gate_falls_back_to_the_holdout_when_the_window_is_too_small(candidate: float, expected: str) -> None:
    # 99 samples, all for the candidate's side: still not judged.
    decision = drift_gate(candidate, recent(99, candidate_only=30, baseline_only=0))
    assert decision.decision == expected
    assert decision.recent is not None and decision.recent["verdict"] == TOO_SMALL
    assert decision.holdout_floor == pytest.approx(0.89)
    assert "too small" in decision.reason


@pytest.mark.parametrize(("candidate", "expected"), [(0.895, PROMOTE), (0.88, REJECT)])
def test_gate_leaves_an_even_window_to_the_holdout(candidate: float, expected: str) -> None:
    decision = drift_gate(candidate, recent(300, candidate_only=12, baseline_only=10))
    assert decision.decision == expected
    assert decision.recent is not None and decision.recent["verdict"] == EVEN
    assert decision.holdout_floor == pytest.approx(0.89)


def test_gate_a_few_discordant_samples_are_no_evidence() -> None:
    # 3 of 3 disagreements for the candidate: a fair coin does it 1 time in 8.
    assert recent(100, candidate_only=3, baseline_only=0).verdict(tolerance=0.01, min_count=100) == EVEN
    assert recent(100, candidate_only=8, baseline_only=0).verdict(tolerance=0.01, min_count=100) == BETTER


@pytest.mark.parametrize("count", [100, 300, 2000])
def test_gate_recent_window_rarely_judges_equal_models(count: int) -> None:
    # Two equally good models that disagree on 10 % of the samples, 2,000 windows: a verdict
    # either way is a false one, and must stay near the one-sided 5 % of each bound.
    rng = np.random.default_rng(count)
    verdicts = {BETTER: 0, WORSE: 0, EVEN: 0}
    for _ in range(2000):
        disagree = int(rng.binomial(count, 0.10))
        mine = int(rng.binomial(disagree, 0.5))
        verdicts[recent(count, mine, disagree - mine).verdict(tolerance=0.01, min_count=100)] += 1
    assert verdicts[BETTER] / 2000 < 0.07
    assert verdicts[WORSE] / 2000 < 0.04


def test_gate_decision_records_both_comparisons() -> None:
    window = recent(300, candidate_only=60, baseline_only=15, both=195)
    record = drift_gate(0.88, window).to_dict()
    assert (record["candidate_accuracy"], record["baseline_accuracy"]) == (0.88, 0.90)
    assert record["baseline_version"] == LATEST and record["holdout_floor"] == pytest.approx(0.85)
    recent_record = record["recent"]
    assert recent_record["count"] == 300 and recent_record["in_holdout"] == 150
    assert recent_record["candidate_accuracy"] == pytest.approx(0.85)
    assert recent_record["baseline_accuracy"] == pytest.approx(0.70)
    assert recent_record["difference"] == pytest.approx(0.15)
    assert 0 < recent_record["lower"] < 0.15 < recent_record["upper"]
    assert recent_record["after_ms"] == 1_796_000_000_000 and recent_record["min_count"] == 100
    assert "0.8500 vs 0.7000" in record["reason"] and "0.8800 >= 0.8500" in record["reason"]


def test_gate_pinned_keeps_both_comparisons() -> None:
    decision = drift_gate(0.88, recent(300, candidate_only=60, baseline_only=15, both=195), pinned=True)
    assert decision.decision == PINNED
    assert decision.recent is not None and decision.recent["verdict"] == BETTER
    assert "would have passed" in decision.reason


def test_gate_first_model_has_no_recent_comparison() -> None:
    decision = decide(0.8, baseline_version=None, baseline_accuracy=None, tolerance=0.01, min_accuracy=0.6)
    assert decision.recent is None and decision.holdout_floor is None


@pytest.mark.slow
def test_load_check_tolerance_admits_float32_rounding_of_a_trained_size_model(tmp_path) -> None:
    # The folded first layer works on raw inputs, so Keras's float32 forward pass drifts from
    # the served float64 one as the weights grow: weights 10 times an initialisation's (a
    # model trained on 100,000 samples failed the former 1e-5) must still pass.
    import json

    import numpy as np

    from lambdas.core import comfort, tfjs_model
    from trainer import model as net
    from trainer.config import HyperParameters
    from trainer.export import save_tfjs
    from trainer.gate import LOAD_CHECK_TOLERANCE

    rows = comfort.generate(20_000, 3, 0.05)
    x = np.array([[r["temp"], r["rh"], r["wind"], r["clo"]] for r in rows], dtype=np.float32)
    trained = net.build_model(x.mean(axis=0), x.var(axis=0), HyperParameters(seed=5))
    for layer in trained.layers:
        if isinstance(layer, net.keras.layers.Dense):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel * 10, bias])
    served = net.fold_normalization(trained)
    version = "v20261130T000000Z-0000"
    save_tfjs(served, tmp_path / version, version)
    folder = tmp_path / version
    model = tfjs_model.parse(
        json.loads((folder / "model.json").read_text()),
        lambda path: (folder / path.split("/")[-1]).read_bytes(),
    )
    diff = float(np.abs(model.predict(x) - net.predict(served, x)).max())
    assert 1e-5 < diff <= LOAD_CHECK_TOLERANCE
