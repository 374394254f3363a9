"""The single-flight lock's transitions, as pure functions."""

from __future__ import annotations

import pytest

from lambdas.core import lock

NOW = 1_800_000_000.0
POLICY = lock.RetryPolicy(retries=3, backoff_s=60)


def pending(*ids: str, at: int = 1) -> tuple[tuple[str, int], ...]:
    return tuple((i, at) for i in ids)


def test_lock_counts_each_sample_once() -> None:
    state = lock.add_samples(lock.LockState(), [("a", 1), ("b", 2), ("a", 1)], cap=10)
    assert lock.add_samples(state, [("b", 2), ("a", 1)], cap=10).pending_ids == ("a", "b")


def test_lock_ignores_samples_from_before_the_last_launch() -> None:
    state = lock.acquire(lock.add_samples(lock.LockState(), [("a", 1)], cap=5), "v1", NOW, 60)
    state, _ = lock.end_run(state, lock.RunEnd("v1"), NOW + 1, policy=POLICY, margin_ms=0)
    replayed = lock.add_samples(state, [("a", 1), ("new", int(NOW * 1000) + 1)], cap=5)
    assert replayed.pending_ids == ("new",)


def test_lock_caps_the_pending_set() -> None:
    assert lock.add_samples(lock.LockState(), [(str(i), 1) for i in range(100)], cap=3).pending == 3


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (
            lock.LockState(holder="v1", expires_at=NOW + 1, pending_samples=pending("a", "b")),
            "run v1 in flight",
        ),
        (lock.LockState(pending_samples=pending("a")), "1 new samples pending, 2 needed"),
        (
            lock.LockState(pending_samples=pending("a", "b"), last_launch_at=NOW - 10),
            "last launch 10s ago, 60s minimum",
        ),
        (
            lock.LockState(pending_samples=pending("a", "b"), failures=1, retry_at=NOW + 30, retry_from_ms=5),
            "retry 1 due in 30s",
        ),
    ],
)
def test_lock_says_why_it_does_not_launch(state: lock.LockState, reason: str) -> None:
    assert lock.why_not_launch(state, NOW, min_new=2, min_interval_s=60) == reason


def test_lock_launches_when_free_with_enough_data() -> None:
    state = lock.LockState(pending_samples=pending("a", "b"), last_launch_at=NOW - 61)
    assert lock.why_not_launch(state, NOW, min_new=2, min_interval_s=60) is None


def test_lock_expires() -> None:
    state = lock.acquire(lock.LockState(), "v1", NOW, 60)
    assert state.held(NOW + 59) and not state.expired(NOW + 59)
    assert state.expired(NOW + 60) and not state.held(NOW + 60)


def test_lock_release_by_another_version_changes_nothing() -> None:
    state = lock.acquire(lock.LockState(), "v1", NOW, 60)
    assert lock.release(state, "v0") == state
    assert lock.release(state, "v1").holder is None


def test_lock_undo_keeps_the_samples_gives_back_the_interval_and_plans_a_retry() -> None:
    before = lock.LockState(pending_samples=pending("a", "b", at=6), watermark_ms=5, last_launch_at=NOW - 100)
    during = lock.add_samples(lock.acquire(before, "v1", NOW, 60), [("c", int(NOW * 1000) + 1)], cap=5)
    undone, retry = lock.undo_acquire(during, "v1", before, NOW, POLICY)
    assert undone.holder is None and undone.pending_ids == ("a", "b", "c")
    assert undone.watermark_ms == 5 and undone.last_launch_at == NOW - 100
    assert retry == lock.Retry(attempt=1, of=3, next_at=NOW + 60) and undone.retry_at == NOW + 60


# a rule's request (the quality rule) --------------------------------------------------------

REQUEST = {"rule": "quality", "from_ms": int(NOW * 1000) - 60_000, "seen": 300, "correct": 150}


def test_lock_request_starts_a_run_without_enough_samples() -> None:
    state = lock.LockState(pending_samples=pending("a"), request=REQUEST)
    assert lock.why_not_launch(state, NOW, min_new=50, min_interval_s=60) is None
    assert lock.rule(state, 50) == "quality"
    assert lock.due(state, NOW, min_new=50, min_interval_s=60)  # the schedule starts it


def test_lock_request_still_waits_for_the_run_in_flight_the_interval_and_the_backoff() -> None:
    free = lock.LockState(request=REQUEST)
    held = lock.acquire(free, "v1", NOW - 1, 60)
    assert lock.why_not_launch(held, NOW, min_new=50, min_interval_s=0) == "run v1 in flight"
    recent = lock.LockState(request=REQUEST, last_launch_at=NOW - 100)  # evidence after that launch
    assert lock.why_not_launch(recent, NOW, min_new=50, min_interval_s=3600) == (
        "last launch 100s ago, 3600s minimum"
    )
    failed = lock.LockState(request=REQUEST, failures=1, retry_at=NOW + 30, retry_from_ms=5)
    assert lock.why_not_launch(failed, NOW, min_new=50, min_interval_s=0) == "retry 1 due in 30s"


def test_lock_request_with_evidence_older_than_the_last_launch_starts_nothing() -> None:
    answered = lock.LockState(request=REQUEST, last_launch_at=NOW - 10)  # launched after from_ms
    assert answered.wanted is None
    assert lock.why_not_launch(answered, NOW, min_new=50, min_interval_s=0) == (
        "0 new samples pending, 50 needed"
    )


def test_lock_count_rule_comes_first_and_the_launch_consumes_the_request() -> None:
    state = lock.LockState(pending_samples=pending("a", "b"), request=REQUEST)
    assert lock.rule(state, 2) == "count"
    assert lock.acquire(state, "v1", NOW, 60).request is None


def test_lock_undo_gives_the_request_back() -> None:
    before = lock.LockState(request=REQUEST)
    undone, _ = lock.undo_acquire(lock.acquire(before, "v1", NOW, 60), "v1", before, NOW, POLICY)
    assert undone.request == REQUEST and undone.wanted == REQUEST


def test_lock_request_about_a_version_no_longer_latest_is_outdated() -> None:
    state = lock.LockState(request={**REQUEST, "version": "v1"})
    assert lock.outdated(state, 50, "v1") is None
    assert lock.outdated(state, 50, "v2") == "the quality request judged v1, latest is now v2"
    assert lock.drop_request(state).wanted is None


def test_lock_count_started_run_is_never_outdated() -> None:
    state = lock.LockState(pending_samples=pending("a", "b"), request={**REQUEST, "version": "v1"})
    assert lock.outdated(state, 2, "v2") is None
