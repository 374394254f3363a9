"""The promotion gate: a candidate replaces latest only if it is not measurably worse, loads
the way clients load it, and latest is not pinned.

- ``decide``: the quality comparison on the fixed holdout and on the recent window (and the
  pin); how the two combine is in trainer/README.md, "Gate";
- ``compare_recent``: the candidate and latest on the same recent samples, as paired outcomes;
- ``load_check``: the exported, uploaded artifacts read back through the clients' path (the S3
  proxy's redirect and the weights manifest when ``API_URL`` is known, else the same manifest
  resolution straight from S3) into the infer function's numpy runtime; its predictions must
  match the Keras model's on the holdout inputs within ``LOAD_CHECK_TOLERANCE``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from lambdas.core import modelstore

PROMOTE = "promote"
REJECT = "reject"
PINNED = "pinned"  # would be decided on quality, but latest is pinned: never promoted
# Largest |difference| of a probability between the Keras model (float32) and the served model
# (the numpy runtime, float64 on the same float32 weights). The folded first layer works on raw
# inputs (°F, %), so float32 rounding grows with the weights: a model trained on 100,000 samples
# differed by 1.85e-5 over its 9,600 holdout rows, and weights 10 times an initialisation's by
# 4.4e-5 (tests/unit/test_trainer_gate.py). A truncated or altered shard differs by orders of
# magnitude more, or does not load.
LOAD_CHECK_TOLERANCE = 1e-4

# What the recent window says (``Recent.verdict``).
BETTER = "better"  # the candidate is significantly better than latest on the present
WORSE = "worse"  # significantly worse, by more than the tolerance
EVEN = "even"  # no evidence either way
TOO_SMALL = "too small"  # fewer samples than GATE_RECENT_MIN: not judged
# One-sided level of the recent window's interval (the quality rule's level too:
# lambdas/core/quality.py).
RECENT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Recent:
    """The candidate and latest on the same recent samples (the window of ``after_ms``), as
    paired outcomes: ``candidate_only`` samples only the candidate got right,
    ``baseline_only`` only latest. The accuracies' difference is judged by an interval on the
    paired difference (``bounds``), so what both models get right or wrong adds no noise."""

    after_ms: int
    count: int
    in_holdout: int  # how many of them are also in the fixed holdout
    candidate_correct: int
    baseline_correct: int
    candidate_only: int
    baseline_only: int

    @property
    def candidate_accuracy(self) -> float:
        return self.candidate_correct / self.count if self.count else 0.0

    @property
    def baseline_accuracy(self) -> float:
        return self.baseline_correct / self.count if self.count else 0.0

    @property
    def difference(self) -> float:
        return (self.candidate_only - self.baseline_only) / self.count if self.count else 0.0

    def bounds(self, confidence: float = RECENT_CONFIDENCE) -> tuple[float, float]:
        """One-sided ``confidence`` bounds of candidate minus latest accuracy: Agresti and Min's
        adjusted Wald interval for matched proportions (Biometrics 61, 2005: add 1/2 to each
        cell of the 2x2 table). The plain Wald interval is far too narrow when the models
        disagree on a handful of samples: 3 discordant samples out of 100, all for the
        candidate, are significant by it, though a fair coin gives them 1 time in 8."""
        n = self.count + 2
        b, c = self.candidate_only + 0.5, self.baseline_only + 0.5
        d = (b - c) / n
        se = math.sqrt(max(0.0, ((b + c) / n - d * d) / n))
        z = NormalDist().inv_cdf(confidence)
        return d - z * se, d + z * se

    def verdict(self, *, tolerance: float, min_count: int) -> str:
        if self.count < max(1, min_count):
            return TOO_SMALL
        lower, upper = self.bounds()
        if upper < -tolerance:
            return WORSE
        if lower > 0:
            return BETTER
        return EVEN

    def to_dict(self, *, tolerance: float, min_count: int) -> dict[str, Any]:
        lower, upper = self.bounds()
        return {
            **asdict(self),
            "candidate_accuracy": round(self.candidate_accuracy, 6),
            "baseline_accuracy": round(self.baseline_accuracy, 6),
            "difference": round(self.difference, 6),
            "lower": round(lower, 6),
            "upper": round(upper, 6),
            "confidence": RECENT_CONFIDENCE,
            "min_count": min_count,
            "verdict": self.verdict(tolerance=tolerance, min_count=min_count),
        }


def compare_recent(
    candidate_predicted: np.ndarray,
    baseline_predicted: np.ndarray,
    y: np.ndarray,
    *,
    after_ms: int,
    in_holdout: int = 0,
) -> Recent:
    """The paired outcomes of two models' predicted labels on the same samples."""
    candidate_right = np.asarray(candidate_predicted) == np.asarray(y)
    baseline_right = np.asarray(baseline_predicted) == np.asarray(y)
    return Recent(
        after_ms=int(after_ms),
        count=len(candidate_right),
        in_holdout=int(in_holdout),
        candidate_correct=int(candidate_right.sum()),
        baseline_correct=int(baseline_right.sum()),
        candidate_only=int((candidate_right & ~baseline_right).sum()),
        baseline_only=int((baseline_right & ~candidate_right).sum()),
    )


@dataclass(frozen=True)
class Decision:
    decision: str  # PROMOTE, REJECT or PINNED
    reason: str
    # The holdout comparison (these three names predate the recent window and stay its):
    candidate_accuracy: float | None
    baseline_version: str | None = None
    baseline_accuracy: float | None = None
    # The holdout accuracy the candidate had to reach (None: nothing to compare with).
    holdout_floor: float | None = None
    # The recent window's comparison (``Recent.to_dict``), None when there was none to make.
    recent: dict[str, Any] | None = None

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
    pinned: bool = False,
    recent: Recent | None = None,
    recent_min: int = 100,
    drift_tolerance: float = 0.05,
    holdout_count: int | None = None,
    holdout_min: int = 1,
) -> Decision:
    """Compare the candidate with latest on the fixed holdout and on the recent window.

    A holdout of fewer than ``holdout_min`` samples (``holdout_count``: trusted clients'
    samples only) is too small to vouch for anything: rejected, whatever the accuracies.

    With no latest yet, the candidate must reach ``min_accuracy`` on the holdout. Otherwise the
    recent window speaks first (trainer/README.md, "Gate"): significantly WORSE there rejects;
    significantly BETTER there promotes unless the holdout collapsed (below ``baseline_accuracy
    - drift_tolerance``); EVEN, TOO_SMALL or no window leave it to the holdout rule: at least
    ``baseline_accuracy - tolerance``. An empty holdout proves nothing and is rejected. A pinned
    latest turns any decision into PINNED; its reason says what quality alone decided.
    """
    quality = _on_quality(
        candidate_accuracy,
        baseline_version=baseline_version,
        baseline_accuracy=baseline_accuracy,
        tolerance=tolerance,
        min_accuracy=min_accuracy,
        recent=recent,
        recent_min=recent_min,
        drift_tolerance=drift_tolerance,
        holdout_count=holdout_count,
        holdout_min=holdout_min,
    )
    if not pinned:
        return quality
    verdict = "would have passed" if quality.promote else "would have failed"
    return Decision(
        PINNED,
        f"not promoted: pinned (latest {baseline_version} is pinned); the gate {verdict}: {quality.reason}",
        quality.candidate_accuracy,
        quality.baseline_version,
        quality.baseline_accuracy,
        quality.holdout_floor,
        quality.recent,
    )


def _on_quality(
    candidate_accuracy: float | None,
    *,
    baseline_version: str | None,
    baseline_accuracy: float | None,
    tolerance: float,
    min_accuracy: float,
    recent: Recent | None,
    recent_min: int,
    drift_tolerance: float,
    holdout_count: int | None = None,
    holdout_min: int = 1,
) -> Decision:
    if candidate_accuracy is None:
        return Decision(REJECT, "empty holdout: nothing to evaluate on", None, baseline_version)
    if holdout_count is not None and holdout_count < holdout_min:
        reason = (
            f"holdout too small: {holdout_count} trusted holdout samples < GATE_HOLDOUT_MIN {holdout_min} "
            "(only trusted clients' samples form the holdout)"
        )
        return Decision(REJECT, reason, candidate_accuracy, baseline_version, baseline_accuracy)
    if baseline_version is None or baseline_accuracy is None:
        passed = candidate_accuracy >= min_accuracy
        reason = (
            f"first model: holdout accuracy {candidate_accuracy:.4f} "
            f"{'>=' if passed else '<'} minimum {min_accuracy:.4f}"
        )
        return Decision(PROMOTE if passed else REJECT, reason, candidate_accuracy, baseline_version)
    verdict = recent.verdict(tolerance=tolerance, min_count=recent_min) if recent is not None else None
    recent_record = recent.to_dict(tolerance=tolerance, min_count=recent_min) if recent is not None else None
    # A candidate better on the present may lose more on the old holdout, never less.
    allowed = max(tolerance, drift_tolerance) if verdict == BETTER else tolerance
    floor = round(baseline_accuracy - allowed, 6)
    holdout_passed = candidate_accuracy >= floor
    on_holdout = (
        f"holdout accuracy {candidate_accuracy:.4f} {'>=' if holdout_passed else '<'} {floor:.4f} "
        f"({baseline_version} {baseline_accuracy:.4f} - "
        f"{'drift tolerance' if verdict == BETTER else 'tolerance'} {allowed:.4f})"
    )
    passed = holdout_passed and verdict != WORSE
    reason = on_holdout
    if recent is not None:
        reason = f"{_on_recent(recent, verdict, tolerance, recent_min)}; {on_holdout}"
    return Decision(
        PROMOTE if passed else REJECT,
        reason,
        candidate_accuracy,
        baseline_version,
        baseline_accuracy,
        floor,
        recent_record,
    )


def _on_recent(recent: Recent, verdict: str | None, tolerance: float, min_count: int) -> str:
    if verdict == TOO_SMALL:
        return f"recent window too small to judge ({recent.count} < {min_count} samples): holdout only"
    lower, upper = recent.bounds()
    meaning = {
        WORSE: f"worse: upper bound < -{tolerance:.4f}, rejected whatever the holdout says",
        BETTER: "better: lower bound > 0, the holdout may lose up to the drift tolerance",
        EVEN: "even: no evidence either way, the holdout decides",
    }[str(verdict)]
    return (
        f"recent window of {recent.count} samples: accuracy {recent.candidate_accuracy:.4f} vs "
        f"{recent.baseline_accuracy:.4f}, difference {recent.difference:+.4f} "
        f"({RECENT_CONFIDENCE:.0%} bounds {lower:+.4f}, {upper:+.4f}): {meaning}"
    )


@dataclass(frozen=True)
class LoadCheck:
    ok: bool
    via: str  # the URL or S3 key model.json was loaded from
    rows: int
    max_abs_diff: float | None
    load_ms: float
    error: str | None = None

    @property
    def reason(self) -> str:
        if self.ok:
            return f"load check passed: {self.rows} rows, max |diff| {self.max_abs_diff:.2e} via {self.via}"
        return f"load check failed via {self.via}: {self.error}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_check(
    version: str,
    inputs: np.ndarray,
    expected: np.ndarray,
    *,
    api_url: str | None,
    bucket: str,
    prefix: str,
    table: str,
    s3: Any = None,
    ddb: Any = None,
    tolerance: float = LOAD_CHECK_TOLERANCE,
) -> LoadCheck:
    """Load ``version`` as clients do and compare its predictions on ``inputs`` to ``expected``
    (the Keras model's). Never raises: any failure is a failed check with its reason."""
    source: Any
    if api_url:
        via = f"{api_url.rstrip('/')}/s3proxy/{version}/model.json"
        source = modelstore.ProxySource(via, timeout=10.0)
    else:
        via = f"s3://{bucket}/{prefix}{version}/model.json"
        source = _VersionS3Source(version, bucket=bucket, prefix=prefix, table=table, s3=s3, ddb=ddb)
    started = time.perf_counter()
    try:
        loaded = source.load()
        if loaded is None:
            raise RuntimeError("the model is not there")
        if loaded.version != version:
            raise RuntimeError(f"loaded version {loaded.version}, expected {version}")
        got = loaded.model.predict(inputs) if len(inputs) else np.zeros_like(expected)
        if got.shape != expected.shape:
            raise RuntimeError(f"output shape {got.shape}, expected {expected.shape}")
        diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
        if not np.isfinite(diff) or diff > tolerance:
            elapsed = (time.perf_counter() - started) * 1000
            return LoadCheck(
                False, via, len(inputs), diff, round(elapsed, 1), f"max |diff| {diff:.3g} > {tolerance:g}"
            )
    except Exception as err:  # noqa: BLE001 - whatever breaks the load is the finding
        elapsed = (time.perf_counter() - started) * 1000
        return LoadCheck(False, via, len(inputs), None, round(elapsed, 1), f"{type(err).__name__}: {err}")
    return LoadCheck(True, via, len(inputs), diff, round((time.perf_counter() - started) * 1000, 1))


class _VersionS3Source(modelstore.S3Source):
    """The S3 source's manifest resolution, for one given version instead of latest."""

    def __init__(self, version: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._version = version

    def current_version(self) -> str | None:
        return self._version
