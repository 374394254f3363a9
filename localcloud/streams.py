"""Stream poller: what a Lambda event source mapping does with a DynamoDB stream, on this machine.

For every ``stream`` event of type dynamodb in serverless.yml, one thread reads the stream from
moto's server (describe_stream -> shards -> get_shard_iterator -> get_records) and hands batches
to the function through ``ctx.invoke``, honouring the event's settings:

- ``batchSize`` and ``batchWindow`` (the window in local seconds from custom.localCloud.streams);
- ``filterPatterns`` (exact-value lists over nested keys; other operators fail at start);
- ``functionResponseType: ReportBatchItemFailures``: retry from the lowest failed sequence number;
- ``bisectBatchOnFunctionError``: a batch whose invocation raised is split in two and retried
  (splitting does not count as a retry, as on AWS);
- ``maximumRetryAttempts`` and ``maximumRecordAgeInSeconds``: what gives up goes to the
  ``destinations.onFailure`` queue or topic, in AWS's on-failure record format, and the shard
  moves on.

``redeliver`` (custom.localCloud.streams, or ``LOCALCLOUD_STREAM_REDELIVER``) hands every
successful batch to the function that many times in total: AWS delivers at least once, and
this makes the duplicates visible.

No event source mapping is ever created in moto: moto's own mapping empties the stream for
every other reader.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localcloud.driver import Context

POSITIONS_FILE = "stream-positions.json"
REDELIVER_ENV = "LOCALCLOUD_STREAM_REDELIVER"
STARTING_POSITIONS = ("LATEST", "TRIM_HORIZON")
# Event keys this poller does not reproduce; silently ignoring them would make it lie.
UNSUPPORTED_KEYS = ("tumblingWindowInSeconds", "startingPositionTimestamp", "consumer")
SHARD_REFRESH_S = 2.0


class StreamConfigError(ValueError):
    """A stream event the local cloud cannot reproduce faithfully."""


# filter patterns ----------------------------------------------------------------------------


def check_pattern(pattern: Any, where: str) -> None:
    """Accept the subset of Lambda event filtering this poller implements: nested keys whose
    leaves are lists of exact values (strings, numbers, booleans, null)."""
    if not isinstance(pattern, dict) or not pattern:
        raise StreamConfigError(f"{where}: a filter pattern must be a non-empty mapping, got {pattern!r}")
    for key, value in pattern.items():
        path = f"{where}.{key}"
        if isinstance(value, dict):
            check_pattern(value, path)
        elif isinstance(value, list):
            if not value:
                raise StreamConfigError(f"{path}: an empty list matches nothing")
            for allowed in value:
                if isinstance(allowed, (dict, list)):
                    raise StreamConfigError(
                        f"{path}: filter operator {allowed!r} is not supported by the local cloud "
                        "(only lists of exact values are)"
                    )
        else:
            raise StreamConfigError(f"{path}: expected a list of values or a nested mapping, got {value!r}")


def matches(pattern: dict[str, Any], record: Any) -> bool:
    """Whether a record (as delivered) matches one pattern: every key must match; a list of
    values matches a scalar equal to one of them, or an array with any element among them."""
    if not isinstance(record, dict):
        return False
    for key, expected in pattern.items():
        if key not in record:
            return False
        actual = record[key]
        if isinstance(expected, dict):
            if not matches(expected, actual):
                return False
        else:
            candidates = actual if isinstance(actual, list) else [actual]
            if not any(_same(c, allowed) for c in candidates for allowed in expected):
                return False
    return True


def _same(actual: Any, allowed: Any) -> bool:
    # JSON semantics: true is not 1 and "1" is not 1, but 1 is 1.0.
    numbers = (int, float)
    if (
        isinstance(actual, numbers)
        and isinstance(allowed, numbers)
        and bool not in (type(actual), type(allowed))
    ):
        return bool(actual == allowed)
    return type(actual) is type(allowed) and bool(actual == allowed)


def matches_any(patterns: tuple[dict[str, Any], ...], record: dict[str, Any]) -> bool:
    return not patterns or any(matches(p, record) for p in patterns)


# sources ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One ``stream`` event of one function, resolved against the local stack."""

    function: str
    index: int  # position of the event in the function's events
    arn: str
    starting_position: str
    batch_size: int
    batch_window_s: float
    max_retries: int | None  # None: retry until the record expires, as AWS's -1
    max_age_s: float | None
    bisect: bool
    report_item_failures: bool
    patterns: tuple[dict[str, Any], ...]
    on_failure: tuple[str, str] | None  # (sqs|sns, arn)

    @property
    def table(self) -> str:
        return self.arn.split(":table/", 1)[-1].split("/", 1)[0]

    @property
    def label(self) -> str:
        return f"{self.table} -> {self.function}"


def sources(ctx: Context, *, batch_window_s: float | None = None) -> list[Source]:
    """Every enabled dynamodb ``stream`` event of the stack. ``batch_window_s`` (or
    custom.localCloud.streams.batchWindow) replaces a declared window, never lengthens it."""
    local = dict(ctx.settings.get("streams") or {})
    window_override = batch_window_s if batch_window_s is not None else local.get("batchWindow")
    out = []
    for fn in ctx.stack.functions():
        for index, event in enumerate(fn.events):
            if "stream" not in event:
                continue
            spec = event["stream"]
            spec = {"arn": spec} if not isinstance(spec, dict) else spec
            where = f"functions.{fn.name}.events[{index}].stream"
            arn = str(ctx.stack.resolve_intrinsics(spec.get("arn")))
            kind = spec.get("type") or ("dynamodb" if ":dynamodb:" in arn else "kinesis")
            if kind != "dynamodb":
                raise StreamConfigError(f"{where}: only dynamodb streams are supported locally, got {kind!r}")
            if spec.get("enabled", True) in (False, "false"):
                continue
            for key in UNSUPPORTED_KEYS:
                if key in spec:
                    raise StreamConfigError(f"{where}: {key} is not supported by the local cloud")
            position = str(spec.get("startingPosition", "TRIM_HORIZON"))
            if position not in STARTING_POSITIONS:
                raise StreamConfigError(
                    f"{where}: startingPosition {position!r} is not one of {STARTING_POSITIONS}"
                )
            patterns = tuple(spec.get("filterPatterns") or ())
            for n, pattern in enumerate(patterns):
                check_pattern(pattern, f"{where}.filterPatterns[{n}]")
            declared_window = float(spec.get("batchWindow", 0))
            window = declared_window
            if declared_window > 0 and window_override is not None:
                window = min(declared_window, float(window_override))
            retries = int(spec.get("maximumRetryAttempts", -1))
            age = float(spec.get("maximumRecordAgeInSeconds", -1))
            out.append(
                Source(
                    function=fn.name,
                    index=index,
                    arn=arn,
                    starting_position=position,
                    batch_size=int(spec.get("batchSize", 100)),
                    batch_window_s=window,
                    max_retries=None if retries < 0 else retries,
                    max_age_s=None if age < 0 else age,
                    bisect=bool(spec.get("bisectBatchOnFunctionError", False)),
                    report_item_failures=spec.get("functionResponseType") == "ReportBatchItemFailures",
                    patterns=patterns,
                    on_failure=_destination(ctx, spec, where),
                )
            )
    return out


def _destination(ctx: Context, spec: dict[str, Any], where: str) -> tuple[str, str] | None:
    target = (spec.get("destinations") or {}).get("onFailure")
    if target is None:
        return None
    if isinstance(target, dict) and "arn" in target:
        arn = str(ctx.stack.resolve_intrinsics(target["arn"]))
        kind = str(target.get("type") or arn.split(":")[2])
    else:
        arn = str(ctx.stack.resolve_intrinsics(target))
        kind = arn.split(":")[2] if arn.startswith("arn:") else ""
    if kind not in ("sqs", "sns"):
        raise StreamConfigError(
            f"{where}.destinations.onFailure: only sqs and sns are supported, got {target!r}"
        )
    return kind, arn


# records ------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A DynamoDB-JSON value as Lambda delivers it: binary as base64 text."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def lambda_record(raw: dict[str, Any], stream_arn: str, region: str) -> dict[str, Any]:
    """A get_records record in the shape Lambda hands to the function."""
    change = raw.get("dynamodb") or {}
    created = change.get("ApproximateCreationDateTime")
    dynamodb: dict[str, Any] = {}
    if isinstance(created, datetime):
        dynamodb["ApproximateCreationDateTime"] = int(created.timestamp())
    elif created is not None:
        dynamodb["ApproximateCreationDateTime"] = created
    for key in ("Keys", "NewImage", "OldImage"):
        if key in change:
            dynamodb[key] = _plain(change[key])
    dynamodb["SequenceNumber"] = str(change["SequenceNumber"])
    dynamodb["SizeBytes"] = int(change.get("SizeBytes", 0))
    dynamodb["StreamViewType"] = change.get("StreamViewType")
    record: dict[str, Any] = {
        "eventID": raw.get("eventID"),
        "eventName": raw.get("eventName"),
        "eventVersion": raw.get("eventVersion", "1.1"),
        "eventSource": "aws:dynamodb",
        "awsRegion": region,
        "dynamodb": dynamodb,
        "eventSourceARN": stream_arn,
    }
    if "userIdentity" in raw:
        record["userIdentity"] = raw["userIdentity"]
    return record


@dataclass
class _Pending:
    record: dict[str, Any]
    created: float  # epoch seconds, for maximumRecordAgeInSeconds


@dataclass
class _Shard:
    id: str
    iterator: str | None
    buffer: list[_Pending] = field(default_factory=list)
    first_buffered: float = 0.0  # monotonic time the oldest buffered record arrived


@dataclass(frozen=True)
class Outcome:
    failed_from: int | None = None  # index of the first record to retry; None = all done
    error: str | None = None  # the function raised (bisect applies)
    returned_failures: bool = False


# one event source ---------------------------------------------------------------------------


class _SourcePoller:
    def __init__(self, source: Source, poller: StreamPoller, ctx: Context) -> None:
        self.source = source
        self.poller = poller
        self.ctx = ctx
        self.streams = ctx.function_client("dynamodbstreams", source.function)
        self.shards: dict[str, _Shard] = {}
        self.closed: set[str] = set()
        self.last_seq: dict[str, str] = {}  # per shard, to reopen an expired iterator
        self.refreshed = 0.0
        self.function_arn = (
            f"arn:aws:lambda:{ctx.stack.region}:{ctx.stack.account}:function:"
            f"{ctx.stack.config.get('service', 'service')}-{ctx.stack.stage}-{source.function}"
        )

    # reading ---------------------------------------------------------------------------------

    def prime(self) -> None:
        """Check the stream is the table's, then open the shards now, so that LATEST means
        "after start() returned". Like the event source mapping, it lists, describes and
        reads with the function's execution role (which needs dynamodb:ListStreams too:
        https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html#events-dynamodb-permissions)."""
        table = self.source.arn.split(":table/", 1)[1].split("/stream/", 1)[0]
        listed = self.streams.list_streams(TableName=table).get("Streams", [])
        if self.source.arn not in {stream["StreamArn"] for stream in listed}:
            raise RuntimeError(f"{self.source.arn} is not a stream of table {table}")
        self._refresh(initial=True)

    def _describe(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"StreamArn": self.source.arn}
        while True:
            desc = self.streams.describe_stream(**kwargs)["StreamDescription"]
            shards += desc.get("Shards", [])
            if not desc.get("LastEvaluatedShardId"):
                return shards
            kwargs["ExclusiveStartShardId"] = desc["LastEvaluatedShardId"]

    @property
    def position_key(self) -> str:
        return f"{self.source.function}#{self.source.arn}"

    def _refresh(self, initial: bool = False) -> None:
        self.refreshed = time.monotonic()
        positions = self.poller.positions
        resumed = positions is not None and positions.opened(self.position_key)
        for shard in self._describe():
            shard_id = shard["ShardId"]
            if shard_id in self.shards or shard_id in self.closed:
                continue
            kwargs: dict[str, Any] = {"StreamArn": self.source.arn, "ShardId": shard_id}
            last = positions.get(self.position_key, shard_id) if positions is not None else None
            if last is not None:  # resume after the last record handed over before a restart
                kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=last)
                self.last_seq[shard_id] = last
            elif initial and not resumed:
                kwargs["ShardIteratorType"] = self.source.starting_position
            else:
                # A shard that appears later, or one never delivered from before a restart, is
                # read from its start: its records are all new to the function.
                kwargs["ShardIteratorType"] = "TRIM_HORIZON"
            iterator = self.streams.get_shard_iterator(**kwargs)["ShardIterator"]
            self.shards[shard_id] = _Shard(shard_id, iterator)
        if positions is not None and not resumed:
            positions.set(self.position_key)

    def _fetch(self, shard: _Shard) -> None:
        room = self.source.batch_size - len(shard.buffer)
        if shard.iterator is None or room <= 0:
            return
        try:
            reply = self.streams.get_records(ShardIterator=shard.iterator, Limit=min(1000, room))
        except self.streams.exceptions.ExpiredIteratorException:
            shard.iterator = self._reopen(shard)
            return
        shard.iterator = reply.get("NextShardIterator")
        now = time.monotonic()
        for raw in reply.get("Records", []):
            record = lambda_record(raw, self.source.arn, self.ctx.stack.region)
            if not matches_any(self.source.patterns, record):
                continue
            created = (raw.get("dynamodb") or {}).get("ApproximateCreationDateTime")
            stamp = created.timestamp() if isinstance(created, datetime) else time.time()
            if not shard.buffer:
                shard.first_buffered = now
            shard.buffer.append(_Pending(record, stamp))
        if reply.get("Records"):
            self.last_seq[shard.id] = str(reply["Records"][-1]["dynamodb"]["SequenceNumber"])

    def _reopen(self, shard: _Shard) -> str:
        last = self.last_seq.get(shard.id)
        kwargs: dict[str, Any] = {"StreamArn": self.source.arn, "ShardId": shard.id}
        if last:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=last)
        else:
            kwargs.update(ShardIteratorType="TRIM_HORIZON")
        return str(self.streams.get_shard_iterator(**kwargs)["ShardIterator"])

    # the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        stop = self.poller.stopping
        while not stop.is_set():
            try:
                wait = self.step()
            except Exception as err:  # noqa: BLE001 - a driver must keep polling
                self.ctx.say(f"stream {self.source.label}: {err!r}")
                wait = self.poller.poll_s
            stop.wait(wait)

    def step(self) -> float:
        """Fetch, deliver what is ready; return how long to sleep."""
        if time.monotonic() - self.refreshed >= SHARD_REFRESH_S:
            self._refresh()
        wait = self.poller.poll_s
        for shard in list(self.shards.values()):
            self._fetch(shard)
            if shard.buffer:
                waited = time.monotonic() - shard.first_buffered
                if len(shard.buffer) >= self.source.batch_size or waited >= self.source.batch_window_s:
                    batch, shard.buffer = (
                        shard.buffer[: self.source.batch_size],
                        shard.buffer[self.source.batch_size :],
                    )
                    shard.first_buffered = time.monotonic()
                    self.deliver(shard.id, batch)
                    wait = 0.0 if shard.buffer or shard.iterator else wait
                else:
                    wait = min(wait, self.source.batch_window_s - waited)
            if shard.iterator is None and not shard.buffer:
                self.closed.add(shard.id)
                del self.shards[shard.id]
        return max(0.0, wait)

    # delivery --------------------------------------------------------------------------------

    def deliver(self, shard_id: str, batch: list[_Pending]) -> None:
        """Hand one batch to the function until every record succeeded or was given up on.
        Records are retried in order; nothing after them is read meanwhile, as on AWS."""
        todo: deque[tuple[list[_Pending], int]] = deque([(batch, 0)])
        stop = self.poller.stopping
        # Lambda's IteratorAge: how old the batch's last record is when it is handed over.
        self.poller.record_age(self.source, time.time() - batch[-1].created)
        try:
            self._deliver(shard_id, todo, stop)
        finally:
            if not todo and self.poller.positions is not None:
                last = batch[-1].record["dynamodb"]["SequenceNumber"]
                self.poller.positions.set(self.position_key, shard_id, str(last))

    def _deliver(self, shard_id: str, todo: deque[tuple[list[_Pending], int]], stop: threading.Event) -> None:
        while todo and not stop.is_set():
            chunk, retries = todo.popleft()
            chunk = self._drop_expired(shard_id, chunk, retries)
            if not chunk:
                continue
            outcome = self._invoke(chunk)
            if outcome.failed_from is None:
                self._say(f"{len(chunk)} records, ok" + (f" (retry {retries})" if retries else ""))
                self._redeliver(chunk)
                continue
            if outcome.error is not None and self.source.bisect and len(chunk) > 1:
                half = len(chunk) // 2
                self._say(f"{len(chunk)} records, failed ({outcome.error}); bisecting")
                todo.appendleft((chunk[half:], retries))
                todo.appendleft((chunk[:half], retries))
                continue
            rest = chunk[outcome.failed_from :]
            what = outcome.error or f"{len(rest)} of {len(chunk)} records reported failed"
            if self.source.max_retries is not None and retries >= self.source.max_retries:
                self._say(f"{len(chunk)} records, failed ({what}); retries exhausted, giving up {len(rest)}")
                self._give_up(shard_id, rest, "RetryAttemptsExhausted", retries + 1, outcome)
                continue
            self._say(f"{len(chunk)} records, failed ({what}); retrying {len(rest)}")
            todo.appendleft((rest, retries + 1))
            stop.wait(self.poller.retry_backoff_s)

    def _drop_expired(self, shard_id: str, chunk: list[_Pending], retries: int) -> list[_Pending]:
        if self.source.max_age_s is None:
            return chunk
        oldest_allowed = time.time() - self.source.max_age_s
        expired = [p for p in chunk if p.created < oldest_allowed]
        if expired:
            self._say(f"{len(expired)} records older than {self.source.max_age_s:g}s, giving up")
            self._give_up(shard_id, expired, "RecordAgeExceeded", retries, None)
        return [p for p in chunk if p.created >= oldest_allowed]

    def _invoke(self, chunk: list[_Pending]) -> Outcome:
        event = {"Records": [copy.deepcopy(p.record) for p in chunk]}
        try:
            result = self.ctx.invoke(self.source.function, event)
        except Exception as err:  # noqa: BLE001 - a function error fails the whole batch
            return Outcome(failed_from=0, error=f"{type(err).__name__}: {err}")
        finally:
            self.poller.count(self.source, len(chunk))
        if not self.source.report_item_failures:
            return Outcome()
        failures = result.get("batchItemFailures") if isinstance(result, dict) else None
        if not failures:
            return Outcome()
        sequence = [p.record["dynamodb"]["SequenceNumber"] for p in chunk]
        ids = [f.get("itemIdentifier") if isinstance(f, dict) else None for f in failures]
        if any(i not in sequence for i in ids):
            # AWS treats an unknown or empty itemIdentifier as a failure of the whole batch.
            return Outcome(failed_from=0, returned_failures=True)
        return Outcome(failed_from=min(sequence.index(i) for i in ids), returned_failures=True)

    def _redeliver(self, chunk: list[_Pending]) -> None:
        for n in range(2, self.poller.redeliver + 1):
            if self.poller.stopping.is_set():
                return
            try:
                self.ctx.invoke(self.source.function, {"Records": [copy.deepcopy(p.record) for p in chunk]})
                result = "ok"
            except Exception as err:  # noqa: BLE001 - already delivered once; only reported
                result = f"failed ({type(err).__name__}: {err})"
            finally:
                self.poller.count(self.source, len(chunk))
            self._say(f"{len(chunk)} records delivered again ({n}/{self.poller.redeliver}), {result}")

    def _give_up(
        self, shard_id: str, chunk: list[_Pending], condition: str, invocations: int, outcome: Outcome | None
    ) -> None:
        message = self.failure_record(shard_id, chunk, condition, invocations, outcome)
        if self.source.on_failure is None:
            self._say(f"dropped {len(chunk)} records ({condition}); no on-failure destination")
            return
        kind, arn = self.source.on_failure
        body = json.dumps(message)
        if kind == "sqs":
            name, account = arn.split(":")[5], arn.split(":")[4]
            url = self.ctx.client("sqs").get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)[
                "QueueUrl"
            ]
            self.ctx.function_client("sqs", self.source.function).send_message(QueueUrl=url, MessageBody=body)
        else:
            self.ctx.function_client("sns", self.source.function).publish(TopicArn=arn, Message=body)
        self.poller.failures.append(message)
        self._say(f"{len(chunk)} records sent to the on-failure {kind} destination ({condition})")

    def failure_record(
        self, shard_id: str, chunk: list[_Pending], condition: str, invocations: int, outcome: Outcome | None
    ) -> dict[str, Any]:
        """What AWS sends to an on-failure destination for a DynamoDB stream batch."""
        response: dict[str, Any] = {"statusCode": 200, "executedVersion": "$LATEST"}
        if outcome is not None and outcome.error is not None:
            response["functionError"] = "Unhandled"
        return {
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": self.function_arn,
                "condition": condition,
                "approximateInvokeCount": invocations,
            },
            "responseContext": response,
            "version": "1.0",
            "timestamp": _iso(time.time(), millis=True),
            "DDBStreamBatchInfo": {
                "shardId": shard_id,
                "startSequenceNumber": chunk[0].record["dynamodb"]["SequenceNumber"],
                "endSequenceNumber": chunk[-1].record["dynamodb"]["SequenceNumber"],
                "approximateArrivalOfFirstRecord": _iso(chunk[0].created),
                "approximateArrivalOfLastRecord": _iso(chunk[-1].created),
                "batchSize": len(chunk),
                "streamArn": self.source.arn,
            },
        }

    def _say(self, what: str) -> None:
        self.ctx.say(f"stream {self.source.label}: {what}")


def _iso(epoch_s: float, *, millis: bool = False) -> str:
    stamp = datetime.fromtimestamp(epoch_s, UTC)
    if millis:
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


# the driver ---------------------------------------------------------------------------------


class Positions:
    """Where each event source mapping is in each shard, kept across restarts of a durable
    local cloud (``stream-positions.json``), as Lambda keeps a mapping's position: after a
    restart delivery resumes after the last record handed over, so a record that arrived
    before the stop but was not delivered yet is delivered, and one delivered is not."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, str]] = json.loads(path.read_text()) if path.exists() else {}

    def opened(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, shard_id: str) -> str | None:
        return self._data.get(key, {}).get(shard_id)

    def set(self, key: str, shard_id: str | None = None, sequence: str | None = None) -> None:
        with self._lock:
            entry = self._data.setdefault(key, {})
            if shard_id is not None and sequence is not None:
                entry[shard_id] = sequence
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._data))
            tmp.replace(self.path)


class StreamPoller:
    name = "streams"

    def __init__(
        self,
        *,
        poll_s: float | None = None,
        batch_window_s: float | None = None,
        redeliver: int | None = None,
        retry_backoff_s: float | None = None,
    ) -> None:
        self._poll_s = poll_s
        self._batch_window_s = batch_window_s
        self._redeliver = redeliver
        self._retry_backoff_s = retry_backoff_s
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.sources: list[Source] = []
        self.positions: Positions | None = None
        self.invocations: dict[str, int] = {}  # function -> records handed over, redeliveries included
        self.failures: list[dict[str, Any]] = []  # on-failure records sent
        self.iterator_ages: dict[str, list[float]] = {}  # source label -> ages (s) at delivery

    def start(self, ctx: Context) -> None:
        local = dict(ctx.settings.get("streams") or {})
        self.poll_s = self._poll_s if self._poll_s is not None else float(local.get("pollSeconds", 0.5))
        self.retry_backoff_s = (
            self._retry_backoff_s
            if self._retry_backoff_s is not None
            else float(local.get("retryBackoffSeconds", 0.2))
        )
        redeliver = self._redeliver
        if redeliver is None:
            redeliver = int(os.environ.get(REDELIVER_ENV) or local.get("redeliver", 1))
        if redeliver < 1:
            raise StreamConfigError(f"redeliver must be >= 1, got {redeliver}")
        self.redeliver = redeliver
        self.sources = sources(ctx, batch_window_s=self._batch_window_s)
        self.positions = Positions(ctx.state_dir / POSITIONS_FILE) if ctx.durable else None
        pollers = []
        for source in self.sources:
            poller = _SourcePoller(source, self, ctx)
            poller.prime()
            pollers.append(poller)
        for poller in pollers:
            thread = threading.Thread(
                target=poller.run, name=f"stream-{poller.source.function}-{poller.source.index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        for source in self.sources:
            ctx.say(
                f"stream {source.label}: batches of {source.batch_size}, window {source.batch_window_s:g}s"
                + (f", each delivered {self.redeliver}x" if self.redeliver > 1 else "")
            )

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()

    def record_age(self, source: Source, age_s: float) -> None:
        with self._lock:
            ages = self.iterator_ages.setdefault(source.label, [])
            ages.append(age_s)
            del ages[:-10_000]

    def count(self, source: Source, records: int) -> None:
        with self._lock:
            self.invocations[source.function] = self.invocations.get(source.function, 0) + records


def driver() -> StreamPoller:
    return StreamPoller()
