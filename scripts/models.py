"""The model table from a terminal: list runs, change latest, read its history.

    python -m scripts.models [--limit N]                     runs newest first, latest "*" (make models)
    python -m scripts.models history [--limit N] [--newest-first]
    python -m scripts.models rollback VERSION [--reason R] [--pin | --no-pin] [--force]
    python -m scripts.models promote VERSION ...             the same as rollback, for a newer version
    python -m scripts.models pin [--reason R] [--version V]  stop automatic promotions
    python -m scripts.models unpin [--reason R]              let the gate promote again
    python -m scripts.models import FILE [--format csv|jsonl] [--api URL] [--poll S]
                                                             bulk import a file of samples

The run list shows each version's live accuracy next to its holdout accuracy: how it did on the
labelled samples that arrived while it was latest, with its 95 % interval and count.

Against AWS it reads MODEL_TABLE, MODEL_BUCKET and NOTIFY_TOPIC_ARN (optional) from the
environment and uses your AWS credentials. ``--local`` targets the running local cloud instead:
the AWS endpoint comes from .localcloud/endpoints.json and the names from infra/serverless.yml.
Changes are recorded with the actor ``cli:$USER`` and announced like the API's.

``import`` goes through the HTTP API instead (``POST /imports``, the presigned S3 POST, then
``GET /imports/{id}`` until the import ends): ``--api URL``, else ``$API_URL``, else the running
local cloud's API from .localcloud/endpoints.json. The file is streamed, never read whole. Exit
status: 0 when the import is done, 1 when it failed (or the upload was refused), 2 on a usage
error (no such file, an empty one, an extension that is neither .csv nor .jsonl without
``--format``, no API to talk to).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TextIO

import requests
from urllib3.fields import RequestField

from lambdas import promote as ops
from lambdas.core import live, registry, settings
from lambdas.core.errors import AutoretrainError

ENDPOINTS = Path(".localcloud/endpoints.json")
LOCAL_STAGE = "local"

COLUMNS = (
    "version",
    "status",
    "samples",
    "train acc",
    "val acc",
    "holdout acc",
    "live acc [95% CI]",
    "holdout loss",
    "started",
)


def _metric(run: dict[str, Any], split: str, name: str) -> str:
    value = ((run.get("metrics") or {}).get(split) or {}).get(name)
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def live_cell(counts: live.Counts | None) -> str:
    """``0.931 [0.912, 0.946] n=1,234``: accuracy on the samples scored while the version was
    latest, its Wilson interval and the count; "-" for a version that never served."""
    if counts is None or not counts.seen:
        return "-"
    low, high = counts.interval() or (0.0, 0.0)
    return f"{counts.accuracy:.3f} [{low:.3f}, {high:.3f}] n={counts.seen:,}"


def rows(
    runs: list[dict[str, Any]], latest: str | None, scored: dict[str, live.Counts] | None = None
) -> list[tuple[str, ...]]:
    scored = scored or {}
    out = []
    for run in runs:
        mark = "* " if run.get("version") == latest else "  "
        out.append(
            (
                mark + str(run.get("version")),
                str(run.get("status", "-")),
                str(run.get("sample_count", "-")),
                _metric(run, "train", "accuracy"),
                _metric(run, "validation", "accuracy"),
                _metric(run, "holdout", "accuracy"),
                live_cell(scored.get(str(run.get("version")))),
                _metric(run, "holdout", "loss"),
                str(run.get("started_at", "-"))[:19],
            )
        )
    return out


def render(table: list[tuple[str, ...]]) -> str:
    header = ("  " + COLUMNS[0], *COLUMNS[1:])
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    line = lambda r: "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, table)])


def render_history(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no change of latest yet"
    lines = []
    for h in items:
        pin = " [pinned]" if h.get("pinned") else ""
        lines.append(
            f"{h.get('seq', '-'):>4}  {str(h.get('at', '-'))[:23]}  {h.get('action', '-'):<8}  "
            f"{h.get('previous') or '-'} -> {h.get('version')}{pin}  by {h.get('actor')}: {h.get('reason')}"
        )
    return "\n".join(lines)


def describe_change(change: dict[str, Any]) -> str:
    pin = "pinned" if change.get("pinned") else "not pinned"
    if not change.get("changed"):
        return f"nothing changed: latest is {change.get('version')} ({pin})"
    return (
        f"latest: {change.get('previous') or 'none'} -> {change['version']} ({change['action']}, {pin}) "
        f"by {change['actor']}: {change['reason']}"
    )


def use_local_cloud(endpoints: Path = ENDPOINTS) -> dict[str, str]:
    """Point boto3 at the running local cloud and name its resources; returns the settings."""
    from localcloud import infra

    if not endpoints.is_file():
        raise SystemExit(f"{endpoints} not found: start the local cloud first (make local)")
    aws_url = json.loads(endpoints.read_text())["aws"]
    stack = infra.load(stage=LOCAL_STAGE)
    env = {k: str(stack.resolve_intrinsics(v)) for k, v in stack.config["provider"]["environment"].items()}
    topic = stack.config["custom"]["notificationsTopic"]
    env.update(
        AWS_ENDPOINT_URL=aws_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=stack.region,
        AWS_REGION=stack.region,
        NOTIFY_TOPIC_ARN=f"arn:aws:sns:{stack.region}:{stack.account}:{topic}",
    )
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(env)
    return env


def actor() -> str:
    return f"cli:{os.environ.get('USER') or getpass.getuser()}"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--local", action="store_true", default=argparse.SUPPRESS, help="use the running local cloud"
    )
    parser = argparse.ArgumentParser(
        description="The model table: runs, latest and its history.", parents=[common]
    )
    parser.add_argument("--limit", type=int, default=50, help="how many runs to show (default 50)")
    sub = parser.add_subparsers(dest="command")
    history = sub.add_parser("history", parents=[common], help="every change of latest, oldest first")
    history.add_argument("--limit", type=int, default=100)
    history.add_argument("--newest-first", action="store_true")
    for name, text in (("rollback", "make an older version latest"), ("promote", "make a version latest")):
        cmd = sub.add_parser(name, parents=[common], help=text)
        cmd.add_argument("version")
        cmd.add_argument("--reason", default=f"{name} from the command line")
        pin = cmd.add_mutually_exclusive_group()
        pin.add_argument("--pin", dest="pin", action="store_const", const=True, default=None)
        pin.add_argument("--no-pin", dest="pin", action="store_const", const=False)
        cmd.add_argument("--force", action="store_true", help="allow a rejected run")
    for name in ("pin", "unpin"):
        cmd = sub.add_parser(name, parents=[common], help=f"{name} latest")
        cmd.add_argument("--reason", default=f"{name}ned from the command line")
        cmd.add_argument("--version", help="refuse unless this is latest")
    imp = sub.add_parser("import", parents=[common], help="bulk import a CSV or JSON Lines file of samples")
    imp.add_argument("file", type=Path)
    imp.add_argument("--format", choices=IMPORT_FORMATS, help="default: from the extension (.csv, .jsonl)")
    imp.add_argument("--api", help="the API's base URL (default: $API_URL, else the running local cloud)")
    imp.add_argument("--poll", type=float, default=1.0, help="seconds between status reads (default 1)")
    imp.add_argument("--timeout", type=float, default=0.0, help="give up after this many seconds (0: never)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "import":
        return run_import(args)
    if getattr(args, "local", False):
        use_local_cloud()
    try:
        return _run(args)
    except AutoretrainError as err:
        print(f"error: {err.message}")
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command in ("rollback", "promote", "pin", "unpin"):
        cfg = ops.RegistrySettings.from_env()
        if args.command in ("rollback", "promote"):
            if not registry.is_version(args.version):
                raise SystemExit(f"not a model version: {args.version!r}")
            opts = ops.Options(args.reason, pin=args.pin, force=args.force)
            change = ops.promote(cfg, args.version, opts, actor())
        else:
            opts = ops.Options(args.reason, version=args.version)
            change = ops.set_pin(cfg, args.command == "pin", opts, actor())
        print(describe_change(change))
        return 0
    reg = registry.Registry(settings.required(settings.environ(), "MODEL_TABLE"))
    if args.command == "history":
        items, cursor = reg.list_history(limit=min(100, args.limit), newest_first=args.newest_first)
        while cursor and len(items) < args.limit:
            page, cursor = reg.list_history(
                limit=min(100, args.limit - len(items)), cursor=cursor, newest_first=args.newest_first
            )
            items += page
        print(render_history(items))
        pointer = reg.latest()
        if pointer:
            print(f"\nlatest: {pointer['version']}{' (pinned)' if pointer.get('pinned') else ''}")
        return 0
    runs: list[dict[str, Any]] = []
    cursor = None
    while len(runs) < args.limit:
        page, cursor = reg.list_runs(limit=min(100, args.limit - len(runs)), cursor=cursor)
        runs += page
        if not cursor:
            break
    pointer = reg.latest()
    latest = str(pointer["version"]) if pointer else None
    scored = live.LiveStore(reg.table).totals([str(r["version"]) for r in runs]) if runs else {}
    print(render(rows(runs, latest, scored)) if runs else "no training runs yet")
    pinned = "  pinned: automatic promotions are off" if pointer and pointer.get("pinned") else ""
    print(f"\nlatest: {latest or 'none'}  (* marks it){pinned}")
    return 0


# --- import: a file through POST /imports and its presigned S3 POST ------------------------------

IMPORT_FORMATS = ("csv", "jsonl")
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CHUNK = 1 << 20  # bytes of the file read at a time
REJECTIONS_SHOWN = 20
FINAL = ("done", "failed")


class UsageError(Exception):
    """The command line cannot be carried out as given (exit status 2)."""


class ImportFailed(Exception):
    """The API or S3 refused, or the import did not end in time (exit status 1)."""


class MultipartFile:
    """A multipart/form-data body of known length, read a piece at a time: the form fields, the
    file part's header, the file in chunks of at most ``chunk`` bytes, the closing boundary.

    S3's POST needs a Content-Length (without one: 411 MissingContentLength, "You must provide
    the Content-Length HTTP header": Amazon S3 API Reference, "Error responses"; seen in
    aws/aws-sdk-cpp#3411), so ``requests`` must see the length: it takes ``len()`` of a body
    that has one (requests.utils.super_len; a chunked Transfer-Encoding otherwise) and sends it
    with ``read(blocksize)``. Parts are rendered by urllib3's ``RequestField``, as ``requests``
    renders its ``files=`` bodies, so the bytes are those of
    ``requests.post(url, data=fields, files={"file": (filename, fp)})`` without the file held in
    memory. The file part comes last: S3 ignores the fields after it.
    """

    def __init__(
        self,
        fields: Mapping[str, str],
        filename: str,
        fp: IO[bytes],
        size: int,
        *,
        field: str = "file",
        boundary: str | None = None,
        chunk: int = CHUNK,
    ) -> None:
        self.boundary = boundary or secrets.token_hex(16)
        head = b"".join(self._part(RequestField.from_tuples(name, value)) for name, value in fields.items())
        file_part = RequestField(name=field, data=b"", filename=filename)
        file_part.make_multipart()
        self._head = head + self._part(file_part, data=False)
        self._tail = f"\r\n--{self.boundary}--\r\n".encode("latin-1")
        self._fp, self._size, self._chunk = fp, size, chunk
        self._pieces = self._generate()
        self._buffer = b""
        self.sent = 0  # bytes of the body handed out so far

    def _part(self, part: RequestField, *, data: bool = True) -> bytes:
        out = f"--{self.boundary}\r\n".encode("latin-1") + part.render_headers().encode("utf-8")
        if data:
            value = part.data
            out += (value.encode("utf-8") if isinstance(value, str) else bytes(value)) + b"\r\n"  # type: ignore[arg-type]
        return out

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self._head) + self._size + len(self._tail)

    def _generate(self) -> Iterator[bytes]:
        yield self._head
        left = self._size
        while left:
            piece = self._fp.read(min(self._chunk, left))
            if not piece:
                raise OSError(f"the file shrank while it was sent: {left:,} bytes short")
            left -= len(piece)
            yield piece
        if self._fp.read(1):
            raise OSError("the file grew while it was sent")
        yield self._tail

    def read(self, size: int = -1) -> bytes:
        """At most ``size`` bytes (at most one chunk when ``size`` is negative); b"" at the end."""
        size = self._chunk if size is None or size < 0 else size
        while len(self._buffer) < size:
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._buffer += piece
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        self.sent += len(out)
        return out

    def __iter__(self) -> Iterator[bytes]:
        while piece := self.read(self._chunk):
            yield piece


def import_format(path: Path, given: str | None) -> str:
    if given:
        return given
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"cannot tell the format of {path.name!r} from its extension: use --format csv|jsonl"
        )
    return fmt


def api_base(given: str | None, endpoints: Path = ENDPOINTS) -> str:
    """--api, else $API_URL, else the running local cloud's API (.localcloud/endpoints.json)."""
    url = given or os.environ.get("API_URL")
    if not url and endpoints.is_file():
        url = json.loads(endpoints.read_text()).get("api")
    if not url:
        raise UsageError(
            f"no API: pass --api URL, set API_URL, or start the local cloud ({endpoints} not found)"
        )
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"the API must be an http(s) URL, got {url!r}")
    return url.rstrip("/")


def run_import(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        path: Path = args.file
        if not path.is_file():
            raise UsageError(f"no such file: {path}")
        size = path.stat().st_size
        if size == 0:
            raise UsageError(f"{path} is empty: nothing to import")
        fmt = import_format(path, args.format)
        api = api_base(args.api, Path(ENDPOINTS))
        if args.poll <= 0:
            raise UsageError("--poll must be a positive number of seconds")
    except UsageError as problem:
        print(f"error: {problem}", file=err)
        return 2
    try:
        return _import(api, path, fmt, size, args, out, err)
    except ImportFailed as failure:
        print(f"error: {failure}", file=err)
        return 1
    except requests.RequestException as failure:
        print(f"error: {failure}", file=err)
        return 1


def _import(
    api: str, path: Path, fmt: str, size: int, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    reply = requests.post(f"{api}/imports", json={"format": fmt, "filename": path.name}, timeout=30)
    if reply.status_code != 201:
        raise ImportFailed(f"POST /imports answered {reply.status_code}: {reply.text[:500]}")
    created = reply.json()
    import_id = created["import_id"]
    print(f"import {import_id}: uploading {path.name} ({size:,} bytes, {fmt})", file=err)
    upload(created["upload"], path, size)
    status = follow(created["status_url"], args.poll, args.timeout, err)
    print(summary(status), file=out)
    return 0 if status["status"] == "done" else 1


def upload(form: Mapping[str, Any], path: Path, size: int, *, chunk: int = CHUNK) -> None:
    """POST the file to the presigned form, streamed; ImportFailed with S3's answer if refused."""
    with path.open("rb") as fp:
        body = MultipartFile(form["fields"], path.name, fp, size, chunk=chunk)
        reply = requests.post(
            form["url"], data=body, headers={"Content-Type": body.content_type}, timeout=(10, 300)
        )
    if reply.status_code not in (200, 201, 204):
        raise ImportFailed(f"the upload was refused ({reply.status_code}): {s3_error(reply.text)}")


def s3_error(text: str) -> str:
    """``Code: Message`` of S3's XML error document, else the start of the text."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return text[:300]
    return f"{root.findtext('Code') or '?'}: {root.findtext('Message') or ''}".strip()


def follow(status_url: str, poll: float, timeout: float, err: TextIO) -> dict[str, Any]:
    """GET the status until it is final, showing progress on ``err``."""
    tty = err.isatty()
    started = time.monotonic()
    while True:
        reply = requests.get(status_url, timeout=30)
        if reply.status_code != 200:
            raise ImportFailed(f"GET {status_url} answered {reply.status_code}: {reply.text[:300]}")
        status = reply.json()
        line = progress_line(status)
        if tty:
            err.write("\r" + progress_bar(status) + " " + line + "\x1b[K")
            err.flush()
        else:
            print(line, file=err)
        if status.get("status") in FINAL:
            if tty:
                err.write("\n")
            return status
        if timeout and time.monotonic() - started > timeout:
            if tty:
                err.write("\n")
            raise ImportFailed(f"gave up after {timeout:g} s; the import goes on: {status_url}")
        time.sleep(poll)


def progress_bar(status: Mapping[str, Any], width: int = 30) -> str:
    fraction = status.get("progress")
    if status.get("status") == "done":
        fraction = 1.0
    if fraction is None:
        return "[" + "." * width + "]    -"
    filled = round(min(1.0, max(0.0, float(fraction))) * width)
    return "[" + "#" * filled + "." * (width - filled) + f"] {float(fraction):4.0%}"


def progress_line(status: Mapping[str, Any]) -> str:
    fraction = status.get("progress")
    percent = "-" if fraction is None else f"{float(fraction):.0%}"
    return (
        f"{status.get('status')}: {int(status.get('rows_read') or 0):,} rows read, {percent} of the bytes; "
        f"written {int(status.get('written') or 0):,}, duplicates {int(status.get('duplicates') or 0):,}, "
        f"rejected {int(status.get('rejected') or 0):,}"
    )


def summary(status: Mapping[str, Any]) -> str:
    def count(name: str) -> str:
        return f"{int(status.get(name) or 0):,}"

    lines = [
        f"import {status.get('import_id')} {status.get('status')}: {count('rows_read')} rows read, "
        f"{count('written')} written, {count('duplicates')} duplicates, {count('rejected')} rejected"
    ]
    if status.get("status") == "failed":
        lines.append(f"failed: {(status.get('error') or {}).get('reason', 'no reason given')}")
    rejections = status.get("rejections") or []
    if rejections:
        more = int(status.get("rejected") or 0) - len(rejections[:REJECTIONS_SHOWN])
        lines.append("first rejected rows:")
        for r in rejections[:REJECTIONS_SHOWN]:
            lines.append(f"  line {r.get('line')}: {r.get('field') or '-'}: {r.get('reason')}")
        if more > 0:
            lines.append(f"  ... and {more:,} more")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
