"""Live scoring: a consumer of the data table's stream (INSERT records only).

Each new labelled sample is scored by the model that was latest when it was ingested and counted
once per version in the model table (``lambdas.core.scoring``, ``lambdas.core.live``). Uploads stay
fast: this runs after the write, outside the request. Records it could not handle (a model that
did not load, a write that kept failing) come back as a partial batch failure and are retried;
the rest of the batch is done. A replayed record counts nothing twice.

Each sample's inputs are binned with its version's training profile and counted with it (the
drift rule's histograms). After a batch that counted samples of the serving version, the quality
and drift rules are evaluated on its rolling window (``lambdas.core.quality``,
``lambdas.core.drift``); when one holds, a retrain is requested in the lock item for the train
function to start. A failure there is logged and never fails the batch:
its counts are in, and the next batch evaluates the rule again.
"""

from __future__ import annotations

import functools
from typing import Any

from lambdas.core import drift, live, lock, log, quality, registry, scoring
from lambdas.core.modelstore import VersionCache


@functools.cache
def _settings() -> scoring.ScoreSettings:
    return scoring.ScoreSettings.from_env()


@functools.cache
def facts() -> quality.RunFacts:
    """Kept per container: the scored versions' holdout accuracy and training profile."""
    return quality.RunFacts(registry.Registry(_settings().model_table))


@functools.cache
def scorer() -> scoring.Scorer:
    """Kept per container: the promotion history read so far and the loaded models."""
    cfg = _settings()
    models = VersionCache(cfg.model.make_source().load_version, size=cfg.models_kept)
    history = scoring.LatestHistory(registry.Registry(cfg.model_table))
    return scoring.Scorer(history, models, profiles=facts().profile)


@functools.cache
def monitor() -> quality.Monitor:
    """Kept per container with the scorer's history: the quality and drift rules."""
    cfg = _settings()
    return quality.Monitor(
        quality.QualitySettings.from_env(),
        facts(),
        store(),
        lock.LockStore(cfg.model_table),
        scorer().history,
        drift_cfg=drift.DriftSettings.from_env(),
    )


def store() -> live.LiveStore:
    cfg = _settings()
    return live.LiveStore(cfg.model_table, cfg.data_table, bucket_s=cfg.bucket_s)


def reset() -> None:
    """Forget the settings, the history and the models (tests)."""
    _settings.cache_clear()
    facts.cache_clear()
    scorer.cache_clear()
    monitor.cache_clear()


def judge_rules(counted: dict[str, int]) -> None:
    """The retrain rules (quality, drift) after a batch that counted samples of these versions."""
    if not counted:
        return
    try:
        monitor().check(counted)
    except Exception as err:  # noqa: BLE001 - the counts are in; the next batch judges again
        log.error("retrain_rules_failed", error=repr(err))


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    records = list(event.get("Records") or [])
    try:
        report = scoring.process(records, scorer(), store())
    except Exception as err:  # noqa: BLE001 - report the batch for retry instead of crashing
        log.error("live_scoring_failed", error=repr(err), records=len(records))
        failures = [
            r["dynamodb"]["SequenceNumber"] for r in records if "SequenceNumber" in r.get("dynamodb", {})
        ]
    else:
        failures = report.failures
        judge_rules(report.versions)
    return {"batchItemFailures": [{"itemIdentifier": sequence} for sequence in failures]}
