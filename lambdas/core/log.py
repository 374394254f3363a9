"""Structured logging: one JSON line per event."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_LOGGER = logging.getLogger("autoretrain")


def _configure() -> None:
    if _LOGGER.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    _LOGGER.addHandler(handler)
    _LOGGER.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    _LOGGER.propagate = False


def log(event: str, level: int = logging.INFO, /, **fields: Any) -> None:
    """Write ``{"ts", "level", "event", **fields}`` as one JSON line."""
    _configure()
    if not _LOGGER.isEnabledFor(level):
        return
    record = {"ts": round(time.time(), 3), "level": logging.getLevelName(level), "event": event}
    record.update(fields)
    _LOGGER.log(level, json.dumps(record, default=str, separators=(",", ":")))


def warning(event: str, **fields: Any) -> None:
    log(event, logging.WARNING, **fields)


def error(event: str, **fields: Any) -> None:
    log(event, logging.ERROR, **fields)
