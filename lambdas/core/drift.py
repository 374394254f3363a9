"""Input drift: each feature's distribution on the samples arriving now against the training
snapshot's, by the population stability index over fixed bins.

The trainer records the **profile** of the samples it trained on with its run
(the run item's ``input_profile``): per feature, the interior edges of ``BINS`` quantile bins and how many
training samples fell in each bin. The score function bins every sample it scores with the
profile of the version that scored it and adds the bin counts to that version's live time
bucket, in the same transaction as its outcome (``live.LiveStore``: attributes
``in_<feature>_<bin>``). A rolling window then sums to one histogram per feature, compared with
the training one:

    PSI = Σ_bins (a_i - e_i) · ln(a_i / e_i)

with ``a``/``e`` the window's and the training snapshot's proportions, each bin smoothed by half
a sample so an empty bin costs a finite amount.

**Threshold 0.25** (``DRIFT_THRESHOLD``), on at least ``DRIFT_MIN_SAMPLES`` (200) samples: 0.25 is
the conventional boundary of a "significant shift" (below 0.1 none, 0.1-0.25 moderate: Siddiqi,
"Credit Risk Scorecards", 2006; Yurdakul, "Statistical properties of population stability
index", 2018). Noise alone stays well below it: for a window of n samples from the training
distribution, n·PSI is approximately χ² with (bins - 1) degrees of freedom (Yurdakul 2018), so
with 10 bins and n = 200 its 99.9th percentile is 27.9 / 200 = 0.14; a PSI of 0.25 at n = 200
is n·PSI = 50, a χ²₉ tail below 10⁻⁷, per feature and per look
(tests/unit/test_drift.py measures 0 triggers on 10,000 stationary samples).

Bins are quantiles of the training data, so each holds about a tenth of it; their edges are put
half-way between two distinct observed values, so a value stored as a float32 by the trainer
and as a decimal by the stream never lands on either side of an edge by rounding. Features with
few distinct values get fewer bins.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lambdas.core import live, settings
from lambdas.core.schema import FEATURE_NAMES

BINS = 10
SMOOTHING = 0.5  # samples added to every bin of both histograms
attribute = live.drift_attribute  # a live bucket's count of one bin: in_<feature>_<bin>


@dataclass(frozen=True)
class DriftSettings:
    threshold: float = 0.25  # PSI of any feature above it requests a retrain
    min_samples: int = 200
    enabled: bool = True

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> DriftSettings:
        env = settings.environ() if env is None else env
        return cls(
            threshold=settings.number(env, "DRIFT_THRESHOLD", 0.25, minimum=0.01),
            min_samples=settings.integer(env, "DRIFT_MIN_SAMPLES", 200, minimum=30),
            enabled=settings.boolean(env, "DRIFT_RULE", True),
        )


@dataclass(frozen=True)
class Profile:
    """Per feature (``FEATURE_NAMES`` order): ascending interior bin edges and the training
    samples in each of the ``len(edges) + 1`` bins."""

    edges: tuple[tuple[float, ...], ...]
    counts: tuple[tuple[int, ...], ...]

    @property
    def count(self) -> int:
        return sum(self.counts[0]) if self.counts else 0

    def bins(self, features: Sequence[float]) -> tuple[int, ...]:
        """The bin of each feature value (a value equal to an edge goes above it)."""
        return tuple(bisect.bisect_right(e, v) for e, v in zip(self.edges, features, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "bins": BINS,
            "count": self.count,
            "features": {
                name: {"edges": list(edges), "counts": list(counts)}
                for name, edges, counts in zip(FEATURE_NAMES, self.edges, self.counts, strict=True)
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile | None:
        """From a run's ``input_profile``; None when it has none or not for every feature."""
        features = (data or {}).get("features") or {}
        if not all(name in features for name in FEATURE_NAMES):
            return None
        edges = tuple(tuple(float(e) for e in features[name]["edges"]) for name in FEATURE_NAMES)
        counts = tuple(tuple(int(c) for c in features[name]["counts"]) for name in FEATURE_NAMES)
        if any(len(c) != len(e) + 1 for e, c in zip(edges, counts, strict=True)):
            return None
        return cls(edges, counts)


def _edges(column: np.ndarray, bins: int) -> tuple[float, ...]:
    values = np.unique(column.astype(np.float64))
    out: list[float] = []
    for q in np.quantile(column.astype(np.float64), [i / bins for i in range(1, bins)]):
        above = values[values > q]
        if not len(above):
            continue
        below = values[values <= q]
        edge = float((below[-1] + above[0]) / 2) if len(below) else float(above[0])
        if not out or edge > out[-1]:
            out.append(edge)
    return tuple(out)


def profile(x: np.ndarray, bins: int = BINS) -> Profile:
    """The profile of raw inputs ``x`` ([n, len(FEATURE_NAMES)])."""
    edges = tuple(_edges(x[:, j], bins) for j in range(x.shape[1]))
    counts = []
    for j, feature_edges in enumerate(edges):
        bounds = np.array(feature_edges, dtype=np.float64)
        index = np.searchsorted(bounds, x[:, j].astype(np.float64), side="right")
        counts.append(tuple(int(n) for n in np.bincount(index, minlength=len(feature_edges) + 1)))
    return Profile(edges, tuple(counts))


def psi(expected: Sequence[int], actual: Sequence[int], smoothing: float = SMOOTHING) -> float:
    """The population stability index of ``actual`` counts against ``expected`` counts."""
    if len(expected) != len(actual):
        raise ValueError(f"{len(expected)} expected bins, {len(actual)} actual")
    e_total = sum(expected) + smoothing * len(expected)
    a_total = sum(actual) + smoothing * len(actual)
    out = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe, pa = (e + smoothing) / e_total, (a + smoothing) / a_total
        out += (pa - pe) * math.log(pa / pe)
    return out


def histograms(item: Mapping[str, Any], shape: Profile) -> list[list[int]]:
    """A live item's input counts, one histogram per feature in ``shape``'s bins."""
    return [
        [int(item.get(attribute(name, i), 0)) for i in range(len(edges) + 1)]
        for name, edges in zip(FEATURE_NAMES, shape.edges, strict=True)
    ]


@dataclass(frozen=True)
class DriftVerdict:
    version: str
    seen: int
    psi: dict[str, float]
    threshold: float
    from_ms: int
    to_ms: int

    @property
    def feature(self) -> str:
        """The feature that moved most."""
        return max(self.psi, key=lambda name: self.psi[name])

    @property
    def triggered(self) -> bool:
        return self.psi[self.feature] > self.threshold

    def request(self, at: str) -> dict[str, Any]:
        return {
            "rule": "drift",
            "version": self.version,
            "seen": self.seen,
            "feature": self.feature,
            "psi": {name: round(value, 6) for name, value in self.psi.items()},
            "threshold": self.threshold,
            "from_ms": self.from_ms,
            "to_ms": self.to_ms,
            "at": at,
        }


def judge(
    window: Sequence[Sequence[int]],
    shape: Profile,
    cfg: DriftSettings,
    *,
    version: str,
    from_ms: int,
    to_ms: int,
) -> DriftVerdict | None:
    """The drift rule on a window's histograms (``histograms`` summed); None when the window
    holds too few binned samples to say anything."""
    seen = sum(window[0]) if window else 0
    if not cfg.enabled or seen < cfg.min_samples:
        return None
    values = {
        name: psi(expected, actual)
        for name, expected, actual in zip(FEATURE_NAMES, shape.counts, window, strict=True)
    }
    return DriftVerdict(version, seen, values, cfg.threshold, from_ms, to_ms)
