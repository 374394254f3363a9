"""The trainer's settings, read from the environment once and checked up front.

The container, the local cloud and a laptop all configure the trainer the same way; every
variable is listed (with its default) in trainer/README.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lambdas.core import settings
from lambdas.core.errors import ConfigError
from lambdas.core.registry import is_version

ACTIVATIONS = ("relu", "tanh", "elu", "selu", "sigmoid")


@dataclass(frozen=True)
class HyperParameters:
    """The fit's settings. Its cost is bounded (trainer/README.md, "Scaling"): at most
    ``step_budget`` gradient steps (or one epoch, past ~20 million training samples) and
    ``fit_budget_s`` seconds (checked between epochs). ``batch_size``
    None: chosen for the data (32 up to about 10,000 training samples, then growing with the
    data up to MAX_BATCH), the learning rate scaled with it."""

    epochs: int = 100
    batch_size: int | None = None
    learning_rate: float = 0.003
    hidden_units: tuple[int, ...] = (32, 16)
    activation: str = "tanh"
    patience: int = 20
    validation_fraction: float = 0.15
    seed: int = 42
    step_budget: int = 20_000
    fit_budget_s: float = 900.0
    # Validation is evaluated after every epoch: past this many samples it only costs time.
    validation_max: int = 20_000

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden_units"] = list(self.hidden_units)
        return data


@dataclass(frozen=True)
class Settings:
    data_table: str
    model_table: str
    model_bucket: str
    model_prefix: str = "models/"
    run_version: str | None = None
    hyper: HyperParameters = HyperParameters()
    min_samples: int = 200
    holdout_percent: int = 10
    gate_tolerance: float = 0.01
    gate_min_accuracy: float = 0.6
    # Fewer trusted holdout samples than this: the run is rejected, whatever its accuracy
    # (trainer/README.md, "Holdout and trust").
    gate_holdout_min: int = 10
    # The holdout key's secret (Secrets Manager ARN or name): the holdout is chosen by
    # HMAC-SHA256 under it. None (a laptop run): the public sha256 of the id, recorded as unkeyed.
    holdout_key_secret: str | None = None
    # The gate's recent window (trainer/README.md, "Gate"): the samples that arrived after
    # latest's training data whose id is in the holdout or in the next GATE_RECENT_PERCENT %,
    # the newest GATE_RECENT_MAX of them (0: no window); judged from GATE_RECENT_MIN samples; a
    # candidate significantly better on it may lose GATE_DRIFT_TOLERANCE on the holdout.
    gate_recent_percent: int = 10
    gate_recent_max: int = 2000
    gate_recent_min: int = 100
    gate_drift_tolerance: float = 0.05
    # The drift rule's reference (lambdas/core/drift.py): the newest DRIFT_REFERENCE_MAX samples
    # of the snapshot, so after the world moves it follows within that many new samples.
    drift_reference_max: int = 1000
    scan_segments: int | None = None  # None: chosen from the table's size (trainer.data)
    imds_endpoint: str = "http://169.254.169.254"
    imds_timeout: float = 1.0
    spot_poll_seconds: float = 5.0
    code_version: str = "unknown"
    # The idle alarm's period (trainer/heartbeat.py beats three times per period); 0 turns the
    # heartbeat off (a laptop run has no instance to keep alive).
    heartbeat_period_s: float = 0.0
    # The instance's limit on the trainer's container (the user-data's `timeout`): the fit's
    # time budget ends early enough for the rest of the run (trainer.run.PUBLISH_RESERVE_S). 0: none.
    time_limit_s: float = 0.0

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> Settings:
        env = settings.environ() if env is None else env
        prefix = settings.optional(env, "MODEL_PREFIX", "models/")
        run_version = settings.optional(env, "RUN_VERSION", "") or None
        if run_version is not None and not is_version(run_version):
            raise ConfigError(f"environment variable RUN_VERSION is not a model version: {run_version!r}")
        activation = settings.optional(env, "ACTIVATION", "tanh")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"environment variable ACTIVATION must be one of {', '.join(ACTIVATIONS)}")
        validation_fraction = settings.number(env, "VALIDATION_FRACTION", 0.15, minimum=0.05)
        if validation_fraction > 0.5:
            raise ConfigError("environment variable VALIDATION_FRACTION must be <= 0.5")
        holdout_percent = settings.integer(env, "HOLDOUT_PERCENT", 10, minimum=1)
        if holdout_percent > 50:
            raise ConfigError("environment variable HOLDOUT_PERCENT must be <= 50")
        recent_percent = settings.integer(env, "GATE_RECENT_PERCENT", 10, minimum=0)
        if recent_percent > 50:
            raise ConfigError("environment variable GATE_RECENT_PERCENT must be <= 50")
        return cls(
            data_table=settings.required(env, "DATA_TABLE"),
            model_table=settings.required(env, "MODEL_TABLE"),
            model_bucket=settings.required(env, "MODEL_BUCKET"),
            model_prefix=prefix if prefix.endswith("/") else prefix + "/",
            run_version=run_version,
            hyper=HyperParameters(
                epochs=settings.integer(env, "EPOCHS", 100, minimum=1),
                batch_size=_auto_int(env, "BATCH_SIZE"),
                learning_rate=settings.number(env, "LEARNING_RATE", 0.003, minimum=1e-6),
                hidden_units=_units(settings.optional(env, "HIDDEN_UNITS", "32,16")),
                activation=activation,
                patience=settings.integer(env, "PATIENCE", 20, minimum=1),
                validation_fraction=validation_fraction,
                seed=settings.integer(env, "SEED", 42, minimum=0),
                step_budget=settings.integer(env, "STEP_BUDGET", 20_000, minimum=1),
                fit_budget_s=settings.number(env, "FIT_BUDGET_S", 900.0, minimum=1.0),
                validation_max=settings.integer(env, "VALIDATION_MAX", 20_000, minimum=1),
            ),
            min_samples=settings.integer(env, "MIN_SAMPLES", 200, minimum=20),
            holdout_percent=holdout_percent,
            gate_tolerance=settings.number(env, "GATE_TOLERANCE", 0.01, minimum=0.0),
            gate_min_accuracy=settings.number(env, "GATE_MIN_ACCURACY", 0.6, minimum=0.0),
            gate_holdout_min=settings.integer(env, "GATE_HOLDOUT_MIN", 10, minimum=1),
            holdout_key_secret=settings.optional(env, "HOLDOUT_KEY_SECRET", "") or None,
            gate_recent_percent=recent_percent,
            gate_recent_max=settings.integer(env, "GATE_RECENT_MAX", 2000, minimum=0),
            drift_reference_max=settings.integer(env, "DRIFT_REFERENCE_MAX", 1000, minimum=200),
            gate_recent_min=settings.integer(env, "GATE_RECENT_MIN", 100, minimum=30),
            gate_drift_tolerance=settings.number(env, "GATE_DRIFT_TOLERANCE", 0.05, minimum=0.0),
            scan_segments=_auto_int(env, "SCAN_SEGMENTS"),
            imds_endpoint=settings.optional(env, "IMDS_ENDPOINT", "http://169.254.169.254").rstrip("/"),
            imds_timeout=settings.number(env, "IMDS_TIMEOUT", 1.0, minimum=0.05),
            spot_poll_seconds=settings.number(env, "SPOT_POLL_SECONDS", 5.0, minimum=0.05),
            code_version=settings.optional(env, "CODE_VERSION", "unknown"),
            heartbeat_period_s=settings.number(env, "HEARTBEAT_PERIOD_S", 0.0, minimum=0.0),
            time_limit_s=settings.number(env, "TRAIN_TIME_LIMIT_S", 0.0, minimum=0.0),
        )


def _auto_int(env: settings.Env, name: str) -> int | None:
    """A positive integer, or None for "auto" (the default)."""
    if settings.optional(env, name, "auto").strip().lower() == "auto":
        return None
    return settings.integer(env, name, 1, minimum=1)


def _units(raw: str) -> tuple[int, ...]:
    try:
        units = tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError as err:
        message = f"environment variable HIDDEN_UNITS must be integers like '32,16', got {raw!r}"
        raise ConfigError(message) from err
    if not units or any(u < 1 for u in units):
        raise ConfigError(f"environment variable HIDDEN_UNITS must be positive integers, got {raw!r}")
    return units
