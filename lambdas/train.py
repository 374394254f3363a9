"""Train trigger: new samples -> at most one coalesced training run at a time.

Three event sources:

- the data table's stream: INSERT records are new samples (MODIFY/REMOVE are not new data);
  their ids go into the lock's pending set, which a replay cannot grow (see
  ``lambdas.core.lock``);
- the model table's stream: a run reaching a final status frees the lock and deletes its alarm;
- EventBridge's EC2 instance state-change events: when the lock holder's instance shuts down,
  terminates or stops, the run ends with it. If the trainer already recorded an outcome this is
  the same "run ended" step as the model table's stream (whichever comes first frees the lock,
  the other changes nothing); if the run is still ``training`` (the idle alarm terminated a hung
  trainer, a spot reclaim, a crash) it is marked ``interrupted`` and announced, its alarm is
  deleted and the lock freed at once. Events of any other instance cost one read of the lock.

A fourth, the run's idle alarm (``lambdas.core.launch``: no heartbeat and idle CPU), invokes
this function as its action: on its change to ALARM the instance of the run that holds the lock
is terminated, and that instance's state-change event ends the run ``interrupted`` as above (an
infrastructure failure: retried). An alarm of any other run, another state or a replayed event
changes nothing.

A fifth, a schedule (every minute), re-evaluates the lock with one read and steps only when a
retry has come due, a rule's request waits (the score function's quality or drift rule,
``lambdas.core.quality``), or the lock expired: neither needs a new event. While a run is in
flight it also looks at the run's instance: an instance that ended without its state-change event being
handled (lost, failed) ends its run at the next tick, as that event would have.

After any of them, a run starts if the lock is free (or expired), no bulk import holds it (the
importer's ``holds``: one run after an import instead of one per ``MIN_NEW_SAMPLES`` of its rows;
the schedule launches it once the hold is gone), enough new samples are pending
or a rule's request waits, and the minimum interval has passed (and a retry's backoff, unless
enough fresh data came). The run item's ``trigger.rule`` says which rule started it.
A run that ended with a model, or failed on its data or code, consumes the samples it scanned
(its ``scan_started_ms``): samples that arrived between its launch and its scan do not start a
second run. A run that failed for an infrastructure reason leaves its samples pending and is
retried with backoff a bounded number of times (``lambdas.core.lock``); the retry plan is
recorded on the run item (``retry``) and announced.

The run item is created as ``training`` before the instance starts; the trainer always writes
its final status when it can. If the instance dies first and its state-change event is lost, the
next trigger that wants to launch notices: the run is marked ``interrupted`` (instance gone) or
``failed`` (lock expired while the instance still ran, which it then terminates) and the lock is
taken over.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from botocore.exceptions import ClientError

from lambdas.core import aws, launch, lock, log, notify, registry, settings, userdata
from lambdas.core.errors import AutoretrainError, ConfigError, Conflict, NotFound, Unavailable


@dataclass(frozen=True)
class TrainSettings:
    stage: str
    data_table: str
    model_table: str
    model_bucket: str
    model_prefix: str
    min_new_samples: int
    min_interval_s: int
    time_limit_s: int
    lock_ttl_s: int
    trainer_image: str
    trainer_settings: dict[str, str]
    launch: launch.LaunchSettings
    # Passed on to the trainer: where it load-checks a candidate and announces outcomes.
    api_url: str | None = None
    notify_topic_arn: str | None = None
    # The holdout key's secret (its ARN): the trainer reads it with its instance role; this
    # function only passes the name on and may not read it.
    holdout_key_secret: str | None = None
    retry: lock.RetryPolicy = field(default_factory=lock.RetryPolicy)
    # Samples ingested this long before a run's scan started count again (see lock.end_run).
    scan_margin_s: int = 30

    @classmethod
    def from_env(cls, env: settings.Env | None = None) -> TrainSettings:
        env = settings.environ() if env is None else env
        time_limit = settings.integer(env, "TRAIN_TIME_LIMIT_S", 1800, minimum=60)
        return cls(
            stage=settings.required(env, "STAGE"),
            data_table=settings.required(env, "DATA_TABLE"),
            model_table=settings.required(env, "MODEL_TABLE"),
            model_bucket=settings.required(env, "MODEL_BUCKET"),
            model_prefix=settings.optional(env, "MODEL_PREFIX", "models/"),
            min_new_samples=_min_new_samples(env),
            min_interval_s=settings.integer(env, "MIN_INTERVAL_S", 300, minimum=0),
            time_limit_s=time_limit,
            lock_ttl_s=settings.integer(env, "LOCK_TTL_S", time_limit + 600, minimum=time_limit + 60),
            trainer_image=settings.required(env, "TRAINER_IMAGE"),
            trainer_settings=_pairs(settings.optional(env, "TRAINER_SETTINGS", "")),
            launch=launch.LaunchSettings.from_env(env),
            api_url=settings.optional(env, "API_URL", "") or None,
            notify_topic_arn=settings.optional(env, "NOTIFY_TOPIC_ARN", "") or None,
            holdout_key_secret=settings.optional(env, "HOLDOUT_KEY_SECRET", "") or None,
            retry=lock.RetryPolicy(
                retries=settings.integer(env, "TRAIN_RETRIES", 3, minimum=0),
                backoff_s=settings.integer(env, "TRAIN_RETRY_BACKOFF_S", 60, minimum=1),
            ),
            scan_margin_s=settings.integer(env, "SCAN_MARGIN_S", 30, minimum=0),
        )


def _min_new_samples(env: settings.Env) -> int:
    value = settings.integer(env, "MIN_NEW_SAMPLES", 50, minimum=1)
    if value > lock.MAX_PENDING:
        raise ConfigError(
            f"MIN_NEW_SAMPLES must be at most {lock.MAX_PENDING:,}, got {value:,}: the lock item keeps "
            "that many pending sample ids and a DynamoDB item holds at most 400 KB"
        )
    return value


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for word in text.split():
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise ConfigError(f"TRAINER_SETTINGS must be KEY=VALUE words, got {word!r}")
        out[name] = value
    return out


@dataclass(frozen=True)
class Clients:
    ddb: Any = None
    ec2: Any = None
    cloudwatch: Any = None

    @classmethod
    def default(cls) -> Clients:
        return cls(aws.dynamodb(), aws.client("ec2"), aws.client("cloudwatch"))


# stream records -----------------------------------------------------------------------------


def _table_of(record: dict[str, Any]) -> str:
    # arn:aws:dynamodb:<region>:<account>:table/<name>/stream/<label>
    return str(record.get("eventSourceARN", "")).split(":table/", 1)[-1].split("/", 1)[0]


def new_samples(records: Iterable[dict[str, Any]]) -> list[tuple[str, int]]:
    """(id, ingested epoch ms) of every INSERT; other events are not new data."""
    out = []
    for record in records:
        if record.get("eventName") != "INSERT":
            continue
        change = record.get("dynamodb") or {}
        image = change.get("NewImage") or {}
        sample_id = (change.get("Keys") or {}).get("id", {}).get("S") or image.get("id", {}).get("S")
        if not sample_id:
            continue
        if "N" in image.get("ingested", {}):
            ingested = int(float(image["ingested"]["N"]))
        else:
            ingested = int(float(change.get("ApproximateCreationDateTime", time.time())) * 1000)
        out.append((sample_id, ingested))
    return out


def finished_runs(records: Iterable[dict[str, Any]]) -> list[lock.RunEnd]:
    """How each run whose item now has a final status ended."""
    out = []
    for record in records:
        image = (record.get("dynamodb") or {}).get("NewImage") or {}
        if image.get("kind", {}).get("S") != registry.RUN_KIND:
            continue
        if image.get("status", {}).get("S") in registry.FINAL_STATUSES:
            out.append(run_end(registry.from_item(image)))
    return out


def run_end(run: dict[str, Any]) -> lock.RunEnd:
    """A final run item as the lock sees it. Without ``failure_kind`` (an older trainer) an
    interruption is the infrastructure's doing and a failure the data's (not retried, as
    before)."""
    status = run.get("status")
    kind = run.get("failure_kind")
    if kind is None and status in (registry.FAILED, registry.INTERRUPTED):
        kind = registry.INFRASTRUCTURE if status == registry.INTERRUPTED else registry.DATA
    scanned = run.get("scan_started_ms")
    return lock.RunEnd(
        str(run.get("version") or run["pk"]),
        failure_kind=kind if status in (registry.FAILED, registry.INTERRUPTED) else None,
        scan_started_ms=None if scanned is None else int(scanned),
    )


# the decision -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    launch: str | None = None  # version to start
    stale: lock.LockState | None = None  # the dead holder taken over
    reason: str | None = None  # why nothing starts
    previous: lock.LockState | None = None  # the lock just before it was acquired
    retries: tuple[tuple[str, lock.Retry], ...] = ()  # plans for the runs that failed (stale too)
    rule: str | None = None  # which rule starts ``launch``: lock.COUNT or a request's (quality, drift)
    dropped: dict[str, Any] | None = None  # a rule's request dropped as outdated (``reason`` says why)


def decide(
    state: lock.LockState,
    cfg: TrainSettings,
    now: float,
    *,
    samples: list[tuple[str, int]],
    finished: list[lock.RunEnd],
    dead: str | None = None,
    latest: str | None,
) -> tuple[lock.LockState, Decision]:
    """The pure step applied to the lock: note samples and finished runs, maybe launch.

    ``latest``: the version latest now, read after the lock whenever a rule's request waits; a
    request about another version is dropped instead of starting a run (``lock.outdated``)."""
    state = lock.add_samples(state, samples, cap=cfg.min_new_samples)
    ends = list(finished)
    stale = None
    retries = []
    for end in ends:
        state, retry = _end(state, end, cfg, now)
        if retry is not None:
            retries.append((end.version, retry))
    if state.holder is not None and (state.expired(now) or state.holder == dead):
        # Died without a record (or outlived its lock): the infrastructure's failure.
        stale = state
        state, retry = _end(state, lock.RunEnd(state.holder, registry.INFRASTRUCTURE), cfg, now)
        if retry is not None:
            retries.append((str(stale.holder), retry))
    reason = lock.why_not_launch(state, now, min_new=cfg.min_new_samples, min_interval_s=cfg.min_interval_s)
    if reason:
        return state, Decision(stale=stale, reason=reason, retries=tuple(retries))
    outdated = lock.outdated(state, cfg.min_new_samples, latest)
    if outdated:
        dropped = state.wanted
        return lock.drop_request(state), Decision(
            stale=stale, reason=outdated, retries=tuple(retries), dropped=dropped
        )
    version = registry.new_version(now)
    acquired = lock.acquire(state, version, now, cfg.lock_ttl_s)
    started_by = lock.rule(state, cfg.min_new_samples)
    return acquired, Decision(
        launch=version, stale=stale, previous=state, retries=tuple(retries), rule=started_by
    )


def _end(
    state: lock.LockState, end: lock.RunEnd, cfg: TrainSettings, now: float
) -> tuple[lock.LockState, lock.Retry | None]:
    return lock.end_run(state, end, now, policy=cfg.retry, margin_ms=cfg.scan_margin_s * 1000)


def process(
    records: list[dict[str, Any]], cfg: TrainSettings, clients: Clients, now: float | None = None
) -> Decision:
    """A batch of stream records (from either table)."""
    now = time.time() if now is None else now
    samples = new_samples(r for r in records if _table_of(r) == cfg.data_table)
    finished = finished_runs(r for r in records if _table_of(r) == cfg.model_table)
    store = lock.LockStore(cfg.model_table, clients.ddb)
    dead = _dead_holder(store.read(), cfg, clients, now, len(samples))
    return advance(cfg, clients, store, now, samples=samples, finished=finished, dead=dead)


def advance(
    cfg: TrainSettings,
    clients: Clients,
    store: lock.LockStore,
    now: float,
    *,
    samples: list[tuple[str, int]],
    finished: list[lock.RunEnd],
    dead: str | None,
    event: str = "train_trigger",
    **context: Any,
) -> Decision:
    """The one step every source ends in: note the samples, end the ``finished`` runs (their
    alarms deleted, the lock released), take over the ``dead`` holder, start the pending
    retrain if it may start now. Idempotent: a repeated step finds nothing left to end."""
    for end in finished:
        launch.delete_alarm(cfg.launch, end.version, cloudwatch=clients.cloudwatch)
    runs = registry.Registry(cfg.model_table, clients.ddb)

    def step(state: lock.LockState) -> tuple[lock.LockState, Decision]:
        # Read after the lock: the pointer seen is at least as new as the one the request was
        # judged against, so a request is never taken for outdated too early. A promotion
        # between this read and the lock's write still lets that one request start a run: a
        # run like any other, whose candidate the gate compares with the new latest.
        latest = runs.latest_version() if state.wanted is not None else None
        return decide(state, cfg, now, samples=samples, finished=finished, dead=dead, latest=latest)

    _, after, decision = store.transact(step)
    if decision.dropped is not None:
        log.log("retrain_request_dropped", reason=decision.reason, **decision.dropped)
    log.log(
        event,
        **context,
        new_samples=len(samples),
        finished=[end.version for end in finished],
        taken_over=decision.stale.holder if decision.stale else None,
        pending=after.pending,
        holder=after.holder,
        launch=decision.launch,
        rule=decision.rule,
        reason=decision.reason,
        retries={version: retry.to_dict() for version, retry in decision.retries},
    )
    plans = dict(decision.retries)
    for version, retry in decision.retries:
        if decision.stale is None or version != decision.stale.holder:
            _record_retry(version, retry, cfg, clients)
    if decision.stale is not None:
        _clean_up_stale(decision.stale, plans.get(str(decision.stale.holder)), cfg, clients, now)
    if decision.launch and decision.previous is not None:
        start_run(decision.launch, decision.previous, after, cfg, clients, store)
    return decision


def _dead_holder(
    state: lock.LockState, cfg: TrainSettings, clients: Clients, now: float, incoming: int
) -> str | None:
    """The holder whose instance is already gone (alarm, spot reclaim): no need to wait for the
    lock to expire. Checked only when a launch is otherwise wanted, to keep EC2 calls rare.
    (Normally the instance's state-change event has ended the run already; this covers a lost
    event.)"""
    fresh = state.fresh(state.launch_ms)  # the holder's own samples are not a reason to look
    if not (state.held(now) and state.instance_id and fresh + incoming >= cfg.min_new_samples):
        return None
    if launch.instance_state(state.instance_id, ec2=clients.ec2) in launch.GONE | {None}:
        return state.holder
    return None


# instance state changes ---------------------------------------------------------------------

EC2_STATE_CHANGE = "EC2 Instance State-change Notification"
# States after which a training instance's work is over: it terminates on shutdown, so
# "stopped" only comes from a person (or an API call) stopping it, and user-data does not run
# again on a restart.
ENDED_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})


def instance_change(event: dict[str, Any]) -> tuple[str, str] | None:
    """(instance id, state) of an EC2 state-change event; None for any other event."""
    if event.get("source") != "aws.ec2" or event.get("detail-type") != EC2_STATE_CHANGE:
        return None
    detail = event.get("detail") or {}
    instance_id, state = detail.get("instance-id"), detail.get("state")
    if not instance_id or not state:
        return None
    return str(instance_id), str(state)


def instance_ended(
    instance_id: str, state: str, cfg: TrainSettings, clients: Clients, now: float | None = None
) -> Decision | None:
    """An instance changed state. Only the lock holder's instance matters; None when the event
    is about anything else (another instance, a state that is not an end, a run already ended
    and released: a duplicate or late event)."""
    now = time.time() if now is None else now
    store = lock.LockStore(cfg.model_table, clients.ddb)
    held = store.read()
    version = held.holder
    ignored = {"instance_id": instance_id, "state": state, "holder": version}
    if state not in ENDED_STATES or version is None:
        log.log("instance_event_ignored", **ignored)
        return None
    if held.instance_id not in (None, instance_id):
        # Another instance ended. If the holder's own instance is gone too and its end was
        # never reported (an event lost, a local cloud restored after a crash), this is the
        # moment to notice: EC2 no longer knows it, or it is terminated.
        if launch.instance_state(str(held.instance_id), ec2=clients.ec2) not in (None, *launch.GONE):
            log.log("instance_event_ignored", **ignored)
            return None
        log.warning("holder_instance_gone", version=version, instance_id=held.instance_id, seen=instance_id)
        instance_id, state = str(held.instance_id), "terminated"
    try:
        run = registry.Registry(cfg.model_table, clients.ddb).get_run(version)
    except NotFound:
        run = {}
    # The lock learns its instance just after the launch; the run item is the other record.
    if run.get("instance_id") != instance_id and held.instance_id != instance_id:
        log.log("instance_event_ignored", **ignored)
        return None
    if run.get("status") in registry.FINAL_STATUSES:
        # The trainer recorded its outcome and powered off: the "run ended" step, which the
        # model table's stream takes too (whichever is first does the work).
        finished, dead = [run_end(run)], None
    else:
        finished, dead = [], version
    return advance(
        cfg,
        clients,
        store,
        now,
        samples=[],
        finished=finished,
        dead=dead,
        event="train_instance_ended",
        instance_id=instance_id,
        state=state,
        version=version,
        run_status=run.get("status"),
    )


# the idle alarm ------------------------------------------------------------------------------

ALARM = "ALARM"


@dataclass(frozen=True)
class AlarmChange:
    name: str
    state: str
    previous: str | None
    instance_ids: tuple[str, ...]  # the InstanceId dimensions of the alarm's metrics


def alarm_change(event: dict[str, Any]) -> AlarmChange | None:
    """The state change a CloudWatch alarm's Lambda action delivers; None for any other event.

    Its shape (CloudWatch User Guide, "Invoke a Lambda function from an alarm", event examples):
    ``source: aws.cloudwatch``, ``alarmArn``, ``alarmData`` with ``alarmName``,
    ``state.value``, ``previousState.value`` and ``configuration.metrics[].metricStat.metric``
    whose ``dimensions`` is an object (``{"InstanceId": "i-..."}``)."""
    if event.get("source") != "aws.cloudwatch":
        return None
    data = event.get("alarmData")
    if not isinstance(data, dict):
        return None
    name, state = data.get("alarmName"), (data.get("state") or {}).get("value")
    if not name or not state:
        return None
    previous = (data.get("previousState") or {}).get("value")
    ids: list[str] = []
    for query in (data.get("configuration") or {}).get("metrics") or []:
        metric = (query.get("metricStat") or {}).get("metric") or {}
        instance_id = (metric.get("dimensions") or {}).get("InstanceId")
        if instance_id and str(instance_id) not in ids:
            ids.append(str(instance_id))
    return AlarmChange(str(name), str(state), str(previous) if previous else None, tuple(ids))


def idle_alarm(change: AlarmChange, cfg: TrainSettings, clients: Clients) -> str | None:
    """The run's idle alarm changed state. On ALARM for the run that holds the lock, terminate
    its instance and return its id; the instance's state-change event then ends the run
    (``instance_ended``). Anything else - another run's alarm (a run already ended), another
    state, an instance already gone (a replay) - is logged and changes nothing (None)."""
    version = launch.alarm_version(cfg.stage, change.name)
    held = lock.LockStore(cfg.model_table, clients.ddb).read()
    context = {
        "alarm": change.name,
        "state": change.state,
        "previous": change.previous,
        "holder": held.holder,
    }
    instance_id = held.instance_id
    if (
        change.state != ALARM
        or version is None
        or held.holder != version
        or instance_id is None
        or (change.instance_ids and instance_id not in change.instance_ids)
    ):
        log.log("idle_alarm_ignored", **context)
        return None
    state = launch.instance_state(instance_id, ec2=clients.ec2)
    if state in launch.GONE | {None}:
        log.log("idle_alarm_ignored", **context, instance_id=instance_id, instance_state=state)
        return None
    launch.terminate(instance_id, ec2=clients.ec2)
    log.warning("idle_instance_terminated", **context, version=version, instance_id=instance_id)
    return instance_id


INSTANCE_GONE = "the instance was terminated before the trainer recorded an outcome"


def _record_retry(version: str, retry: lock.Retry, cfg: TrainSettings, clients: Clients) -> None:
    """The trainer recorded an infrastructure failure: add the retry plan to its (final) run
    item and announce it. Runs once per failure: a repeated end no longer holds the lock."""
    plan = retry.to_dict()
    log.warning("run_retries_exhausted" if retry.gave_up else "run_retry_scheduled", version=version, **plan)
    try:
        registry.Registry(cfg.model_table, clients.ddb).update_run(version, expect_status=None, retry=plan)
    except Exception as err:  # noqa: BLE001 - the plan is in the lock; the record is for people
        log.error("retry_not_recorded", version=version, error=_cause(err))
    notify.run_retry(version, plan, cfg=notify.NotifySettings(cfg.notify_topic_arn))


def _clean_up_stale(
    stale: lock.LockState, retry: lock.Retry | None, cfg: TrainSettings, clients: Clients, now: float
) -> None:
    """End the run of a holder taken over: terminate what is left of its instance, record why
    (only while it is still ``training``) and its retry plan, announce it, delete its alarm."""
    version = str(stale.holder)
    state = launch.instance_state(stale.instance_id, ec2=clients.ec2) if stale.instance_id else None
    if state in launch.GONE | {None}:
        status, reason = registry.INTERRUPTED, INSTANCE_GONE
    else:
        launch.terminate(str(stale.instance_id), ec2=clients.ec2)
        if stale.expired(now):
            status, reason = registry.FAILED, "the run outlived its lock and its instance was terminated"
        else:  # stopped: it will never train again
            status = registry.INTERRUPTED
            reason = f"the instance was {state} before the trainer recorded an outcome; it was terminated"
    plan = retry.to_dict() if retry else None
    try:
        registry.Registry(cfg.model_table, clients.ddb).update_run(
            version,
            status=status,
            reason=reason,
            ended_at=registry.now_iso(),
            failure_kind=registry.INFRASTRUCTURE,
            retry=plan,
        )
        log.warning(
            "run_taken_over", version=version, status=status, instance_id=stale.instance_id, retry=plan
        )
        notify.run_outcome(
            version,
            status,
            previous=None,
            reason=reason,
            actor="train-trigger",
            cfg=notify.NotifySettings(cfg.notify_topic_arn),
            failure_kind=registry.INFRASTRUCTURE,
            retry=plan,
        )
    except AutoretrainError:
        pass  # it reached a final status on its own, or never got its item
    launch.delete_alarm(cfg.launch, version, cloudwatch=clients.cloudwatch)


def trainer_environment(version: str, cfg: TrainSettings) -> dict[str, str]:
    return {
        "RUN_VERSION": version,
        "STAGE": cfg.stage,
        "AWS_REGION": cfg.launch.region,
        "AWS_DEFAULT_REGION": cfg.launch.region,
        "DATA_TABLE": cfg.data_table,
        "MODEL_TABLE": cfg.model_table,
        "MODEL_BUCKET": cfg.model_bucket,
        "MODEL_PREFIX": cfg.model_prefix,
        # The trainer beats three times per alarm period (trainer/heartbeat.py).
        "HEARTBEAT_PERIOD_S": str(cfg.launch.alarm_period_s),
        # The trainer fits within what is left of it (trainer/run.py, fit_budget_s).
        "TRAIN_TIME_LIMIT_S": str(cfg.time_limit_s),
        **({"API_URL": cfg.api_url} if cfg.api_url else {}),
        **({"NOTIFY_TOPIC_ARN": cfg.notify_topic_arn} if cfg.notify_topic_arn else {}),
        **({"HOLDOUT_KEY_SECRET": cfg.holdout_key_secret} if cfg.holdout_key_secret else {}),
        **cfg.trainer_settings,
    }


def trigger_record(before: lock.LockState, after: lock.LockState, cfg: TrainSettings) -> dict[str, Any]:
    """Why the run starts, as its run item and its outcome's notification say: the rule
    (``count`` when enough new samples were pending, whatever else held) and the figures of a
    rule's request answered by this run (``quality``: the window's counts, its bound, the
    holdout accuracy it fell below)."""
    out: dict[str, Any] = {
        "rule": lock.rule(before, cfg.min_new_samples),
        "new_samples": before.pending,
        "min_new_samples": cfg.min_new_samples,
        "watermark_ms": after.watermark_ms,
        "attempt": after.failures + 1,  # consecutive infrastructure failures + 1
    }
    wanted = before.wanted
    if wanted is not None:
        out[str(wanted.get("rule"))] = {k: v for k, v in wanted.items() if k != "rule"}
    return out


def start_run(
    version: str,
    before: lock.LockState,
    after: lock.LockState,
    cfg: TrainSettings,
    clients: Clients,
    store: lock.LockStore,
) -> None:
    """Record the run, start its instance, then its alarm. On failure, give the lock back.

    An instance never runs without its alarm. The alarm watches the instance id, so it can only
    be created after the launch; if anything between the two fails (the alarm above all: an
    IAM gap surfaces there only once the instance runs), the instance is terminated at once and
    the run fails like a launch that never happened."""
    runs = registry.Registry(cfg.model_table, clients.ddb)
    script = userdata.render(
        region=cfg.launch.region,
        image=cfg.trainer_image,
        time_limit_s=cfg.time_limit_s,
        run_version=version,
        environment=trainer_environment(version, cfg),
    )
    runs.create_run(
        version,
        trigger=trigger_record(before, after, cfg),
        hyperparameters=cfg.trainer_settings,
        image=cfg.trainer_image,
        lock_expires_at=after.expires_at,
    )
    try:
        instance_id, market = launch.launch_instance(cfg.launch, version, script, ec2=clients.ec2)
    except Unavailable as err:
        _not_started(version, err.message, before, cfg, runs, store)
        raise
    try:
        store.transact(lambda s: (lock.with_instance(s, version, instance_id), None))
        alarm = launch.alarm_name(cfg.stage, version)
        try:
            runs.update_run(version, instance_id=instance_id, market=market, alarm=alarm)
        except Conflict:
            log.warning("run_finished_before_recorded", version=version, instance_id=instance_id)
            return
        launch.put_idle_alarm(cfg.launch, version, instance_id, cloudwatch=clients.cloudwatch)
    except Exception as err:  # noqa: BLE001 - whatever failed, the instance must not run unwatched
        _abandon_instance(version, instance_id, market, err, before, cfg, clients, runs, store)


def _cause(err: BaseException) -> str:
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        return f"{error.get('Code', 'ClientError')}: {error.get('Message', '')}"
    return f"{type(err).__name__}: {err}"


def _abandon_instance(
    version: str,
    instance_id: str,
    market: str,
    err: Exception,
    before: lock.LockState,
    cfg: TrainSettings,
    clients: Clients,
    runs: registry.Registry,
    store: lock.LockStore,
) -> NoReturn:
    """The instance runs but its alarm could not be created: terminate it, fail the run, free
    the lock. Raises ``Unavailable`` so the batch is retried (the samples are pending again)."""
    cause = _cause(err)
    log.error("idle_alarm_failed", version=version, instance_id=instance_id, error=cause)
    try:
        launch.terminate(instance_id, ec2=clients.ec2)
    except Exception as stuck:  # noqa: BLE001 - reported below; the lock keeps the instance
        # It may still run, unwatched. The lock stays held (with the instance, if recorded) so
        # no second instance starts; its expiry takes the run over and terminates the instance
        # (_clean_up_stale), and the user-data's time limit powers it off before that.
        log.error("instance_left_running", version=version, instance_id=instance_id, error=_cause(stuck))
        raise Unavailable(
            f"could not create the idle alarm ({cause}) and instance {instance_id} could not be "
            f"terminated ({_cause(stuck)}); the lock is kept until it expires",
            version=version,
            instance_id=instance_id,
        ) from err
    reason = f"could not create the idle alarm ({cause}); the instance was terminated"
    _not_started(version, reason, before, cfg, runs, store, instance_id=instance_id, market=market)
    try:
        # A call that failed late (a timeout after CloudWatch acted) may have left the alarm.
        launch.delete_alarm(cfg.launch, version, cloudwatch=clients.cloudwatch)
    except Exception as leftover:  # noqa: BLE001 - an alarm on a terminated instance never fires
        log.warning("alarm_not_deleted", version=version, error=_cause(leftover))
    raise Unavailable(reason, version=version, instance_id=instance_id) from err


def _not_started(
    version: str,
    reason: str,
    before: lock.LockState,
    cfg: TrainSettings,
    runs: registry.Registry,
    store: lock.LockStore,
    **fields: Any,
) -> None:
    """A run that never got going (an infrastructure failure): the lock given back (free, its
    samples still pending, the launch interval not spent, the retry planned), recorded
    ``failed`` with the reason and the plan, announced."""
    now = time.time()
    _, _, retry = store.transact(lambda s: lock.undo_acquire(s, version, before, now, cfg.retry))
    plan = retry.to_dict() if retry else None
    try:
        runs.update_run(
            version,
            status=registry.FAILED,
            reason=reason,
            ended_at=registry.now_iso(),
            failure_kind=registry.INFRASTRUCTURE,
            retry=plan,
            **fields,
        )
    except Exception as err:  # noqa: BLE001 - the lock is given back all the same
        log.error("run_not_recorded", version=version, error=_cause(err))
    log.error("run_not_started", version=version, reason=reason, retry=plan, **fields)
    notify.run_outcome(
        version,
        registry.FAILED,
        previous=None,
        reason=reason,
        actor="train-trigger",
        cfg=notify.NotifySettings(cfg.notify_topic_arn),
        failure_kind=registry.INFRASTRUCTURE,
        retry=plan,
        trigger=trigger_record(before, before, cfg),
    )


# handler ------------------------------------------------------------------------------------


@functools.cache
def _settings() -> TrainSettings:
    return TrainSettings.from_env()


SCHEDULED_EVENT = "Scheduled Event"


def tick(cfg: TrainSettings, clients: Clients, now: float | None = None) -> Decision | None:
    """The schedule: one read of the lock; a step only when it would do something (a retry
    came due, the lock expired). None when nothing was due.

    While a run is in flight it also asks EC2 for the state of the run's instance (one
    DescribeInstances a minute): if the instance has ended, this is its state-change event,
    which may have been lost (EventBridge gives up on a target after its retries) or not yet
    delivered - ``instance_ended`` tells a finished run from a dead one, and a second end
    changes nothing. A lost event then costs a minute, not the lock's expiry."""
    now = time.time() if now is None else now
    store = lock.LockStore(cfg.model_table, clients.ddb)
    state = store.read()
    if state.held(now) and state.instance_id:
        instance_state = launch.instance_state(state.instance_id, ec2=clients.ec2)
        if instance_state in ENDED_STATES:
            # Usually the trainer's own shutdown, seen before its events are handled: not a warning.
            log.log(
                "instance_end_noticed",
                version=state.holder,
                instance_id=state.instance_id,
                state=instance_state,
            )
            return instance_ended(state.instance_id, instance_state, cfg, clients, now)
    if not lock.due(state, now, min_new=cfg.min_new_samples, min_interval_s=cfg.min_interval_s):
        return None
    return advance(cfg, clients, store, now, samples=[], finished=[], dead=None, event="train_tick")


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    if event.get("source") == "aws.events" and event.get("detail-type") == SCHEDULED_EVENT:
        # Asynchronous like the EventBridge events: an error propagates so Lambda retries it.
        decision = tick(_settings(), Clients.default())
        return {"tick": True, "launch": decision.launch if decision else None}
    alarm = alarm_change(event)
    if alarm is not None:
        # Invoked asynchronously by CloudWatch: an error propagates so Lambda retries it.
        terminated = idle_alarm(alarm, _settings(), Clients.default())
        return {"alarm": alarm.name, "state": alarm.state, "terminated": terminated}
    change = instance_change(event)
    if change is not None:
        # Invoked asynchronously by EventBridge: an error propagates so Lambda retries it.
        decision = instance_ended(*change, _settings(), Clients.default())
        return {"instance_id": change[0], "state": change[1], "handled": decision is not None}
    records = list(event.get("Records") or [])
    try:
        process(records, _settings(), Clients.default())
    except Exception as err:  # noqa: BLE001 - report the batch for retry instead of crashing
        log.error("train_trigger_failed", error=repr(err), records=len(records))
        failures = [
            r["dynamodb"]["SequenceNumber"] for r in records if "SequenceNumber" in r.get("dynamodb", {})
        ]
        return {"batchItemFailures": [{"itemIdentifier": seq} for seq in failures]}
    return {"batchItemFailures": []}
