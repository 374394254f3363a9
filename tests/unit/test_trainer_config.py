from __future__ import annotations

import pytest

from lambdas.core.errors import ConfigError
from trainer.config import Settings

BASE = {"DATA_TABLE": "samples", "MODEL_TABLE": "models", "MODEL_BUCKET": "bucket"}


def test_settings_defaults_from_minimal_environment() -> None:
    settings = Settings.from_env(BASE)
    assert (settings.data_table, settings.model_table, settings.model_bucket) == (
        "samples",
        "models",
        "bucket",
    )
    assert settings.model_prefix == "models/"
    assert settings.run_version is None
    assert settings.hyper.hidden_units == (32, 16)
    assert settings.imds_endpoint == "http://169.254.169.254"
    assert settings.code_version == "unknown"


def test_settings_read_every_override() -> None:
    settings = Settings.from_env(
        {
            **BASE,
            "MODEL_PREFIX": "m",
            "RUN_VERSION": "v20261123T091432Z-1a2b",
            "EPOCHS": "5",
            "BATCH_SIZE": "16",
            "LEARNING_RATE": "0.003",
            "HIDDEN_UNITS": "8, 4",
            "ACTIVATION": "tanh",
            "SEED": "7",
            "MIN_SAMPLES": "50",
            "GATE_TOLERANCE": "0.02",
            "GATE_MIN_ACCURACY": "0.7",
            "GATE_RECENT_PERCENT": "20",
            "GATE_RECENT_MAX": "500",
            "GATE_RECENT_MIN": "50",
            "GATE_DRIFT_TOLERANCE": "0.08",
            "IMDS_ENDPOINT": "http://127.0.0.1:8000/",
            "SPOT_POLL_SECONDS": "0.5",
            "CODE_VERSION": "abc123",
        }
    )
    assert settings.model_prefix == "m/"
    assert settings.run_version == "v20261123T091432Z-1a2b"
    assert settings.hyper.epochs == 5 and settings.hyper.batch_size == 16
    assert settings.hyper.learning_rate == 0.003 and settings.hyper.seed == 7
    assert settings.hyper.hidden_units == (8, 4) and settings.hyper.activation == "tanh"
    assert settings.min_samples == 50
    assert (settings.gate_tolerance, settings.gate_min_accuracy) == (0.02, 0.7)
    assert (settings.gate_recent_percent, settings.gate_recent_max, settings.gate_recent_min) == (20, 500, 50)
    assert settings.gate_drift_tolerance == 0.08
    assert settings.imds_endpoint == "http://127.0.0.1:8000"
    assert settings.spot_poll_seconds == 0.5
    assert settings.code_version == "abc123"


@pytest.mark.parametrize("missing", ["DATA_TABLE", "MODEL_TABLE", "MODEL_BUCKET"])
def test_settings_missing_required_variable_is_named(missing: str) -> None:
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ConfigError, match=missing):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RUN_VERSION", "latest"),
        ("EPOCHS", "0"),
        ("EPOCHS", "ten"),
        ("HIDDEN_UNITS", "32,x"),
        ("HIDDEN_UNITS", "0"),
        ("ACTIVATION", "softmax"),
        ("MIN_SAMPLES", "3"),
        ("VALIDATION_FRACTION", "0.9"),
        ("HOLDOUT_PERCENT", "0"),
        ("LEARNING_RATE", "-1"),
        ("GATE_RECENT_PERCENT", "51"),
        ("GATE_RECENT_PERCENT", "-1"),
        ("GATE_RECENT_MAX", "-1"),
        ("GATE_RECENT_MIN", "10"),
        ("GATE_DRIFT_TOLERANCE", "-0.1"),
    ],
)
def test_settings_reject_bad_value(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({**BASE, name: value})
