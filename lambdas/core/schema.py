"""The shape of a sample and of a model's input: one definition for every component.

The model takes the raw physical inputs in ``FEATURE_NAMES`` order and carries its own
normalisation, so every client (the infer Lambda, TensorFlow.js in a browser) feeds raw values.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Feature:
    name: str
    unit: str
    description: str
    minimum: float  # inclusive; the physically plausible range accepted by the API
    maximum: float


FEATURES: tuple[Feature, ...] = (
    Feature("temp", "°F", "air temperature", -40.0, 140.0),
    Feature("rh", "%", "relative humidity", 0.0, 100.0),
    Feature("wind", "m/s", "air speed", 0.0, 20.0),
    Feature("clo", "clo", "clothing insulation", 0.0, 4.0),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)

LABELS: tuple[str, ...] = ("cold", "ok", "warm")  # the model's output order
