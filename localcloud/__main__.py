"""``python -m localcloud`` (``make local``): run the local cloud in the foreground
until Ctrl-C, SIGTERM or ``--duration`` seconds."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

from localcloud.cloud import DEFAULT_STATE_DIR, LocalCloud, forget

DEFAULT_API_PORT = 3000
DEFAULT_AWS_PORT = 4566


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m localcloud", description=__doc__)
    parser.add_argument("--api-port", type=int, default=DEFAULT_API_PORT, help="0 picks a free port")
    parser.add_argument("--aws-port", type=int, default=DEFAULT_AWS_PORT, help="0 picks a free port")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="endpoints.json, logs")
    parser.add_argument("--stage", default="local")
    parser.add_argument(
        "--no-traffic", action="store_true", help="do not fire the synthetic traffic schedule"
    )
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start empty: forget the tables, objects, runs and lock kept in the state directory",
    )
    parser.add_argument(
        "--ephemeral",
        action="store_true",
        help="keep nothing: the state lives in memory and goes with the process",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a function environment variable over serverless.yml (repeatable)",
    )
    parser.add_argument(
        "--function-log",
        type=Path,
        default=None,
        help="write the functions' log lines here instead of stdout",
    )
    args = parser.parse_args(argv)
    for item in args.env:
        if "=" not in item:
            parser.error(f"--env expects NAME=VALUE, got {item!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    if args.fresh:
        forget(args.state_dir)
    cloud = LocalCloud(
        args.state_dir,
        durable=not args.ephemeral,
        api_port=args.api_port,
        aws_port=args.aws_port,
        stage=args.stage,
        schedule_overrides={"traffic": {"enabled": False}} if args.no_traffic else None,
        environment=dict(item.split("=", 1) for item in args.env),
        function_log=args.function_log,
    )
    try:
        with cloud:
            cloud.say(f"endpoints written to {cloud.endpoints_file}")
            cloud.say(
                "try: curl -X POST "
                f"{cloud.api_url}/upload -d "
                """'[{"created": 1570323309012, "temp": 75, "rh": 60, "wind": 0.6, "clo": 1.0, """
                """"label": "ok", "score": -1}]'"""
            )
            cloud.say(
                "running; Ctrl-C stops" if args.duration is None else f"running for {args.duration:g} s"
            )
            stopping.wait(args.duration)
            cloud.say("stopping")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    cloud.say("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
