"""The drift scenario's switch: traffic moves to another world at TRAFFIC_SHIFT_AT."""

from __future__ import annotations

import numpy as np
import pytest

from lambdas import traffic
from lambdas.core import comfort
from lambdas.core.errors import ConfigError

SHIFT_AT = "2026-12-01T09:00:00Z"
SHIFT_MS = 1_796_115_600_000  # the same moment in epoch ms


def columns(samples: list[dict[str, object]]) -> dict[str, np.ndarray]:
    return {name: np.array([s[name] for s in samples], dtype=float) for name in comfort.INPUT_RANGES}


def within(samples: list[dict[str, object]], world: comfort.World) -> bool:
    return all(
        lo <= float(s[name]) <= hi  # type: ignore[arg-type]
        for s in samples
        for name, (lo, hi) in world.ranges.items()
    )


def test_traffic_shift_is_off_unless_set() -> None:
    assert traffic.TrafficSettings.from_env({}).shift_at_ms is None
    assert traffic.TrafficSettings.from_env({"TRAFFIC_SHIFT_AT": " "}).shift_at_ms is None
    config = traffic.TrafficSettings(api_url=None)
    assert config.world(2**62) is comfort.OFFICE


@pytest.mark.parametrize("text", [SHIFT_AT, "2026-12-01T09:00:00+00:00", "2026-12-01T09:00:00.000Z"])
def test_traffic_shift_at_reads_a_utc_time(text: str) -> None:
    assert traffic.TrafficSettings.from_env({"TRAFFIC_SHIFT_AT": text}).shift_at_ms == SHIFT_MS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-12-01T09:00:00", "must be a UTC time"),
        ("2026-12-01T10:00:00+01:00", "must be a UTC time"),
        ("1796115600", "must be a UTC time"),
        ("tomorrowZ", "must be an ISO-8601 UTC time, got 'tomorrowZ'"),
    ],
)
def test_traffic_shift_at_refuses_what_is_not_a_utc_time(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="TRAFFIC_SHIFT_AT") as err:
        traffic.TrafficSettings.from_env({"TRAFFIC_SHIFT_AT": text})
    assert message in str(err.value)


def test_traffic_before_the_shift_is_the_office_and_unchanged() -> None:
    config = traffic.TrafficSettings(api_url=None, min_samples=20, max_samples=20, shift_at_ms=SHIFT_MS)
    before = traffic.make_samples(config, np.random.default_rng(3), now_ms=SHIFT_MS - 1)
    plain = traffic.make_samples(
        traffic.TrafficSettings(api_url=None, min_samples=20, max_samples=20),
        np.random.default_rng(3),
        now_ms=SHIFT_MS - 1,
    )
    assert before == plain and within(before, comfort.OFFICE)


def test_traffic_from_the_shift_moves_inputs_and_labels_by_the_same_pmv_model() -> None:
    config = traffic.TrafficSettings(
        api_url=None, min_samples=20, max_samples=20, label_noise=0.0, shift_at_ms=SHIFT_MS
    )
    rng = np.random.default_rng(4)
    after = [s for _ in range(10) for s in traffic.make_samples(config, rng, now_ms=SHIFT_MS)]
    assert within(after, comfort.SHIFTED) and not within(after, comfort.OFFICE)
    assert all(s["created"] == SHIFT_MS for s in after)
    x = columns(after)
    # The labels are PMV's at the shifted metabolic rate: valid, and mostly not the office's.
    assert [s["label"] for s in after] == comfort.labels(x["temp"], x["rh"], x["wind"], x["clo"], met=1.6)
    assert not np.isnan(comfort.pmv(x["temp"], x["rh"], x["wind"], x["clo"], strict=True, met=1.6)).any()
    office = comfort.labels(x["temp"], x["rh"], x["wind"], x["clo"])
    agree = np.mean([a == s["label"] for a, s in zip(office, after, strict=True)])
    assert agree < 0.5
    assert {s["label"] for s in after} == {"cold", "ok", "warm"}


def test_traffic_shifted_clothing_does_not_overlap_the_office() -> None:
    """A model trained on both worlds need not compromise between two labellings."""
    assert comfort.SHIFTED.ranges["clo"][0] > comfort.OFFICE.ranges["clo"][1]
    assert comfort.SHIFTED.met != comfort.OFFICE.met == comfort.MET
