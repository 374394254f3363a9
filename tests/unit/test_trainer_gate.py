from __future__ import annotations

import pytest

from trainer.gate import PROMOTE, REJECT, decide


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
