"""Asynchronous invocations on the local cloud retry a function error twice, then drop the event,
as Lambda does for EventBridge events and alarm actions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from localcloud.driver import Context


def context(outcomes: list[Exception | None], said: list[str]) -> tuple[Context, list[str]]:
    calls: list[str] = []

    def invoke(function: str, event: dict[str, Any]) -> Any:
        calls.append(function)
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return {}

    ctx = Context(
        stack=None,  # type: ignore[arg-type]
        aws_endpoint="",
        api_url="",
        state_dir=Path("."),
        invoke=invoke,
        say=said.append,
        settings={"asyncInvoke": {"retryDelaysSeconds": [0, 0]}},
    )
    return ctx, calls


def test_async_invoke_retries_a_function_error() -> None:
    said: list[str] = []
    ctx, calls = context([RuntimeError("timed out"), None], said)
    assert ctx.invoke_async("train", {}, "alarm a") is True
    assert calls == ["train", "train"]
    assert said == ["alarm a: train failed (attempt 1): RuntimeError('timed out'); retried in 0 s"]


def test_async_invoke_drops_the_event_after_three_attempts() -> None:
    said: list[str] = []
    ctx, calls = context([RuntimeError("boom")] * 3, said)
    assert ctx.invoke_async("train", {}, "instances: i-1 terminated") is False
    assert calls == ["train"] * 3
    assert said[-1] == "instances: i-1 terminated: train failed (attempt 3): RuntimeError('boom'); dropped"
