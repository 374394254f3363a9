"""Handlers for testing the local cloud's Lambda emulation (never deployed)."""

from __future__ import annotations

import os
import time
from typing import Any


def echo(event: Any, context: Any) -> Any:
    """The event back, with what the runtime gave this invocation."""
    return {
        "event": event,
        "pid": os.getpid(),
        "remaining_ms": context.get_remaining_time_in_millis(),
        "function_name": context.function_name,
        "request_id": context.aws_request_id,
    }


def environment(event: Any, context: Any) -> dict[str, str]:
    return dict(os.environ)


def sleep(event: Any, context: Any) -> dict[str, Any]:
    started = time.time()
    time.sleep(float(event.get("seconds", 1)))
    return {"pid": os.getpid(), "started": started, "ended": time.time()}


def fail(event: Any, context: Any) -> None:
    raise ValueError(f"failing on purpose: {event.get('why', 'test')}")


def big(event: Any, context: Any) -> str:
    return "x" * int(event["bytes"])


def unserializable(event: Any, context: Any) -> Any:
    return {"when": object()}
