"""The network: built with tf_keras, trained with its normalisation, exported without it.

TensorFlow.js 4.22 has no Normalization layer, so the model that is exported, gated and
served is ``fold_normalization(trained)``: the same function with the mean and variance
folded into the first Dense layer's kernel and bias. Its input is the raw features in
``lambdas.core.schema.FEATURE_NAMES`` order (°F, %, m/s, clo); its output the softmax over
``LABELS``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tf_keras as keras

from lambdas.core import log
from lambdas.core.schema import FEATURE_NAMES, LABELS
from trainer.config import HyperParameters
from trainer.data import Samples, one_hot

N_FEATURES = len(FEATURE_NAMES)
N_CLASSES = len(LABELS)


# The automatic batch size: 32 while an epoch is at most STEPS_PER_EPOCH steps of it, then
# doubled until it is (or MAX_BATCH is reached). Past that size the work per run is flat.
MIN_BATCH = 32
MAX_BATCH = 1024
STEPS_PER_EPOCH = 300


@dataclass(frozen=True)
class FitPlan:
    """How a fit spends its budget: ``epochs`` of ``steps_per_epoch`` steps of ``batch_size``,
    Adam from ``learning_rate``, decaying (cosine) to a tenth over the planned steps when
    ``decay`` (a batch grown for a large table; a small table trains as it always did)."""

    batch_size: int
    steps_per_epoch: int
    epochs: int
    learning_rate: float
    decay: bool = False

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "learning_rate": round(self.learning_rate, 6), "steps": self.steps}


def plan_fit(n_train: int, hyper: HyperParameters) -> FitPlan:
    """The fit for ``n_train`` samples within ``hyper.step_budget`` steps. An automatic batch
    grows with the data (a bigger batch costs little more per step on a CPU, for this network,
    and averages more samples per step); the learning rate grows with its square root, the usual
    rule for Adam, so fewer, larger steps still cover the same ground."""
    if hyper.batch_size:
        batch, rate = hyper.batch_size, hyper.learning_rate
    else:
        batch = MIN_BATCH
        while batch < MAX_BATCH and n_train > batch * STEPS_PER_EPOCH:
            batch *= 2
        rate = hyper.learning_rate * math.sqrt(batch / MIN_BATCH)
    steps = max(1, math.ceil(n_train / batch))
    epochs = max(1, min(hyper.epochs, hyper.step_budget // steps))
    decay = not hyper.batch_size and batch > MIN_BATCH
    return FitPlan(batch_size=batch, steps_per_epoch=steps, epochs=epochs, learning_rate=rate, decay=decay)


def build_model(
    mean: np.ndarray, variance: np.ndarray, hyper: HyperParameters, plan: FitPlan | None = None
) -> keras.Model:
    """A compiled classifier whose first layer normalises raw inputs with ``mean``/``variance``;
    its optimizer follows ``plan`` (none: a constant learning rate)."""
    keras.utils.set_random_seed(hyper.seed)
    inputs = keras.Input(shape=(N_FEATURES,), name="features", dtype="float32")
    x = keras.layers.Normalization(
        mean=np.asarray(mean, dtype=np.float32), variance=np.asarray(variance, dtype=np.float32), name="norm"
    )(inputs)
    for i, units in enumerate(hyper.hidden_units):
        x = keras.layers.Dense(units, activation=hyper.activation, name=f"hidden{i + 1}")(x)
    outputs = keras.layers.Dense(N_CLASSES, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="comfort")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=_rate(hyper, plan)),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _rate(hyper: HyperParameters, plan: FitPlan | None) -> Any:
    if plan is None or not plan.decay:
        return hyper.learning_rate if plan is None else plan.learning_rate
    return keras.optimizers.schedules.CosineDecay(plan.learning_rate, decay_steps=plan.steps, alpha=0.1)


def fold_normalization(model: keras.Model) -> keras.Model:
    """The same function without the Normalization layer, which TensorFlow.js cannot load.

    Dense(W, b) applied to (x - m) / s equals Dense(W / s[:, None], b - (m / s) @ W) applied
    to x. The arithmetic is done in float64 and rounded once.
    """
    norm = model.get_layer("norm")
    mean = np.asarray(norm.mean, dtype=np.float64).reshape(-1)
    # tf_keras divides by max(sqrt(variance), epsilon).
    std = np.maximum(
        np.sqrt(np.asarray(norm.variance, dtype=np.float64).reshape(-1)), keras.backend.epsilon()
    )
    dense_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]

    inputs = keras.Input(shape=(N_FEATURES,), name="features", dtype="float32")
    x = inputs
    for layer in dense_layers:
        x = keras.layers.Dense(layer.units, activation=layer.activation, name=layer.name)(x)
    folded = keras.Model(inputs, x, name=model.name)

    first = True
    for layer in dense_layers:
        kernel, bias = (np.asarray(w, dtype=np.float64) for w in layer.get_weights())
        if first:
            bias = bias - (mean / std) @ kernel
            kernel = kernel / std[:, None]
            first = False
        folded.get_layer(layer.name).set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return folded


class EpochLog(keras.callbacks.Callback):
    """One JSON line per epoch."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        fields = {k: round(float(v), 5) for k, v in (logs or {}).items()}
        log.log("epoch", epoch=epoch + 1, **fields)


class StopWhen(keras.callbacks.Callback):
    """Stops training after the current batch once ``should_stop()`` is true (spot notice)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        super().__init__()
        self.should_stop = should_stop
        self.stopped = False

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.should_stop():
            self.stopped = True
            self.model.stop_training = True


class TimeBudget(keras.callbacks.Callback):
    """Stops after the epoch that would let the next one end past ``seconds`` of fitting (the
    best weights are restored by early stopping's end of training all the same)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.seconds = seconds
        self.clock = clock
        self.reached = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.started = self.last = self.clock()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        now = self.clock()
        epoch_s, self.last = now - self.last, now
        if now - self.started + epoch_s > self.seconds:
            self.reached = True
            self.model.stop_training = True


@dataclass(frozen=True)
class Fit:
    model: keras.Model
    epochs_run: int
    plan: FitPlan
    seconds: float
    budget_reached: bool  # stopped by the time budget

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.plan.to_dict(),
            "epochs_run": self.epochs_run,
            "seconds": round(self.seconds, 3),
            "budget_reached": self.budget_reached,
        }


def train(
    train_set: Samples,
    validation: Samples,
    hyper: HyperParameters,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> Fit:
    """Fit on ``train_set`` within the budget (``plan_fit``, ``hyper.fit_budget_s``), with early
    stopping on validation loss (best weights restored). Validation is at most
    ``hyper.validation_max`` samples (a fixed, seeded choice): it is evaluated every epoch.

    The model keeps its normalisation (mean and variance of the training split)."""
    plan = plan_fit(len(train_set), hyper)
    if len(validation) > hyper.validation_max:
        keep = np.random.default_rng(hyper.seed).choice(len(validation), hyper.validation_max, replace=False)
        validation = validation.subset(np.sort(keep))
    model = build_model(train_set.x.mean(axis=0), train_set.x.var(axis=0), hyper, plan)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=hyper.patience, restore_best_weights=True
    )
    budget = TimeBudget(hyper.fit_budget_s)
    log.log("fit_plan", samples=len(train_set), validation=len(validation), **plan.to_dict())
    started = time.monotonic()
    history = model.fit(
        train_set.x,
        one_hot(train_set.y),
        validation_data=(validation.x, one_hot(validation.y)),
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[stopper, budget, EpochLog(), *callbacks],
    )
    epochs_run = len(history.history.get("loss", []))
    return Fit(model, epochs_run, plan, time.monotonic() - started, budget.reached)


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return np.zeros((0, N_CLASSES), dtype=np.float32)
    return np.asarray(model.predict(np.asarray(x, dtype=np.float32), batch_size=1024, verbose=0))


def metrics(probabilities: np.ndarray, y: np.ndarray, *, per_class: bool = False) -> dict[str, Any]:
    """Cross-entropy loss and accuracy (and per-class precision/recall/support) from predictions."""
    n = len(y)
    if n == 0:
        return {"loss": None, "accuracy": None, "count": 0}
    eps = 1e-7
    picked = np.clip(probabilities[np.arange(n), y], eps, 1.0)
    predicted = probabilities.argmax(axis=1)
    out: dict[str, Any] = {
        "loss": round(float(-np.log(picked).mean()), 6),
        "accuracy": round(float((predicted == y).mean()), 6),
        "count": n,
    }
    if per_class:
        out["per_class"] = {}
        for i, label in enumerate(LABELS):
            true_positive = int(((predicted == i) & (y == i)).sum())
            predicted_count = int((predicted == i).sum())
            support = int((y == i).sum())
            out["per_class"][label] = {
                "precision": round(true_positive / predicted_count, 6) if predicted_count else 0.0,
                "recall": round(true_positive / support, 6) if support else 0.0,
                "support": support,
            }
    return out
