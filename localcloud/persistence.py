"""Durable local AWS state: a snapshot of moto's backends plus a journal of every change since.

moto keeps its state in memory. For ``make local`` (the whole product on a machine without an
AWS account) that state must outlive a clean stop and a crash (kill -9), so the local AWS
endpoint keeps it under the state directory:

- ``aws-state.pickle``: every moto backend in use, pickled as one object graph (so references
  between resources survive), written to a temporary file and renamed into place (a crash
  mid-write leaves the previous snapshot whole);
- ``aws-journal.bin``: each request that changed something since that snapshot, appended and
  flushed to the operating system before its answer reaches the client. A request that was
  answered is therefore never lost to a crash of the endpoint's process.

On start the snapshot is loaded and the journal replayed in order against moto, then a fresh
snapshot replaces both. Mutating requests run one at a time (under ``lock``) so that the journal
order is the order moto applied them; reads run concurrently with each other, never with a change.

Why a snapshot and a journal rather than moto's own request recorder: the recorder replays
every request since the beginning (100,000 samples means replaying 4,000 batch writes on each
start) and keeps nothing of what a request generated (identifiers, sequence numbers), while a
snapshot restores the state exactly, including the stream positions an event source mapping
resumes from; the journal only covers the seconds since the last snapshot. Identifiers that a
replayed request generates (an instance id, a message id) can differ from the first run's:
the only requests in that window are the last few before a crash.
"""

from __future__ import annotations

import contextlib
import copyreg
import io
import os
import pickle
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SNAPSHOT = "aws-state.pickle"
JOURNAL = "aws-journal.bin"
_HEADER = struct.Struct(">I")

# Operations that change nothing: not journaled. Everything else is (a conservative default:
# replaying a read would be harmless, skipping a write would lose data).
_READ_PREFIXES = ("Get", "Describe", "List", "Scan", "Query", "BatchGet", "Head", "TransactGet", "Filter")


def is_mutation(operation: str | None, method: str) -> bool:
    if operation is None:
        return method not in ("GET", "HEAD", "OPTIONS")
    return not operation.startswith(_READ_PREFIXES)


def _rlock() -> Any:
    return threading.RLock()


def _lock() -> Any:
    return threading.Lock()


# Some backends hold locks (SQS queues); a restored one gets a new, unlocked one.
copyreg.pickle(type(threading.RLock()), lambda _lock_: (_rlock, ()))
copyreg.pickle(type(threading.Lock()), lambda _lock_: (_lock, ()))


@dataclass(frozen=True)
class Entry:
    """One journaled request, enough to hand it to moto's WSGI application again."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    # moto's random generator as the request found it: replayed from the same state, a
    # request generates the same identifiers (an instance id the lock and the run record name)
    random_state: Any = None
    # Instance ids RunInstances answered: a replay that draws other ids (a read ran beside the
    # launch and took from moto's random generator) gets the instances renamed to these.
    instance_ids: tuple[str, ...] = ()


def random_state() -> Any:
    from moto.moto_api._internal import mock_random

    return mock_random.getstate()


def set_random_state(state: Any) -> None:
    from moto.moto_api._internal import mock_random

    if state is not None:
        mock_random.setstate(state)


def _backend_dicts() -> list[Any]:
    from moto.core.base_backend import BackendDict

    in_use: list[Any] = vars(BackendDict)["_instances"]  # moto's registry of the backends in use
    return [b for b in in_use if len(b)]


class SharedLock:
    """Many readers or one writer, writers first. A change runs alone: then no read draws from
    moto's random generator while it does, and replaying it from the generator's saved state
    gives the same identifiers (moto draws every identifier and request id from that one
    generator)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0
        self._waiting_writers = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer != me:
                while self._writer is not None or self._waiting_writers:
                    self._cond.wait()
                self._readers += 1
        try:
            yield
        finally:
            if self._writer != me:
                with self._cond:
                    self._readers -= 1
                    self._cond.notify_all()

    def __enter__(self) -> SharedLock:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
                return self
            self._waiting_writers += 1
            while self._writer is not None or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer, self._depth = me, 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth == 0:
                self._writer = None
                self._cond.notify_all()


class Store:
    """The snapshot and the journal of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.lock = SharedLock()
        self._journal: io.BufferedWriter | None = None
        self.dirty = False
        self.restored_entries = 0
        self.restored_snapshot = False

    @property
    def snapshot_path(self) -> Path:
        return self.state_dir / SNAPSHOT

    @property
    def journal_path(self) -> Path:
        return self.state_dir / JOURNAL

    # --- start ---------------------------------------------------------------------------

    def restore(self, replay: Callable[[Entry], object]) -> None:
        """Load the snapshot (if any), replay the journal (if any), then compact both into a
        new snapshot. ``replay`` hands one entry to moto, bypassing the gate, and returns the
        answer's body."""
        self._restore(replay)

    def _restore(self, replay: Callable[[Entry], object]) -> None:
        """Load the snapshot (if any), replay the journal (if any), then compact both into a
        new snapshot. ``replay`` hands one entry to moto, bypassing the gate."""
        if self.snapshot_path.exists():
            self._load(self.snapshot_path.read_bytes())
            self.restored_snapshot = True
        for entry in self._entries():
            set_random_state(entry.random_state)
            answer = replay(entry)
            if entry.instance_ids and isinstance(answer, bytes):
                rename_instances(instance_ids(answer), entry.instance_ids)
            self.restored_entries += 1
        self.snapshot()

    def _load(self, data: bytes) -> None:
        saved: dict[str, dict[str, Any]] = pickle.loads(data)
        live = {b.service_name: b for b in _backend_dicts_all()}
        for service, accounts in saved.items():
            target = live.get(service)
            if target is None:
                continue
            for account, backend in accounts.items():
                dict.__setitem__(target, account, backend)
            from moto.core.base_backend import BackendDict

            in_use: list[Any] = vars(BackendDict)["_instances"]
            if target not in in_use:
                in_use.append(target)

    def _entries(self) -> Iterable[Entry]:
        if not self.journal_path.exists():
            return
        data = self.journal_path.read_bytes()
        offset = 0
        while offset + _HEADER.size <= len(data):
            (size,) = _HEADER.unpack_from(data, offset)
            start = offset + _HEADER.size
            if start + size > len(data):
                break  # a record cut short by a crash was never answered: drop it
            try:
                entry = pickle.loads(data[start : start + size])
            except Exception:  # noqa: BLE001 - a torn record ends the usable journal
                break
            yield entry
            offset = start + size

    # --- while serving ---------------------------------------------------------------------

    def append(self, entry: Entry) -> None:
        """Journal one applied change; call with ``lock`` held, before answering."""
        payload = pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL)
        if self._journal is None:
            self._journal = open(self.journal_path, "ab")  # noqa: SIM115 - kept open while serving
        self._journal.write(_HEADER.pack(len(payload)) + payload)
        self._journal.flush()  # in the kernel's hands: survives the process being killed
        self.dirty = True

    def snapshot(self) -> float:
        """Write a new snapshot and empty the journal; returns the seconds it took."""
        started = time.monotonic()
        with self.lock:
            state = {
                b.service_name: {account: backend for account, backend in dict.items(b)}
                for b in _backend_dicts()
            }
            data = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
            tmp = self.snapshot_path.with_suffix(".tmp")
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(self.snapshot_path)
            if self._journal is not None:
                self._journal.close()
                self._journal = None
            with contextlib.suppress(FileNotFoundError):
                self.journal_path.unlink()
            self.dirty = False
        return time.monotonic() - started

    def close(self) -> None:
        with self.lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None


def _backend_dicts_all() -> list[Any]:
    """Every BackendDict of the services the local cloud uses, created if needed."""
    from moto.backends import get_backend

    out = []
    for service in (
        "dynamodb",
        "dynamodbstreams",
        "s3",
        "sqs",
        "sns",
        "ec2",
        "cloudwatch",
        "logs",
        "iam",
        "sts",
        "ecr",
        "ssm",
        "events",
        "apigateway",
        "secretsmanager",
    ):
        with contextlib.suppress(Exception):
            out.append(get_backend(service))  # type: ignore[arg-type]
    return out


def instance_ids(run_instances_answer: bytes) -> tuple[str, ...]:
    """The instance ids in an EC2 RunInstances answer (XML)."""
    import re

    return tuple(
        dict.fromkeys(re.findall(rb"<instanceId>(i-[0-9a-f]+)</instanceId>", run_instances_answer)).keys()
    )


def rename_instances(got: tuple[str, ...], wanted: tuple[str, ...]) -> None:
    """Give replayed instances the ids their first run had (moto keeps instances in
    reservations and their tags by resource id)."""
    from moto.ec2.models import ec2_backends

    for old, new in zip(got, wanted, strict=False):
        if old == new:
            continue
        for accounts in ec2_backends.values():
            for backend in accounts.values():
                for reservation in backend.reservations.values():
                    for instance in reservation.instances:
                        if instance.id == old:
                            instance.id = new
                            if old in backend.tags:
                                backend.tags[new] = backend.tags.pop(old)


def clear(state_dir: Path) -> None:
    """Start empty: forget the snapshot and the journal."""
    for name in (SNAPSHOT, JOURNAL):
        with contextlib.suppress(FileNotFoundError):
            (Path(state_dir) / name).unlink()
