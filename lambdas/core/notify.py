"""Notifications: one JSON message on the SNS topic per run outcome and per manual change of latest.

Message (the SNS ``Message``, also sent as the ``type`` and ``status`` message attributes so
subscriptions can filter)::

    {"type": "run_outcome" | "run_retry" | "latest_changed", "version", "status", "previous",
     "reason", "actor", "metrics": {...}, "at"}

A failed or interrupted ``run_outcome`` also says why (``failure_kind``: ``infrastructure``,
retried, or ``data``, not retried) and, when the train trigger ended the run itself, its
``retry`` plan (``attempt``, ``of``, ``next_at``, ``gave_up``). For a run the trainer ended,
the trigger announces the plan in a ``run_retry`` message (status ``retry_scheduled`` or
``retries_exhausted``).

A ``run_outcome`` of a run the train trigger started also says why it started (``trigger``: its
``rule``, ``count``, ``quality`` or ``drift``, with the rule's figures; the run item's ``trigger``).

The topic comes from ``NOTIFY_TOPIC_ARN``. Without it nothing is sent (one log line says so):
a laptop run needs no topic. A failed publish is logged and never fails the caller: the run
or the change of latest already happened and is recorded in the model table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lambdas.core import aws, log, settings
from lambdas.core.registry import now_iso

RUN_OUTCOME = "run_outcome"
RUN_RETRY = "run_retry"
LATEST_CHANGED = "latest_changed"


@dataclass(frozen=True)
class NotifySettings:
    topic_arn: str | None

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> NotifySettings:
        env = settings.environ() if env is None else env
        return cls(topic_arn=settings.optional(env, "NOTIFY_TOPIC_ARN", "") or None)


def message(
    kind: str,
    *,
    version: str | None,
    status: str | None,
    previous: str | None = None,
    reason: str | None = None,
    actor: str | None = None,
    metrics: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": kind,
        "version": version,
        "status": status,
        "previous": previous,
        "reason": reason,
        "actor": actor,
        "metrics": metrics or {},
        "at": now_iso(),
        **extra,
    }


def publish(body: dict[str, Any], *, cfg: NotifySettings | None = None, client: Any = None) -> bool:
    """Send ``body`` to the topic. True when sent; False when no topic is set or SNS failed."""
    cfg = cfg or NotifySettings.from_env()
    if cfg.topic_arn is None:
        log.log("notification_skipped", reason="NOTIFY_TOPIC_ARN is not set", **_summary(body))
        return False
    attributes = {
        name: {"DataType": "String", "StringValue": str(body[name])}
        for name in ("type", "status")
        if body.get(name)
    }
    try:
        sent = (client or aws.client("sns")).publish(
            TopicArn=cfg.topic_arn,
            Subject=_subject(body),
            Message=json.dumps(body, default=str, separators=(",", ":")),
            MessageAttributes=attributes,
        )
    except Exception as err:  # noqa: BLE001 - a notification must never undo or fail the change
        log.error("notification_failed", error=f"{type(err).__name__}: {err}", **_summary(body))
        return False
    log.log("notification_sent", message_id=sent.get("MessageId"), **_summary(body))
    return True


def run_outcome(
    version: str,
    status: str,
    *,
    previous: str | None,
    reason: str | None,
    metrics: dict[str, Any] | None = None,
    actor: str = "trainer",
    cfg: NotifySettings | None = None,
    client: Any = None,
    failure_kind: str | None = None,
    retry: dict[str, Any] | None = None,
    trigger: dict[str, Any] | None = None,
) -> bool:
    """``trigger``: the rule that started the run and its figures (the run item's ``trigger``)."""
    extra = {
        k: v
        for k, v in (("failure_kind", failure_kind), ("retry", retry), ("trigger", trigger))
        if v is not None
    }
    body = message(
        RUN_OUTCOME,
        version=version,
        status=status,
        previous=previous,
        reason=reason,
        actor=actor,
        metrics=metrics,
        **extra,
    )
    return publish(body, cfg=cfg, client=client)


def run_retry(
    version: str, retry: dict[str, Any], *, cfg: NotifySettings | None = None, client: Any = None
) -> bool:
    """The train trigger's plan after an infrastructure failure (``lock.Retry.to_dict()``)."""
    gave_up = bool(retry.get("gave_up"))
    attempt, of, at = retry.get("attempt"), retry.get("of"), retry.get("next_at")
    body = message(
        RUN_RETRY,
        version=version,
        status="retries_exhausted" if gave_up else "retry_scheduled",
        reason=(
            f"infrastructure failure; {of} retries used, its samples are given up"
            if gave_up
            else f"infrastructure failure; retry {attempt} of {of} at {at}"
        ),
        actor="train-trigger",
        failure_kind="infrastructure",
        retry=retry,
    )
    return publish(body, cfg=cfg, client=client)


def latest_changed(change: dict[str, Any], *, cfg: NotifySettings | None = None, client: Any = None) -> bool:
    """``change`` is a history entry from ``Registry.promote/pin/unpin``."""
    body = message(
        LATEST_CHANGED,
        version=change.get("version"),
        status=change.get("action"),
        previous=change.get("previous"),
        reason=change.get("reason"),
        actor=change.get("actor"),
        pinned=change.get("pinned"),
        seq=change.get("seq"),
    )
    return publish(body, cfg=cfg, client=client)


def _subject(body: dict[str, Any]) -> str:
    # SNS subjects: ASCII, at most 100 characters.
    text = f"autoretrain {body.get('type')}: {body.get('version')} {body.get('status')}"
    return text.encode("ascii", "replace").decode()[:100]


def _summary(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body.get(k) for k in ("type", "version", "status")}
