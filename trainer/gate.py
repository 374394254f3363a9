"""The promotion gate: a candidate replaces latest only if it is not measurably worse, loads
the way clients load it, and latest is not pinned.

- ``decide``: the quality comparison on the fixed holdout (and the pin);
- ``load_check``: the exported, uploaded artifacts read back through the clients' path (the S3
  proxy's redirect and the weights manifest when ``API_URL`` is known, else the same manifest
  resolution straight from S3) into the infer function's numpy runtime; its predictions must
  match the Keras model's on the holdout inputs within ``LOAD_CHECK_TOLERANCE``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
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
    pinned: bool = False,
) -> Decision:
    """Compare accuracies measured on the same holdout.

    With no latest yet, the candidate must reach ``min_accuracy``; otherwise it must reach
    ``baseline_accuracy - tolerance``. An empty holdout proves nothing and is rejected. A
    pinned latest turns any decision into PINNED; its reason says what quality alone decided.
    """
    quality = _on_quality(
        candidate_accuracy,
        baseline_version=baseline_version,
        baseline_accuracy=baseline_accuracy,
        tolerance=tolerance,
        min_accuracy=min_accuracy,
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
    )


def _on_quality(
    candidate_accuracy: float | None,
    *,
    baseline_version: str | None,
    baseline_accuracy: float | None,
    tolerance: float,
    min_accuracy: float,
) -> Decision:
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
