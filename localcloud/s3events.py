"""S3 event notifications to Lambda: what S3 does when an object is created in a bucket whose
``NotificationConfiguration`` names a function. moto's server never delivers them.

Two halves, one per process:

- :class:`CreatedLog`, in the gate (moto's process): every object-creating call that succeeded
  (PutObject, a browser POST upload, CopyObject, CompleteMultipartUpload) is appended with the
  event name S3 gives it (``ObjectCreated:Put``, ``:Post``, ``:Copy``,
  ``:CompleteMultipartUpload``), the object's size and ETag read from moto, and a sequence
  number. With durable state the line is written to ``s3-created.jsonl`` beside the journal and
  handed to the operating system *before* the client gets its answer, as the journal's are, so
  an acknowledged upload's event survives a crash. The gate serves the log at
  ``GET /localcloud-api/s3-created?after=N``.
- :class:`S3EventDriver`, in the local cloud: reads each bucket's
  ``NotificationConfiguration.LambdaConfigurations`` from the resolved template (event type,
  ``prefix``/``suffix`` filter rules, target function), polls the log a few times a second and
  invokes each matching function asynchronously with S3's event (:func:`s3_event`), only if an
  ``AWS::Lambda::Permission`` lets ``s3.amazonaws.com`` invoke it for that bucket (otherwise it
  says why, once: S3 cannot invoke a function that does not allow it). A function error is
  retried twice as Lambda's asynchronous invocation does (``Context.invoke_async``). With
  durable state its position in the log is kept in ``s3-event-positions.json`` and written
  after each record is handed over, so after a restart every record not yet handed over is
  delivered, and at most the one in flight at the crash is delivered twice: S3's notifications
  "are designed to be delivered at least once" ("Amazon S3 Event Notifications",
  https://docs.aws.amazon.com/AmazonS3/latest/userguide/NotificationHowTo.html).

The event follows "Event message structure"
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html):
``eventVersion`` 2.1, the object key URL-encoded as S3 does it (a space becomes ``+``), the ETag
without quotes, a hexadecimal ``sequencer`` that grows with each event for a key. Locally, the
``configurationId`` (CloudFormation's LambdaConfiguration has no Id, so S3 generates one) is a
stable name derived from the bucket and the configuration's position; ``principalId`` values
are the caller's ARN and the account, not AWS's opaque ids.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import json
import os
import threading
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localcloud import infra
from localcloud.alarms import _function_logical_id, lambda_permitted
from localcloud.driver import Context

S3_PRINCIPAL = "s3.amazonaws.com"
LOG_PATH = "/localcloud-api/s3-created"
LOG_FILE = "s3-created.jsonl"
POSITIONS_FILE = "s3-event-positions.json"
# The API operations that create an object, and the event name S3 gives each ("Supported event
# types": https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-how-to-event-types-and-destinations.html).
EVENT_NAMES = {
    "PutObject": "ObjectCreated:Put",
    "PostObject": "ObjectCreated:Post",
    "CopyObject": "ObjectCreated:Copy",
    "CompleteMultipartUpload": "ObjectCreated:CompleteMultipartUpload",
}
# Records kept in memory (and in the file after a restart): far more than a poll ever lags by.
KEPT = 10_000


# --- the gate's half --------------------------------------------------------------------------


class CreatedLog:
    """The objects created through the gate, in order; durable when given a file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):  # a line cut short by a crash was never answered
                    self.records.append(json.loads(line))
            del self.records[:-KEPT]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")
            tmp.replace(path)
        self._next = (self.records[-1]["seq"] + 1) if self.records else 1
        self._file = path.open("a", encoding="utf-8") if path is not None else None

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            record = {**record, "seq": self._next}
            self._next += 1
            self.records.append(record)
            del self.records[:-KEPT]
            if self._file is not None:
                self._file.write(json.dumps(record) + "\n")
                self._file.flush()  # handed to the OS before the client is answered
            return record

    def after(self, seq: int) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.records if r["seq"] > seq]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --- the event ----------------------------------------------------------------------------------


def encode_key(key: str) -> str:
    """The object key as S3 writes it in an event: URL-encoded, a space as ``+`` (the event
    message structure: "The object key name value is URL encoded. For example, 'red flower.jpg'
    becomes 'red+flower.jpg'"); "/" is kept, as in S3's events."""
    return urllib.parse.quote_plus(key, safe="/")


def s3_event(record: dict[str, Any], *, region: str, account: str, configuration_id: str) -> dict[str, Any]:
    """S3's notification for one created object (a one-record ``Records`` list, as S3 sends)."""
    obj: dict[str, Any] = {
        "key": encode_key(record["key"]),
        "size": record["size"],
        "eTag": record["etag"],
        "sequencer": f"{record['seq']:018X}",
    }
    if record.get("versionId"):
        obj["versionId"] = record["versionId"]
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": region,
                "eventTime": record["eventTime"],
                "eventName": record["eventName"],
                "userIdentity": {"principalId": record.get("principalId", f"AWS:{account}")},
                "requestParameters": {"sourceIPAddress": record.get("sourceIPAddress", "127.0.0.1")},
                "responseElements": {
                    "x-amz-request-id": record.get("requestId", ""),
                    "x-amz-id-2": record.get("hostId", ""),
                },
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": configuration_id,
                    "bucket": {
                        "name": record["bucket"],
                        "ownerIdentity": {"principalId": account},
                        "arn": f"arn:aws:s3:::{record['bucket']}",
                    },
                    "object": obj,
                },
            }
        ]
    }


def created_record(
    *, operation: str, bucket: str, key: str, size: int, etag: str, principal: str, source_ip: str
) -> dict[str, Any]:
    """What the gate logs for an object-creating call that succeeded."""
    now = datetime.now(tz=UTC)
    request_id = uuid.uuid4().hex[:16].upper()
    return {
        "bucket": bucket,
        "key": key,
        "eventName": EVENT_NAMES[operation],
        "size": size,
        "etag": etag.strip('"'),
        "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "principalId": principal,
        "sourceIPAddress": source_ip,
        "requestId": request_id,
        "hostId": base64.b64encode(request_id.encode()).decode(),
    }


# --- the template ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One LambdaConfiguration of a bucket."""

    bucket: str
    event: str  # "s3:ObjectCreated:*"
    prefix: str
    suffix: str
    function: str | None  # the function's name in serverless.yml; None if it names none
    target: str  # what the template names, for messages
    configuration_id: str

    def matches(self, record: dict[str, Any]) -> bool:
        key = str(record["key"])
        return (
            record["bucket"] == self.bucket
            and fnmatch.fnmatchcase(f"s3:{record['eventName']}", self.event)
            and key.startswith(self.prefix)
            and key.endswith(self.suffix)
        )


def routes(stack: infra.Stack) -> list[Route]:
    """The buckets' Lambda notifications, as the template declares them."""
    names = {_function_logical_id(fn.name): fn.name for fn in stack.functions()}
    out = []
    for logical, spec in stack.resources_of_type("AWS::S3::Bucket").items():
        config = (spec.get("Properties") or {}).get("NotificationConfiguration") or {}
        bucket = stack.physical.get(logical) or str(
            stack.resolve_intrinsics(spec["Properties"]["BucketName"])
        )
        for index, lambda_config in enumerate(config.get("LambdaConfigurations") or []):
            target = lambda_config["Function"]
            logical_fn = (
                (target.get("Fn::GetAtt") or [target.get("Ref")])[0] if isinstance(target, dict) else target
            )
            rules = ((lambda_config.get("Filter") or {}).get("S3Key") or {}).get("Rules") or []
            by_name = {str(r["Name"]).lower(): str(r["Value"]) for r in rules}
            digest = uuid.uuid5(uuid.NAMESPACE_URL, f"{bucket}#{index}")
            out.append(
                Route(
                    bucket=bucket,
                    event=str(lambda_config["Event"]),
                    prefix=by_name.get("prefix", ""),
                    suffix=by_name.get("suffix", ""),
                    function=names.get(str(logical_fn)),
                    target=str(logical_fn),
                    configuration_id=base64.b64encode(str(digest).encode()).decode().rstrip("="),
                )
            )
    return out


def s3_permitted(stack: infra.Stack, function: str, bucket: str) -> bool:
    """Whether an AWS::Lambda::Permission lets S3 invoke ``function`` for ``bucket`` (in this
    account, if it names one): the alarm driver's check with S3's principal and the bucket's ARN
    ("Granting permissions to publish event notification messages to a destination",
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/grant-destinations-permissions-to-s3.html)."""
    return lambda_permitted(stack, function, f"arn:aws:s3:::{bucket}", principal=S3_PRINCIPAL)


# --- the driver -----------------------------------------------------------------------------------


class Position:
    """The last log record handed over, kept in a file when the state is durable."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.seq = 0
        if path is not None and path.exists():
            self.seq = int(json.loads(path.read_text()).get("after", 0))

    def set(self, seq: int) -> None:
        self.seq = seq
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"after": seq}))
            os.replace(tmp, self.path)


class S3EventDriver:
    name = "s3events"

    def __init__(self, *, poll_s: float | None = None) -> None:
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._said: set[str] = set()
        self.delivered: list[tuple[str, dict[str, Any]]] = []  # (function, event) per attempt series

    def start(self, ctx: Context) -> None:
        self.ctx = ctx
        local = dict(ctx.settings.get("s3Events") or {})
        self.poll_s = self._poll_s if self._poll_s is not None else float(local.get("pollSeconds", 0.2))
        self.routes = routes(ctx.stack)
        ctx.state_dir.mkdir(parents=True, exist_ok=True)
        self.position = Position(ctx.state_dir / POSITIONS_FILE if ctx.durable else None)
        for route in self.routes:
            ctx.say(
                f"s3 events: {route.bucket} {route.event} prefix {route.prefix!r} suffix {route.suffix!r}"
                f" -> {route.function or route.target}"
            )
        if self.routes:
            self._thread = threading.Thread(target=self._loop, name="s3events", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception as err:  # noqa: BLE001 - a driver must keep going
                self.ctx.say(f"s3 events: {err!r}")

    def poll(self) -> int:
        """Hand over every record logged since the last one; returns how many were read."""
        url = f"{self.ctx.aws_endpoint}{LOG_PATH}?after={self.position.seq}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            records = json.loads(reply.read())["records"]
        for record in records:
            if self._stop.is_set():
                break
            for route in self.routes:
                if route.matches(record):
                    self._deliver(route, record)
            self.position.set(int(record["seq"]))
        return len(records)

    def _deliver(self, route: Route, record: dict[str, Any]) -> None:
        what = f"s3 event {record['eventName']} s3://{record['bucket']}/{record['key']}"
        if route.function is None:
            self._say_once(f"{what}: NOT DELIVERED: {route.target} is no function of serverless.yml")
            return
        if not s3_permitted(self.ctx.stack, route.function, route.bucket):
            self._say_once(
                f"s3 events: NOT DELIVERED to {route.function} for bucket {route.bucket}: no "
                f"AWS::Lambda::Permission lets {S3_PRINCIPAL} invoke it for arn:aws:s3:::{route.bucket}"
            )
            return
        event = s3_event(
            record,
            region=self.ctx.stack.region,
            account=self.ctx.stack.account,
            configuration_id=route.configuration_id,
        )
        self.delivered.append((route.function, event))
        self.ctx.invoke_async(route.function, event, what)

    def _say_once(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            self.ctx.say(line)


def driver() -> S3EventDriver:
    return S3EventDriver()
