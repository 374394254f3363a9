"""``make demo ARGS=--drift``: the drift scenario on the local cloud, told step by step.

A first model is trained on office samples (``comfort.OFFICE``) by the count rule; office
traffic shows it serving well live; then the traffic shifts (``TRAFFIC_SHIFT_AT``: from that
moment samples come from ``comfort.SHIFTED``, winter on a shop floor, other inputs and PMV labels
at another metabolic rate). Live accuracy drops, the score function's quality or drift rule asks
for a retrain long before the count rule's ``MIN_NEW_SAMPLES`` new samples, and the new model
serves the shifted traffic well again.

The scenario plays the traffic function itself (the schedule is off): each call is
``lambdas.traffic``'s own ``make_samples`` and ``post`` to ``/upload`` with the traffic client's
API key (read from its secret, as the function reads it), with a seeded generator, and it waits
until the score function has counted a call's samples before the next, so the figures
(``Scenario.figures``, which ``scripts/bench_drift.py`` prints) count samples exactly
to a call. Each step fails with ``DemoFailed`` when it does not see what it should.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests

from lambdas import traffic
from lambdas.core import comfort, live, lock, registry
from localcloud.cloud import LocalCloud

RULES = ("quality", "drift")
MIN_NEW_SAMPLES = 600  # the count rule, far enough that the rules must come first
FIRST_SEED = 11
TRAFFIC_SEED = 12
NOISE = 0.05
PER_CALL = 20
BEFORE = 200  # office samples the first model scores before the shift
DURING_RETRAIN = 240  # at most this many shifted samples while the retrain runs
AFTER = 200  # shifted samples the new model scores
MAX_RULE_RUNS = 3  # rule-started runs the retrain step waits through for one the gate publishes


class DemoFailed(Exception):
    pass


def wait_until(what: str, check: Callable[[], Any], seconds: float, *, poll: float) -> Any:
    """``check()``'s first truthy value, asked every ``poll`` seconds; DemoFailed after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoFailed(f"gave up waiting for {what}")
        time.sleep(poll)


def api_key(cloud: LocalCloud) -> str:
    """The default client's API key as a user finds it: ``"api_key"`` in the local cloud's
    endpoints.json. POST /upload and POST /infer are private routes: without it, 403."""
    try:
        key = json.loads(cloud.endpoints_file.read_text()).get("api_key")
    except (OSError, ValueError) as err:
        raise DemoFailed(f"cannot read the local cloud's endpoints ({cloud.endpoints_file}): {err}") from err
    if not isinstance(key, str) or not key:
        raise DemoFailed(
            f'{cloud.endpoints_file} has no "api_key": the local cloud wrote no key for its default '
            "client, and POST /upload and POST /infer answer 403 without one (x-api-key)"
        )
    return key


def traffic_api_key(cloud: LocalCloud) -> str:
    """The traffic client's API key, read as the traffic function reads it: the secret its
    API_KEY_SECRET names."""
    secret = cloud.function_environment("traffic").get("API_KEY_SECRET")
    if not secret:
        raise DemoFailed("the traffic function has no API_KEY_SECRET: the secret holding its API key")
    value = cloud.client("secretsmanager").get_secret_value(SecretId=secret).get("SecretString")
    if not value:
        raise DemoFailed(f"secret {secret} holds no API key (no SecretString)")
    return str(value)


def cloud_options(min_new_samples: int = MIN_NEW_SAMPLES) -> dict[str, Any]:
    """The local cloud's settings for the scenario: the scheduled traffic off (the scenario
    sends it) and the count rule at ``min_new_samples``."""
    return {
        "schedule_overrides": {"traffic": {"enabled": False}},
        "environment": {"MIN_NEW_SAMPLES": str(min_new_samples)},
    }


def accuracy(counts: live.Counts) -> str:
    if not counts.seen:
        return "n=0"
    low, high = counts.interval() or (0.0, 0.0)
    return f"{counts.accuracy:.3f} [{low:.3f}, {high:.3f}] n={counts.seen:,}"


@dataclass
class Scenario:
    cloud: LocalCloud
    say: Callable[[str], None]
    min_new_samples: int = MIN_NEW_SAMPLES
    step_timeout: float = 240.0
    started: float = field(default_factory=time.monotonic)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(TRAFFIC_SEED))
    config: traffic.TrafficSettings | None = None
    first: str | None = None  # the model serving before the shift
    second: str | None = None  # the retrain the shift caused
    pre_shift: live.Counts = field(default_factory=live.Counts)  # the first model's, at the shift
    figures: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # the default client's API key (endpoints.json)
    traffic_key: str = ""  # the traffic client's

    def __post_init__(self) -> None:
        self.key = self.key or api_key(self.cloud)
        self.traffic_key = self.traffic_key or traffic_api_key(self.cloud)
        if self.config is None:
            self.config = traffic.TrafficSettings(
                api_url=self.cloud.api_url, min_samples=PER_CALL, max_samples=PER_CALL, label_noise=NOISE
            )

    # reading the local cloud ------------------------------------------------------------------

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:5.1f}s"

    def registry(self) -> registry.Registry:
        return registry.Registry(self.cloud.stack.table_name("ModelTable"), self.cloud.client("dynamodb"))

    def lock(self) -> lock.LockState:
        return lock.LockStore(self.cloud.stack.table_name("ModelTable"), self.cloud.client("dynamodb")).read()

    def counts(self, version: str) -> live.Counts:
        store = live.LiveStore(
            self.cloud.stack.table_name("ModelTable"), client=self.cloud.client("dynamodb")
        )
        return store.totals([version]).get(version, live.Counts())

    def runs(self) -> dict[str, dict[str, Any]]:
        listed, _ = self.registry().list_runs(limit=50)
        return {run["version"]: run for run in listed}

    def wait(self, what: str, check: Callable[[], Any], seconds: float | None = None) -> Any:
        return wait_until(what, check, seconds or self.step_timeout, poll=0.3)

    def finished(self, version: str) -> dict[str, Any] | None:
        run = self.runs().get(version)
        return run if run and run["status"] in registry.FINAL_STATUSES else None

    def new_run(self, known: set[str]) -> dict[str, Any] | None:
        return next((run for version, run in self.runs().items() if version not in known), None)

    # sending traffic --------------------------------------------------------------------------

    def send(self, version: str) -> int:
        """One traffic call over HTTP; waits until ``version`` has counted its samples (the
        scored totals grow by the call's size). The samples sent."""
        assert self.config is not None
        before = self.counts(version).seen
        samples = traffic.make_samples(self.config, self.rng)
        traffic.post(
            str(self.config.api_url), samples, api_key=self.traffic_key, timeout=self.config.timeout_s
        )
        self.wait(
            f"{version} to score {len(samples)} samples",
            lambda: self.counts(version).seen >= before + len(samples),
            60,
        )
        return len(samples)


# the steps ------------------------------------------------------------------------------------


def first_model(s: Scenario) -> None:
    samples = comfort.generate(s.min_new_samples, FIRST_SEED, NOISE)
    s.say(
        f"POST /upload with {len(samples)} office samples (PMV labels at {comfort.OFFICE.met} met, "
        f"{NOISE:.0%} label noise): the count rule starts a run at {s.min_new_samples} new samples"
    )
    reply = requests.post(
        f"{s.cloud.api_url}/upload", json=samples, headers={"x-api-key": s.key}, timeout=120
    )
    if reply.status_code != 200:
        raise DemoFailed(f"POST /upload answered {reply.status_code}: {reply.text[:200]}")
    launched = s.wait("the first run to be launched", lambda: s.new_run(set()))
    s.first = str(launched["version"])
    s.say(f"[{s.elapsed()}] run {s.first} launched by the {launched['trigger']['rule']} rule; training ...")
    run = s.wait(f"run {s.first} to finish", lambda: s.finished(str(s.first)))
    holdout = run.get("metrics", {}).get("holdout", {})
    s.say(
        f"[{s.elapsed()}] {run['status']}: holdout accuracy {holdout.get('accuracy')} "
        f"on {holdout.get('count')} samples; gate: {(run.get('gate') or {}).get('reason')}"
    )
    if run["status"] != registry.PUBLISHED:
        raise DemoFailed(f"the first model was not published: {run.get('gate') or run.get('error')}")
    s.wait("the first run's lock to be released", lambda: s.lock().holder is None)
    s.figures["holdout_first"] = holdout.get("accuracy")


def office_traffic(s: Scenario) -> None:
    assert s.first is not None
    s.say(f"traffic calls of {PER_CALL} office samples; the score function counts each with {s.first}")
    sent = 0
    while sent < BEFORE:
        sent += s.send(s.first)
        if sent % 100 == 0:
            s.say(f"[{s.elapsed()}] {sent:3d} office samples: live accuracy {accuracy(s.counts(s.first))}")
    if s.lock().request is not None or s.new_run({s.first}):
        raise DemoFailed(f"a retrain was asked for on office traffic: {s.lock().request}")
    s.pre_shift = s.counts(s.first)
    s.figures["live_before_shift"] = s.pre_shift.accuracy
    s.say("no rule holds: the model does on live samples what it did on its holdout")


def _since_shift(s: Scenario) -> live.Counts:
    assert s.first is not None
    now = s.counts(s.first)
    return live.Counts(tuple(a - b for a, b in zip(now.cells, s.pre_shift.cells, strict=True)))


def _rule_line(trigger: dict[str, Any], rule: str) -> str:
    figures = trigger.get(rule) or {}
    if rule == "quality":
        return (
            f"quality rule: live accuracy {figures['accuracy']:.3f} on {figures['seen']} samples, "
            f"its one-sided {figures['confidence']:.0%} upper bound {figures['upper']:.3f} < the holdout's "
            f"lower bound {figures['holdout_lower']:.3f} - {figures['tolerance']}"
        )
    psi = figures.get("psi") or {}
    return (
        f"drift rule: PSI of {figures['feature']} {psi[figures['feature']]:.2f} > {figures['threshold']} "
        f"on {figures['seen']} samples (" + ", ".join(f"{k} {v:.2f}" for k, v in psi.items()) + ")"
    )


def shift(s: Scenario) -> None:
    assert s.first is not None and s.config is not None
    first = s.first
    at_ms = int(time.time() * 1000)
    s.config = dataclasses.replace(s.config, shift_at_ms=at_ms)
    world = comfort.SHIFTED
    s.say(f"TRAFFIC_SHIFT_AT={live.iso(at_ms)}: traffic now comes from {world.name!r}:")
    s.say(
        "  "
        + ", ".join(f"{k} {lo:g}-{hi:g}" for k, (lo, hi) in world.ranges.items())
        + f"; PMV labels at {world.met} met instead of {comfort.OFFICE.met}"
    )
    sent = 0
    run = None
    while run is None:
        sent += s.send(s.first)
        state = s.lock()
        s.say(
            f"[{s.elapsed()}] {sent:3d} shifted samples: live accuracy on them "
            f"{accuracy(_since_shift(s))}; new samples pending {state.pending}/{s.min_new_samples}"
        )
        run = s.new_run({first})
        if run is None and state.request is not None:
            run = s.wait("the train function to start the requested run", lambda: s.new_run({first}), 30)
        if sent > 2 * s.min_new_samples:
            raise DemoFailed(f"no retrain after {sent} shifted samples")
    s.second = str(run["version"])
    trigger = run["trigger"]
    rule = trigger["rule"]
    if rule not in RULES:
        raise DemoFailed(f"run {s.second} was started by the {rule} rule, not by quality or drift")
    delay = int(trigger[rule]["seen"]) - s.pre_shift.seen
    s.say(f"run {s.second} started by the {_rule_line(trigger, rule)}")
    s.say(
        f"detection delay: {delay} shifted samples in the window the rule judged; the count rule "
        f"would have waited for {s.min_new_samples} new samples ({state.pending} were pending)"
    )
    s.figures.update(rule=rule, trigger=trigger[rule], detection_delay=delay, pending=state.pending)


def retrain(s: Scenario) -> None:
    """The rule's run, and the ones the rules ask for after it while the gate rejects: a run that
    starts right after the shift has little shifted data to learn from and, with a recent window
    too small to judge, faces the holdout rule; the rules ask again on the shifted traffic that
    follows, long before the count rule would."""
    assert s.first is not None and s.second is not None
    rejected: list[str] = []
    while True:
        run = _train(s, s.second)
        if run["status"] == registry.PUBLISHED and s.registry().latest_version() == s.second:
            break
        gate = run.get("gate") or {}
        if run["status"] != registry.REJECTED or len(rejected) + 1 >= MAX_RULE_RUNS:
            raise DemoFailed(f"the retrain was not published: {gate or run.get('error')}")
        rejected.append(s.second)
        s.say(f"the rules judge the shifted traffic again ({len(rejected)} rejected so far)")
        known = {s.first, *rejected}
        sent = 0
        while (nxt := s.new_run(known)) is None:
            sent += s.send(s.first)
            if sent > s.min_new_samples:
                raise DemoFailed(f"no run after {sent} more shifted samples")
        rule = nxt["trigger"]["rule"]
        if rule not in RULES:
            raise DemoFailed(f"run {nxt['version']} was started by the {rule} rule, not by quality or drift")
        s.second = str(nxt["version"])
        s.say(f"run {s.second} started by the {_rule_line(nxt['trigger'], rule)}")
    s.figures["rejected_runs"] = rejected
    after = _since_shift(s)
    s.figures["live_after_shift"] = after.accuracy
    s.say(f"{s.first} on the shifted samples it scored: live accuracy {accuracy(after)}")


def _train(s: Scenario, version: str) -> dict[str, Any]:
    """Shifted traffic while ``version`` trains; its finished run record."""
    assert s.first is not None
    s.say("shifted traffic goes on while the instance boots and the trainer scans the data table")
    sent = 0
    while sent < DURING_RETRAIN and not s.finished(version):
        sent += s.send(s.first)
    run = s.wait(f"run {version} to finish", lambda: s.finished(version))
    holdout = run.get("metrics", {}).get("holdout", {})
    gate = run.get("gate") or {}
    s.say(
        f"[{s.elapsed()}] {run['status']} after training on {run.get('sample_count')} samples: "
        f"holdout accuracy {holdout.get('accuracy')}; gate {gate.get('decision')}: {gate.get('reason')}"
    )
    return run


def recovery(s: Scenario) -> None:
    assert s.first is not None and s.second is not None
    s.say(f"shifted traffic goes on; the score function counts it with {s.second}")
    sent = 0
    while sent < AFTER:
        sent += s.send(s.second)
        if sent % 100 == 0:
            s.say(f"[{s.elapsed()}] {sent:3d} shifted samples: live accuracy {accuracy(s.counts(s.second))}")
    new, old = s.counts(s.second), _since_shift(s)
    s.figures["live_after_retrain"] = new.accuracy
    s.say(f"before the retrain {accuracy(old)}; after it {accuracy(new)}")
    new_low, old_high = (new.interval() or (0.0, 0.0))[0], (old.interval() or (0.0, 1.0))[1]
    if new_low <= old_high:
        raise DemoFailed(f"live accuracy did not recover: {accuracy(new)} against {accuracy(old)}")
    s.say("recovered: the new model's 95% interval lies above the old model's on the shifted traffic")


def page(s: Scenario) -> None:
    """What the page charts: the serving model's buckets, whichever version served them, with the
    runs the rules started on the same time axis."""
    assert s.first is not None and s.second is not None
    timeline = _serving(s)
    buckets = [b for b in reversed(timeline["buckets"]) if b.get("seen")]
    width = buckets[0]["bucket_s"] if buckets else "?"
    s.say(f"GET /models?live=serving: the serving model's live accuracy per {width} s bucket, oldest first,")
    s.say("each bucket under the version that scored most of it:")
    for version in dict.fromkeys(b["version"] for b in buckets):
        strip = "  ".join(f"{b['accuracy']:.2f}" for b in buckets if b["version"] == version)
        s.say(f"  {version}: {strip}")
    for run in reversed(timeline["runs"]):
        if run["rule"] in RULES:
            s.say(f"  marked: run {run['version']} started by the {run['rule']} rule, {run['status']}")
    drop = [b["accuracy"] for b in buckets if b["version"] == s.first][-1]
    now = [b["accuracy"] for b in buckets if b["version"] == s.second][-1]
    if {s.first, s.second} - {b["version"] for b in buckets} or not now > drop:
        raise DemoFailed(f"the serving timeline does not show the drop and the recovery: {buckets}")
    s.say(
        f"the page ({s.cloud.api_url}/) charts this line: the drop under {s.first}, the retrain "
        f"marked, the recovery under {s.second}, each span with its own holdout line"
    )


def _serving(s: Scenario) -> dict[str, Any]:
    reply = requests.get(f"{s.cloud.api_url}/models", params={"live": "serving", "buckets": "60"}, timeout=30)
    if reply.status_code != 200:
        raise DemoFailed(f"GET /models answered {reply.status_code}: {reply.text[:200]}")
    return dict(reply.json()["timeline"])


Step = tuple[str, Callable[[Scenario], None]]
STEPS: list[Step] = [
    ("A first model, trained on office samples (the count rule)", first_model),
    ("Office traffic: live accuracy matches the holdout", office_traffic),
    ("The world shifts: live accuracy drops, a rule asks for a retrain", shift),
    ("The retrain", retrain),
    ("The new model on the shifted traffic", recovery),
    ("What the page shows", page),
]
