"""One training run, from the data table to a gated model: the trainer's whole job.

Exit codes (also in trainer/README.md):

- 0: a model was trained and recorded: ``published`` (latest moved) or ``rejected`` (gate,
  or latest is pinned: ``gate.decision`` is then ``pinned``);
- 1: the run failed (an error, recorded on the run as ``failed`` when the table is reachable;
  also when the uploaded model does not load or predict like the trained one), or the
  configuration is invalid;
- 2: not enough data (fewer than MIN_SAMPLES usable samples); nothing was published;
- 3: a spot interruption notice arrived; the run is ``interrupted``, nothing was published.

Whatever happens short of the process being killed, a run item this trainer works on ends in a
final status: the train trigger watches for that. Each final status is announced on the
notifications topic (``NOTIFY_TOPIC_ARN``; none set: nothing is sent).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import resource
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from lambdas.core import aws, clients, drift, log, notify
from lambdas.core import settings as env_settings
from lambdas.core.errors import AutoretrainError, Conflict, NotFound
from lambdas.core.registry import (
    DATA,
    FAILED,
    FINAL_STATUSES,
    INFRASTRUCTURE,
    INTERRUPTED,
    PUBLISHED,
    REJECTED,
    Registry,
    new_version,
)
from trainer import data, export, gate, heartbeat
from trainer.config import Settings
from trainer.imds import Imds, SpotWatcher

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_ENOUGH_DATA = 2
EXIT_INTERRUPTED = 3

NOT_ENOUGH_DATA = "not enough data"


class Interrupted(Exception):
    """A spot interruption notice arrived: stop, publish nothing."""


class LoadCheckFailed(Exception):
    """The uploaded model does not load, or predicts differently, the way clients load it."""


@dataclass(frozen=True)
class ReleaseSettings:
    """What the release step needs beyond the trainer's settings: where clients load models
    from (``API_URL``, optional: without it the load check reads S3 through the same
    manifest resolution) and where outcomes are announced."""

    api_url: str | None = None
    notifications: notify.NotifySettings = field(default_factory=lambda: notify.NotifySettings(None))

    @classmethod
    def from_env(cls, env: env_settings.Env | None = None) -> ReleaseSettings:
        env = env_settings.environ() if env is None else env
        api_url = env_settings.optional(env, "API_URL", "") or None
        return cls(
            api_url=api_url.rstrip("/") if api_url else None,
            notifications=notify.NotifySettings.from_env(env),
        )


@dataclass
class Outcome:
    version: str
    status: str  # a final run status, or "skipped" when no run item was ever written
    exit_code: int
    summary: dict[str, Any] = field(default_factory=dict)


def run(
    settings: Settings,
    *,
    ddb: Any = None,
    s3: Any = None,
    imds: Imds | None = None,
    release: ReleaseSettings | None = None,
    sns: Any = None,
    secrets: Any = None,
) -> Outcome:
    """Train, export, gate and record one run. Never raises for a failure of the run itself.
    ``secrets``: the Secrets Manager client the holdout key is read with (when
    HOLDOUT_KEY_SECRET is set)."""
    release = ReleaseSettings.from_env() if release is None else release
    ddb = ddb or aws.dynamodb()
    s3 = s3 or aws.s3()
    imds = imds or Imds(settings.imds_endpoint, settings.imds_timeout)
    registry = Registry(settings.model_table, ddb)
    started = time.time()
    version = settings.run_version or new_version(started)
    own_run = settings.run_version is None
    instance_id = imds.instance_id()
    record: dict[str, Any] = {
        "instance_id": instance_id,
        "code_version": settings.code_version,
        "hyperparameters": settings.hyper.to_dict(),
    }
    log.log("run_start", version=version, instance_id=instance_id, own_run=own_run)
    if settings.heartbeat_period_s:  # proof of progress for the idle alarm (trainer/heartbeat.py)
        heartbeat.begin(instance_id, period_s=settings.heartbeat_period_s)

    status, exit_code = FAILED, EXIT_FAILED
    run_recorded = False
    try:
        # The key first: a run that cannot read it fails before the long scan.
        key, record["holdout"] = holdout_key(settings, secrets)
        heartbeat.enter(heartbeat.SCAN)
        # What this run trains on: every sample written before this moment (a consistent scan).
        # The train trigger counts only later samples towards the next run.
        scan_started_ms = int(time.time() * 1000)
        samples, record["scan"] = _scan(settings, ddb)
        # Trust as it is after the scan: a client revoked while it ran is left out all the same
        # (within the by-kind index's eventual consistency: DynamoDB Developer Guide, "DynamoDB
        # read consistency": all reads from global secondary indexes are eventually consistent).
        trust = clients.Clients(settings.model_table, ddb).trust_map()
        samples, record["excluded"] = data.exclude_revoked(samples, trust)
        if record["excluded"]:
            log.log("clients_excluded", version=version, excluded=record["excluded"])
        record.update(sample_count=len(samples), skipped_count=samples.skipped, watermark=samples.watermark)
        record["scan_started_ms"] = scan_started_ms
        if len(samples) < settings.min_samples:
            reason = f"{NOT_ENOUGH_DATA}: {len(samples)} usable samples < MIN_SAMPLES {settings.min_samples}"
            status, exit_code = FAILED, EXIT_NOT_ENOUGH_DATA
            record.update(error=reason, failure_kind=DATA)
            if own_run:
                # Nothing to record for a run nobody asked for: a laptop run leaves no trace.
                return _finish(version, "skipped", exit_code, record, started)
        else:
            run_recorded = _ensure_run(registry, version, record)
            status, exit_code = _train_and_publish(
                settings, version, samples, record, registry, s3, imds, started, release, trust, key
            )
    except Interrupted:
        status, exit_code = INTERRUPTED, EXIT_INTERRUPTED
        record.update(error="spot interruption notice", failure_kind=INFRASTRUCTURE)
    except Exception as err:  # noqa: BLE001 - any failure must end as a recorded "failed" run
        status, exit_code = FAILED, EXIT_FAILED
        record.update(error=f"{type(err).__name__}: {err}", failure_kind=failure_kind(err))
        log.error("run_failed", version=version, error=record["error"], failure_kind=record["failure_kind"])
    finally:
        heartbeat.end()
        if status in (FAILED, INTERRUPTED) and (run_recorded or not own_run):
            _record_final(registry, version, status, record, started, create=not run_recorded)
        if status in FINAL_STATUSES and (run_recorded or not own_run):
            _announce(
                version,
                status,
                record,
                release,
                sns,
                trigger=None if own_run else _trigger(registry, version),
            )
    return _finish(version, status, exit_code, record, started)


def _trigger(registry: Registry, version: str) -> dict[str, Any] | None:
    """The rule that started the run and its figures, as the train trigger recorded them (None
    for a run nobody triggered, or when the record cannot be read: the outcome is announced all
    the same)."""
    try:
        trigger = registry.get_run(version).get("trigger")
    except Exception as err:  # noqa: BLE001 - the announcement must not fail on it
        log.warning("run_trigger_unread", version=version, error=f"{type(err).__name__}: {err}")
        return None
    return trigger if isinstance(trigger, dict) else None


def _announce(
    version: str,
    status: str,
    record: dict[str, Any],
    release: ReleaseSettings,
    sns: Any,
    *,
    trigger: dict[str, Any] | None = None,
) -> None:
    gate_record = record.get("gate") or {}
    metrics = {
        split: {k: values.get(k) for k in ("accuracy", "loss", "count")}
        for split, values in (record.get("metrics") or {}).items()
    }
    if gate_record.get("baseline_accuracy") is not None:
        metrics["baseline_holdout_accuracy"] = gate_record["baseline_accuracy"]
    notify.run_outcome(
        version,
        status,
        previous=record.get("baseline_version"),
        reason=record.get("error") or gate_record.get("reason"),
        metrics=metrics,
        actor="gate" if status in (PUBLISHED, REJECTED) else "trainer",
        cfg=release.notifications,
        client=sns,
        failure_kind=record.get("failure_kind") if status in (FAILED, INTERRUPTED) else None,
        trigger=trigger,
    )


# The errors botocore's own standard retry mode treats as throttling or transient
# (botocore/retries/standard.py: ThrottledRetryableChecker, TransientRetryableChecker): they
# say nothing about the data, so a later attempt may well succeed.
_THROTTLING_OR_TRANSIENT = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


def failure_kind(err: BaseException) -> str:
    """INFRASTRUCTURE for what a later attempt may not meet (the endpoint unreachable, a
    timeout, throttling, a 5xx), looking through the causes of a wrapped error; DATA for the
    rest (a bad model, a failed load check, a bug): retrying the same inputs fails the same way."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, BotoConnectionError | HTTPClientError):  # incl. connect/read timeouts
            return INFRASTRUCTURE
        if isinstance(seen, ClientError):
            code = seen.response.get("Error", {}).get("Code", "")
            status = seen.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _THROTTLING_OR_TRANSIENT or status in (500, 502, 503, 504):
                return INFRASTRUCTURE
        seen = seen.__cause__
    return DATA


SCAN_PROGRESS_EVERY = 100_000  # items between two progress lines
# What a run needs after its fit, at most: evaluation, export, upload, load check, gate, record
# (about 20 s measured at 1,000,000 samples; trainer/README.md, "Scaling").
PUBLISH_RESERVE_S = 120.0
MIN_FIT_BUDGET_S = 30.0


def fit_budget_s(settings: Settings, started: float, now: float | None = None) -> float:
    """The fit's time budget: FIT_BUDGET_S, cut so that the run still publishes inside the
    instance's time limit (if one is set): the limit, less what the run has spent (boot of the
    container, scan) and PUBLISH_RESERVE_S. The limit never cuts it below MIN_FIT_BUDGET_S (or
    FIT_BUDGET_S, if that is smaller); a first epoch always runs."""
    budget = settings.hyper.fit_budget_s
    if settings.time_limit_s:
        now = time.time() if now is None else now
        left = settings.time_limit_s - (now - started) - PUBLISH_RESERVE_S
        budget = min(budget, left)
    return max(min(MIN_FIT_BUDGET_S, settings.hyper.fit_budget_s), budget)


def holdout_key(settings: Settings, secrets: Any = None) -> tuple[bytes | None, dict[str, Any]]:
    """The holdout's HMAC key and what the run records of it: ``keyed``, ``key_version`` (the
    secret version's VersionId, never the value) and ``trusted_only``.

    GetSecretValue without VersionId or VersionStage returns the AWSCURRENT version, with its
    ``VersionId`` and ``SecretString`` (Secrets Manager API reference, GetSecretValue); the
    stack's secret is a generated string (``GenerateSecretString``). Without HOLDOUT_KEY_SECRET
    (a laptop run) the holdout is the public sha256 of the id, and the record says so."""
    if settings.holdout_key_secret is None:
        reason = "HOLDOUT_KEY_SECRET not set: the holdout is the public sha256(id), which a client can aim at"
        log.warning("holdout_unkeyed", reason=reason)
        return None, {"keyed": False, "key_version": None, "trusted_only": True}
    client = secrets or aws.client("secretsmanager")
    answer = client.get_secret_value(SecretId=settings.holdout_key_secret)
    value = answer.get("SecretString")
    key = value.encode() if value is not None else answer.get("SecretBinary")
    if not key:
        raise ValueError(f"holdout key secret {settings.holdout_key_secret} has no value")
    version_id = answer.get("VersionId")
    log.log("holdout_key", key_version=version_id)
    return bytes(key), {"keyed": True, "key_version": version_id, "trusted_only": True}


def _scan(settings: Settings, ddb: Any) -> tuple[data.Samples, dict[str, Any]]:
    """Every sample of the data table, with what the scan cost: segments, items, seconds, and
    the process's peak memory after it (what the decode keeps)."""
    size = None if settings.scan_segments else data.table_bytes(settings.data_table, ddb)
    segments = data.segments_for(size, settings.scan_segments)
    started = time.monotonic()
    progress = _Progress(started)
    log.log("scan_start", table=settings.data_table, segments=segments, table_bytes=size)
    samples = data.load(settings.data_table, ddb, segments, on_page=progress.page)
    report = {
        "segments": segments,
        "table_bytes": size,
        "items": progress.items,
        "seconds": round(time.monotonic() - started, 3),
        "peak_rss_mb": peak_rss_mb(),
    }
    log.log("scan_done", samples=len(samples), **report)
    return samples, report


class _Progress:
    """A log line every SCAN_PROGRESS_EVERY items, from any segment's thread."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.items = 0
        self._lock = threading.Lock()

    def page(self, items: int) -> None:
        with self._lock:
            before, self.items = self.items, self.items + items
            if before // SCAN_PROGRESS_EVERY != self.items // SCAN_PROGRESS_EVERY:
                log.log("scan_progress", items=self.items, seconds=round(time.monotonic() - self.started, 1))


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _ensure_run(registry: Registry, version: str, record: dict[str, Any]) -> bool:
    """Create the run item unless the train trigger already did; either way it is ours now."""
    try:
        registry.get_run(version)
    except NotFound:
        with contextlib.suppress(Conflict):  # created meanwhile by the trigger
            registry.create_run(version, **record)
    registry.update_run(version, **record)
    return True


def _train_and_publish(
    settings: Settings,
    version: str,
    samples: data.Samples,
    record: dict[str, Any],
    registry: Registry,
    s3: Any,
    imds: Imds,
    started: float,
    release: ReleaseSettings,
    trust: dict[str, str] | None = None,
    key: bytes | None = None,
) -> tuple[str, int]:
    hyper = settings.hyper
    # The latest this run is compared with, read before the split: the gate's recent window
    # starts where latest's training data ended, and stays out of this run's training. If latest
    # moves during the run, the conditional promotion refuses (set_latest's ``expected``).
    pointer = registry.latest()
    window = recent_window(settings, registry, pointer)
    parts = data.split(
        samples,
        holdout_percent=settings.holdout_percent,
        validation_fraction=hyper.validation_fraction,
        seed=hyper.seed,
        recent=window,
        trust=trust,
        key=key,
    )
    record.update(
        train_count=len(parts.train), validation_count=len(parts.validation), holdout_count=len(parts.holdout)
    )
    record["clients"] = parts.clients
    if parts.recent is not None:
        record["recent_count"] = len(parts.recent)
    record["input_profile"] = reference_profile(samples, settings.drift_reference_max)
    watcher = SpotWatcher(imds, settings.spot_poll_seconds)
    if imds.token() is None:
        log.log("imds_unreachable", endpoint=imds.endpoint, spot_polling=False)
    else:
        watcher.start()
    try:
        # The watcher runs until the upload is done: a notice after training still stops the
        # run before anything is published.
        return _fit_gate_publish(
            settings, version, parts, record, registry, s3, watcher, started, release, pointer, window, key
        )
    finally:
        watcher.stop()


def reference_profile(samples: data.Samples, newest: int) -> dict[str, Any]:
    """The input distribution the drift rule compares arriving samples with
    (lambdas/core/drift.py): the snapshot's newest ``newest`` samples by arrival, not the whole
    table. After the world moves, a retrain's reference is then the new world within
    ``newest`` new samples, and the rule stops asking; against the whole table it would ask
    again on every window until new data outnumbered all the history (a year of it, say).
    ``newest`` (1,000) keeps the reference's own noise small next to the rule's 200-sample
    window. ``since``: the arrival time (epoch ms) of the oldest sample in it."""
    arrival = samples.arrived
    order = np.argsort(arrival, kind="stable")[-newest:]
    out = drift.profile(samples.x[order]).to_dict()
    out["since"] = int(arrival[order].min()) if len(order) else None
    return out


def recent_window(
    settings: Settings, registry: Registry, pointer: dict[str, Any] | None
) -> data.RecentWindow | None:
    """The gate's recent window for a run compared with ``pointer``'s version: samples that
    arrived after latest's training data was complete (``trained_until_ms``). None without a
    latest, with GATE_RECENT_MAX 0, or when latest's run does not say when its data ended."""
    if pointer is None or settings.gate_recent_max == 0:
        return None
    baseline = str(pointer["version"])
    try:
        after_ms = trained_until_ms(registry.get_run(baseline))
    except NotFound:
        after_ms = None
    if after_ms is None:
        log.warning("recent_window_unknown", baseline_version=baseline, reason="no scan_started_ms")
        return None
    return data.RecentWindow(after_ms, settings.gate_recent_percent, settings.gate_recent_max)


def trained_until_ms(run_item: dict[str, Any]) -> int | None:
    """A moment after which no sample a run trained on can have arrived: its scan's end. A
    sample's ``ingested`` time is taken before its write, so one ingested after the scan ended
    was written after it too, and the run never saw it; one ingested during the scan may have
    been seen, so the window does not start before the end."""
    scan_started = run_item.get("scan_started_ms")
    if scan_started is None:
        return None
    seconds = (run_item.get("scan") or {}).get("seconds") or 0
    return int(scan_started) + math.ceil(float(seconds) * 1000)


def _fit_gate_publish(
    settings: Settings,
    version: str,
    parts: data.Split,
    record: dict[str, Any],
    registry: Registry,
    s3: Any,
    watcher: SpotWatcher,
    started: float,
    release: ReleaseSettings,
    pointer: dict[str, Any] | None,
    window: data.RecentWindow | None,
    key: bytes | None = None,
) -> tuple[str, int]:
    from trainer import model as net

    hyper = settings.hyper
    stop = net.StopWhen(lambda: watcher.noticed)
    heartbeat.enter(heartbeat.FIT)
    beat = net.keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: heartbeat.progress())
    hyper = dataclasses.replace(hyper, fit_budget_s=fit_budget_s(settings, started))
    fit = net.train(parts.train, parts.validation, hyper, callbacks=[stop, beat])
    trained = fit.model
    record["epochs_run"] = fit.epochs_run
    record["fit"] = fit.to_dict()
    if watcher.noticed:
        raise Interrupted
    candidate = net.fold_normalization(trained)

    holdout_probabilities = net.predict(candidate, parts.holdout.x)
    record["metrics"] = {
        "train": net.metrics(net.predict(candidate, parts.train.x), parts.train.y),
        "validation": net.metrics(net.predict(candidate, parts.validation.x), parts.validation.y),
        "holdout": net.metrics(holdout_probabilities, parts.holdout.y, per_class=True),
    }
    log.log("evaluated", version=version, **{k: v.get("accuracy") for k, v in record["metrics"].items()})

    baseline_version = str(pointer["version"]) if pointer else None
    pinned = bool(pointer and pointer.get("pinned"))
    baseline_accuracy = None
    recent = None
    if baseline_version is not None:
        # Latest is scored by the same forward pass on the same rows as the candidate.
        baseline = export.load_published(s3, settings.model_bucket, settings.model_prefix, baseline_version)
        if len(parts.holdout):
            on_holdout = net.metrics(net.predict(baseline, parts.holdout.x), parts.holdout.y)
            baseline_accuracy = on_holdout["accuracy"]
        if window is not None and parts.recent is not None:
            recent = gate.compare_recent(
                net.predict(candidate, parts.recent.x).argmax(axis=1),
                net.predict(baseline, parts.recent.x).argmax(axis=1),
                parts.recent.y,
                after_ms=window.after_ms,
                in_holdout=int((data.id_buckets(parts.recent.ids, key) < settings.holdout_percent).sum()),
            )
    decision = gate.decide(
        record["metrics"]["holdout"]["accuracy"],
        baseline_version=baseline_version,
        baseline_accuracy=baseline_accuracy,
        tolerance=settings.gate_tolerance,
        min_accuracy=settings.gate_min_accuracy,
        pinned=pinned,
        recent=recent,
        recent_min=settings.gate_recent_min,
        drift_tolerance=settings.gate_drift_tolerance,
        holdout_count=len(parts.holdout),
        holdout_min=settings.gate_holdout_min,
    )
    record["baseline_version"] = baseline_version  # the latest this run was compared with

    if watcher.noticed:
        raise Interrupted
    heartbeat.enter(heartbeat.EXPORT)
    with tempfile.TemporaryDirectory(prefix="tfjs-") as tmp:
        files = export.save_tfjs(candidate, Path(tmp) / version, version)
        meta = export.metadata(
            version,
            metrics=record["metrics"],
            watermark=record.get("watermark"),
            sample_count=record.get("sample_count"),
            holdout_count=record.get("holdout_count"),
            holdout_percent=settings.holdout_percent,
            hyperparameters=hyper.to_dict(),
            code_version=settings.code_version,
            gate=decision.to_dict(),
        )
        record["files"] = export.publish(
            s3, settings.model_bucket, settings.model_prefix, version, files, meta
        )

    heartbeat.enter(heartbeat.PUBLISH)
    # Every uploaded candidate is read back the way clients read it, promoted or not: a
    # rejected run may be promoted by hand later, and must be known to load.
    check_rows = parts.holdout.x if len(parts.holdout) else parts.validation.x
    expected = holdout_probabilities if len(parts.holdout) else net.predict(candidate, check_rows)
    check = gate.load_check(
        version,
        check_rows,
        expected,
        api_url=release.api_url,
        bucket=settings.model_bucket,
        prefix=settings.model_prefix,
        table=settings.model_table,
        s3=s3,
        ddb=registry.ddb,
    )
    record["load_check"] = check.to_dict()
    log.log("load_check", version=version, **check.to_dict())
    if not check.ok:
        raise LoadCheckFailed(check.reason)

    gate_record = decision.to_dict()
    status = REJECTED
    if decision.promote:
        try:
            registry.set_latest(version, expected=baseline_version, reason=decision.reason, actor="gate")
            status = PUBLISHED
        except Conflict as err:
            if err.details.get("pinned"):
                gate_record.update(
                    decision=gate.PINNED, reason=f"not promoted: pinned during the run: {err.message}"
                )
            else:
                gate_record.update(decision=gate.REJECT, reason=f"latest moved during the run: {err.message}")
    record["gate"] = gate_record
    record["promoted"] = status == PUBLISHED
    _record_final(registry, version, status, record, started)
    log.log("gate", version=version, **gate_record)
    return status, EXIT_OK


def _record_final(
    registry: Registry,
    version: str,
    status: str,
    record: dict[str, Any],
    started: float,
    *,
    create: bool = False,
) -> None:
    ended = time.time()
    fields = {**record, "status": status, "ended_at": _iso(ended), "duration_s": round(ended - started, 3)}
    try:
        if create:
            try:
                registry.get_run(version)
            except NotFound:
                registry.create_run(version, **{k: v for k, v in fields.items() if k != "status"})
        registry.update_run(version, **fields)
    except (AutoretrainError, OSError) as err:
        log.error("run_record_failed", version=version, status=status, error=str(err))
    except Exception as err:  # noqa: BLE001 - the table may be unreachable: log, keep the exit code
        log.error("run_record_failed", version=version, status=status, error=f"{type(err).__name__}: {err}")


def _finish(version: str, status: str, exit_code: int, record: dict[str, Any], started: float) -> Outcome:
    summary = {
        "version": version,
        "status": status,
        "exit_code": exit_code,
        "duration_s": round(time.time() - started, 3),
        **record,
    }
    log.log("run_summary", **summary)
    return Outcome(version, status, exit_code, summary)


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def main() -> int:
    try:
        settings = Settings.from_env()
        release = ReleaseSettings.from_env()
    except AutoretrainError as err:
        log.error("run_summary", status="config_error", exit_code=EXIT_FAILED, error=err.message)
        return EXIT_FAILED
    return run(settings, release=release).exit_code
