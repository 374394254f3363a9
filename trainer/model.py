"""The network: built with tf_keras, trained with its normalisation, exported without it.

TensorFlow.js 4.22 has no Normalization layer, so the model that is exported, gated and
served is ``fold_normalization(trained)``: the same function with the mean and variance
folded into the first Dense layer's kernel and bias. Its input is the raw features in
``lambdas.core.schema.FEATURE_NAMES`` order (°F, %, m/s, clo); its output the softmax over
``LABELS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
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


def build_model(mean: np.ndarray, variance: np.ndarray, hyper: HyperParameters) -> keras.Model:
    """A compiled classifier whose first layer normalises raw inputs with ``mean``/``variance``."""
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
        optimizer=keras.optimizers.Adam(learning_rate=hyper.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


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


def train(
    train_set: Samples,
    validation: Samples,
    hyper: HyperParameters,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[keras.Model, int]:
    """Fit on ``train_set`` with early stopping on validation loss (best weights restored).

    Returns the trained model with its normalisation (mean and variance of the training
    split) and the number of epochs run.
    """
    model = build_model(train_set.x.mean(axis=0), train_set.x.var(axis=0), hyper)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=hyper.patience, restore_best_weights=True
    )
    history = model.fit(
        train_set.x,
        one_hot(train_set.y),
        validation_data=(validation.x, one_hot(validation.y)),
        epochs=hyper.epochs,
        batch_size=hyper.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[stopper, EpochLog(), *callbacks],
    )
    return model, len(history.history.get("loss", []))


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
