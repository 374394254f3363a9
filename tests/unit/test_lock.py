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
