from __future__ import annotations

import pytest

from trainer.gate import PROMOTE, REJECT, decide


@pytest.mark.parametrize(
    ("candidate", "minimum", "expected"),
    [(0.80, 0.6, PROMOTE), (0.60, 0.6, PROMOTE), (0.59, 0.6, REJECT)],
)
def test_gate_first_model_needs_minimum_accuracy(candidate: float, minimum: float, expected: str) -> None:
    decision = decide(
        candidate, baseline_version=None, baseline_accuracy=None, tolerance=0.01, min_accuracy=minimum
    )
    assert decision.decision == expected
    assert decision.reason.startswith("first model")


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [(0.95, PROMOTE), (0.90, PROMOTE), (0.89, PROMOTE), (0.8799, REJECT), (0.5, REJECT)],
)
def test_gate_compares_with_baseline_within_tolerance(candidate: float, expected: str) -> None:
    decision = decide(
        candidate,
        baseline_version="v20261123T091432Z-1a2b",
        baseline_accuracy=0.90,
        tolerance=0.02,
        min_accuracy=0.99,
    )
    assert decision.decision == expected
    assert decision.baseline_version == "v20261123T091432Z-1a2b"
    assert decision.baseline_accuracy == 0.90
    assert decision.candidate_accuracy == candidate
    assert "v20261123T091432Z-1a2b" in decision.reason


def test_gate_rejects_empty_holdout() -> None:
    decision = decide(None, baseline_version=None, baseline_accuracy=None, tolerance=0.01, min_accuracy=0.0)
    assert decision.decision == REJECT
    assert "empty holdout" in decision.reason


@pytest.mark.slow
def test_load_check_tolerance_admits_float32_rounding_of_a_trained_size_model(tmp_path) -> None:
    # The folded first layer works on raw inputs, so Keras's float32 forward pass drifts from
    # the served float64 one as the weights grow: weights 10 times an initialisation's (a
    # model trained on 100,000 samples failed the former 1e-5) must still pass.
    import json

    import numpy as np

    from lambdas.core import comfort, tfjs_model
    from trainer import model as net
    from trainer.config import HyperParameters
    from trainer.export import save_tfjs
    from trainer.gate import LOAD_CHECK_TOLERANCE

    rows = comfort.generate(20_000, 3, 0.05)
    x = np.array([[r["temp"], r["rh"], r["wind"], r["clo"]] for r in rows], dtype=np.float32)
    trained = net.build_model(x.mean(axis=0), x.var(axis=0), HyperParameters(seed=5))
    for layer in trained.layers:
        if isinstance(layer, net.keras.layers.Dense):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel * 10, bias])
    served = net.fold_normalization(trained)
    version = "v20261130T000000Z-0000"
    save_tfjs(served, tmp_path / version, version)
    folder = tmp_path / version
    model = tfjs_model.parse(
        json.loads((folder / "model.json").read_text()),
        lambda path: (folder / path.split("/")[-1]).read_bytes(),
    )
    diff = float(np.abs(model.predict(x) - net.predict(served, x)).max())
    assert 1e-5 < diff <= LOAD_CHECK_TOLERANCE
