"""Bulk import: a file uploaded to ``imports/<import_id>.<csv|jsonl>`` streamed into the data table.

The status item (the import table, key ``import_id``) is the import's only state; every write
the importer makes to it is conditional on holding its lease, so two invocations (a duplicate
S3 event, the resume schedule) never both count:

- ``ImportTable.take``: one conditional UpdateItem takes an import that is ``waiting_upload`` or
  ``importing`` with no unexpired lease: status ``importing``, lease ``{holder, until_ms}``.
- First lease: HeadObject (size, ETag) and one streaming pass over the object for its sha256
  ``digest`` (the row keys depend on it, see ``samples.import_key``), which also reads the
  head of the file to tell whether it is the declared format at all (``probe``). Every later
  read of the object is ``IfMatch`` its ETag: an object replaced under a running import (a
  second POST to the same presigned form) fails the import instead of mixing two files.
- Parts: ``GetObject(Range="bytes=<cursor>-")`` read incrementally (line by line, a csv reader
  over those lines), rows in batches of ``BATCH_ROWS``, through a pipeline (``Pipeline``):

  1. The reading thread validates each row (``samples.parse_sample``: the ``/upload`` rules) and
     derives its key (``prepare``; the key covers the import's ``client``, the name of the
     client that created it, and every row is written as that client's with source
     ``import``). A key already in flight (a row earlier in the file whose
     batch is not merged yet, or earlier in the same batch) is counted a duplicate there and
     never sent: one batch after the other, its BatchGetItem would have found that row's item.
  2. A thread pool runs the DynamoDB half of up to ``IMPORT_CONCURRENCY`` batches at once
     (``import_batch``): BatchGetItem of the keys (consistent), then ``ingest.write_items`` of
     the absent ones. A key present with this import's id and this row's line was written by
     this import before a crash (counted as written); present otherwise it is a duplicate.
  3. The reading thread merges the batches' counts, rejections and cursor into ``progress``
     strictly in file order, so the cursor always ends a contiguous prefix of finished
     batches and ``rejections`` keeps the first ones by line; it checkpoints (one conditional
     UpdateItem of the cursor and the counts) at most every ``IMPORT_CHECKPOINT_S`` seconds and
     at the end of the part. Rows written past the last checkpoint (whole batches, part of
     one, or none) are found again on resume with this import's id and their own line, so a
     crash at any point loses nothing and counts nothing twice.
  4. A batch that fails stops the part: the others in flight finish, the prefix before it is
     merged and checkpointed, nothing after it is, and its error propagates.
- A part ends after ``IMPORT_PART_S`` seconds, ``IMPORT_PART_ROWS`` rows or when the
  invocation's remaining time falls under ``TIME_RESERVE_MS``; the lease is released
  (``until_ms`` 0) and the schedule resumes the import (``expired``, a Query of the
  ``by-status`` index). At the end of the file: ``done``.
- While an import runs it holds the training lock (``lock.hold``): one retraining run after the
  import instead of one per ``MIN_NEW_SAMPLES`` of its rows.

Memory is bounded by ``IMPORT_CONCURRENCY`` batches and one line (a line longer than
``MAX_LINE_BYTES`` is rejected without being held), whatever the file's size.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import itertools
import json
import re
import resource
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError

from lambdas.core import aws, ingest, lock, log, settings
from lambdas.core import clients as senders
from lambdas.core.errors import AutoretrainError, ConfigError, Conflict, Unavailable, ValidationError
from lambdas.core.registry import from_item, now_iso, to_item
from lambdas.core.samples import ALLOWED_FIELDS, Sample, import_key, parse_sample
from lambdas.core.schema import FEATURE_NAMES

WAITING_UPLOAD, IMPORTING, DONE, FAILED = "waiting_upload", "importing", "done", "failed"
FORMATS = ("csv", "jsonl")
STATUS_INDEX = "by-status"
ID_PATTERN = re.compile(r"imp-[0-9a-f]{16}")
KEY_PATTERN = re.compile(r"imports/(imp-[0-9a-f]{16})\.(csv|jsonl)")
KEY_PREFIX = "imports/"

# An import still waiting this long after its upload form expired is settled by the schedule:
# long enough for a 100 MB POST started just before the expiry to finish on a slow link.
SETTLE_AFTER_EXPIRY_S = 900
BATCH_ROWS = 100  # rows per BatchGetItem (its limit: 100 keys)
MAX_REJECTIONS = 20  # rejected rows listed in the status item (all are counted)
MAX_LINE_BYTES = 64 * 1024  # a sample is ~200 bytes; a longer line is rejected, never held
PROBE_LINES = 10  # jsonl: the file fails if its first 10 non-blank lines are all not objects
CHUNK_BYTES = 64 * 1024  # read size of the object's body
# Kept in hand when a part decides whether to read another batch: the window's BatchGetItems and
# writes, which run at once (ingest.write_items stops itself at ingest.TIME_RESERVE_S), and the
# checkpoint.
TIME_RESERVE_MS = 30_000
MAX_PART_FAILURES = 5  # consecutive failed parts (no checkpoint between) that fail the import
READ_ATTEMPTS = 6  # BatchGetItem calls per batch while DynamoDB leaves keys unprocessed
# Each client keeps botocore's default pool of 10 connections (Config max_pool_connections; a
# request beyond it opens a connection that is dropped after, losing keep-alive). A pool thread
# makes one call at a time, so a window needs at most IMPORT_CONCURRENCY connections of a client,
# plus one for the reading thread's checkpoint on the status client: 9 fill the pool exactly.
MAX_CONCURRENCY = 9
INTERNAL_FIELDS = ("cursor", "lease", "etag", "failures")  # not in the public status
BOM = codecs.BOM_UTF8
NUMERIC_FIELDS = frozenset((*FEATURE_NAMES, "created", "score"))
REQUIRED_COLUMNS = (*FEATURE_NAMES, "label")
# A JSON number (RFC 8259, section 6): what a csv cell must look like to be read as one.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


class FileFormatError(AutoretrainError):
    """The file is not the declared format at all: the whole import fails."""

    code = "invalid_file"


class LeaseLost(Conflict):
    """Another invocation holds the import now (ours expired): stop without writing."""


@dataclass(frozen=True)
class ImporterSettings:
    import_bucket: str
    import_table: str
    data_table: str
    model_table: str
    part_s: int = 600  # seconds of work per invocation; 0: until done (or out of time)
    part_rows: int = 0  # rows per invocation; 0: no cap
    lease_s: int = 960  # longer than the function's 900 s timeout: a live part never loses it
    write_attempts: int = 6  # BatchWriteItem calls per chunk of 25 (ingest.write_items)
    concurrency: int = 4  # batches whose DynamoDB calls are in flight at once
    checkpoint_s: float = 1.0  # seconds between checkpoints (0: after every batch)
    # How long an upload form lives (the imports function's IMPORT_URL_EXPIRES_S): an import
    # still waiting for its file 15 minutes after that is settled by the schedule.
    url_expires_s: int = 900

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> ImporterSettings:
        env = settings.environ() if env is None else env
        concurrency = settings.integer(env, "IMPORT_CONCURRENCY", cls.concurrency, minimum=1)
        if concurrency > MAX_CONCURRENCY:
            raise ConfigError(
                f"environment variable IMPORT_CONCURRENCY must be <= {MAX_CONCURRENCY}, got {concurrency}"
            )
        return cls(
            import_bucket=settings.required(env, "IMPORT_BUCKET"),
            import_table=settings.required(env, "IMPORT_TABLE"),
            data_table=settings.required(env, "DATA_TABLE"),
            model_table=settings.required(env, "MODEL_TABLE"),
            part_s=settings.integer(env, "IMPORT_PART_S", cls.part_s, minimum=0),
            part_rows=settings.integer(env, "IMPORT_PART_ROWS", cls.part_rows, minimum=0),
            lease_s=settings.integer(env, "IMPORT_LEASE_S", cls.lease_s, minimum=1),
            concurrency=concurrency,
            checkpoint_s=settings.number(env, "IMPORT_CHECKPOINT_S", cls.checkpoint_s, minimum=0),
            url_expires_s=settings.integer(env, "IMPORT_URL_EXPIRES_S", cls.url_expires_s, minimum=1),
        )


# the public view ----------------------------------------------------------------------------


def public_status(item: Mapping[str, Any]) -> dict[str, Any]:
    """What ``GET /imports/{id}`` answers: every field of the status item but the internal ones
    (``INTERNAL_FIELDS``), plus ``progress`` = bytes_read / bytes (None until the
    size is known). ``item``: as GetItem returns it (AttributeValues) or already plain."""
    data = from_item(item) if _is_attribute_values(item) else dict(item)
    out = {k: v for k, v in data.items() if k not in INTERNAL_FIELDS}
    size = data.get("bytes")
    out["progress"] = round(min(1.0, int(data.get("bytes_read") or 0) / size), 4) if size else None
    return out


def _is_attribute_values(item: Mapping[str, Any]) -> bool:
    value = item.get("import_id")
    return isinstance(value, dict) and set(value) == {"S"}


# the status store ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportTable:
    """The import table's status items, each write of the importer conditional on its lease."""

    table: str
    client: Any = None

    @property
    def ddb(self) -> Any:
        return self.client or aws.dynamodb()

    def get(self, import_id: str) -> dict[str, Any] | None:
        item = self.ddb.get_item(
            TableName=self.table, Key={"import_id": {"S": import_id}}, ConsistentRead=True
        ).get("Item")
        return from_item(item) if item else None

    def take(self, import_id: str, holder: str, now_ms: int, lease_ms: int) -> dict[str, Any] | None:
        """Lease the import to ``holder`` until ``now_ms + lease_ms``; the item after, or None
        when it cannot be taken (unknown, finished, or leased to someone else)."""
        now = now_iso()
        try:
            reply = self.ddb.update_item(
                TableName=self.table,
                Key={"import_id": {"S": import_id}},
                UpdateExpression=(
                    "SET #status = :importing, #lease = :lease, updated_at = :now, "
                    "started_at = if_not_exists(started_at, :now)"
                ),
                ConditionExpression=(
                    "attribute_exists(import_id) AND #status IN (:waiting, :importing) "
                    "AND (attribute_not_exists(#lease) OR #lease.until_ms <= :now_ms)"
                ),
                ExpressionAttributeNames={"#status": "status", "#lease": "lease"},
                ExpressionAttributeValues={
                    ":importing": {"S": IMPORTING},
                    ":waiting": {"S": WAITING_UPLOAD},
                    ":lease": to_item({"l": {"holder": holder, "until_ms": now_ms + lease_ms}})["l"],
                    ":now": {"S": now},
                    ":now_ms": {"N": str(now_ms)},
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return None
            raise
        return from_item(reply["Attributes"])

    def update(self, import_id: str, holder: str, fields: Mapping[str, Any]) -> None:
        """SET ``fields`` (and ``updated_at``) if ``holder`` still holds the import while it is
        ``importing``; LeaseLost otherwise. ``lease`` may be among the fields (a release)."""
        values = {**fields, "updated_at": now_iso()}
        names = {f"#f{n}": name for n, name in enumerate(values)}
        item = to_item({f":f{n}": value for n, value in enumerate(values.values())})
        sets = [f"#f{n} = :f{n}" for n in range(len(values))]
        removes = [f"#f{n}" for n, value in enumerate(values.values()) if value is None]
        sets = [s for n, s in enumerate(sets) if f"#f{n}" not in removes]
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        try:
            self.ddb.update_item(
                TableName=self.table,
                Key={"import_id": {"S": import_id}},
                UpdateExpression=expression,
                ConditionExpression="#status = :importing AND #lease.#holder = :holder",
                ExpressionAttributeNames={
                    **names,
                    "#status": "status",
                    "#lease": "lease",
                    "#holder": "holder",
                },
                ExpressionAttributeValues={**item, ":importing": {"S": IMPORTING}, ":holder": {"S": holder}},
            )
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise LeaseLost(
                    f"import {import_id} is no longer leased to {holder}", import_id=import_id
                ) from err
            raise

    def expired(self, now_ms: int) -> Iterator[str]:
        """Ids of ``importing`` imports whose lease expired (or was released): a Query of the
        ``by-status`` index, never a Scan. The lease is checked again when one is taken."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": "#status = :importing",
            "FilterExpression": "attribute_not_exists(#lease) OR #lease.until_ms <= :now_ms",
            "ExpressionAttributeNames": {"#status": "status", "#lease": "lease"},
            "ExpressionAttributeValues": {":importing": {"S": IMPORTING}, ":now_ms": {"N": str(now_ms)}},
        }
        return self._ids(kwargs)

    def stale_waiting(self, before: str) -> Iterator[str]:
        """Ids of imports still ``waiting_upload`` since before ``before`` (ISO time): a Query of
        the ``by-status`` index on its sort key ``updated_at``, never a Scan."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": "#status = :waiting AND updated_at < :before",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":waiting": {"S": WAITING_UPLOAD}, ":before": {"S": before}},
        }
        return self._ids(kwargs)

    def _ids(self, query: dict[str, Any]) -> Iterator[str]:
        """The import ids of every page of ``query``."""
        while True:
            reply = self.ddb.query(**query)
            for item in reply.get("Items", []):
                yield item["import_id"]["S"]
            if "LastEvaluatedKey" not in reply:
                return
            query = {**query, "ExclusiveStartKey": reply["LastEvaluatedKey"]}


# reading the file ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    number: int  # 1-based line of the file
    start: int  # byte offset of its first byte
    end: int  # byte offset just after it (its newline included)
    raw: bytes | None  # its bytes with the newline; None when longer than MAX_LINE_BYTES


def split_lines(
    chunks: Iterable[bytes], *, offset: int = 0, line: int = 1, max_bytes: int = MAX_LINE_BYTES
) -> Iterator[Line]:
    """The lines of a byte stream that starts at ``offset`` (line ``line``) of the file, with
    their exact byte offsets. Holds one line at most: a longer one is skipped (``raw`` None)."""
    buffer = bytearray()
    too_long = False
    start = position = offset
    for chunk in chunks:
        pos = 0
        while pos < len(chunk):
            newline = chunk.find(b"\n", pos)
            stop = len(chunk) if newline < 0 else newline + 1
            if not too_long:
                buffer += chunk[pos:stop]
                if len(buffer) > max_bytes:
                    too_long, buffer = True, bytearray()
            pos = stop
            if newline >= 0:
                end = position + stop
                yield Line(line, start, end, None if too_long else bytes(buffer))
                line, start, buffer, too_long = line + 1, end, bytearray(), False
        position += len(chunk)
    if position > start:  # a last line without a newline
        yield Line(line, start, position, None if too_long else bytes(buffer))


@dataclass(frozen=True)
class Row:
    """One row of the file: its JSON object (``data``) or why it cannot be one (``reason``)."""

    line: int  # where it starts
    end: int  # byte offset after it: the cursor once it is counted
    next_line: int  # the line after it
    data: Any = None
    field: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Cursor:
    offset: int  # where the next part starts reading
    line: int  # the line number there
    columns: tuple[str, ...] = ()  # csv: the header's columns (the header is not read again)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"offset": self.offset, "line": self.line}
        if self.columns:
            out["columns"] = list(self.columns)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cursor:
        return cls(int(data["offset"]), int(data["line"]), tuple(data.get("columns") or ()))


def _too_long(line: Line) -> str:
    return f"line {line.number} is longer than {MAX_LINE_BYTES} bytes"


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def probe(fmt: str, lines: Iterable[Line]) -> Cursor:
    """Whether the head of the file is the declared format at all, and where its rows start.

    FileFormatError (the whole import fails) for an empty file, a first line that is not UTF-8,
    a csv without the header (or with an unknown or repeated column), a jsonl whose first
    ``PROBE_LINES`` non-blank lines are all not JSON objects. Reads only the head."""
    if fmt == "csv":
        return _probe_csv(iter(lines))
    return _probe_jsonl(iter(lines))


def _first_text(line: Line) -> str:
    raw = line.raw
    if raw is None:
        raise FileFormatError(f"not a text file: {_too_long(line)}")
    if line.start == 0 and raw.startswith(BOM):
        raw = raw[len(BOM) :]
    text = _decode(raw)
    if text is None:
        raise FileFormatError("not UTF-8 text: the first line is not valid UTF-8")
    return text


def _probe_csv(lines: Iterator[Line]) -> Cursor:
    first = next(lines, None)
    if first is None:
        raise FileFormatError("the file is empty")
    header = next(csv.reader([_first_text(first)]), [])
    columns = [name.strip() for name in header]
    if not set(REQUIRED_COLUMNS) <= set(columns):
        raise FileFormatError(
            f"not a CSV file: the first line has no header with {', '.join(REQUIRED_COLUMNS)}"
        )
    for n, name in enumerate(columns):
        if name not in ALLOWED_FIELDS:
            raise FileFormatError(
                f"unknown column {json.dumps(name)} in the header; allowed: {', '.join(ALLOWED_FIELDS)}"
            )
        if name in columns[:n]:
            raise FileFormatError(f"column {json.dumps(name)} appears twice in the header")
    return Cursor(first.end, first.number + 1, tuple(columns))


def _probe_jsonl(lines: Iterator[Line]) -> Cursor:
    start = None
    bad = 0
    for line in lines:
        if start is None:
            start = Cursor(len(BOM) if line.raw is not None and line.raw.startswith(BOM) else 0, 1)
        if line.raw is not None and not line.raw.strip():
            continue
        # The first non-blank line decides "is it UTF-8 at all".
        text = _first_text(line) if bad == 0 else (_decode(line.raw or b"") or "")
        try:
            if isinstance(json.loads(text), dict):
                return start
        except ValueError:
            pass
        bad += 1
        if bad == PROBE_LINES:
            break
    if start is None or bad == 0:
        raise FileFormatError(
            "the file is empty" if start is None else "the file has no rows (blank lines only)"
        )
    raise FileFormatError(f"not a JSON Lines file: the first {bad} non-blank lines are not JSON objects")


def jsonl_rows(lines: Iterable[Line]) -> Iterator[Row]:
    """One row per non-blank line: its JSON value, or why it is not one."""
    for line in lines:
        if line.raw is None:
            yield Row(line.number, line.end, line.number + 1, reason=_too_long(line))
            continue
        text = _decode(line.raw)
        if text is None:
            yield Row(line.number, line.end, line.number + 1, reason="not valid UTF-8")
            continue
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except ValueError as err:
            reason = (
                f"not valid JSON: {err.msg} at column {err.colno}"
                if isinstance(err, json.JSONDecodeError)
                else "not valid JSON"
            )
            yield Row(line.number, line.end, line.number + 1, reason=reason)
            continue
        yield Row(line.number, line.end, line.number + 1, data=data)


class _LineFeed:
    """Text lines for ``csv.reader`` from ``Line``s, remembering which lines the current record
    took (a quoted field may span lines) and whether one of them was unreadable."""

    def __init__(self, lines: Iterable[Line]) -> None:
        self._lines = iter(lines)
        self.first: Line | None = None
        self.last: Line | None = None
        self.problem: str | None = None

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.first = self.first or line
        self.last = line
        if line.raw is None:
            self.problem = self.problem or _too_long(line)
            return "\n"
        text = _decode(line.raw)
        if text is None:
            self.problem = self.problem or "not valid UTF-8"
            return line.raw.decode("utf-8", "replace")
        return text

    def take(self) -> tuple[Line, Line, str | None]:
        first, last, problem = self.first, self.last, self.problem
        self.first = self.last = self.problem = None
        assert first is not None and last is not None
        return first, last, problem


def _cell(column: str, text: str) -> Any:
    """A cell as the JSON value it stands for: a number where the field is one and the cell
    reads as a JSON number, else the text (which ``parse_sample`` then judges)."""
    if column in NUMERIC_FIELDS and _JSON_NUMBER.fullmatch(text.strip()):
        return json.loads(text.strip())
    return text


def csv_rows(lines: Iterable[Line], columns: Sequence[str]) -> Iterator[Row]:
    """One row per csv record after the header: an object of its non-empty cells."""
    feed = _LineFeed(lines)
    reader = csv.reader(feed)
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            first, last, _ = feed.take()
            yield Row(first.number, last.end, last.number + 1, reason=f"not valid CSV: {err}")
            continue
        first, last, problem = feed.take()
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue  # a blank line
        if problem is not None:
            yield Row(first.number, last.end, last.number + 1, reason=problem)
        elif len(cells) != len(columns):
            reason = f"{len(cells)} cells, the header has {len(columns)} columns"
            yield Row(first.number, last.end, last.number + 1, reason=reason)
        else:
            data = {name: _cell(name, text) for name, text in zip(columns, cells, strict=True) if text != ""}
            yield Row(first.number, last.end, last.number + 1, data=data)


def rows(fmt: str, chunks: Iterable[bytes], cursor: Cursor) -> Iterator[Row]:
    """The rows of the file from ``cursor`` on (``chunks``: the object's bytes from there)."""
    lines = split_lines(chunks, offset=cursor.offset, line=cursor.line)
    return csv_rows(lines, cursor.columns) if fmt == "csv" else jsonl_rows(lines)


# the rows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    line: int
    field: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "reason": self.reason}


def check_row(row: Row, now_ms: int) -> Sample | Rejection:
    """The sample of a row by ``/upload``'s rules, or why the row is rejected."""
    if row.data is None and row.reason is not None:
        return Rejection(row.line, row.field, row.reason)
    try:
        return parse_sample(row.data, row.line, now_ms=now_ms)
    except ValidationError as err:
        return Rejection(row.line, err.field, err.message.removeprefix(f"sample {row.line}: "))


@dataclass
class Progress:
    """The counts and the cursor, as the last checkpoint stored them (then advanced)."""

    cursor: Cursor
    rows_read: int = 0
    written: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Progress:
        return cls(
            cursor=Cursor.from_dict(item["cursor"]),
            rows_read=int(item.get("rows_read", 0)),
            written=int(item.get("written", 0)),
            duplicates=int(item.get("duplicates", 0)),
            rejected=int(item.get("rejected", 0)),
            rejections=list(item.get("rejections") or []),
        )

    def counts(self) -> dict[str, int]:
        return {
            "rows_read": self.rows_read,
            "written": self.written,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
        }

    def fields(self) -> dict[str, Any]:
        """What a checkpoint stores."""
        return {
            "cursor": self.cursor.to_dict(),
            "bytes_read": self.cursor.offset,
            "failures": 0,
            **self.counts(),
            "rejections": list(self.rejections),
        }


@dataclass(frozen=True)
class Clients:
    ddb: Any = None  # status items, the lock, BatchGetItem
    writer: Any = None  # BatchWriteItem, with botocore's retries capped (ingest.write_items retries)
    s3: Any = None

    @classmethod
    def default(cls) -> Clients:
        return cls(aws.dynamodb(), aws.client_retrying("dynamodb", 2), aws.s3())


@dataclass(frozen=True)
class Job:
    """One import while one invocation holds it."""

    import_id: str
    fmt: str
    key: str
    holder: str
    digest: str
    etag: str
    size: int
    cfg: ImporterSettings
    clients: Clients
    backoff: ingest.Backoff = field(default_factory=ingest.Backoff)
    # Who started the import (its status item's ``client``): every row it writes is that
    # client's. None for an import recorded before clients existed (unattributed rows).
    client: str | None = None

    @property
    def table(self) -> ImportTable:
        return ImportTable(self.cfg.import_table, self.clients.ddb)


def existing(job: Job, keys: Sequence[str]) -> dict[str, tuple[str | None, int | None]]:
    """``{key: (import_id, import_line)}`` of the keys already in the data table (consistent
    reads: a write acknowledged before a crash is seen)."""
    found: dict[str, tuple[str | None, int | None]] = {}
    pending: dict[str, Any] = {
        job.cfg.data_table: {
            "Keys": [{"id": {"S": key}} for key in dict.fromkeys(keys)],
            "ProjectionExpression": "#id, #imp, #line",
            "ExpressionAttributeNames": {"#id": "id", "#imp": "import_id", "#line": "import_line"},
            "ConsistentRead": True,
        }
    }
    for attempt in range(1, READ_ATTEMPTS + 1):
        reply = job.clients.ddb.batch_get_item(RequestItems=pending)
        for item in reply.get("Responses", {}).get(job.cfg.data_table, []):
            data = from_item(item)
            line = data.get("import_line")
            found[str(data["id"])] = (data.get("import_id"), None if line is None else int(line))
        pending = reply.get("UnprocessedKeys") or {}
        if not pending:
            return found
        if attempt < READ_ATTEMPTS:
            job.backoff.wait(attempt)
    raise Unavailable(f"DynamoDB left keys unprocessed after {READ_ATTEMPTS} BatchGetItem calls")


@dataclass(frozen=True)
class Batch:
    """One batch as the reading thread prepared it: what it counted itself, and the rows whose
    keys its DynamoDB half (``import_batch``) looks up and writes if absent."""

    line: int  # its first row's line
    rows: int  # rows of the file it covers
    end: int  # the cursor after it
    next_line: int
    now_ms: int
    rejections: tuple[Rejection, ...] = ()
    duplicates: int = 0  # rows whose key is already in flight (see ``prepare``)
    candidates: tuple[tuple[int, Sample, str], ...] = ()  # (line, sample, key), distinct keys

    @property
    def keys(self) -> list[str]:
        return [key for _, _, key in self.candidates]


@dataclass(frozen=True)
class Stored:
    """What ``import_batch`` counted of a batch's candidates."""

    written: int = 0
    duplicates: int = 0


def prepare(
    rows: Sequence[Row],
    *,
    digest: str,
    now_ms: int,
    in_flight: AbstractSet[str],
    client: str | None = None,
) -> Batch:
    """The reading thread's half of a batch: validate each row and derive its key (which covers
    the import's ``client``, as ``POST /upload``'s keys do: ``samples.import_key``). A key in
    ``in_flight`` (a candidate of a batch not merged yet) or earlier in this batch is a duplicate
    of that earlier row and is not sent: processed one batch after the other, its BatchGetItem
    would have found the earlier row's item (or the item that row duplicates) all the same."""
    rejections: list[Rejection] = []
    candidates: list[tuple[int, Sample, str]] = []
    seen: set[str] = set()
    duplicates = 0
    for row in rows:
        checked = check_row(row, now_ms)
        if isinstance(checked, Rejection):
            rejections.append(checked)
            continue
        key = import_key(checked, digest=digest, line=row.line, client=client)
        if key in in_flight or key in seen:
            duplicates += 1
        else:
            seen.add(key)
            candidates.append((row.line, checked, key))
    return Batch(
        line=rows[0].line,
        rows=len(rows),
        end=rows[-1].end,
        next_line=rows[-1].next_line,
        now_ms=now_ms,
        rejections=tuple(rejections),
        duplicates=duplicates,
        candidates=tuple(candidates),
    )


def import_batch(job: Job, batch: Batch, *, time_left: Callable[[], float] | None) -> Stored:
    """The DynamoDB half of a batch, on a pool thread: BatchGetItem its candidates' keys, write
    the absent ones. A key present with this import's id and the row's own line was written by
    this import before a crash (counted as written); present otherwise, a duplicate."""
    if not batch.candidates:
        return Stored()
    found = existing(job, batch.keys)
    written = duplicates = 0
    new: list[tuple[int, Sample, str]] = []
    for line, sample, key in batch.candidates:
        if key not in found:
            new.append((line, sample, key))
        elif found[key] == (job.import_id, line):
            written += 1
        else:
            duplicates += 1
    if new:
        items = ingest.to_items(
            [sample for _, sample, _ in new],
            [key for _, _, key in new],
            ingested_ms=batch.now_ms,
            source="import",
            client=job.client,
            import_id=job.import_id,
            lines=[line for line, _, _ in new],
        )
        ingest.write_items(
            job.clients.writer or job.clients.ddb,
            job.cfg.data_table,
            items,
            attempts=job.cfg.write_attempts,
            backoff=job.backoff,
            time_left=time_left,
        )
        written += len(new)
    return Stored(written, duplicates)


def merge(progress: Progress, batch: Batch, stored: Stored) -> None:
    """Count a batch into ``progress``: only ever the batch right after its cursor."""
    progress.rows_read += batch.rows
    progress.written += stored.written
    progress.duplicates += batch.duplicates + stored.duplicates
    progress.rejected += len(batch.rejections)
    room = MAX_REJECTIONS - len(progress.rejections)
    progress.rejections.extend(r.to_dict() for r in batch.rejections[: max(room, 0)])
    progress.cursor = dataclasses.replace(progress.cursor, offset=batch.end, line=batch.next_line)


def checkpoint(job: Job, progress: Progress) -> None:
    """Store the cursor and the counts: one conditional UpdateItem (the lease's holder only)."""
    job.table.update(job.import_id, job.holder, progress.fields())


@dataclass(frozen=True)
class _InFlight:
    batch: Batch
    future: Future[Stored]


def _failed(future: Future[Stored]) -> bool:
    """Whether a finished future did not produce its batch's counts."""
    return future.cancelled() or future.exception() is not None


class Pipeline:
    """Batches in flight on a thread pool, merged into ``progress`` strictly in file order.

    The window holds the batches submitted and not yet merged, ``cfg.concurrency`` at most;
    ``in_flight`` their candidates' keys. A batch is merged once it and every batch before it
    are done, so the cursor always ends a contiguous prefix of finished batches; a checkpoint
    stores it at most every ``cfg.checkpoint_s`` seconds (``clock``) and at ``drain``. A batch
    that fails stops the part (``_abort``): the others finish, the prefix before it is merged
    and checkpointed, nothing after it is, and its error is raised."""

    def __init__(
        self,
        job: Job,
        progress: Progress,
        pool: Executor,
        *,
        clock: Callable[[], float],
        time_left: Callable[[], float] | None,
    ) -> None:
        self.job, self.progress, self.pool = job, progress, pool
        self.clock, self.time_left = clock, time_left
        self.window: deque[_InFlight] = deque()
        self.in_flight: set[str] = set()
        self.saved = progress.cursor
        self.saved_at = clock()

    def submit(self, rows: Sequence[Row], *, now_ms: int) -> None:
        """Prepare a batch here, send its DynamoDB half to the pool, then wait (merging) until
        the window has room for the next one."""
        batch = prepare(
            rows, digest=self.job.digest, now_ms=now_ms, in_flight=self.in_flight, client=self.job.client
        )
        self.in_flight.update(batch.keys)
        future = self.pool.submit(import_batch, self.job, batch, time_left=self.time_left)
        self.window.append(_InFlight(batch, future))
        self._settle(room=self.job.cfg.concurrency - 1)

    def drain(self) -> None:
        """Wait for every batch in flight, merge them and checkpoint what is not stored yet."""
        self._settle(room=0)
        self.flush()

    def flush(self) -> None:
        if self.progress.cursor != self.saved:
            checkpoint(self.job, self.progress)
            self.saved, self.saved_at = self.progress.cursor, self.clock()

    def cancel(self) -> None:
        """Cancel the batches not started (the part is ending on an error)."""
        for pending in self.window:
            pending.future.cancel()

    def _settle(self, room: int) -> None:
        while self.window:
            head = self.window[0]
            if head.future.done():
                if _failed(head.future):
                    self._abort()
                self._merge(self.window.popleft())
                if self.clock() - self.saved_at >= self.job.cfg.checkpoint_s:
                    self.flush()
                continue
            if len(self.window) <= room:
                return
            # A later batch that already failed ends the part now; otherwise wait for the next
            # of the unfinished ones (the head is one). Waiting on a finished future would
            # return at once, every time round: a busy loop while the head is slower.
            if any(p.future.done() and _failed(p.future) for p in self.window):
                self._abort()
            unfinished = [p.future for p in self.window if not p.future.done()]
            wait(unfinished, return_when=FIRST_COMPLETED)

    def _merge(self, pending: _InFlight) -> None:
        merge(self.progress, pending.batch, pending.future.result())
        self.in_flight.difference_update(pending.batch.keys)

    def _abort(self) -> NoReturn:
        self.cancel()
        wait([p.future for p in self.window])
        while self.window and not _failed(self.window[0].future):
            self._merge(self.window.popleft())
        # The first batch in file order that raised (only _abort cancels, and a cancelled batch
        # never started).
        failed = next(p for p in self.window if not p.future.cancelled() and p.future.exception())
        error = failed.future.exception()
        assert error is not None
        log.warning(
            "import_batch_failed", import_id=self.job.import_id, line=failed.batch.line, error=repr(error)
        )
        try:
            self.flush()
        except Exception as err:  # noqa: BLE001 - the batch's error is the one to report
            log.warning("import_checkpoint_failed", import_id=self.job.import_id, error=repr(err))
        raise error


# reading the object -------------------------------------------------------------------------


def open_object(s3: Any, bucket: str, key: str, etag: str, offset: int = 0) -> Any:
    """The object's body (a botocore StreamingBody, read incrementally) from ``offset`` on, if it
    is still the object whose ETag is ``etag`` (else S3 answers 412 PreconditionFailed)."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "IfMatch": etag}
    if offset:
        kwargs["Range"] = f"bytes={offset}-"
    return s3.get_object(**kwargs)["Body"]


def digest_and_probe(body: Any, fmt: str) -> tuple[str, int, Cursor]:
    """One pass over the object: its sha256, its size and where its rows start (``probe``,
    which reads only the head; the rest is hashed as it streams by)."""
    sha = hashlib.sha256()
    size = 0

    def hashed() -> Iterator[bytes]:
        nonlocal size
        for chunk in body.iter_chunks(CHUNK_BYTES):
            sha.update(chunk)
            size += len(chunk)
            yield chunk

    chunks = hashed()
    start = probe(fmt, split_lines(chunks))
    for _ in chunks:  # the rest of the object, for the digest
        pass
    return sha.hexdigest(), size, start


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux (getrusage(2)), the Lambda platform.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# the import ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    import_id: str
    status: str  # done, failed, importing (a part ended), skipped (not taken)
    counts: dict[str, int] = field(default_factory=dict)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"import_id": self.import_id, "status": self.status, **self.counts}
        if self.reason:
            out["reason"] = self.reason
        return out


def run_import(
    import_id: str,
    cfg: ImporterSettings,
    clients: Clients,
    *,
    holder: str,
    time_left_ms: Callable[[], int] | None = None,
    clock: Callable[[], float] = time.time,
    backoff: ingest.Backoff | None = None,
) -> Outcome:
    """Take the import and run one part of it (all of it if it fits). Never raises for the
    file's faults (the import fails instead); an infrastructure error propagates after the
    lease is released, so the schedule retries the part from its last checkpoint."""
    table = ImportTable(cfg.import_table, clients.ddb)
    locks = lock.LockStore(cfg.model_table, clients.ddb)
    now = clock()
    lease_until_ms = int(now * 1000) + cfg.lease_s * 1000
    item = table.take(import_id, holder, int(now * 1000), cfg.lease_s * 1000)
    if item is None:
        current = table.get(import_id)
        status = None if current is None else current.get("status")
        log.log(
            "import_skipped",
            import_id=import_id,
            status=status,
            reason="not found" if current is None else "finished or leased",
        )
        return Outcome(
            import_id, "skipped", reason="not found" if current is None else f"{status}, or leased"
        )
    try:
        locks.set_holds(lambda s: lock.hold(s, import_id, lease_until_ms, now))
        return _run(
            item, cfg, clients, holder=holder, time_left_ms=time_left_ms, clock=clock, backoff=backoff
        )
    except LeaseLost:
        log.warning("import_lease_lost", import_id=import_id, holder=holder)
        return Outcome(import_id, "skipped", reason="lease lost")
    except Exception as err:
        _part_failed(import_id, holder, cfg, table, err)
        raise


def _part_failed(
    import_id: str, holder: str, cfg: ImporterSettings, table: ImportTable, err: Exception
) -> None:
    """A part raised (an infrastructure error, a bug): release the lease at once so the next
    tick retries from the last checkpoint, and count the failure. ``MAX_PART_FAILURES`` in a
    row with no checkpoint between them fail the import: a fault that never clears must not
    keep the import, and its hold on retraining, alive forever."""
    log.error("import_part_failed", import_id=import_id, error=repr(err))
    try:
        current = table.get(import_id) or {}
        failures = int(current.get("failures", 0)) + 1
        if failures >= MAX_PART_FAILURES:
            counts = Progress(
                Cursor(0, 1),
                rows_read=int(current.get("rows_read", 0)),
                written=int(current.get("written", 0)),
                duplicates=int(current.get("duplicates", 0)),
                rejected=int(current.get("rejected", 0)),
            )
            _fail_item(
                table, import_id, holder, cfg, counts, f"gave up after {failures} failed attempts: {err!r}"
            )
        else:
            table.update(
                import_id, holder, {"failures": failures, "lease": {"holder": holder, "until_ms": 0}}
            )
    except Exception as release:  # noqa: BLE001 - the lease expires on its own
        log.warning("import_lease_not_released", import_id=import_id, error=repr(release))


def _run(
    item: dict[str, Any],
    cfg: ImporterSettings,
    clients: Clients,
    *,
    holder: str,
    time_left_ms: Callable[[], int] | None,
    clock: Callable[[], float],
    backoff: ingest.Backoff | None,
) -> Outcome:
    import_id, fmt, key = str(item["import_id"]), str(item["format"]), str(item["key"])
    table = ImportTable(cfg.import_table, clients.ddb)
    sender = None if item.get("client") is None else str(item["client"])
    if sender is not None and _revoked(cfg.model_table, clients.ddb, sender):
        # Checked at every lease (each part of a long import): an import started before its
        # client was revoked stops at its next part, its rows so far left to `clients purge`.
        return _fail_item(
            table,
            import_id,
            holder,
            cfg,
            Progress(Cursor(0, 1)) if "cursor" not in item else Progress.from_item(item),
            f"client {sender!r} is revoked",
        )
    if "digest" not in item:
        first = _first_lease(item, cfg, clients, holder)
        if isinstance(first, Outcome):
            return first
        item = first
    job = Job(
        import_id=import_id,
        fmt=fmt,
        key=key,
        holder=holder,
        digest=str(item["digest"]),
        etag=str(item["etag"]),
        size=int(item["bytes"]),
        cfg=cfg,
        clients=clients,
        backoff=backoff or ingest.Backoff(),
        client=None if item.get("client") is None else str(item["client"]),
    )
    progress = Progress.from_item(item)
    started = time.monotonic()
    part_rows = 0
    at_end = progress.cursor.offset >= job.size
    body = None
    time_left = (lambda: time_left_ms() / 1000) if time_left_ms is not None else None
    with ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="import") as pool:
        pipeline = Pipeline(job, progress, pool, clock=clock, time_left=time_left)
        try:
            if not at_end:
                body = open_object(clients.s3, cfg.import_bucket, key, job.etag, progress.cursor.offset)
                stream = rows(fmt, body.iter_chunks(CHUNK_BYTES), progress.cursor)
                while True:
                    size = BATCH_ROWS if not cfg.part_rows else min(BATCH_ROWS, cfg.part_rows - part_rows)
                    batch = list(itertools.islice(stream, size))
                    if not batch:
                        at_end = True
                        break
                    pipeline.submit(batch, now_ms=int(clock() * 1000))
                    part_rows += len(batch)
                    if (
                        (cfg.part_rows and part_rows >= cfg.part_rows)
                        or (cfg.part_s and time.monotonic() - started >= cfg.part_s)
                        or (time_left_ms is not None and time_left_ms() < TIME_RESERVE_MS)
                    ):
                        break
            pipeline.drain()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                pipeline.drain()  # count what the batches in flight wrote
                return _fail(job, progress, "the uploaded file was replaced during the import")
            raise
        finally:
            pipeline.cancel()
            if body is not None:
                body.close()
    seconds = round(time.monotonic() - started, 3)
    log.log(
        "import_part",
        import_id=import_id,
        rows=part_rows,
        seconds=seconds,
        concurrency=cfg.concurrency,
        peak_rss_mb=peak_rss_mb(),
        **progress.counts(),
    )
    if not at_end:
        table.update(import_id, holder, {**progress.fields(), "lease": {"holder": holder, "until_ms": 0}})
        return Outcome(import_id, IMPORTING, progress.counts())
    progress.cursor = dataclasses.replace(progress.cursor, offset=job.size)
    return _finish(job, progress, DONE)


def _revoked(model_table: str, ddb: Any, name: str) -> bool:
    """Whether the registry says client ``name`` is revoked (a built-in without a record is not)."""
    found = ddb.get_item(
        TableName=model_table,
        Key={"pk": {"S": f"client#{name}"}},
        ProjectionExpression="#t",
        ExpressionAttributeNames={"#t": "trust"},
        ConsistentRead=True,
    ).get("Item")
    return bool(found) and found.get("trust", {}).get("S") == senders.REVOKED


def _first_lease(
    item: dict[str, Any], cfg: ImporterSettings, clients: Clients, holder: str
) -> dict[str, Any] | Outcome:
    """Size, ETag, digest and the format check, stored; or the import failed."""
    import_id, fmt, key = str(item["import_id"]), str(item["format"]), str(item["key"])
    table = ImportTable(cfg.import_table, clients.ddb)
    progress = Progress(Cursor(0, 1))
    try:
        head = clients.s3.head_object(Bucket=cfg.import_bucket, Key=key)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code")
        if code not in ("404", "NoSuchKey", "403", "AccessDenied"):
            raise
        # Without s3:ListBucket a missing object is a 403, not a 404 (HeadObject API reference,
        # "Permissions"); the importer only reads keys S3 has just announced, so either means
        # it is gone (expired, deleted).
        return _fail_item(
            table, import_id, holder, cfg, progress, f"the uploaded file {key} is missing ({code})"
        )
    etag, size = str(head["ETag"]), int(head["ContentLength"])
    body = open_object(clients.s3, cfg.import_bucket, key, etag)
    try:
        digest, read, start = digest_and_probe(body, fmt)
    except FileFormatError as err:
        return _fail_item(table, import_id, holder, cfg, progress, err.message, bytes=size)
    finally:
        body.close()
    fields = {
        "bytes": read,
        "etag": etag,
        "digest": digest,
        "cursor": start.to_dict(),
        "bytes_read": start.offset,
    }
    fields.update(Progress(start).counts())
    fields["rejections"] = []
    table.update(import_id, holder, fields)
    log.log(
        "import_started",
        import_id=import_id,
        format=fmt,
        bytes=read,
        digest=digest,
        filename=item.get("filename"),
        client=item.get("client"),
    )
    return {**item, **fields}


def _fail_item(
    table: ImportTable,
    import_id: str,
    holder: str,
    cfg: ImporterSettings,
    progress: Progress,
    reason: str,
    **extra: Any,
) -> Outcome:
    table.update(
        import_id,
        holder,
        {
            "status": FAILED,
            "error": {"reason": reason},
            "finished_at": now_iso(),
            "lease": {"holder": holder, "until_ms": 0},
            **progress.counts(),
            **extra,
        },
    )
    _unhold(cfg.model_table, table.ddb, import_id)
    log.warning("import_failed", import_id=import_id, reason=reason, **progress.counts())
    return Outcome(import_id, FAILED, progress.counts(), reason)


def _fail(job: Job, progress: Progress, reason: str) -> Outcome:
    return _fail_item(job.table, job.import_id, job.holder, job.cfg, progress, reason)


def _finish(job: Job, progress: Progress, status: str) -> Outcome:
    job.table.update(
        job.import_id,
        job.holder,
        {
            **progress.fields(),
            "status": status,
            "finished_at": now_iso(),
            "lease": {"holder": job.holder, "until_ms": 0},
        },
    )
    _unhold(job.cfg.model_table, job.clients.ddb, job.import_id)
    log.log("import_done", import_id=job.import_id, **progress.counts())
    return Outcome(job.import_id, status, progress.counts())


def _unhold(model_table: str, ddb: Any, import_id: str) -> None:
    """Let retraining go on after a finished import. The status is final already: a lock that
    stays busy is logged, not raised (a retry would find the import finished and skip it), and
    the hold expires on its own with the lease."""
    try:
        lock.LockStore(model_table, ddb).set_holds(lambda s: lock.unhold(s, import_id, time.time()))
    except Unavailable as err:
        log.warning("import_hold_not_removed", import_id=import_id, error=err.message)


# events -------------------------------------------------------------------------------------


def object_ids(event: Mapping[str, Any], bucket: str) -> list[str]:
    """The import ids of an S3 notification's ObjectCreated records in ``bucket``. A key that is
    not ``imports/<id>.<csv|jsonl>`` (or another bucket, another event) is logged and left out.
    The key arrives URL-encoded, a space as "+" ("The s3 key provides information about the
    bucket and object involved in the event. The object key name value is URL encoded": Amazon
    S3 User Guide, "Event message structure",
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html)."""
    out = []
    for record in event.get("Records") or []:
        s3 = record.get("s3") or {}
        name = (s3.get("bucket") or {}).get("name")
        key = unquote_plus(str((s3.get("object") or {}).get("key", "")))
        match = KEY_PATTERN.fullmatch(key)
        if (
            name != bucket
            or match is None
            or not str(record.get("eventName", "")).startswith("ObjectCreated:")
        ):
            log.log("import_event_ignored", bucket=name, key=key, event_name=record.get("eventName"))
            continue
        out.append(match.group(1))
    return list(dict.fromkeys(out))


def start_from_event(
    event: Mapping[str, Any],
    cfg: ImporterSettings,
    clients: Clients,
    *,
    holder: str,
    time_left_ms: Callable[[], int] | None,
) -> list[Outcome]:
    """Import every object the notification announces (each from its status item's key)."""
    outcomes = []
    for import_id in object_ids(event, cfg.import_bucket):
        outcomes.append(run_import(import_id, cfg, clients, holder=holder, time_left_ms=time_left_ms))
    return outcomes


def resume(
    cfg: ImporterSettings,
    clients: Clients,
    *,
    holder: str,
    time_left_ms: Callable[[], int] | None,
    clock: Callable[[], float] = time.time,
) -> list[Outcome]:
    """The schedule: run the next part of every ``importing`` import whose lease expired, while
    the invocation has time for one more batch; and settle every import still waiting for its
    upload ``SETTLE_AFTER_EXPIRY_S`` after its form expired. Its file is there when every
    delivery of S3's event failed (it is imported now), or it never came (the import fails: "the
    uploaded file ... is missing"), so no import waits forever."""
    outcomes = []
    table = ImportTable(cfg.import_table, clients.ddb)
    now = clock()
    stale = datetime.fromtimestamp(now - cfg.url_expires_s - SETTLE_AFTER_EXPIRY_S, UTC)
    before = stale.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    due = itertools.chain(table.expired(int(now * 1000)), table.stale_waiting(before))
    for import_id in due:
        if time_left_ms is not None and time_left_ms() < TIME_RESERVE_MS:
            break
        try:
            outcome = run_import(
                import_id, cfg, clients, holder=holder, time_left_ms=time_left_ms, clock=clock
            )
        except Exception as err:  # noqa: BLE001 - logged and retried at the next tick; the others go on
            outcome = Outcome(import_id, "error", reason=repr(err))
        outcomes.append(outcome)
    return outcomes
