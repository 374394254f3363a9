"""The local cloud's Lambda: a process per execution environment, kept warm, its own
environment only, its timeout enforced, concurrency up to a limit, Lambda's payload limits."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from localcloud.functions import (
    MAX_SYNC_PAYLOAD_BYTES,
    FunctionError,
    FunctionPool,
    FunctionSpec,
    FunctionTimeout,
    PayloadTooLarge,
)
from localcloud.infra import ROOT

pytestmark = pytest.mark.slow


def spec(handler: str, *, timeout_s: float = 5.0, max_concurrency: int = 4, **env: str) -> FunctionSpec:
    return FunctionSpec(
        name="probe",
        function_name="autoretrain-test-probe",
        handler=f"tests/support/handlers.{handler}",
        environment={
            "_HANDLER": f"tests/support/handlers.{handler}",
            "AWS_LAMBDA_FUNCTION_NAME": "autoretrain-test-probe",
            "AWS_REGION": "us-east-1",
            "PYTHONPATH": str(ROOT),
            "PATH": os.path.dirname(sys.executable),
            **env,
        },
        timeout_s=timeout_s,
        memory_mb=128,
        max_concurrency=max_concurrency,
    )


@pytest.fixture
def logs() -> list[str]:
    return []


@pytest.fixture
def pools(logs: list[str]) -> Iterator[list[FunctionPool]]:
    made: list[FunctionPool] = []
    yield made
    for pool in made:
        pool.stop()


def pool_of(pools: list[FunctionPool], logs: list[str], handler: str, **kwargs: Any) -> FunctionPool:
    pool = FunctionPool(spec(handler, **kwargs), lambda name, line: logs.append(line))
    pools.append(pool)
    return pool


def test_functions_run_in_their_own_warm_process(pools, logs) -> None:
    pool = pool_of(pools, logs, "echo")
    first = pool.invoke({"n": 1})
    second = pool.invoke({"n": 2})
    assert first["event"] == {"n": 1} and second["event"] == {"n": 2}
    assert first["pid"] != os.getpid()
    assert first["pid"] == second["pid"]  # warm: the same execution environment
    assert pool.cold_starts == 1
    assert first["function_name"] == "autoretrain-test-probe"
    assert first["request_id"] != second["request_id"]
    assert 0 < first["remaining_ms"] <= 5000


def test_functions_see_only_the_environment_they_are_given(pools, logs) -> None:
    os.environ["LOCALCLOUD_TEST_LEAK"] = "leaked"
    try:
        env = pool_of(pools, logs, "environment", DATA_TABLE="samples").invoke({})
    finally:
        del os.environ["LOCALCLOUD_TEST_LEAK"]
    assert env["DATA_TABLE"] == "samples"
    assert "LOCALCLOUD_TEST_LEAK" not in env
    assert "AWS_ACCESS_KEY_ID" not in env  # only what the spec gives, not the parent's keys


def test_function_timeout_fails_the_invocation_like_lambda_and_replaces_the_environment(pools, logs) -> None:
    pool = pool_of(pools, logs, "sleep", timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(FunctionTimeout, match=r"Task timed out after 1\.00 seconds"):
        pool.invoke({"seconds": 30})
    assert time.monotonic() - started < 15
    # the next invocation gets a new, working environment
    assert pool.invoke({"seconds": 0})["pid"] > 0
    assert pool.cold_starts == 2


def test_handler_exception_fails_that_invocation_only(pools, logs) -> None:
    pool = pool_of(pools, logs, "fail")
    with pytest.raises(FunctionError) as raised:
        pool.invoke({"why": "bad input"})
    assert raised.value.error_type == "ValueError"
    assert "failing on purpose: bad input" in raised.value.message
    deadline = time.monotonic() + 5  # the log is read by its own thread, the answer by another
    while not any("failing on purpose" in line for line in logs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any("failing on purpose" in line for line in logs)  # the error is in the function's log
    with pytest.raises(FunctionError):
        pool.invoke({})
    assert pool.cold_starts == 1


def test_unserializable_result_is_lambdas_marshal_error(pools, logs) -> None:
    with pytest.raises(FunctionError) as raised:
        pool_of(pools, logs, "unserializable").invoke({})
    assert raised.value.error_type == "Runtime.MarshalError"


def test_payloads_over_six_megabytes_are_refused_both_ways(pools, logs) -> None:
    pool = pool_of(pools, logs, "big")
    with pytest.raises(PayloadTooLarge, match="RequestEntityTooLarge"):
        pool.invoke({"bytes": 1, "padding": "x" * (MAX_SYNC_PAYLOAD_BYTES + 1)})
    assert len(pool.invoke({"bytes": 1000})) == 1000
    with pytest.raises(PayloadTooLarge, match="Response payload size exceeded"):
        pool.invoke({"bytes": MAX_SYNC_PAYLOAD_BYTES + 10})


def test_concurrency_grows_with_requests_up_to_the_limit(pools, logs) -> None:
    pool = pool_of(pools, logs, "sleep", max_concurrency=3)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(pool.invoke({"seconds": 1.0}))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(results) == 7  # nobody was refused: the excess waited for a free environment
    assert pool.peak_concurrency == 3
    assert len({r["pid"] for r in results}) == 3
    # at most 3 overlapped at any moment
    events = sorted([(r["started"], 1) for r in results] + [(r["ended"], -1) for r in results])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 3


def test_init_error_is_reported_as_lambdas_import_error(pools, logs) -> None:
    pool = FunctionPool(spec("missing_handler"), lambda name, line: logs.append(line))
    pools.append(pool)
    with pytest.raises(FunctionError) as raised:
        pool.invoke({})
    assert raised.value.error_type == "Runtime.ImportModuleError"
