"""Configuration helpers: read and check environment variables once, fail loudly.

Each component defines a frozen dataclass with a ``from_env`` classmethod built from these
helpers. Variable names are declared once in ``infra/serverless.yml``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from lambdas.core.errors import ConfigError

Env = Mapping[str, str]


def required(env: Env, name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"environment variable {name} is required but not set")
    return value


def optional(env: Env, name: str, default: str) -> str:
    value = env.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def integer(env: Env, name: str, default: int, *, minimum: int | None = None) -> int:
    raw = optional(env, name, str(default))
    try:
        value = int(raw)
    except ValueError as err:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from err
    if minimum is not None and value < minimum:
        raise ConfigError(f"environment variable {name} must be >= {minimum}, got {value}")
    return value


def number(env: Env, name: str, default: float, *, minimum: float | None = None) -> float:
    raw = optional(env, name, str(default))
    try:
        value = float(raw)
    except ValueError as err:
        raise ConfigError(f"environment variable {name} must be a number, got {raw!r}") from err
    if minimum is not None and value < minimum:
        raise ConfigError(f"environment variable {name} must be >= {minimum}, got {value}")
    return value


def boolean(env: Env, name: str, default: bool) -> bool:
    raw = optional(env, name, "true" if default else "false").lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"environment variable {name} must be true or false, got {raw!r}")


def environ() -> Env:
    return os.environ
