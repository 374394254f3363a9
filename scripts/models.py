"""The model table from a terminal: list runs, change latest, read its history.

    python -m scripts.models [--limit N]                     runs newest first, latest "*" (make models)
    python -m scripts.models history [--limit N] [--newest-first]
    python -m scripts.models rollback VERSION [--reason R] [--pin | --no-pin] [--force]
    python -m scripts.models promote VERSION ...             the same as rollback, for a newer version
    python -m scripts.models pin [--reason R] [--version V]  stop automatic promotions
    python -m scripts.models unpin [--reason R]              let the gate promote again

The run list shows each version's live accuracy next to its holdout accuracy: how it did on the
labelled samples that arrived while it was latest, with its 95 % interval and count.

Against AWS it reads MODEL_TABLE, MODEL_BUCKET and NOTIFY_TOPIC_ARN (optional) from the
environment and uses your AWS credentials. ``--local`` targets the running local cloud instead:
the AWS endpoint comes from .localcloud/endpoints.json and the names from infra/serverless.yml.
Changes are recorded with the actor ``cli:$USER`` and announced like the API's.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from pathlib import Path
from typing import Any

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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


if __name__ == "__main__":
    raise SystemExit(main())
