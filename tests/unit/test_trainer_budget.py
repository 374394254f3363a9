"""The fit's time budget follows the instance's time limit, so a run never dies of size."""

from __future__ import annotations

import dataclasses

import pytest

from trainer import run
from trainer.config import HyperParameters, Settings

SETTINGS = Settings(
    data_table="d", model_table="m", model_bucket="b", hyper=HyperParameters(fit_budget_s=900)
)


@pytest.mark.parametrize(
    ("limit", "spent", "budget"),
    [
        (0, 500, 900),  # no limit (a laptop run): FIT_BUDGET_S
        (1800, 60, 900),  # plenty left: FIT_BUDGET_S
        (1800, 1000, 680),  # a long scan: what is left less the publish reserve
        (1800, 1700, run.MIN_FIT_BUDGET_S),  # nothing left: still a first epoch
    ],
)
def test_fit_budget_leaves_room_to_publish_inside_the_time_limit(
    limit: float, spent: float, budget: float
) -> None:
    settings = dataclasses.replace(SETTINGS, time_limit_s=limit)
    assert run.fit_budget_s(settings, started=1000.0, now=1000.0 + spent) == budget


def test_fit_budget_reads_the_time_limit_the_train_function_passes() -> None:
    env = {"DATA_TABLE": "d", "MODEL_TABLE": "m", "MODEL_BUCKET": "b", "TRAIN_TIME_LIMIT_S": "1800"}
    assert Settings.from_env(env).time_limit_s == 1800
    assert Settings.from_env({**env, "FIT_BUDGET_S": "60"}).hyper.fit_budget_s == 60


def test_fit_budget_smaller_than_the_floor_is_kept() -> None:
    settings = dataclasses.replace(SETTINGS, hyper=HyperParameters(fit_budget_s=10), time_limit_s=1800)
    assert run.fit_budget_s(settings, started=0.0, now=1700.0) == 10
