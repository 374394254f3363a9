"""``make demo``: the pipeline on the local cloud, told step by step, then everything stopped.

Samples arrive (by hand, from the traffic schedule, and a client's batch); the data table's
stream reaches the train function, which launches a spot instance; the instance runs its real
user-data and the trainer; the gate decides; the instance powers itself off and its alarm is
deleted; ``POST /infer`` answers with the new model; the model table shows the run.

``--drift`` tells the drift scenario instead (``scripts/demo_drift.py``): live accuracy drops when
the traffic shifts, the quality or drift rule starts a retrain before the count rule would, and
the new model recovers.

Each step prints a heading and what it saw; a step that does not see what it should stops the
demo with exit status 1. The functions' own JSON log lines go to ``.localcloud/functions.log``
and each instance's console to ``.localcloud/instance-<id>.log``; the story condenses them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from lambdas.core import comfort, launch, registry
from localcloud.cloud import DEFAULT_STATE_DIR, LocalCloud
from scripts import demo_drift
from scripts import models as model_table

# The original project's client payload, unchanged.
ORIGINAL_SAMPLE = [
    {"created": 1570323309012, "temp": 75, "rh": 60, "wind": 0.6, "clo": 1.0, "label": "ok", "score": -1}
]
# A client's batch of labelled readings: with the traffic so far, enough for a first model.
BATCH_SAMPLES = 300
BATCH_SEED = 7
BATCH_NOISE = 0.05
# Inputs shown to POST /infer: cool and light clothes ... hot and heavy clothes.
INFER_INPUTS = [
    {"temp": 66.0, "rh": 40, "wind": 0.3, "clo": 0.4},
    {"temp": 72.0, "rh": 50, "wind": 0.1, "clo": 0.6},
    {"temp": 75, "rh": 60, "wind": 0.6, "clo": 1.0},
    {"temp": 79.0, "rh": 50, "wind": 0.1, "clo": 0.5},
    {"temp": 85.0, "rh": 65, "wind": 0.05, "clo": 1.0},
]
# The instance's console: user-data lines ("<time> autoretrain <version>: ..."), the
# stand-ins' lines, and the trainer's JSON lines; anything else (TensorFlow's start-up
# chatter) is left in the log file.
_USER_DATA_LINE = re.compile(r"^\S+Z autoretrain \S+: (.*)$")


DemoFailed = demo_drift.DemoFailed


@dataclass
class Demo:
    cloud: LocalCloud
    args: argparse.Namespace
    started: float = field(default_factory=time.monotonic)
    posted_ids: list[str] = field(default_factory=list)
    log_offset: int = 0  # where this demo's lines start in functions.log
    version: str | None = None  # the run the story follows
    instance_id: str | None = None
    launched_at: float | None = None  # epoch s, from the train function's log line
    terminated_at: float | None = None  # epoch s, when the demo saw the instance terminated
    key: str = ""  # the default client's API key, from endpoints.json as a user reads it

    @property
    def headers(self) -> dict[str, str]:
        """POST /upload and POST /infer are private routes: API Gateway wants the key."""
        return {"x-api-key": self.key}

    @property
    def function_log(self) -> Path:
        return Path(self.args.state_dir) / "functions.log"

    def say(self, line: str = "") -> None:
        print(f"   {line}" if line else "", flush=True)

    def events(self) -> list[dict[str, Any]]:
        """The functions' JSON log lines written since the last call."""
        try:
            with self.function_log.open("rb") as f:
                f.seek(self.log_offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self.log_offset += len(complete)
        out = []
        for line in complete.decode(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def registry(self) -> registry.Registry:
        return registry.Registry(self.cloud.stack.table_name("ModelTable"), self.cloud.client("dynamodb"))

    def wait(self, what: str, check: Callable[[], Any], seconds: float | None = None) -> Any:
        return demo_drift.wait_until(what, check, seconds or self.args.step_timeout, poll=0.5)

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
    demo.say(f'API_KEY: the default client\'s key, "api_key" in {demo.cloud.endpoints_file}')
    demo.say(f"$ curl -X POST {url} -H \"x-api-key: $API_KEY\" -d '{body}'")
    reply = requests.post(
        url, data=body, headers={"Content-Type": "application/json", **demo.headers}, timeout=30
    )
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
    by_client = Counter(item.get("client", {}).get("S", "unattributed") for item in items)
    by_label = Counter(item["label"]["S"] for item in items)
    demo.say(f"{len(items)} samples in {demo.cloud.stack.table_name('DataTable')}")
    demo.say("by source: " + ", ".join(f"{k} {v}" for k, v in sorted(by_source.items())))
    demo.say("by client: " + ", ".join(f"{k} {v}" for k, v in sorted(by_client.items())))
    demo.say("by label:  " + ", ".join(f"{k} {v}" for k, v in sorted(by_label.items())))
    posted = [item for item in items if item["id"]["S"] in demo.posted_ids]
    if len(posted) != len(ORIGINAL_SAMPLE):
        raise DemoFailed("the sample posted by hand is not in the data table")
    demo.say(f"the hand-posted sample: {_plain(posted[0])}")


def _plain(item: dict[str, Any]) -> str:
    values = {k: next(iter(v.values())) for k, v in sorted(item.items())}
    return json.dumps(values)


def upload_batch(demo: Demo) -> None:
    samples = comfort.generate(BATCH_SAMPLES, BATCH_SEED, BATCH_NOISE)
    demo.say(
        f"POST /upload with {len(samples)} samples labelled by the PMV comfort model "
        f"({BATCH_NOISE:.0%} label noise)"
    )
    reply = requests.post(f"{demo.cloud.api_url}/upload", json=samples, headers=demo.headers, timeout=120)
    if reply.status_code != 200:
        raise DemoFailed(f"POST /upload answered {reply.status_code}: {reply.text[:200]}")
    demo.say(f"HTTP 200: {reply.json()['written']} written; the data table holds {demo.data_count()} samples")


def watch_trigger(demo: Demo) -> None:
    needed = demo.cloud.function_environment("train").get("MIN_NEW_SAMPLES", "?")
    demo.say(f"the data table's stream feeds the train function; a run starts at {needed} new samples")

    def launched() -> bool:
        for event in demo.events():
            name = event.get("event")
            if name == "train_trigger":
                outcome = f"launch {event['launch']}" if event.get("launch") else event.get("reason")
                demo.say(
                    f"[{demo.elapsed()}] stream batch: {event.get('new_samples', 0):3d} new samples "
                    f"-> train function: {outcome}"
                )
            elif name == "instance_launched":
                demo.version, demo.instance_id = event["version"], event["instance_id"]
                demo.launched_at = float(event["ts"])
                demo.say(f"[{demo.elapsed()}] instance {demo.instance_id} launched ({event['market']})")
            elif name == "alarm_created" and event.get("version") == demo.version:
                demo.say(f"[{demo.elapsed()}] idle alarm {event['alarm']} created (the backstop)")
                return True
        return False

    demo.wait("a training instance to be launched", launched)


def _trainer_line(event: dict[str, Any], every: int) -> str | None:
    name = event.get("event")
    if name == "run_start":
        return f"trainer: run {event['version']} on instance {event['instance_id']}"
    if name == "epoch":
        epoch = int(event["epoch"])
        if epoch != 1 and epoch % every:
            return None
        return (
            f"trainer: epoch {epoch:3d}  loss {event.get('loss', 0):.3f}  acc {event.get('accuracy', 0):.3f}"
            f"  |  val_loss {event.get('val_loss', 0):.3f}  val_acc {event.get('val_accuracy', 0):.3f}"
        )
    if name == "evaluated":
        return (
            f"trainer: accuracy train {event.get('train')}, validation {event.get('validation')}, "
            f"holdout {event.get('holdout')}"
        )
    if name == "gate":
        return f"trainer: gate {event.get('decision')}: {event.get('reason')}"
    if name == "run_summary":
        return (
            f"trainer: {event.get('status')} after {event.get('epochs_run', '?')} epochs on "
            f"{event.get('sample_count', '?')} samples, {event.get('duration_s')}s, "
            f"exit {event.get('exit_code')}"
        )
    if event.get("level") in ("WARNING", "ERROR"):
        return f"trainer: {name} {json.dumps(event)[:160]}"
    return None


def _console_line(line: str, every: int) -> str | None:
    if line.startswith("{"):
        try:
            return _trainer_line(json.loads(line), every)
        except ValueError:
            return None
    match = _USER_DATA_LINE.match(line)
    if match:
        return f"user-data: {match.group(1)}"
    if line.startswith(("docker stand-in:", "shutdown stand-in:")):
        return line if len(line) <= 140 else line[:137] + "..."
    return None


def watch_instance(demo: Demo) -> None:
    console = Path(demo.args.state_dir) / f"instance-{demo.instance_id}.log"
    demo.say(f"the instance runs its real user-data with docker/aws/shutdown stand-ins (console: {console})")
    offset = 0

    def powered_off() -> bool:
        nonlocal offset
        if console.exists():
            with console.open("rb") as f:
                f.seek(offset)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            offset += len(complete)
            for raw in complete.decode(errors="replace").splitlines():
                line = _console_line(raw, demo.args.epoch_every)
                if line:
                    demo.say(f"[{demo.elapsed()}] {line}")
                if raw.startswith("shutdown stand-in:"):
                    return True
        return False

    demo.wait(f"instance {demo.instance_id} to power itself off", powered_off)


def show_gate(demo: Demo) -> None:
    assert demo.version is not None
    run = demo.registry().get_run(demo.version)
    gate = run.get("gate") or {}
    holdout = ((run.get("metrics") or {}).get("holdout") or {}).get("accuracy")
    demo.say(f"run {demo.version}: {run['status']} (holdout accuracy {holdout})")
    demo.say(f"gate: {gate.get('decision', '-')}: {gate.get('reason') or run.get('error', '-')}")
    latest = demo.registry().latest_version()
    demo.say(f"latest -> {latest}")
    if run["status"] != registry.PUBLISHED or latest != demo.version:
        raise DemoFailed(f"the first model was not published: {run['status']} {gate or run.get('error')}")


def show_cleanup(demo: Demo) -> None:
    assert demo.version is not None and demo.instance_id is not None
    ec2 = demo.cloud.client("ec2")
    cloudwatch = demo.cloud.client("cloudwatch")

    def terminated() -> dict[str, Any] | None:
        reply = ec2.describe_instances(InstanceIds=[demo.instance_id])
        instance = reply["Reservations"][0]["Instances"][0]
        return instance if instance["State"]["Name"] == "terminated" else None

    instance = demo.wait(f"instance {demo.instance_id} to be terminated", terminated)
    demo.terminated_at = time.time()
    reason = (instance.get("StateReason") or {}).get("Message", "")
    demo.say(f"instance {demo.instance_id}: terminated ({reason or 'no reason given'})")
    name = launch.alarm_name(demo.cloud.stage, demo.version)
    demo.wait(
        f"alarm {name} to be deleted",
        lambda: not cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"],
    )
    demo.say(f"alarm {name}: deleted by the train function when the run ended")
    if demo.launched_at is not None:
        billed = demo.terminated_at - demo.launched_at
        demo.say(
            f"instance time for this retrain: {billed:.0f}s from launch to terminated (the original "
            "design idled at least 10 more minutes before its 2 x 5-minute alarm fired)"
        )
    runner = next((d for d in demo.cloud.drivers if d.name == "instances"), None)
    endings = getattr(runner, "endings", None)
    if endings is not None:
        ending = demo.wait(
            "the instance runner to see the instance end", lambda: endings.get(demo.instance_id)
        )
        if ending != "shutdown":
            raise DemoFailed(f"instance {demo.instance_id} did not power itself off: {ending}")


def show_predictions(demo: Demo) -> None:
    url = f"{demo.cloud.api_url}/infer"
    demo.say(f"POST {url} with {len(INFER_INPUTS)} inputs")
    reply = requests.post(url, json=INFER_INPUTS, headers=demo.headers, timeout=60)
    if reply.status_code != 200:
        raise DemoFailed(f"POST /infer answered {reply.status_code}: {reply.text[:200]}")
    body = reply.json()
    demo.say()
    demo.say(
        f"{'temp °F':>7} {'rh %':>5} {'wind':>5} {'clo':>5}  ->  {'label':5}  cold   ok     warm   version"
    )
    for item, prediction in zip(INFER_INPUTS, body["predictions"], strict=True):
        p = prediction["probabilities"]
        demo.say(
            f"{item['temp']:7.1f} {item['rh']:5.0f} {item['wind']:5.2f} {item['clo']:5.2f}  ->  "
            f"{prediction['label']:5}  {p['cold']:.3f}  {p['ok']:.3f}  {p['warm']:.3f}  {body['version']}"
        )
    demo.say()
    if body["version"] != demo.registry().latest_version():
        raise DemoFailed(f"/infer answered with {body['version']}, not the latest")


def show_model_table(demo: Demo) -> None:
    reg = demo.registry()
    runs, _ = reg.list_runs(limit=20)
    latest = reg.latest_version()
    for line in model_table.render(model_table.rows(runs, latest)).splitlines():
        demo.say(line)
    demo.say(f"latest: {latest}  (* marks it; GET {demo.cloud.api_url}/models has the full records)")


Step = tuple[str, Callable[[Demo], None]]
# Run in order after the local cloud is up.
STEPS: list[Step] = [
    ("Post the original project's sample through the HTTP API", post_original_sample),
    ("Synthetic traffic arrives on its own", watch_traffic),
    ("The data table", show_data_table),
    ("A client uploads a batch of labelled readings", upload_batch),
    ("New samples trigger a retrain: stream -> train function -> one spot instance", watch_trigger),
    ("The spot instance trains a model", watch_instance),
    ("The promotion gate", show_gate),
    ("The instance terminates itself; its alarm is removed", show_cleanup),
    ("Predictions from POST /infer", show_predictions),
    ("The model table", show_model_table),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.demo", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument(
        "--drift",
        action="store_true",
        help="the drift scenario: traffic shifts, a rule retrains before the count rule, accuracy recovers",
    )
    parser.add_argument("--watch-seconds", type=float, default=12, help="how long to watch traffic arrive")
    parser.add_argument("--interval", type=float, default=2, help="seconds between progress lines")
    parser.add_argument("--epoch-every", type=int, default=10, help="show every Nth training epoch")
    parser.add_argument(
        "--step-timeout", type=float, default=240, help="seconds a step may wait for what it should see"
    )
    return parser.parse_args(argv)


def heading(number: int, title: str) -> None:
    print(f"\n{number}. {title}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    function_log = args.state_dir / "functions.log"
    heading(1, "Start the local cloud (moto server, resources and routes from infra/serverless.yml)")

    def say(line: str) -> None:
        # The drift scenario sends a stream batch every call: the poller's line for each is noise.
        if not (args.drift and line.startswith("stream ") and line.endswith(", ok")):
            print(f"   {line}", flush=True)

    options = demo_drift.cloud_options() if args.drift else {}
    cloud = LocalCloud(args.state_dir, function_log=function_log, say=say, **options)
    try:
        with cloud:
            print(f"   function logs: {function_log}", flush=True)
            if args.drift:
                scenario = demo_drift.Scenario(cloud, say, step_timeout=args.step_timeout)
                steps: list[tuple[str, Callable[[Any], None]]] = list(demo_drift.STEPS)
                target: Any = scenario
            else:
                offset = function_log.stat().st_size if function_log.exists() else 0
                key = demo_drift.api_key(cloud)
                steps, target = list(STEPS), Demo(cloud, args, log_offset=offset, key=key)
            for number, (title, step) in enumerate(steps, start=2):
                heading(number, title)
                step(target)
            heading(len(steps) + 2, "Stop everything")
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
