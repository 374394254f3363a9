"""``make demo``: the pipeline on the local cloud, told step by step, then everything stopped.

Each step prints a heading and what it saw; a step that does not see what it should stops the
demo with exit status 1. The functions' own JSON log lines go to ``.localcloud/functions.log``
so the story stays readable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from scripts.localcloud.cloud import DEFAULT_STATE_DIR, LocalCloud

# The original project's client payload, unchanged.
ORIGINAL_SAMPLE = [
    {"created": 1570323309012, "temp": 75, "rh": 60, "wind": 0.6, "clo": 1.0, "label": "ok", "score": -1}
]
# Retraining is not part of this demo yet: the trigger's threshold is set out of reach so the
# story stays on ingestion.
DEMO_ENVIRONMENT = {"MIN_NEW_SAMPLES": "1000000"}


class DemoFailed(Exception):
    pass


@dataclass
class Demo:
    cloud: LocalCloud
    args: argparse.Namespace
    started: float = field(default_factory=time.monotonic)
    posted_ids: list[str] = field(default_factory=list)

    def say(self, line: str = "") -> None:
        print(f"   {line}" if line else "", flush=True)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:5.1f}s"

    def data_items(self) -> list[dict[str, Any]]:
        dynamodb = self.cloud.client("dynamodb")
        table = self.cloud.stack.table_name("DataTable")
        items: list[dict[str, Any]] = []
        for page in dynamodb.get_paginator("scan").paginate(TableName=table):
            items.extend(page["Items"])
        return items

    def data_count(self) -> int:
        dynamodb = self.cloud.client("dynamodb")
        table = self.cloud.stack.table_name("DataTable")
        pages = dynamodb.get_paginator("scan").paginate(TableName=table, Select="COUNT")
        return sum(int(page["Count"]) for page in pages)


def post_original_sample(demo: Demo) -> None:
    url = f"{demo.cloud.api_url}/upload"
    body = json.dumps(ORIGINAL_SAMPLE)
    demo.say(f"$ curl -X POST {url} -d '{body}'")
    reply = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    demo.say(f"HTTP {reply.status_code}")
    demo.say(reply.text)
    if reply.status_code != 200:
        raise DemoFailed(f"POST /upload answered {reply.status_code}")
    demo.posted_ids = list(reply.json().get("ids") or [])
    demo.say(f"the data table now holds {demo.data_count()} sample(s)")


def watch_traffic(demo: Demo) -> None:
    schedule = next((s for s in demo.cloud.scheduler.items if s.function == "traffic"), None)  # type: ignore[union-attr]
    if schedule is None:
        raise DemoFailed("the traffic schedule is not enabled (custom.localCloud.schedules.traffic)")
    demo.say(
        f"the scheduler fires the traffic function {schedule.expression}; it posts to /upload like a client"
    )
    start = demo.data_count()
    previous = start
    deadline = time.monotonic() + demo.args.watch_seconds
    while time.monotonic() < deadline:
        time.sleep(min(demo.args.interval, max(0.0, deadline - time.monotonic())))
        count = demo.data_count()
        demo.say(
            f"[{demo.elapsed()}] samples: {count:4d} (+{count - previous:2d})   "
            f"traffic runs: {demo.cloud.invocations['traffic']}   uploads: {demo.cloud.invocations['upload']}"
        )
        previous = count
    if previous <= start:
        raise DemoFailed(f"no traffic arrived in {demo.args.watch_seconds:g} s")


def show_data_table(demo: Demo) -> None:
    items = demo.data_items()
    by_source = Counter(item.get("source", {}).get("S", "?") for item in items)
    by_label = Counter(item["label"]["S"] for item in items)
    demo.say(f"{len(items)} samples in {demo.cloud.stack.table_name('DataTable')}")
    demo.say("by source: " + ", ".join(f"{k} {v}" for k, v in sorted(by_source.items())))
    demo.say("by label:  " + ", ".join(f"{k} {v}" for k, v in sorted(by_label.items())))
    posted = [item for item in items if item["id"]["S"] in demo.posted_ids]
    if len(posted) != len(ORIGINAL_SAMPLE):
        raise DemoFailed("the sample posted by hand is not in the data table")
    demo.say(f"the hand-posted sample: {_plain(posted[0])}")


def _plain(item: dict[str, Any]) -> str:
    values = {k: next(iter(v.values())) for k, v in sorted(item.items())}
    return json.dumps(values)


Step = tuple[str, Callable[[Demo], None]]
# Run in order after the local cloud is up; later parts of the story are appended here.
STEPS: list[Step] = [
    ("Post the original project's sample through the HTTP API", post_original_sample),
    ("Synthetic traffic arrives on its own", watch_traffic),
    ("The data table", show_data_table),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.demo", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--watch-seconds", type=float, default=24, help="how long to watch traffic arrive")
    parser.add_argument("--interval", type=float, default=2, help="seconds between progress lines")
    return parser.parse_args(argv)


def heading(number: int, title: str) -> None:
    print(f"\n{number}. {title}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    function_log = args.state_dir / "functions.log"
    heading(1, "Start the local cloud (moto server, resources and routes from infra/serverless.yml)")
    cloud = LocalCloud(
        args.state_dir,
        environment=DEMO_ENVIRONMENT,
        function_log=function_log,
        say=lambda line: print(f"   {line}", flush=True),
    )
    try:
        with cloud:
            print(f"   function logs: {function_log}", flush=True)
            demo = Demo(cloud, args)
            for number, (title, step) in enumerate(STEPS, start=2):
                heading(number, title)
                step(demo)
            heading(len(STEPS) + 2, "Stop everything")
    except DemoFailed as err:
        print(f"\ndemo failed: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; everything was stopped", file=sys.stderr, flush=True)
        return 130
    print("   stopped: servers closed, threads joined\n\ndone", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
