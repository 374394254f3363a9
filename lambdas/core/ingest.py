"""The ingestion path shared by ``POST /upload``, the synthetic-traffic function and the importer.

Validate the whole request first (nothing is written unless every sample is valid), derive
each sample's key from its content (``samples.item_keys``), then write with BatchWriteItem in
chunks of 25. DynamoDB may hand back ``UnprocessedItems`` (or throttle the call): those are
retried with exponential backoff and full jitter, a bounded number of times. When the bound
runs out the caller gets ``Unavailable`` (503) that counts exactly the samples DynamoDB
acknowledged; resending the request is safe because the keys are deterministic.

Every item names the client that sent it (``client``: the authenticated identity's name,
``lambdas/core/clients.py``) and its ``source``, which the caller takes from the client's record
(``api`` or ``traffic``) or, for the importer, ``import``: never from the request itself.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from lambdas.core import aws, log, settings
from lambdas.core.errors import AutoretrainError, PayloadTooLarge, Unavailable
from lambdas.core.registry import to_item
from lambdas.core.samples import Sample, item_keys, parse_samples

BATCH_SIZE = 25  # the BatchWriteItem limit
SOURCES = ("api", "traffic", "import")
# A client's name, as lambdas/core/clients.py checks it (NAME_PATTERN; repeated here because the
# importer's package does not ship clients.py).
CLIENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
    }
)


@dataclass(frozen=True)
class IngestSettings:
    data_table: str
    max_samples: int = 5000
    max_bytes: int = 4_000_000  # body bytes; base64 in the event still fits Lambda's 6 MB
    write_attempts: int = 6  # BatchWriteItem calls per chunk of 25, the first one included

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> IngestSettings:
        env = settings.environ() if env is None else env
        return cls(
            data_table=settings.required(env, "DATA_TABLE"),
            max_samples=settings.integer(env, "UPLOAD_MAX_SAMPLES", cls.max_samples, minimum=1),
            max_bytes=settings.integer(env, "UPLOAD_MAX_BYTES", cls.max_bytes, minimum=1),
            write_attempts=settings.integer(env, "UPLOAD_WRITE_ATTEMPTS", cls.write_attempts, minimum=1),
        )


# Seconds kept in hand for one more BatchWriteItem call and the answer (a call retries once
# inside botocore: see aws.client_retrying).
TIME_RESERVE_S = 4.0


@dataclass(frozen=True)
class Backoff:
    """Sleep before retry ``n`` (1-based): uniform in [0, min(cap, base * 2**n)] seconds."""

    base: float = 0.05
    cap: float = 2.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def wait(self, retry: int) -> float:
        delay = self.rng.uniform(0.0, min(self.cap, self.base * 2**retry))
        self.sleep(delay)
        return delay


@dataclass(frozen=True)
class IngestResult:
    written: int
    ids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"written": self.written, "ids": list(self.ids)}


def now_ms() -> int:
    return int(time.time() * 1000)


def check_size(body_bytes: int, limit: int) -> None:
    if body_bytes > limit:
        raise PayloadTooLarge(
            f"request body is {body_bytes} bytes; the limit is {limit}: split the request",
            bytes=body_bytes,
            limit=limit,
        )


def to_items(
    samples: Sequence[Sample],
    keys: Sequence[str],
    *,
    ingested_ms: int,
    source: str,
    client: str | None = None,
    import_id: str | None = None,
    lines: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """DynamoDB items of the data table (see lambdas/README.md for the attributes).

    ``client`` is the sending client's name. None writes no ``client`` attribute (the trainer
    counts such samples ``unattributed``): only an import recorded before clients existed, and
    laptop benchmarks, write those; every function names the client.
    Items of source ``import`` also name their import (``import_id``) and the line of the file
    each came from (``import_line``), and only they do."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if client is not None and (not isinstance(client, str) or not CLIENT_NAME.fullmatch(client)):
        raise ValueError(f"client must be a client's name ({CLIENT_NAME.pattern}), got {client!r}")
    if (source == "import") != (import_id is not None) or (import_id is not None) != (lines is not None):
        raise ValueError("import_id and lines are given for, and only for, source 'import'")
    items = []
    for n, (key, sample) in enumerate(zip(keys, samples, strict=True)):
        record: dict[str, Any] = {
            "id": key,
            # Rounding keeps DynamoDB's number range (no 1e-200 underflow) and loses nothing real.
            "temp": round(sample.temp, 6),
            "rh": round(sample.rh, 6),
            "wind": round(sample.wind, 6),
            "clo": round(sample.clo, 6),
            "label": sample.label,
            "created": ingested_ms if sample.created is None else sample.created,
            "ingested": ingested_ms,
            "score": None if sample.score is None else round(sample.score, 9),
            "client_id": sample.client_id,
            "source": source,
            "client": client,
            "import_id": import_id,
            "import_line": None if lines is None else lines[n],
        }
        items.append(to_item(record))
    return items


def write_items(
    client: Any,
    table: str,
    items: Sequence[Mapping[str, Any]],
    *,
    attempts: int,
    backoff: Backoff | None = None,
    time_left: Callable[[], float] | None = None,
) -> list[str]:
    """Write ``items`` in chunks of 25; return the keys DynamoDB acknowledged, in order.

    Raises Unavailable when a chunk still has unprocessed items after ``attempts`` calls, or
    when ``time_left()`` (seconds of the invocation) is too short for another attempt, and
    AutoretrainError for a non-retryable refusal; all carry the exact count written so far.
    The caller thus always gets an answer it can act on, never the function's timeout.
    """
    backoff = backoff or Backoff()
    written: list[str] = []

    def stop(error: type[AutoretrainError], reason: str) -> AutoretrainError:
        return error(
            f"wrote {len(written)} of {len(items)} samples, then {reason}; "
            "resending the whole request is safe (it writes the same keys)",
            written=len(written),
            total=len(items),
            ids=list(written),
        )

    for start in range(0, len(items), BATCH_SIZE):
        pending = list(items[start : start + BATCH_SIZE])
        for attempt in range(1, attempts + 1):
            if time_left is not None and time_left() < TIME_RESERVE_S:
                missing = len(items) - len(written)
                raise stop(Unavailable, f"ran out of time with {missing} samples not written")
            try:
                reply = client.batch_write_item(
                    RequestItems={table: [{"PutRequest": {"Item": item}} for item in pending]}
                )
                unprocessed = [
                    r["PutRequest"]["Item"] for r in reply.get("UnprocessedItems", {}).get(table, [])
                ]
            except ClientError as err:
                code = err.response.get("Error", {}).get("Code", "")
                if code not in RETRYABLE_CODES:
                    raise stop(AutoretrainError, f"DynamoDB refused the write ({code})") from err
                unprocessed = pending
            left = {item["id"]["S"] for item in unprocessed}
            written.extend(item["id"]["S"] for item in pending if item["id"]["S"] not in left)
            if not unprocessed:
                break
            if attempt == attempts:
                raise stop(
                    Unavailable, f"DynamoDB left {len(unprocessed)} unprocessed after {attempts} attempts"
                )
            log.warning("write_retry", attempt=attempt, unprocessed=len(unprocessed), table=table)
            backoff.wait(attempt)
            pending = unprocessed
    return written


def ingest(
    payload: object,
    config: IngestSettings,
    *,
    source: str,
    client: str | None = None,
    ddb: Any = None,
    backoff: Backoff | None = None,
    clock: Callable[[], int] = now_ms,
    time_left: Callable[[], float] | None = None,
) -> IngestResult:
    """Validate every sample of ``payload`` (array or ``{"samples": [...]}``), then write them
    as ``client``'s (its name; the functions always give one, only laptop benchmarks write
    unattributed samples) with ``source``. ``ddb``: the DynamoDB client (default: one whose
    botocore retries are capped, as ``write_items`` retries itself)."""
    now = clock()
    samples = parse_samples(payload, now_ms=now, max_samples=config.max_samples)
    keys = item_keys(samples, client=client)  # a client's samples never overwrite another's
    items = to_items(samples, keys, ingested_ms=now, source=source, client=client)
    try:
        written = write_items(
            ddb or aws.client_retrying("dynamodb", 2),
            config.data_table,
            items,
            attempts=config.write_attempts,
            backoff=backoff,
            time_left=time_left,
        )
    except AutoretrainError as err:
        log.error(
            "samples_partially_written",
            source=source,
            client=client,
            written=err.details.get("written"),
            total=err.details.get("total"),
            message=err.message,
        )
        raise
    log.log("samples_ingested", source=source, client=client, written=len(written), table=config.data_table)
    return IngestResult(written=len(written), ids=tuple(written))
