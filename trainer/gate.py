"""The promotion gate: a candidate replaces latest only if it is not measurably worse."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PROMOTE = "promote"
REJECT = "reject"


@dataclass(frozen=True)
class Decision:
    decision: str  # PROMOTE or REJECT
    reason: str
    candidate_accuracy: float | None
    baseline_version: str | None = None
    baseline_accuracy: float | None = None

    @property
    def promote(self) -> bool:
        return self.decision == PROMOTE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    candidate_accuracy: float | None,
    *,
    baseline_version: str | None,
    baseline_accuracy: float | None,
    tolerance: float,
    min_accuracy: float,
) -> Decision:
    """Compare accuracies measured on the same holdout.

    With no latest yet, the candidate must reach ``min_accuracy``; otherwise it must reach
    ``baseline_accuracy - tolerance``. An empty holdout proves nothing and is rejected.
    """
    if candidate_accuracy is None:
        return Decision(REJECT, "empty holdout: nothing to evaluate on", None, baseline_version)
    if baseline_version is None or baseline_accuracy is None:
        passed = candidate_accuracy >= min_accuracy
        reason = (
            f"first model: holdout accuracy {candidate_accuracy:.4f} "
            f"{'>=' if passed else '<'} minimum {min_accuracy:.4f}"
        )
        return Decision(PROMOTE if passed else REJECT, reason, candidate_accuracy, baseline_version)
    floor = baseline_accuracy - tolerance
    passed = candidate_accuracy >= floor
    reason = (
        f"holdout accuracy {candidate_accuracy:.4f} {'>=' if passed else '<'} {floor:.4f} "
        f"({baseline_version} {baseline_accuracy:.4f} - tolerance {tolerance:.4f})"
    )
    return Decision(
        PROMOTE if passed else REJECT, reason, candidate_accuracy, baseline_version, baseline_accuracy
    )
