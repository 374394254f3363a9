"""A numpy runtime for the TensorFlow.js Layers models the trainer exports.

``parse(model_json, read)`` reads ``model.json`` (topology + weights manifest), fetches the
weight shards through ``read(path)`` (the path exactly as the manifest spells it) and builds a
forward pass. Everything that could go wrong with a model is checked here, when it is loaded:
an unknown layer, activation, dtype, quantised weights, a weight of the wrong shape or a graph
that is not a single chain all raise ``UnsupportedModel``, so a request never meets a model
the runtime only half understands.

Supported: ``InputLayer``, ``Dense`` (with or without bias), ``Dropout`` (a no-op at inference)
and ``Activation``, in a ``Sequential`` model or a ``Functional`` model that is a chain, with
the activations in ``ACTIVATIONS``. The forward pass runs in float64 on float32 weights, which
keeps it within 1e-6 of TensorFlow's and TensorFlow.js's float32 results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lambdas.core.errors import AutoretrainError

Array = np.ndarray
ReadFn = Callable[[str], bytes]

_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805
_SQRT1_2 = 1.0 / math.sqrt(2.0)

# Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), the same approximation TensorFlow.js uses.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


class UnsupportedModel(AutoretrainError):
    """The model uses something this runtime does not implement (or is malformed)."""

    code = "unsupported_model"


def _erf(x: Array) -> Array:
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + _ERF_P * a)
    a1, a2, a3, a4, a5 = _ERF_A
    poly = ((((a5 * t + a4) * t + a3) * t + a2) * t + a1) * t
    return sign * (1.0 - poly * np.exp(-a * a))


def _softmax(x: Array) -> Array:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


def _elu(x: Array) -> Array:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def _selu(x: Array) -> Array:
    return _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0)))


def _sigmoid(x: Array) -> Array:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


ACTIVATIONS: dict[str, Callable[[Array], Array] | None] = {
    "linear": None,
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "elu": _elu,
    "selu": _selu,
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x * _SQRT1_2)),
    "swish": lambda x: x * _sigmoid(x),
    "softplus": lambda x: np.logaddexp(0.0, x),
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "softmax": _softmax,
}

_DTYPES = {"float32": np.dtype("<f4")}
# Config keys that only matter for training; any other key we do not know is refused.
_DENSE_KEYS = {
    "name",
    "trainable",
    "dtype",
    "units",
    "activation",
    "use_bias",
    "kernel_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "bias_regularizer",
    "activity_regularizer",
    "kernel_constraint",
    "bias_constraint",
    "batch_input_shape",
    "input_dim",
}


@dataclass(frozen=True)
class Layer:
    name: str
    kernel: Array | None  # (in, out) float64, or None for a pure activation
    bias: Array | None  # (out,) float64
    activation: str

    @property
    def units(self) -> int | None:
        return None if self.kernel is None else int(self.kernel.shape[1])


class TfjsModel:
    """A parsed model: ``predict(x)`` maps raw inputs (n, n_inputs) to outputs (n, n_outputs)."""

    def __init__(self, layers: list[Layer], n_inputs: int, n_outputs: int) -> None:
        self.layers = tuple(layers)
        self.n_inputs = n_inputs
        self.n_outputs = n_outputs
        # Precomputed (kernel, bias, activation fn) triples: nothing is looked up per request.
        self._steps = tuple((layer.kernel, layer.bias, ACTIVATIONS[layer.activation]) for layer in layers)

    def predict(self, x: Array) -> Array:
        h = np.asarray(x, dtype=np.float64)
        if h.ndim != 2 or h.shape[1] != self.n_inputs:
            raise ValueError(f"expected inputs of shape (n, {self.n_inputs}), got {h.shape}")
        for kernel, bias, fn in self._steps:
            if kernel is not None:
                h = h @ kernel
                if bias is not None:
                    h += bias
            if fn is not None:
                h = fn(h)
        return h


def parse(model_json: Mapping[str, Any], read: ReadFn) -> TfjsModel:
    """Build a model from a parsed ``model.json``; ``read(path)`` returns a shard's bytes."""
    if model_json.get("format", "layers-model") != "layers-model":
        raise UnsupportedModel(f"model format {model_json.get('format')!r} is not a layers-model")
    layer_specs = _chain(_model_config(model_json))
    weights = _read_weights(model_json.get("weightsManifest"), read)
    used: set[str] = set()
    layers: list[Layer] = []
    n_inputs: int | None = None
    width: int | None = None
    for spec in layer_specs:
        cls, config = spec.get("class_name"), spec.get("config") or {}
        name = str(config.get("name", cls))
        _check_dtype(name, config.get("dtype", "float32"))
        if cls == "InputLayer":
            shape = config.get("batch_input_shape") or config.get("batch_shape")
            if not isinstance(shape, list) or len(shape) != 2 or not isinstance(shape[1], int):
                raise UnsupportedModel(f"input layer {name}: expected a [batch, features] shape, got {shape}")
            n_inputs = width = shape[1]
        elif cls == "Dense":
            unknown = set(config) - _DENSE_KEYS
            if unknown:
                raise UnsupportedModel(f"Dense layer {name}: unsupported config {sorted(unknown)}")
            if width is None:
                shape = config.get("batch_input_shape")
                if not isinstance(shape, list) or len(shape) != 2:
                    raise UnsupportedModel(f"Dense layer {name}: input shape unknown")
                n_inputs = width = int(shape[1])
            units = int(config["units"])
            kernel = _take(weights, used, name, "kernel", (width, units))
            bias = _take(weights, used, name, "bias", (units,)) if config.get("use_bias", True) else None
            layers.append(Layer(name, kernel, bias, _activation(name, config.get("activation"))))
            width = units
        elif cls == "Dropout":
            continue  # identity at inference
        elif cls == "Activation":
            layers.append(Layer(name, None, None, _activation(name, config.get("activation"))))
        else:
            raise UnsupportedModel(f"layer {name}: layer type {cls!r} is not supported")
    if n_inputs is None or width is None or not layers:
        raise UnsupportedModel("model has no input shape or no layers")
    unused = set(weights) - used
    if unused:
        raise UnsupportedModel(f"weights not used by any supported layer: {sorted(unused)}")
    return TfjsModel(layers, n_inputs, width)


def _model_config(model_json: Mapping[str, Any]) -> Mapping[str, Any]:
    topology = model_json.get("modelTopology")
    if not isinstance(topology, Mapping):
        raise UnsupportedModel("model.json has no modelTopology")
    config = topology.get("model_config", topology)
    if not isinstance(config, Mapping) or "class_name" not in config:
        raise UnsupportedModel("modelTopology has no model_config")
    return config


def _chain(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The layers in execution order; a Functional model must be a single chain."""
    cls = config.get("class_name")
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, Mapping) else inner
    if not isinstance(layers, list):
        raise UnsupportedModel(f"{cls} model has no layer list")
    if cls == "Sequential":
        return layers
    if cls not in ("Functional", "Model"):
        raise UnsupportedModel(f"model class {cls!r} is not supported")
    assert isinstance(inner, Mapping)
    if len(inner.get("input_layers") or []) != 1 or len(inner.get("output_layers") or []) != 1:
        raise UnsupportedModel("only single-input, single-output models are supported")
    previous: str | None = None
    for layer in layers:
        nodes = layer.get("inbound_nodes") or []
        name = (layer.get("config") or {}).get("name")
        inbound = [entry[0] for node in nodes for entry in node]
        if (previous is None and inbound) or (previous is not None and inbound != [previous]):
            raise UnsupportedModel(f"layer {name}: only a chain of layers is supported, inputs {inbound}")
        previous = name
    if inner["output_layers"][0][0] != previous:
        raise UnsupportedModel("the output is not the last layer of the chain")
    return layers


def _check_dtype(name: str, dtype: Any) -> None:
    if dtype != "float32":
        raise UnsupportedModel(f"layer {name}: dtype {dtype!r} is not supported (float32 only)")


def _activation(layer: str, value: Any) -> str:
    if value is None:
        return "linear"
    if not isinstance(value, str) or value not in ACTIVATIONS:
        raise UnsupportedModel(
            f"layer {layer}: activation {value!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
        )
    return value


def _read_weights(manifest: Any, read: ReadFn) -> dict[str, Array]:
    if not isinstance(manifest, list):
        raise UnsupportedModel("model.json has no weightsManifest")
    out: dict[str, Array] = {}
    for group in manifest:
        data = b"".join(read(path) for path in group.get("paths", []))
        offset = 0
        for spec in group.get("weights", []):
            name, shape, dtype = spec.get("name"), spec.get("shape"), spec.get("dtype")
            if "quantization" in spec:
                raise UnsupportedModel(f"weight {name}: quantised weights are not supported")
            if dtype not in _DTYPES:
                raise UnsupportedModel(f"weight {name}: dtype {dtype!r} is not supported")
            size = int(np.prod(shape)) if shape else 1
            nbytes = size * _DTYPES[dtype].itemsize
            if offset + nbytes > len(data):
                raise UnsupportedModel(f"weight {name}: the shards are shorter than the manifest says")
            array = np.frombuffer(data, dtype=_DTYPES[dtype], count=size, offset=offset)
            out[name] = array.reshape(shape).astype(np.float64)
            offset += nbytes
        if offset != len(data):
            raise UnsupportedModel(f"weight group {group.get('paths')}: {len(data) - offset} bytes left over")
    return out


def _take(
    weights: Mapping[str, Array], used: set[str], layer: str, kind: str, shape: tuple[int, ...]
) -> Array:
    candidates = [k for k in weights if k == f"{layer}/{kind}" or k.endswith(f"/{layer}/{kind}")]
    if len(candidates) != 1:
        raise UnsupportedModel(f"layer {layer}: expected one {kind} weight, found {candidates}")
    array = weights[candidates[0]]
    if array.shape != shape:
        raise UnsupportedModel(f"layer {layer}: {kind} has shape {array.shape}, expected {shape}")
    used.add(candidates[0])
    return np.ascontiguousarray(array)
