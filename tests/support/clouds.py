"""Waiting on a running local cloud, as the end-to-end and integration tests do."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Synthetic traffic off, so each test knows its data.
QUIET = {"traffic": {"enabled": False}}

# API Gateway reads a private route's API key from this header; without a valid key it answers
# 403 ("Test usage plans for REST APIs in API Gateway", AWS API Gateway developer guide).
API_KEY_HEADER = "x-api-key"


def keyed(cloud: Any, headers: Mapping[str, str] | None = None, *, operator: bool = False) -> dict[str, str]:
    """``headers`` plus the API key of the local cloud's default client, without which API
    Gateway answers 403 on the private routes (POST /upload, POST /infer, /imports); with
    ``operator``, the operators' key, the only one the registry routes accept.
    ``cloud``: a LocalCloud or a ServingStack (``api_key``), or endpoints.json (``"api_key"``)."""
    name = "operator_api_key" if operator else "api_key"
    key = cloud[name] if isinstance(cloud, Mapping) else getattr(cloud, name)
    return {**(headers or {}), API_KEY_HEADER: key}


def wait(condition: Callable[[], Any], seconds: float = 60, what: str = "") -> Any:
    """``condition()``'s first truthy value, polled every 0.3 s; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.3)


def narrator(said: list[str] | None = None) -> Callable[[str], None]:
    """A ``say`` for a local cloud under test: every line is printed (pytest shows it only for a
    failed test, so a run that stalls in CI tells its story) and kept in ``said``."""

    def say(line: str) -> None:
        if said is not None:
            said.append(line)
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    return say


def print_function_log(path: Path, lines: int = 120) -> None:
    """The last ``lines`` records the functions logged above DEBUG, for a failed test's report."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            level = json.loads(line).get("level") if line.startswith("{") else None
        except ValueError:
            level = None
        if level != "DEBUG":
            kept.append(line[:600])
    print(f"--- last {min(lines, len(kept))} lines of {path.name} ---")
    print("\n".join(kept[-lines:]))
