"""The numpy TF.js runtime: same predictions as Keras and TensorFlow.js, loud on anything else."""

from __future__ import annotations

import contextlib
import copy
import functools
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lambdas.core import tfjs_model
from lambdas.core.schema import FEATURES

ROOT = Path(__file__).resolve().parents[2]
ACTIVATIONS = ["relu", "tanh", "sigmoid", "elu", "selu", "gelu", "swish", "softplus", "softsign", "linear"]


def sample_inputs(n: int = 64, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = np.array([f.minimum for f in FEATURES])
    high = np.array([f.maximum for f in FEATURES])
    return rng.uniform(low, high, size=(n, 4)).astype("float32")


# hand-made model.json (no TensorFlow) ------------------------------------------------------


def dense_spec(name: str, units: int, activation: str, use_bias: bool = True) -> dict[str, Any]:
    return {
        "class_name": "Dense",
        "config": {
            "name": name,
            "dtype": "float32",
            "units": units,
            "activation": activation,
            "use_bias": use_bias,
        },
    }


def hand_model(seed: int = 0) -> tuple[dict[str, Any], dict[str, bytes], list[np.ndarray]]:
    """A 4 -> 5 (tanh) -> 3 (softmax) model.json, its shard and its weights."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=s).astype("float32") for s in ((4, 5), (5,), (5, 3), (3,))]
    model_json = {
        "format": "layers-model",
        "modelTopology": {
            "model_config": {
                "class_name": "Sequential",
                "config": {
                    "name": "s",
                    "layers": [
                        {
                            "class_name": "InputLayer",
                            "config": {"name": "in", "batch_input_shape": [None, 4], "dtype": "float32"},
                        },
                        dense_spec("d1", 5, "tanh"),
                        {
                            "class_name": "Dropout",
                            "config": {"name": "drop", "dtype": "float32", "rate": 0.2},
                        },
                        dense_spec("d2", 3, "softmax"),
                    ],
                },
            }
        },
        "weightsManifest": [
            {
                "paths": ["group1-shard1of1.bin"],
                "weights": [
                    {"name": n, "shape": list(w.shape), "dtype": "float32"}
                    for n, w in zip(["d1/kernel", "d1/bias", "d2/kernel", "d2/bias"], weights, strict=True)
                ],
            }
        ],
    }
    return model_json, {"group1-shard1of1.bin": b"".join(w.tobytes() for w in weights)}, weights


def test_tfjs_model_forward_pass_matches_the_formula() -> None:
    model_json, files, (k1, b1, k2, b2) = hand_model()
    model = tfjs_model.parse(model_json, files.__getitem__)
    x = sample_inputs(8).astype("float64") / 100
    logits = np.tanh(x @ k1 + b1) @ k2 + b2
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert model.n_inputs == 4 and model.n_outputs == 3
    assert np.abs(model.predict(x) - expected).max() <= 1e-6


def _mutate(change: str, model_json: dict[str, Any], files: dict[str, bytes]) -> None:
    layers = model_json["modelTopology"]["model_config"]["config"]["layers"]
    manifest = model_json["weightsManifest"][0]
    if change == "unknown layer":
        layers.insert(2, {"class_name": "BatchNormalization", "config": {"name": "bn", "dtype": "float32"}})
    elif change == "unknown activation":
        layers[1]["config"]["activation"] = "hard_silu"
    elif change == "activation as object":
        layers[1]["config"]["activation"] = {"class_name": "ReLU", "config": {}}
    elif change == "float16 layer":
        layers[1]["config"]["dtype"] = "float16"
    elif change == "mixed precision policy":
        layers[1]["config"]["dtype"] = {"class_name": "Policy", "config": {"name": "mixed_float16"}}
    elif change == "float16 weights":
        manifest["weights"][0]["dtype"] = "float16"
    elif change == "quantised weights":
        manifest["weights"][0]["quantization"] = {"dtype": "uint8", "min": 0, "scale": 1}
    elif change == "unknown dense option":
        layers[1]["config"]["kernel_quantizer"] = "int8"
    elif change == "kernel shape mismatch":
        manifest["weights"][0]["shape"] = [5, 4]
    elif change == "missing bias":
        layers[1]["config"]["use_bias"] = True
        manifest["weights"][1]["name"] = "other/bias"
    elif change == "short shard":
        files["group1-shard1of1.bin"] = files["group1-shard1of1.bin"][:-4]
    elif change == "extra bytes":
        files["group1-shard1of1.bin"] += b"\0\0\0\0"
    elif change == "not a layers model":
        model_json["format"] = "graph-model"
    elif change == "subclassed model":
        model_json["modelTopology"]["model_config"]["class_name"] = "MyModel"
    elif change == "three-dimensional input":
        layers[0]["config"]["batch_input_shape"] = [None, 2, 2]
    else:  # pragma: no cover
        raise AssertionError(change)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("unknown layer", "layer type 'BatchNormalization' is not supported"),
        ("unknown activation", "activation 'hard_silu' is not supported"),
        ("activation as object", "is not supported"),
        ("float16 layer", "dtype 'float16' is not supported"),
        ("mixed precision policy", "is not supported (float32 only)"),
        ("float16 weights", "dtype 'float16' is not supported"),
        ("quantised weights", "quantised weights are not supported"),
        ("unknown dense option", "unsupported config ['kernel_quantizer']"),
        ("kernel shape mismatch", "kernel has shape (5, 4), expected (4, 5)"),
        ("missing bias", "expected one bias weight"),
        ("short shard", "shorter than the manifest says"),
        ("extra bytes", "4 bytes left over"),
        ("not a layers model", "is not a layers-model"),
        ("subclassed model", "model class 'MyModel' is not supported"),
        ("three-dimensional input", "expected a [batch, features] shape"),
    ],
)
def test_tfjs_model_refuses_what_it_cannot_run_at_load_time(change: str, message: str) -> None:
    model_json, files, _ = hand_model()
    _mutate(change, model_json, files)
    with pytest.raises(tfjs_model.UnsupportedModel) as caught:
        tfjs_model.parse(model_json, files.__getitem__)
    assert message in str(caught.value)


def test_tfjs_model_refuses_a_branching_functional_graph() -> None:
    model_json, files, _ = hand_model()
    chain = copy.deepcopy(model_json["modelTopology"]["model_config"]["config"]["layers"])
    del chain[2]
    chain[0]["inbound_nodes"] = []
    chain[1]["inbound_nodes"] = [[["in", 0, 0, {}]]]
    chain[2]["inbound_nodes"] = [[["in", 0, 0, {}]]]  # skips d1: not a chain
    model_json["modelTopology"]["model_config"] = {
        "class_name": "Functional",
        "config": {
            "name": "f",
            "layers": chain,
            "input_layers": [["in", 0, 0]],
            "output_layers": [["d2", 0, 0]],
        },
    }
    with pytest.raises(tfjs_model.UnsupportedModel, match="only a chain of layers is supported"):
        tfjs_model.parse(model_json, files.__getitem__)


def test_tfjs_model_rejects_inputs_of_the_wrong_width() -> None:
    model_json, files, _ = hand_model()
    model = tfjs_model.parse(model_json, files.__getitem__)
    with pytest.raises(ValueError, match=r"expected inputs of shape \(n, 4\)"):
        model.predict(np.zeros((1, 3)))


# parity with Keras and TensorFlow.js (real exports) --------------------------------------------


def keras_model(kind: str, seed: int = 0) -> Any:
    """Models like the trainer's: normalisation folded into the first Dense, softmax output."""
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    activation = kind.split(":")[-1]
    if kind.startswith("functional"):
        inputs = keras.Input(shape=(4,))
        hidden = keras.layers.Dense(6, activation=activation)(inputs)
        outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Dropout(0.2)(hidden))
        model = keras.Model(inputs, outputs)
    else:
        model = keras.Sequential(
            [
                keras.layers.InputLayer(input_shape=(4,)),
                keras.layers.Dense(8, activation=activation, use_bias=not kind.startswith("nobias")),
                keras.layers.Dropout(0.2),
                keras.layers.Dense(6, activation=activation),
                keras.layers.Dense(3),
                keras.layers.Activation("softmax"),
            ]
        )
    x = sample_inputs(256, seed=seed)
    mean, std = x.mean(axis=0), x.std(axis=0)
    first = model.layers[1] if kind.startswith("functional") else model.layers[0]
    params = first.get_weights()
    kernel = np.random.default_rng(seed).normal(size=params[0].shape).astype("float32") * 1.5
    folded = [kernel / std[:, None]]
    if len(params) == 2:
        folded.append(params[1] - (mean / std) @ kernel)
    first.set_weights(folded)
    return model


def export(model: Any, folder: Path) -> Path:
    import tensorflowjs as tfjs

    tfjs.converters.save_keras_model(model, str(folder))
    return folder


def load_numpy(folder: Path) -> tfjs_model.TfjsModel:
    return tfjs_model.parse(
        json.loads((folder / "model.json").read_text()), lambda p: (folder / p).read_bytes()
    )


MODEL_KINDS = [*ACTIVATIONS, "nobias:relu", "functional:gelu"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_tfjs_model_matches_keras(kind: str, tmp_path: Path) -> None:
    model = keras_model(kind)
    x = sample_inputs()
    expected = model(x, training=False).numpy()
    got = load_numpy(export(model, tmp_path))
    assert np.abs(got.predict(x) - expected).max() <= 1e-5


@contextlib.contextmanager
def static_server(folder: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def tfjs_predict(url: str, x: np.ndarray) -> np.ndarray:
    done = subprocess.run(
        ["node", str(ROOT / "tests/js/tfjs_predict.mjs"), url],
        input=json.dumps(x.tolist()),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return np.array(json.loads(done.stdout))


@pytest.mark.slow
def test_tfjs_model_matches_tensorflow_js_for_every_activation(tmp_path: Path) -> None:
    x = sample_inputs(32)
    for kind in MODEL_KINDS:
        export(keras_model(kind), tmp_path / kind.replace(":", "-"))
    with static_server(tmp_path) as base:
        for kind in MODEL_KINDS:
            folder = tmp_path / kind.replace(":", "-")
            expected = tfjs_predict(f"{base}/{folder.name}/model.json", x)
            diff = np.abs(load_numpy(folder).predict(x) - expected).max()
            assert diff <= 1e-5, f"{kind}: max abs diff {diff}"


# the trainer's own models ---------------------------------------------------------------------

TRAINER_ACTIVATIONS = ["tanh", "relu", "sigmoid", "elu", "selu", "gelu"]


def trainer_model(activation: str) -> Any:
    """Built, normalisation-folded as trainer/ does before export (weights untrained but seeded)."""
    from trainer.config import HyperParameters
    from trainer.model import build_model, fold_normalization

    x = sample_inputs(256, seed=9)
    hyper = HyperParameters(activation=activation, hidden_units=(16, 8), seed=5)
    return fold_normalization(build_model(x.mean(axis=0), x.var(axis=0), hyper))


@pytest.mark.slow
def test_tfjs_model_matches_keras_and_tensorflow_js_on_trainer_models(tmp_path: Path) -> None:
    from trainer.export import save_tfjs

    x = sample_inputs(32)
    expected_keras = {}
    for i, activation in enumerate(TRAINER_ACTIVATIONS):
        model = trainer_model(activation)
        version = f"v20261123T0900{i:02d}Z-00{i:02d}"
        save_tfjs(model, tmp_path / version, version)  # self-pinning paths: "../<version>/<shard>"
        expected_keras[version] = model(x, training=False).numpy()
    with static_server(tmp_path) as base:
        for version, from_keras in expected_keras.items():
            got = load_numpy(tmp_path / version).predict(x)
            from_tfjs = tfjs_predict(f"{base}/{version}/model.json", x)
            assert np.abs(got - from_keras).max() <= 1e-5, version
            assert np.abs(got - from_tfjs).max() <= 1e-5, version
