"""Waiting on a running local cloud, as the end-to-end and integration tests do."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# Synthetic traffic off, so each test knows its data.
QUIET = {"traffic": {"enabled": False}}


def wait(condition: Callable[[], Any], seconds: float = 60, what: str = "") -> Any:
    """``condition()``'s first truthy value, polled every 0.3 s; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.3)
