"""Coalescing by what a run scanned, and retries of infrastructure failures: the pure rules."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

from lambdas import train
from lambdas.core import lock
from lambdas.core.errors import Unavailable
from lambdas.core.registry import DATA, INFRASTRUCTURE
from trainer import run as trainer_run

NOW = 1_800_000_000.0
LAUNCH_MS = int(NOW * 1000)
POLICY = lock.RetryPolicy(retries=3, backoff_s=60)


def running(*samples: tuple[str, int], failures: int = 0) -> lock.LockState:
    """A run launched at NOW holding the lock, with ``samples`` pending."""
    state = lock.add_samples(lock.LockState(failures=failures), samples, cap=10)
    return lock.acquire(state, "v1", NOW, 600)


def end(state: lock.LockState, at: float, **how: object) -> tuple[lock.LockState, lock.Retry | None]:
    return lock.end_run(state, lock.RunEnd("v1", **how), at, policy=POLICY, margin_ms=0)  # type: ignore[arg-type]


def test_retry_policy_backs_off_1_2_4_minutes_then_gives_up() -> None:
    plans = [lock.plan_retry(n, NOW, POLICY) for n in (1, 2, 3, 4)]
    assert [(p.attempt, p.of, p.next_at) for p in plans] == [
        (1, 3, NOW + 60),
        (2, 3, NOW + 120),
        (3, 3, NOW + 240),
        (3, 3, None),
    ]
    assert [p.gave_up for p in plans] == [False, False, False, True]
    assert plans[0].to_dict() == {"attempt": 1, "of": 3, "next_at": "2027-01-15T08:01:00Z", "gave_up": False}


def test_coalescing_samples_before_the_scan_are_consumed_later_ones_stay() -> None:
    burst = [(f"b{i}", LAUNCH_MS + 1000 + i) for i in range(3)]  # after the launch, before the scan
    after_scan = [("late", LAUNCH_MS + 9000)]
    state = lock.add_samples(running(("a", LAUNCH_MS - 5)), burst + after_scan, cap=10)
    ended, retry = end(state, NOW + 20, scan_started_ms=LAUNCH_MS + 5000)
    assert retry is None and ended.holder is None
    assert ended.pending_ids == ("late",) and ended.watermark_ms == LAUNCH_MS + 5000
    # the burst replayed afterwards is not new data
    assert lock.add_samples(ended, burst, cap=10).pending_ids == ("late",)


def test_coalescing_margin_counts_samples_just_before_the_scan_again() -> None:
    state = running(("edge", LAUNCH_MS + 4500), ("old", LAUNCH_MS - 1))
    ended, _ = lock.end_run(
        state, lock.RunEnd("v1", scan_started_ms=LAUNCH_MS + 5000), NOW, policy=POLICY, margin_ms=1000
    )
    assert ended.pending_ids == ("edge",) and ended.watermark_ms == LAUNCH_MS + 4000


def test_coalescing_without_a_scan_time_consumes_up_to_the_launch_as_before() -> None:
    ended, _ = end(running(("a", LAUNCH_MS - 1), ("b", LAUNCH_MS + 1)), NOW + 9)
    assert ended.pending_ids == ("b",) and ended.watermark_ms == LAUNCH_MS


def test_cap_keeps_the_newest_so_samples_after_the_scan_still_count() -> None:
    # The cap is full of samples the run will have seen; newer ones replace them.
    state = lock.add_samples(running(), [(f"seen{i}", LAUNCH_MS + i) for i in range(3)], cap=3)
    state = lock.add_samples(state, [(f"new{i}", LAUNCH_MS + 9000 + i) for i in range(3)], cap=3)
    ended, _ = end(state, NOW + 20, scan_started_ms=LAUNCH_MS + 5000)
    assert ended.pending_ids == ("new0", "new1", "new2")


def test_infrastructure_failure_keeps_the_samples_and_plans_a_retry() -> None:
    state = running(("a", LAUNCH_MS - 5), ("b", LAUNCH_MS - 4))
    ended, retry = end(state, NOW + 30, failure_kind=INFRASTRUCTURE, scan_started_ms=LAUNCH_MS + 5000)
    assert retry == lock.Retry(attempt=1, of=3, next_at=NOW + 90)
    assert ended.holder is None and ended.pending_ids == ("a", "b") and ended.watermark_ms == 0
    assert (ended.failures, ended.retry_at, ended.retry_from_ms) == (1, NOW + 90, LAUNCH_MS)
    assert lock.why_not_launch(ended, NOW + 89, min_new=2, min_interval_s=0) == "retry 1 due in 1s"
    assert lock.why_not_launch(ended, NOW + 90, min_new=2, min_interval_s=0) is None
    assert lock.due(ended, NOW + 90, min_new=2, min_interval_s=0)
    assert not lock.due(ended, NOW + 89, min_new=2, min_interval_s=0)


def test_infrastructure_failures_are_retried_at_most_n_times_then_given_up() -> None:
    state = lock.add_samples(lock.LockState(), [("a", 5), ("b", 6)], cap=10)
    plans = []
    now = NOW
    for _ in range(4):
        state = lock.acquire(state, "v1", now, 600)
        state, retry = lock.end_run(
            state, lock.RunEnd("v1", INFRASTRUCTURE), now + 10, policy=POLICY, margin_ms=0
        )
        assert retry is not None
        plans.append(retry)
        now = retry.next_at or now
    assert [p.attempt for p in plans] == [1, 2, 3, 3] and plans[-1].gave_up
    assert state.pending == 0 and state.failures == 0 and state.watermark_ms == int(now * 1000)
    assert (
        lock.why_not_launch(state, now + 999, min_new=2, min_interval_s=0)
        == "0 new samples pending, 2 needed"
    )


def test_data_failure_is_not_retried_and_consumes_what_it_scanned() -> None:
    state = running(("a", LAUNCH_MS - 5), ("b", LAUNCH_MS + 9000), failures=2)
    ended, retry = end(state, NOW + 30, failure_kind=DATA, scan_started_ms=LAUNCH_MS + 5000)
    assert retry is None and ended.pending_ids == ("b",)
    assert ended.failures == 0 and ended.retry_at == 0


def test_enough_fresh_data_does_not_wait_for_the_backoff() -> None:
    ended, _ = end(running(("a", LAUNCH_MS - 5)), NOW + 30, failure_kind=INFRASTRUCTURE)
    fresh = lock.add_samples(ended, [("n1", LAUNCH_MS + 1), ("n2", LAUNCH_MS + 2)], cap=10)
    assert lock.why_not_launch(fresh, NOW + 31, min_new=2, min_interval_s=0) is None


def test_a_late_or_repeated_end_changes_nothing() -> None:
    state = running(("a", 1))
    assert lock.end_run(state, lock.RunEnd("v0", INFRASTRUCTURE), NOW, policy=POLICY, margin_ms=0) == (
        state,
        None,
    )


def test_an_expired_lock_is_due_for_the_schedule() -> None:
    state = running(("a", 1))
    assert not lock.due(state, NOW + 599, min_new=1, min_interval_s=0)
    assert lock.due(state, NOW + 600, min_new=1, min_interval_s=0)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ({"status": "published", "scan_started_ms": 7}, lock.RunEnd("v1", None, 7)),
        ({"status": "failed", "failure_kind": "infrastructure"}, lock.RunEnd("v1", INFRASTRUCTURE)),
        ({"status": "failed", "failure_kind": "data", "scan_started_ms": 7}, lock.RunEnd("v1", DATA, 7)),
        # written by an older trainer: no failure_kind
        ({"status": "interrupted"}, lock.RunEnd("v1", INFRASTRUCTURE)),
        ({"status": "failed"}, lock.RunEnd("v1", DATA)),
    ],
)
def test_run_end_reads_the_final_run_item(image: dict[str, object], expected: lock.RunEnd) -> None:
    assert train.run_end({"version": "v1", **image}) == expected


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Scan")


@pytest.mark.parametrize(
    "err",
    [
        EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com"),
        ConnectTimeoutError(endpoint_url="https://s3.amazonaws.com"),
        ReadTimeoutError(endpoint_url="https://s3.amazonaws.com"),
        client_error("ProvisionedThroughputExceededException"),
        client_error("ThrottlingException"),
        client_error("SlowDown", 503),
        client_error("InternalServerError", 500),
    ],
)
def test_trainer_classifies_connection_timeout_and_throttling_as_infrastructure(err: Exception) -> None:
    assert trainer_run.failure_kind(err) == INFRASTRUCTURE


def test_trainer_classifies_a_wrapped_throttling_error_as_infrastructure() -> None:
    try:
        try:
            raise client_error("ThrottlingException")
        except ClientError as cause:
            raise Unavailable("could not read") from cause
    except Unavailable as err:
        assert trainer_run.failure_kind(err) == INFRASTRUCTURE


@pytest.mark.parametrize(
    "err",
    [
        client_error("NoSuchBucket", 404),
        client_error("ValidationException"),
        trainer_run.LoadCheckFailed("predictions differ"),
        ValueError("a bug"),
    ],
)
def test_trainer_classifies_data_and_code_failures_as_data(err: Exception) -> None:
    assert trainer_run.failure_kind(err) == DATA
