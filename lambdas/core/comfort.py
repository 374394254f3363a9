"""Physical comfort labels and synthetic samples.

The label of a sample is the thermal sensation predicted by Fanger's PMV model as standardised
in ISO 7730 (``pythermalcomfort.models.pmv_ppd_iso``; the library implements it, we do not
re-derive it): ``cold`` when PMV < -0.5, ``warm`` when PMV > +0.5, else ``ok`` (the ISO 7730
category B comfort band).

Assumptions, because a sample carries only four of PMV's six inputs:

- mean radiant temperature equals air temperature (``tr = tdb``: an indoor room without
  strong radiant sources);
- metabolic rate ``MET = 1.1`` met (seated office work, typing);
- ``wind`` is used as the relative air speed ``vr`` (the activity-generated part,
  0.3 x (met - 1) = 0.03 m/s, is ignored);
- ``clo`` is the intrinsic clothing insulation; no external work.

``generate`` draws inputs uniformly over ``INPUT_RANGES`` and keeps only points inside the
ISO 7730 validity limits (10-30 °C, vr < 1 m/s, clo < 2, vapour pressure < 2700 Pa,
-2 <= PMV <= 2), so every generated label is one the standard stands behind. Over these ranges
the three labels come out roughly a third each. With label noise ``p`` (each label replaced,
with probability ``p``, by one of the two other labels chosen uniformly) a perfect classifier
agrees with the stored labels on a fraction ``1 - p`` of samples: ``best_accuracy(p)``.

**A shifted world** (``SHIFTED``, the drift scenario's; ``lambdas/traffic.py`` switches to it at
``TRAFFIC_SHIFT_AT``): winter on a shop floor. The inputs move (a cooler hall, 50-72 °F, and
winter clothing, 1.25-1.7 clo, above the office's range) and so does the labelling: occupants
stand at light work, ``MET = 1.6`` met (ISO 7730 Annex B, "standing, light activity (shopping,
laboratory, light industry)"), so the same conditions feel warmer. The labels are still the
same PMV model's, with that one assumption changed, inside the same validity limits; fewer than
a third of them (28 %) agree with what the office's assumption says of the same inputs. Because
the clothing ranges do not overlap, a model trained on both worlds need not compromise.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lambdas.core import kernels
from lambdas.core.schema import LABELS

# In the traffic function's image, the kernels compiled at build go where numba looks for them
# before numba is imported (lambdas/core/kernels.py); elsewhere this does nothing.
kernels.use_image_cache()
from pythermalcomfort.models import pmv_ppd_iso  # noqa: E402

kernels.log_cache_use()

MET = 1.1  # met: seated, light office work
COLD_BELOW = -0.5
WARM_ABOVE = 0.5

# Generator ranges (inclusive): inside the PMV model's validity, tuned so cold/ok/warm are
# each about a third of the samples. Units as in lambdas/core/schema.py.
INPUT_RANGES: dict[str, tuple[float, float]] = {
    "temp": (66.0, 86.0),  # °F (18.9-30 °C)
    "rh": (20.0, 70.0),  # %
    "wind": (0.05, 0.5),  # m/s
    "clo": (0.3, 1.2),  # clo
}
# Stored precision of generated inputs; labels are computed from the rounded values.
DECIMALS: dict[str, int] = {"temp": 1, "rh": 0, "wind": 2, "clo": 2}


@dataclass(frozen=True)
class World:
    """Where samples come from: the generator's input ranges and the metabolic rate PMV assumes."""

    name: str
    ranges: Mapping[str, tuple[float, float]]
    met: float


OFFICE = World("office", INPUT_RANGES, MET)
# Winter on a shop floor (module docstring): cooler, heavier clothing, standing light work.
SHIFTED = World(
    "shop-floor-winter",
    {"temp": (50.0, 72.0), "rh": (20.0, 70.0), "wind": (0.05, 0.5), "clo": (1.25, 1.7)},
    1.6,
)

ArrayLike = float | Sequence[float] | np.ndarray


def fahrenheit_to_celsius(temp_f: ArrayLike) -> np.ndarray:
    return (np.asarray(temp_f, dtype=float) - 32.0) * 5.0 / 9.0


def pmv(
    temp_f: ArrayLike,
    rh: ArrayLike,
    wind: ArrayLike,
    clo: ArrayLike,
    *,
    strict: bool = False,
    met: float = MET,
) -> np.ndarray:
    """PMV for each input under the module's assumptions (vectorised), at metabolic rate ``met``.

    ``strict=True`` returns NaN where an input or the result is outside ISO 7730's validity
    limits; otherwise the formula is evaluated everywhere.
    """
    tdb = fahrenheit_to_celsius(temp_f)
    with warnings.catch_warnings():
        # pythermalcomfort warns for every value outside its limits; strict mode wants the NaNs.
        warnings.simplefilter("ignore")
        result = pmv_ppd_iso(
            tdb=tdb,
            tr=tdb,
            vr=np.asarray(wind, dtype=float),
            rh=np.asarray(rh, dtype=float),
            met=met,
            clo=np.asarray(clo, dtype=float),
            limit_inputs=strict,
            round_output=False,
        )
    return np.atleast_1d(np.asarray(result.pmv, dtype=float))


def labels_from_pmv(values: ArrayLike) -> list[str]:
    """``cold`` below -0.5, ``warm`` above +0.5, else ``ok`` (NaN is not a label: ValueError)."""
    array = np.atleast_1d(np.asarray(values, dtype=float))
    if np.isnan(array).any():
        raise ValueError("PMV is undefined for some inputs; no label")
    index = np.where(array < COLD_BELOW, 0, np.where(array > WARM_ABOVE, 2, 1))
    return [LABELS[i] for i in index]


def labels(
    temp_f: ArrayLike, rh: ArrayLike, wind: ArrayLike, clo: ArrayLike, *, met: float = MET
) -> list[str]:
    """Vectorised ``label``: one label per input row."""
    return labels_from_pmv(pmv(temp_f, rh, wind, clo, met=met))


def label(temp_f: float, rh: float, wind: float, clo: float) -> str:
    """The PMV comfort label of one condition (°F, %, m/s, clo)."""
    return labels(temp_f, rh, wind, clo)[0]


def best_accuracy(noise: float) -> float:
    """The accuracy ceiling on labels flipped with probability ``noise``: ``1 - noise``."""
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    return 1.0 - noise


def _draw_valid(n: int, rng: np.random.Generator, world: World) -> dict[str, np.ndarray]:
    """``n`` rounded inputs of ``world`` inside the validity limits (rejection sampling, vectorised)."""
    kept: dict[str, list[np.ndarray]] = {name: [] for name in INPUT_RANGES}
    have = 0
    while have < n:
        batch = max(16, int((n - have) * 1.3))
        draw = {
            name: np.round(rng.uniform(lo, hi, batch), DECIMALS[name])
            for name, (lo, hi) in ((name, world.ranges[name]) for name in INPUT_RANGES)
        }
        valid = ~np.isnan(
            pmv(draw["temp"], draw["rh"], draw["wind"], draw["clo"], strict=True, met=world.met)
        )
        for name in kept:
            kept[name].append(draw[name][valid])
        have += int(valid.sum())
    return {name: np.concatenate(parts)[:n] for name, parts in kept.items()}


def generate(
    n: int,
    rng: np.random.Generator | int,
    noise: float,
    *,
    now_ms: int | None = None,
    world: World = OFFICE,
) -> list[dict[str, Any]]:
    """``n`` samples in the upload payload format ``{temp, rh, wind, clo, label, created}``.

    ``rng`` is a numpy Generator or a seed. Inputs are drawn over ``world``'s ranges; each label
    is the PMV label of the rounded inputs at ``world``'s metabolic rate, replaced with
    probability ``noise`` by one of the other two labels (uniformly).
    ``created`` is ``now_ms`` (default: the current time) for every sample.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if n == 0:
        return []
    inputs = _draw_valid(n, gen, world)
    true_labels = labels(inputs["temp"], inputs["rh"], inputs["wind"], inputs["clo"], met=world.met)
    true_index = np.array([LABELS.index(x) for x in true_labels])
    flip = gen.random(n) < noise
    # Shift by 1 or 2 (mod 3): a uniformly chosen label different from the true one.
    shifted = (true_index + gen.integers(1, len(LABELS), n)) % len(LABELS)
    final_index = np.where(flip, shifted, true_index)
    created = int(time.time() * 1000) if now_ms is None else int(now_ms)
    out: list[dict[str, Any]] = []
    for i in range(n):
        sample: dict[str, Any] = {
            name: (int(inputs[name][i]) if DECIMALS[name] == 0 else float(inputs[name][i]))
            for name in INPUT_RANGES
        }
        sample["label"] = LABELS[int(final_index[i])]
        sample["created"] = created
        out.append(sample)
    return out
