"""Notifications driver: what a person subscribed to the SNS topic would see.

Subscribes an SQS queue to each SNS topic serverless.yml declares (raw message delivery, so
the queue holds the JSON the publisher sent), drains it, prints one line per message and
appends each message as one JSON line to ``<state dir>/notifications.jsonl``, which the tests
and the demo read.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from localcloud.driver import Context

FILE_NAME = "notifications.jsonl"


def describe(message: dict[str, Any]) -> str:
    """One readable line: ``run_outcome v... published (previous v..., by gate): reason``."""
    parts = [str(message.get("type")), str(message.get("version")), str(message.get("status"))]
    extra = [f"previous {message['previous']}" if message.get("previous") else "no previous"]
    if message.get("actor"):
        extra.append(f"by {message['actor']}")
    if message.get("pinned") is not None:
        extra.append("pinned" if message["pinned"] else "not pinned")
    line = f"{' '.join(parts)} ({', '.join(extra)})"
    return f"{line}: {message['reason']}" if message.get("reason") else line


class NotificationsDriver:
    name = "notifications"

    def __init__(self, *, wait_s: int = 1) -> None:
        self.wait_s = wait_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.received: list[dict[str, Any]] = []

    @property
    def path(self) -> Path:
        return self.ctx.state_dir / FILE_NAME

    def start(self, ctx: Context) -> None:
        self.ctx = ctx
        self.sqs = ctx.client("sqs")
        sns = ctx.client("sns")
        name = f"{ctx.stack.config.get('service', 'service')}-{ctx.stack.stage}-localcloud-notifications"
        self.queue_url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.topics = []
        for spec in ctx.stack.resources_of_type("AWS::SNS::Topic").values():
            arn = sns.create_topic(Name=spec["Properties"]["TopicName"])["TopicArn"]  # idempotent
            sns.subscribe(
                TopicArn=arn,
                Protocol="sqs",
                Endpoint=queue_arn,
                Attributes={"RawMessageDelivery": "true"},
            )
            self.topics.append(arn)
        ctx.state_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name="notifications", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.drain(wait_s=self.wait_s)
            except Exception as err:  # noqa: BLE001 - a driver must keep going
                self.ctx.say(f"notifications: {err!r}")
                self._stop.wait(1)

    def drain(self, *, wait_s: int = 0) -> list[dict[str, Any]]:
        """Receive what is queued now (waiting up to ``wait_s``); print, store, delete each."""
        with self._lock:
            got = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s
            ).get("Messages", [])
            out = []
            for raw in got:
                message = _parse(raw["Body"])
                self.ctx.say(f"notification {describe(message)}")
                with self.path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(message, separators=(",", ":")) + "\n")
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=raw["ReceiptHandle"])
                out.append(message)
            self.received += out
            return out


def _parse(body: str) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except json.JSONDecodeError:
        return {"type": "unparsed", "body": body}
    # Without raw delivery SQS holds the SNS envelope; unwrap it either way.
    if isinstance(message, dict) and message.get("Type") == "Notification" and "Message" in message:
        return _parse(message["Message"])
    return message if isinstance(message, dict) else {"type": "unparsed", "body": body}


def driver() -> NotificationsDriver:
    return NotificationsDriver()
