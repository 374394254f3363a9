"""The model table from a terminal: list runs, change latest, read its history.

    python -m scripts.models [--limit N]                     runs newest first, latest "*" (make models)
    python -m scripts.models history [--limit N] [--newest-first]
    python -m scripts.models rollback VERSION [--reason R] [--pin | --no-pin] [--force]
    python -m scripts.models promote VERSION ...             the same as rollback, for a newer version
    python -m scripts.models pin [--reason R] [--version V]  stop automatic promotions
    python -m scripts.models unpin [--reason R]              let the gate promote again
    python -m scripts.models import FILE [--format csv|jsonl] [--api URL] [--api-key KEY] [--poll S]
                                                             bulk import a file of samples
    python -m scripts.models clients add NAME --reason R [--trust trusted|untrusted]
                                         [--plan P | --iam-arn ARN]
    python -m scripts.models clients list [--json]
    python -m scripts.models clients trust NAME trusted|untrusted|revoked --reason R
    python -m scripts.models clients revoke NAME --reason R
    python -m scripts.models clients purge NAME --reason R [--yes] [--segments N]
    python -m scripts.models clients events [--limit N] [--json]
    python -m scripts.models holdout-key rotate --reason R

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
``--format``, no API to talk to). The private routes need an API key (``x-api-key``): ``--api-key``,
else ``$API_KEY``, else the local cloud's (``"api_key"`` of endpoints.json) when the API is its.

``clients`` and ``holdout-key`` talk to AWS with your credentials, like ``rollback``: API Gateway
(the client's key and its usage plan), the model table (the client records and their events),
the data table (``purge``) and Secrets Manager (the holdout key). They read MODEL_TABLE,
DATA_TABLE and STAGE from the environment (``--local`` sets them for the running local cloud);
the service name comes from infra/serverless.yml. README.md, "Keys, trust and revocation".
Exit status 1 when AWS or the registry refuses (an unknown client, a name taken, purging a
client that is not revoked), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

import requests
from botocore.exceptions import ClientError
from urllib3.fields import RequestField

from lambdas import promote as ops
from lambdas.core import aws, clients, live, registry, settings
from lambdas.core.errors import AutoretrainError, BadRequest, ConfigError, Conflict, NotFound, Unavailable
from lambdas.core.ingest import RETRYABLE_CODES, Backoff

ENDPOINTS = Path(".localcloud/endpoints.json")
API_KEY_HEADER = "x-api-key"
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
    out: list[tuple[str, ...]] = []
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


def use_local_cloud(endpoints: Path | None = None) -> dict[str, str]:
    """Point boto3 at the running local cloud and name its resources; returns the settings.
    ``endpoints``: default ENDPOINTS, read when called."""
    from localcloud import infra

    endpoints = endpoints or ENDPOINTS

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
    imp.add_argument(
        "--api-key", help="the API key (default: $API_KEY, else the local cloud's when the API is its)"
    )
    imp.add_argument("--poll", type=float, default=1.0, help="seconds between status reads (default 1)")
    imp.add_argument("--timeout", type=float, default=0.0, help="give up after this many seconds (0: never)")
    _client_parsers(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "import":
        return run_import(args)
    if getattr(args, "local", False):
        use_local_cloud()
    try:
        if args.command in ("clients", "holdout-key"):
            return run_clients(args)
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


def api_key_for(api: str, given: str | None, endpoints: Path = ENDPOINTS) -> str | None:
    """--api-key, else $API_KEY, else the local cloud's key when ``api`` is the local cloud's API
    (its endpoints.json names both); None: no key (a private route then answers 403)."""
    key = given or os.environ.get("API_KEY")
    if not key and endpoints.is_file():
        local = json.loads(endpoints.read_text())
        if str(local.get("api", "")).rstrip("/") == api:
            key = local.get("api_key")
    return key or None


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
        key = api_key_for(api, getattr(args, "api_key", None), Path(ENDPOINTS))
        if args.poll <= 0:
            raise UsageError("--poll must be a positive number of seconds")
    except UsageError as problem:
        print(f"error: {problem}", file=err)
        return 2
    try:
        return _import(api, path, fmt, size, args, out, err, key)
    except ImportFailed as failure:
        print(f"error: {failure}", file=err)
        return 1
    except requests.RequestException as failure:
        print(f"error: {failure}", file=err)
        return 1


def _import(
    api: str,
    path: Path,
    fmt: str,
    size: int,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    key: str | None = None,
) -> int:
    # API Gateway reads a private route's key from the x-api-key header (API Gateway developer
    # guide, "Choose an API key source").
    headers = {API_KEY_HEADER: key} if key else {}
    reply = requests.post(
        f"{api}/imports", json={"format": fmt, "filename": path.name}, headers=headers, timeout=30
    )
    if reply.status_code != 201:
        raise ImportFailed(f"POST /imports answered {reply.status_code}: {reply.text[:500]}")
    created = reply.json()
    import_id = created["import_id"]
    print(f"import {import_id}: uploading {path.name} ({size:,} bytes, {fmt})", file=err)
    upload(created["upload"], path, size)
    status = follow(created["status_url"], args.poll, args.timeout, err, headers=headers)
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


def follow(
    status_url: str, poll: float, timeout: float, err: TextIO, *, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """GET the status until it is final, showing progress on ``err``."""
    tty = err.isatty()
    started = time.monotonic()
    while True:
        extra: dict[str, Any] = {"headers": dict(headers)} if headers else {}
        reply = requests.get(status_url, timeout=30, **extra)
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


# --- clients: API keys, trust, revocation, purge; the holdout key ---------------------------------

PLAN_DEFAULT = "clients"
PURGE_SEGMENTS = 4
PURGE_PROGRESS_EVERY = 10_000
BATCH_WRITE_MAX = 25  # BatchWriteItem takes at most 25 requests (DynamoDB API reference, BatchWriteItem)
BATCH_ATTEMPTS = 8
# An IAM (SigV4) client is known by the ARN API Gateway writes in $context.identity.userArn:
# a user's (arn:aws:iam::<account>:user/<name>) or an assumed role's session
# (arn:aws:sts::<account>:assumed-role/<role>/<session>).
PRINCIPAL_ARN = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::\d{12}:\S+$")


@dataclass(frozen=True)
class ClientSettings:
    """Where the clients' resources are: the tables, and the stage's names for its API keys, its
    usage plans and its holdout key's secret."""

    service: str
    stage: str
    model_table: str
    data_table: str

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> ClientSettings:
        env = settings.environ() if env is None else env
        stage = settings.required(env, "STAGE")
        return cls(
            service=service_name(),
            stage=stage,
            model_table=settings.required(env, "MODEL_TABLE"),
            data_table=settings.required(env, "DATA_TABLE"),
        )

    def key_name(self, client: str) -> str:
        return f"{self.service}-{self.stage}-client-{client}"

    def plan_name(self, plan: str) -> str:
        # osls names the plans of provider.apiGateway.usagePlan's list form
        # "<service>-<plan>-<stage>" (osls lib/plugins/aws/package/compile/events/api-gateway/lib/
        # usage-plan.js, createUsagePlanResource); the local cloud creates them with the same names.
        return f"{self.service}-{plan}-{self.stage}"

    @property
    def holdout_secret(self) -> str:
        return f"{self.service}-{self.stage}/holdout-key"


def service_name() -> str:
    """``service`` of infra/serverless.yml: the prefix of every name the stack creates."""
    from localcloud import infra

    return str(infra.load(stage=LOCAL_STAGE).config["service"])


def _client_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    cmd = sub.add_parser("clients", parents=[common], help="who may send samples: keys, trust, revocation")
    verbs = cmd.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser(
        "add", parents=[common], help="a new client with its own API key (or IAM principal)"
    )
    add.add_argument("name")
    add.add_argument("--trust", choices=(clients.TRUSTED, clients.UNTRUSTED), default=clients.UNTRUSTED)
    who = add.add_mutually_exclusive_group()
    who.add_argument("--plan", help=f"the usage plan of its key (default {PLAN_DEFAULT})")
    who.add_argument("--iam-arn", help="an IAM principal that signs its requests (SigV4): no API key")
    add.add_argument("--reason", required=True)
    show = verbs.add_parser("list", parents=[common], help="every client, the built-in ones too")
    show.add_argument("--json", action="store_true")
    trust = verbs.add_parser("trust", parents=[common], help="change a client's trust")
    trust.add_argument("name")
    trust.add_argument("level", choices=clients.TRUST_LEVELS)
    trust.add_argument("--reason", required=True)
    revoke = verbs.add_parser("revoke", parents=[common], help="refuse a client and leave its samples out")
    revoke.add_argument("name")
    revoke.add_argument("--reason", required=True)
    purge = verbs.add_parser("purge", parents=[common], help="delete every sample of a revoked client")
    purge.add_argument("name")
    purge.add_argument("--reason", required=True)
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.add_argument("--segments", type=int, default=PURGE_SEGMENTS, help="parallel scan segments")
    events = verbs.add_parser("events", parents=[common], help="trust changes, purges, key rotations")
    events.add_argument("--limit", type=int, default=50)
    events.add_argument("--json", action="store_true")
    key = sub.add_parser("holdout-key", parents=[common], help="the holdout's HMAC key")
    key_verbs = key.add_subparsers(dest="verb", required=True)
    rotate = key_verbs.add_parser(
        "rotate", parents=[common], help="a new random key: the next run's holdout differs"
    )
    rotate.add_argument("--reason", required=True)


def run_clients(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        cfg = ClientSettings.from_env()
    except ConfigError as missing:
        print(
            f"error: {missing.message}: against AWS set STAGE, MODEL_TABLE and DATA_TABLE "
            '(README.md, "Keys, trust and revocation"), or pass --local for the local cloud',
            file=out,
        )
        return 2
    ops_ = ClientOps(cfg)
    try:
        if args.command == "holdout-key":
            event = ops_.rotate_holdout_key(actor(), args.reason)
            print(describe_rotation(cfg, event), file=out)
            return 0
        return _run_client_verb(ops_, args, out, err)
    except ClientError as failure:
        error = failure.response.get("Error", {})
        operation = getattr(failure, "operation_name", "the call")
        print(f"error: AWS refused {operation}: {error.get('Code')}: {error.get('Message')}", file=out)
        return 1


def _run_client_verb(ops_: ClientOps, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    verb = args.verb
    if verb == "add":
        client, key = ops_.add(
            args.name,
            trust=args.trust,
            plan=args.plan,
            iam_arn=args.iam_arn,
            actor=actor(),
            reason=args.reason,
        )
        print(describe_client(client), file=out)
        if key is not None:
            print(
                "\nThe API key, shown this once: store it now (a secret store, not a file in the "
                "repository). Send it in the x-api-key header.",
                file=out,
            )
            print(f"api key: {key}", file=out)
        return 0
    if verb == "list":
        listed = ops_.listing()
        print(json.dumps(listed, indent=2) if args.json else render_clients(listed), file=out)
        return 0
    if verb == "events":
        events = ops_.registry.events(limit=args.limit)
        print(json.dumps(events, indent=2, default=str) if args.json else render_events(events), file=out)
        return 0
    if verb in ("trust", "revoke"):
        level = clients.REVOKED if verb == "revoke" else args.level
        before, after, key_enabled = ops_.set_trust(args.name, level, actor=actor(), reason=args.reason)
        print(describe_trust(before, after, key_enabled), file=out)
        return 0
    if verb == "purge":
        if args.segments < 1:
            print("error: --segments must be at least 1", file=err)
            return 2
        ops_.check_purgeable(args.name)
        if not args.yes and not confirm(args.name, err):
            print("purge cancelled: nothing deleted", file=out)
            return 1
        deleted = ops_.purge(
            args.name,
            actor=actor(),
            reason=args.reason,
            segments=args.segments,
            progress=lambda line: print(line, file=err),
        )
        print(f"purged {deleted:,} samples of client {args.name!r} (recorded as a 'purged' event)", file=out)
        return 0
    raise AssertionError(f"unknown clients command {verb!r}")


def confirm(name: str, err: TextIO) -> bool:
    """The operator types the client's name again; anything else (or no terminal) cancels."""
    print(
        f"This deletes every sample client {name!r} sent, for good. Type its name to confirm: ",
        end="",
        file=err,
    )
    err.flush()
    try:
        answer = input()
    except EOFError:
        return False
    return answer.strip() == name


class ClientOps:
    """The operator's side of clients: each command's AWS calls, in an order that leaves nothing
    half-made (a key without a record is deleted again) and can be repeated."""

    def __init__(
        self, cfg: ClientSettings, *, ddb: Any = None, apigateway: Any = None, secrets_manager: Any = None
    ) -> None:
        self.cfg = cfg
        self._ddb = ddb
        self._apigateway = apigateway
        self._secrets = secrets_manager
        self.registry = clients.Clients(cfg.model_table, ddb)

    @property
    def ddb(self) -> Any:
        return self._ddb or aws.client("dynamodb")

    @property
    def apigateway(self) -> Any:
        return self._apigateway or aws.client("apigateway")

    @property
    def secrets_manager(self) -> Any:
        return self._secrets or aws.client("secretsmanager")

    # --- add ----------------------------------------------------------------------------------

    def add(
        self,
        name: str,
        *,
        trust: str,
        plan: str | None,
        iam_arn: str | None,
        actor: str,
        reason: str,
    ) -> tuple[clients.Client, str | None]:
        """Record a new client; with an API key (created enabled, joined to its usage plan) unless
        ``iam_arn``. Returns the client and the key's value (None for an IAM client)."""
        clients.check_name(name)
        clients.check_trust(trust)
        if not reason.strip():
            raise BadRequest("a reason is required", field="reason")
        if name in clients.BUILT_IN:
            raise Conflict(f"{name!r} is a built-in client ({clients.BUILT_IN[name]}): choose another name")
        try:
            self.registry.get(name)
        except NotFound:
            pass
        else:
            raise Conflict(f"client {name!r} already exists: choose another name", name=name)
        if iam_arn is not None:
            if not PRINCIPAL_ARN.fullmatch(iam_arn):
                raise BadRequest(
                    "--iam-arn must be an IAM user's or assumed role's ARN (arn:aws:iam::<account>:user/"
                    f"<name>, arn:aws:sts::<account>:assumed-role/<role>/<session>), got {iam_arn!r}",
                    field="iam_arn",
                )
            client = self.registry.create(
                name, trust=trust, principal_arn=iam_arn, actor=actor, reason=reason
            )
            return client, None
        plan = plan or PLAN_DEFAULT
        plan_id = self.usage_plan_id(plan)
        # CreateApiKey generates the value when none is given (API Gateway API reference,
        # CreateApiKey); CreateUsagePlanKey joins the key to the plan, so API Gateway accepts it
        # on the plan's stage within the plan's throttle and quota (API Gateway developer guide,
        # "Usage plans and API keys for REST APIs in API Gateway").
        created = self.apigateway.create_api_key(
            name=self.cfg.key_name(name),
            description=f"autoretrain client {name}: {reason}"[:1000],
            enabled=True,
        )
        key_id, value = created["id"], created["value"]
        try:
            self.apigateway.create_usage_plan_key(usagePlanId=plan_id, keyId=key_id, keyType="API_KEY")
            client = self.registry.create(
                name, trust=trust, api_key_id=key_id, plan=plan, actor=actor, reason=reason
            )
        except BaseException:
            # No key without a record: a key nobody can revoke by name must not stay behind.
            self.apigateway.delete_api_key(apiKey=key_id)
            raise
        return client, value

    def usage_plan_id(self, plan: str) -> str:
        wanted = self.cfg.plan_name(plan)
        kwargs: dict[str, Any] = {"limit": 500}
        while True:
            page = self.apigateway.get_usage_plans(**kwargs)
            for item in page.get("items", []):
                if item.get("name") == wanted:
                    return str(item["id"])
            if not page.get("position"):
                break
            kwargs["position"] = page["position"]
        raise NotFound(
            f"no usage plan {wanted!r} (plan {plan!r}): is the stack deployed, and is {plan!r} in "
            "provider.apiGateway.usagePlan of infra/serverless.yml?",
            plan=plan,
        )

    # --- list ---------------------------------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        """Every recorded client, then the built-ins without a record (trusted)."""
        recorded = {c.name: c for c in self.registry.list()}
        out = [recorded[n].to_dict() for n in sorted(recorded)]
        for name, what in clients.BUILT_IN.items():
            if name not in recorded:
                source = clients.TRAFFIC if name == clients.TRAFFIC else "api"
                out.append(
                    {"name": name, "trust": clients.TRUSTED, "source": source, "reason": f"built-in: {what}"}
                )
        return out

    # --- trust, revoke ------------------------------------------------------------------------

    def set_trust(
        self, name: str, level: str, *, actor: str, reason: str
    ) -> tuple[clients.Client | None, clients.Client, bool | None]:
        """Change the record (client, its identity's pointer and an event, in one transaction),
        then make its API key's state follow: disabled when revoked, enabled otherwise. Returns
        the client before (None: a built-in without a record), after, and whether its key is
        enabled (None: it has none)."""
        clients.check_trust(level)
        if not reason.strip():
            raise BadRequest("a reason is required", field="reason")
        try:
            before: clients.Client | None = self.registry.get(name)
        except NotFound:
            if name not in clients.BUILT_IN:
                raise NotFound(f"no client {name!r} (clients list shows them)", name=name) from None
            before = None
        # The traffic function's key is the stack's: its record, made on the first change, names
        # it, so that the pointer carries the trust to the upload function too.
        traffic_key = self.traffic_key_id() if name == clients.TRAFFIC else None
        if name == clients.TRAFFIC and traffic_key is None:
            # Without its key the change would reach the trainer but neither the gateway nor
            # the upload function: refuse rather than half-revoke.
            raise NotFound(
                f"the traffic function's API key {self.cfg.service}-{self.cfg.stage}-traffic is not in "
                "API Gateway: is the stack deployed in this region and stage?",
                name=name,
            )
        after = self.registry.set_trust(name, level, actor=actor, reason=reason, api_key_id=traffic_key)
        key_id = after.api_key_id or traffic_key
        enabled = None
        if key_id is not None:
            enabled = level != clients.REVOKED
            self.set_key_enabled(key_id, enabled)
        return before, after, enabled

    def traffic_key_id(self) -> str | None:
        """The id of the traffic function's key (the stack's TrafficApiKey, named
        ``<service>-<stage>-traffic``), which its record does not name; None if absent."""
        wanted = f"{self.cfg.service}-{self.cfg.stage}-traffic"
        kwargs: dict[str, Any] = {"nameQuery": wanted, "limit": 500}
        while True:
            page = self.apigateway.get_api_keys(**kwargs)
            for item in page.get("items", []):
                if item.get("name") == wanted:
                    return str(item["id"])
            if not page.get("position"):
                return None
            kwargs["position"] = page["position"]

    def set_key_enabled(self, key_id: str, enabled: bool) -> None:
        # A disabled key is refused by API Gateway with 403 on the routes that require one
        # (UpdateApiKey, patch op "replace" on "/enabled": AWS CLI reference, apigateway
        # update-api-key; API reference, ApiKey.enabled).
        try:
            self.apigateway.update_api_key(
                apiKey=key_id,
                patchOperations=[
                    {"op": "replace", "path": "/enabled", "value": "true" if enabled else "false"}
                ],
            )
        except ClientError as failure:
            state = "enabled" if enabled else "disabled"
            raise Unavailable(
                f"the record changed, but API key {key_id} could not be {state} "
                f"({failure.response.get('Error', {}).get('Code')}); run the same command again",
                api_key_id=key_id,
            ) from failure

    # --- purge --------------------------------------------------------------------------------

    def check_purgeable(self, name: str) -> clients.Client:
        try:
            client = self.registry.get(name)
        except NotFound:
            if name not in clients.BUILT_IN:
                raise NotFound(f"no client {name!r} (clients list shows them)", name=name) from None
            client = clients.Client(name=name, trust=clients.TRUSTED)
        if client.trust != clients.REVOKED:
            raise Conflict(
                f"client {name!r} is {client.trust}, not revoked: purge deletes only a revoked client's "
                f"samples. Revoke it first (clients revoke {name} --reason ...), then purge.",
                name=name,
                trust=client.trust,
            )
        return client

    def purge(
        self,
        name: str,
        *,
        actor: str,
        reason: str,
        segments: int = PURGE_SEGMENTS,
        progress: Callable[[str], None] = lambda line: None,
        backoff: Backoff | None = None,
    ) -> int:
        """Delete every sample of revoked client ``name`` from the data table (a parallel scan
        for its items' keys, deleted 25 at a time) and record a ``purged`` event with the count.
        ``unattributed``: the samples without a ``client``. Returns the number deleted.

        Deletions are REMOVE records on the data table's stream; the train trigger and the live
        scorer take INSERT records only (their filterPatterns, and lambdas/train.py's
        new_samples), so a purge starts no run and moves no count."""
        self.check_purgeable(name)
        if not reason.strip():
            raise BadRequest("a reason is required", field="reason")
        backoff = backoff or Backoff()
        table = self.cfg.data_table
        if name == clients.UNATTRIBUTED:
            condition: dict[str, Any] = {
                "FilterExpression": "attribute_not_exists(#c)",
                "ExpressionAttributeNames": {"#c": "client", "#id": "id"},
            }
        else:
            condition = {
                "FilterExpression": "#c = :c",
                "ExpressionAttributeNames": {"#c": "client", "#id": "id"},
                "ExpressionAttributeValues": {":c": {"S": name}},
            }
        lock = threading.Lock()
        deleted = [0]

        def count(n: int) -> None:
            with lock:
                before = deleted[0]
                deleted[0] += n
                if deleted[0] // PURGE_PROGRESS_EVERY > before // PURGE_PROGRESS_EVERY:
                    progress(f"purge {name}: {deleted[0]:,} samples deleted")

        def segment(number: int) -> None:
            kwargs: dict[str, Any] = {
                "TableName": table,
                "Segment": number,
                "TotalSegments": segments,
                "ProjectionExpression": "#id",
                # Every write completed before the scan began is in its response (Scan API
                # reference, ConsistentRead): nothing the client wrote before its revocation
                # is missed.
                "ConsistentRead": True,
                **condition,
            }
            while True:
                page = self.ddb.scan(**kwargs)
                keys = [{"id": item["id"]} for item in page.get("Items", [])]
                for start in range(0, len(keys), BATCH_WRITE_MAX):
                    self._delete(table, keys[start : start + BATCH_WRITE_MAX], backoff)
                    count(len(keys[start : start + BATCH_WRITE_MAX]))
                last = page.get("LastEvaluatedKey")
                if not last:
                    return
                kwargs["ExclusiveStartKey"] = last

        failure: Exception | None = None
        try:
            with ThreadPoolExecutor(max_workers=segments) as pool:
                for result in [pool.submit(segment, n) for n in range(segments)]:
                    result.result()
        except Exception as problem:  # noqa: BLE001 - recorded, then raised again below
            failure = problem
        # The count is recorded even when the purge stopped early: the event says how far it got.
        self.registry.record_event(
            clients.PURGED,
            actor=actor,
            reason=reason,
            name=name,
            deleted=deleted[0],
            complete=failure is None,
        )
        if failure is not None:
            if isinstance(failure, AutoretrainError):
                raise failure
            raise Unavailable(
                f"purge of {name!r} stopped after deleting {deleted[0]:,} samples ({failure}); "
                "run it again to delete the rest",
                deleted=deleted[0],
            ) from failure
        return deleted[0]

    def _delete(self, table: str, keys: list[dict[str, Any]], backoff: Backoff) -> None:
        """One BatchWriteItem of DeleteRequests, its UnprocessedItems retried with backoff
        (DynamoDB API reference, BatchWriteItem: "If any requested operations fail because the
        table's provisioned throughput is exceeded or an internal processing failure occurs, the
        failed operations are returned in the UnprocessedItems response parameter")."""
        pending = [{"DeleteRequest": {"Key": key}} for key in keys]
        for attempt in range(1, BATCH_ATTEMPTS + 1):
            try:
                reply = self.ddb.batch_write_item(RequestItems={table: pending})
                pending = reply.get("UnprocessedItems", {}).get(table, [])
            except ClientError as failure:
                if failure.response.get("Error", {}).get("Code") not in RETRYABLE_CODES:
                    raise
            if not pending:
                return
            if attempt < BATCH_ATTEMPTS:
                backoff.wait(attempt)
        raise Unavailable(
            f"DynamoDB left {len(pending)} deletions unprocessed after {BATCH_ATTEMPTS} attempts"
        )

    # --- holdout key --------------------------------------------------------------------------

    def rotate_holdout_key(self, actor: str, reason: str) -> dict[str, Any]:
        """A new random holdout key as the secret's current version (PutSecretValue moves the
        AWSCURRENT stage to the new version: Secrets Manager API reference, PutSecretValue);
        the event records its VersionId, never the value."""
        if not reason.strip():
            raise BadRequest("a reason is required", field="reason")
        secret = self.cfg.holdout_secret
        try:
            reply = self.secrets_manager.put_secret_value(SecretId=secret, SecretString=secrets.token_hex(32))
        except ClientError as failure:
            if failure.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise NotFound(
                    f"no secret {secret!r}: the stack creates it (HoldoutKeySecret); deploy it first"
                ) from failure
            raise
        return self.registry.record_event(
            clients.HOLDOUT_KEY_ROTATED,
            actor=actor,
            reason=reason,
            secret=secret,
            version_id=reply["VersionId"],
        )


CLIENT_COLUMNS = ("name", "trust", "source", "plan", "created", "reason")


def render_clients(listed: list[dict[str, Any]]) -> str:
    rows_ = [
        (
            str(c["name"]),
            str(c["trust"]),
            str(c.get("source", "-")),
            str(c.get("plan") or ("iam" if c.get("principal_arn") else "-")),
            str(c.get("created_at") or "-")[:19],
            str(c.get("reason") or ""),
        )
        for c in listed
    ]
    widths = [max(len(r[i]) for r in [CLIENT_COLUMNS, *rows_]) for i in range(len(CLIENT_COLUMNS))]
    line = lambda r: "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(CLIENT_COLUMNS), line(tuple("-" * w for w in widths)), *map(line, rows_)])


def render_events(events: list[dict[str, Any]]) -> str:
    if not events:
        return "no client events yet"
    lines = []
    for e in events:
        kind = e.get("event")
        if kind == clients.TRUST:
            what = f"{e.get('from')} -> {e.get('to')}"
        elif kind == clients.PURGED:
            what = f"{int(e.get('deleted') or 0):,} samples deleted" + (
                "" if e.get("complete", True) else " (stopped early)"
            )
        elif kind == clients.HOLDOUT_KEY_ROTATED:
            what = f"version {e.get('version_id')}"
        elif kind == clients.CREATED:
            what = str(e.get("trust") or "")
        else:
            what = ""
        lines.append(
            f"{str(e.get('at', '-'))[:23]}  {kind:<19}  {e.get('name') or '-':<16}  {what}  "
            f"by {e.get('actor')}: {e.get('reason')}"
        )
    return "\n".join(lines)


def describe_client(client: clients.Client) -> str:
    identity = (
        f"API key {client.api_key_id} in plan {client.plan}"
        if client.api_key_id
        else f"IAM principal {client.principal_arn} (requests signed with SigV4; no API key)"
    )
    return f"client {client.name} created: {client.trust}, {identity}"


def describe_trust(before: clients.Client | None, after: clients.Client, key_enabled: bool | None) -> str:
    was = before.trust if before is not None else f"{clients.TRUSTED} (built-in)"
    key = {None: "", True: "; its API key is enabled", False: "; its API key is disabled"}[key_enabled]
    line = f"client {after.name}: {was} -> {after.trust}{key}"
    if after.trust == clients.REVOKED:
        line += (
            ". Its requests are refused and its samples left out of every run; "
            f"`clients purge {after.name}` deletes them"
        )
    return line


def describe_rotation(cfg: ClientSettings, event: dict[str, Any]) -> str:
    return (
        f"holdout key rotated: {cfg.holdout_secret} is now version {event['version_id']}\n"
        "The next training run draws a different holdout: the holdout is the trusted samples whose "
        "HMAC-SHA256 under this key falls in the lowest HOLDOUT_PERCENT buckets, so a new key picks "
        "a new set, which no client can predict. Samples of the old holdout now train, and the "
        "gate evaluates latest on the new holdout alongside the candidate; latest has trained on "
        "part of that set, so the first comparison after a rotation favours it, and holdout "
        "accuracies of runs before and after the rotation are not comparable."
    )


if __name__ == "__main__":
    raise SystemExit(main())
