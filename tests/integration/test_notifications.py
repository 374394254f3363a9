"""Notifications: one SNS message per run outcome and per manual change of latest, and the local
cloud driver that prints them and keeps them in .localcloud/notifications.jsonl."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from lambdas import promote
from lambdas.core import comfort, notify
from lambdas.core.registry import Registry, new_version
from localcloud import infra
from localcloud.driver import Context
from localcloud.notifications import FILE_NAME, NotificationsDriver, describe
from tests.conftest import subscribe_inbox
from tests.integration.test_trainer_outcomes import settings_for
from tests.integration.test_trainer_publish import write_samples
from tests.unit.test_trainer_imds import FakeImds
from trainer import run as trainer_run

SMALL = {"MIN_SAMPLES": "50", "EPOCHS": "5", "GATE_MIN_ACCURACY": "0", "IMDS_ENDPOINT": "http://127.0.0.1:9"}
KEYS = {"type", "version", "status", "previous", "reason", "actor", "metrics", "at"}


@pytest.fixture
def inbox(stack: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An SQS queue subscribed to the notifications topic; NOTIFY_TOPIC_ARN set for publishers."""
    topic = stack.physical["NotificationsTopic"]
    monkeypatch.setenv("NOTIFY_TOPIC_ARN", topic)
    monkeypatch.setenv("OPERATOR_API_KEY_ID", "k-ops")
    promote.reset()
    read = subscribe_inbox(topic)
    yield read
    promote.reset()


def route(method: str, resource: str, body: Any = None, version: str | None = None) -> int:
    out = promote.handler(
        {
            "httpMethod": method,
            "resource": resource,
            "pathParameters": {"version": version} if version else None,
            "body": None if body is None else json.dumps(body),
            "requestContext": {"identity": {"apiKeyId": "k-ops"}},
        }
    )
    return int(out["statusCode"])


def test_notification_for_a_failed_run(stack: Any, dynamodb: Any, s3: Any, inbox: Any) -> None:
    registry = Registry(stack.physical["ModelTable"], dynamodb)
    version = new_version()
    registry.create_run(version, instance_id="i-0abc")
    outcome = trainer_run.run(settings_for(stack, RUN_VERSION=version), ddb=dynamodb, s3=s3)
    assert outcome.status == "failed"
    (message,) = inbox()
    assert set(message) == KEYS | {"failure_kind"}
    assert message["failure_kind"] == "data"  # not enough data: not retried
    assert (message["type"], message["version"], message["status"]) == ("run_outcome", version, "failed")
    assert message["reason"] == "not enough data: 0 usable samples < MIN_SAMPLES 50"
    assert message["actor"] == "trainer"


def test_notification_says_which_rule_started_the_run(stack: Any, dynamodb: Any, s3: Any, inbox: Any) -> None:
    registry = Registry(stack.physical["ModelTable"], dynamodb)
    version = new_version()
    trigger = {"rule": "quality", "new_samples": 12, "quality": {"seen": 300, "correct": 180, "upper": 0.64}}
    registry.create_run(version, instance_id="i-0abc", trigger=trigger)
    trainer_run.run(settings_for(stack, RUN_VERSION=version), ddb=dynamodb, s3=s3)
    (message,) = inbox()
    assert message["trigger"] == trigger


@pytest.mark.slow
def test_notification_for_each_run_outcome_and_each_manual_change(
    stack: Any, dynamodb: Any, s3: Any, inbox: Any
) -> None:
    write_samples(dynamodb, stack.physical["DataTable"], comfort.generate(200, 3, 0.0))
    published = trainer_run.run(settings_for(stack, **SMALL), ddb=dynamodb, s3=s3)
    assert route("POST", "/models/pin", {"reason": "hold"}) == 200
    # Versions name the second they start in: the rejected run must sort after the published
    # one for promoting it to be a promote, not a rollback.
    time.sleep(1.01 - time.time() % 1.0)
    rejected = trainer_run.run(settings_for(stack, **SMALL, GATE_TOLERANCE="1"), ddb=dynamodb, s3=s3)
    assert route("POST", "/models/unpin") == 200
    with FakeImds(instance_id="i-0spot", notice_after=3) as imds:
        overrides = {**SMALL, "IMDS_ENDPOINT": imds.endpoint, "SPOT_POLL_SECONDS": "0.1"}
        overrides.update(EPOCHS="100000", PATIENCE="100000", BATCH_SIZE="8")
        interrupted = trainer_run.run(settings_for(stack, **overrides), ddb=dynamodb, s3=s3)
    assert route("POST", "/models/{version}/promote", {"force": True}, rejected.version) == 200
    assert route("POST", "/models/{version}/promote", {"reason": "back"}, published.version) == 200

    got = [(m["type"], m["version"], m["status"], m["previous"], m["actor"]) for m in inbox()]
    assert got == [
        ("run_outcome", published.version, "published", None, "gate"),
        ("latest_changed", published.version, "pin", published.version, "api-key:k-ops"),
        ("run_outcome", rejected.version, "rejected", published.version, "gate"),
        ("latest_changed", published.version, "unpin", published.version, "api-key:k-ops"),
        ("run_outcome", interrupted.version, "interrupted", None, "trainer"),
        ("latest_changed", rejected.version, "promote", published.version, "api-key:k-ops"),
        ("latest_changed", published.version, "rollback", rejected.version, "api-key:k-ops"),
    ]


@pytest.mark.slow
def test_notification_run_outcome_carries_metrics_and_reason(
    stack: Any, dynamodb: Any, s3: Any, inbox: Any
) -> None:
    write_samples(dynamodb, stack.physical["DataTable"], comfort.generate(200, 4, 0.0))
    outcome = trainer_run.run(settings_for(stack, **SMALL), ddb=dynamodb, s3=s3)
    (message,) = inbox()
    assert set(message) == KEYS
    assert message["reason"].startswith("first model: holdout accuracy")
    assert set(message["metrics"]) == {"train", "validation", "holdout"}
    run_item = Registry(stack.physical["ModelTable"], dynamodb).get_run(outcome.version)
    assert message["metrics"]["holdout"]["accuracy"] == run_item["metrics"]["holdout"]["accuracy"]


# the local cloud driver ---------------------------------------------------------------------


@pytest.fixture
def ctx(tmp_path: Path, moto_server: str) -> Any:
    said: list[str] = []
    context = Context(
        stack=infra.load(stage="test"),
        aws_endpoint=moto_server,
        api_url="http://127.0.0.1:1",
        state_dir=tmp_path / "state",
        invoke=lambda name, event: None,
        say=said.append,
    )
    context.said = said  # type: ignore[attr-defined]
    return context


def wait_for(check: Any, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    return check()


@pytest.mark.slow
def test_notifications_driver_prints_and_keeps_every_message(ctx: Any) -> None:
    driver = NotificationsDriver()
    driver.start(ctx)
    try:
        sns = ctx.client("sns")
        cfg = notify.NotifySettings(driver.topics[0])
        change = {
            "version": "v2",
            "action": "rollback",
            "previous": "v3",
            "reason": "drift",
            "actor": "cli:alice",
        }
        assert notify.run_outcome("v3", "rejected", previous="v2", reason="worse", cfg=cfg, client=sns)
        assert notify.latest_changed({**change, "pinned": True}, cfg=cfg, client=sns)
        path = ctx.state_dir / FILE_NAME
        lines = wait_for(
            lambda: path.is_file() and len(path.read_text().splitlines()) == 2 and path.read_text()
        )
    finally:
        driver.stop()
    kept = [json.loads(line) for line in lines.splitlines()]
    assert [(m["type"], m["version"], m["status"]) for m in kept] == [
        ("run_outcome", "v3", "rejected"),
        ("latest_changed", "v2", "rollback"),
    ]
    assert ctx.said == [
        "notification run_outcome v3 rejected (previous v2, by trainer): worse",
        "notification latest_changed v2 rollback (previous v3, by cli:alice, pinned): drift",
    ]


def test_notifications_describe_a_message_without_previous() -> None:
    line = describe(
        {"type": "run_outcome", "version": "v1", "status": "failed", "previous": None, "reason": "boom"}
    )
    assert line == "run_outcome v1 failed (no previous): boom"
