from __future__ import annotations

import numpy as np
import pytest

from trainer import data
from trainer import model as net
from trainer.config import HyperParameters

TINY = HyperParameters(epochs=3, batch_size=8, hidden_units=(6, 5), seed=3, patience=2)


def test_model_build_takes_raw_features_and_outputs_label_probabilities() -> None:
    model = net.build_model(np.zeros(4), np.ones(4), TINY)
    assert model.input_shape == (None, 4)
    assert model.output_shape == (None, 3)
    out = model.predict(np.array([[70, 40, 0.1, 0.5], [60, 20, 0.3, 1.0]], dtype=np.float32), verbose=0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_model_build_is_reproducible_with_the_same_seed() -> None:
    a = net.build_model(np.zeros(4), np.ones(4), TINY).get_weights()
    b = net.build_model(np.zeros(4), np.ones(4), TINY).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_model_fold_normalization_keeps_the_function_and_drops_the_layer() -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(200, 4)) * [10, 20, 0.2, 0.3] + [72, 45, 0.2, 0.7]).astype(np.float32)
    model = net.build_model(x.mean(axis=0), x.var(axis=0), TINY)
    folded = net.fold_normalization(model)
    assert [type(layer).__name__ for layer in folded.layers] == ["InputLayer", "Dense", "Dense", "Dense"]
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.slow
def test_model_train_fits_a_separable_toy_problem() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform([60, 20, 0, 0.3], [85, 70, 0.5, 1.2], size=(300, 4)).astype(np.float32)
    y = np.digitize(x[:, 0], [68, 77])
    samples = data.Samples(ids=[str(i) for i in range(300)], x=x, y=y, created=np.arange(300))
    hyper = HyperParameters(epochs=30, batch_size=16, hidden_units=(8,), seed=1, patience=5)
    fit = net.train(samples.subset(np.arange(240)), samples.subset(np.arange(240, 300)), hyper)
    assert 1 <= fit.epochs_run <= 30 and not fit.budget_reached
    assert fit.plan.batch_size == 16 and fit.plan.steps_per_epoch == 15
    validation = net.metrics(net.predict(fit.model, x[240:]), y[240:])
    assert validation["accuracy"] > 0.85


def test_model_metrics_counts_per_class_precision_and_recall() -> None:
    probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    result = net.metrics(probabilities, np.array([0, 1, 2, 1]), per_class=True)
    assert result["accuracy"] == 0.75
    assert result["count"] == 4
    assert result["per_class"]["cold"] == {"precision": 0.5, "recall": 1.0, "support": 1}
    assert result["per_class"]["ok"] == {"precision": 1.0, "recall": 0.5, "support": 2}
    expected_loss = -np.mean(np.log([0.9, 0.7, 0.7, 0.3]))
    assert result["loss"] == pytest.approx(expected_loss, abs=1e-6)


def test_model_metrics_of_nothing_has_no_accuracy() -> None:
    assert net.metrics(np.zeros((0, 3)), np.zeros(0, dtype=int)) == {
        "loss": None,
        "accuracy": None,
        "count": 0,
    }


@pytest.mark.parametrize(
    ("n_train", "batch", "epochs"),
    [
        (150, 32, 100),  # small data: the settings of old, 100 epochs at batch 32
        (7_650, 32, 83),  # 10k samples: 240 steps an epoch, the budget allows 83 epochs
        (76_500, 256, 66),  # 100k: batch 256, 299 steps an epoch
        (765_000, 1024, 26),  # 1M: the largest batch, 748 steps an epoch
        (7_650_000, 1024, 2),  # 10M: the budget still holds
        (80_000_000, 1024, 1),  # past the budget in one epoch: one epoch, whatever it costs
    ],
)
def test_model_fit_plan_grows_the_batch_and_keeps_the_steps_within_the_budget(
    n_train: int, batch: int, epochs: int
) -> None:
    plan = net.plan_fit(n_train, HyperParameters())
    assert (plan.batch_size, plan.epochs) == (batch, epochs)
    assert plan.steps_per_epoch == -(-n_train // batch)
    assert plan.steps <= 20_000 or plan.epochs == 1
    assert plan.learning_rate == pytest.approx(0.003 * (batch / 32) ** 0.5)
    assert plan.decay == (batch > 32)  # a small table trains with a constant rate, as before


def test_model_fit_plan_keeps_an_explicit_batch_and_learning_rate() -> None:
    plan = net.plan_fit(100_000, HyperParameters(batch_size=64, learning_rate=0.01, epochs=5))
    assert (plan.batch_size, plan.learning_rate, plan.epochs, plan.steps_per_epoch) == (64, 0.01, 5, 1563)
    assert not plan.decay


def test_model_time_budget_stops_before_an_epoch_would_end_past_it() -> None:
    now = [0.0]
    budget = net.TimeBudget(10.0, clock=lambda: now[0])

    class Model:
        stop_training = False

    budget.set_model(Model())  # type: ignore[arg-type]
    budget.on_train_begin()
    for epoch, at in enumerate([3.0, 6.0]):
        now[0] = at
        budget.on_epoch_end(epoch)
        assert not budget.model.stop_training  # 6 s in, epochs of 3 s: the next ends at 9 s
    now[0] = 8.5  # a 2.5 s epoch: the next would end at 11 s
    budget.on_epoch_end(2)
    assert budget.model.stop_training and budget.reached
