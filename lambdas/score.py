"""Live scoring: a consumer of the data table's stream (INSERT records only).

Each new labelled sample is scored by the model that was latest when it was ingested and counted
once per version in the model table (``lambdas.core.scoring``, ``lambdas.core.live``). Uploads stay
fast: this runs after the write, outside the request. Records it could not handle (a model that
did not load, a write that kept failing) come back as a partial batch failure and are retried;
the rest of the batch is done. A replayed record counts nothing twice.
"""

from __future__ import annotations

import functools
from typing import Any

from lambdas.core import live, log, registry, scoring
from lambdas.core.modelstore import VersionCache


@functools.cache
def _settings() -> scoring.ScoreSettings:
    return scoring.ScoreSettings.from_env()


@functools.cache
def scorer() -> scoring.Scorer:
    """Kept per container: the promotion history read so far and the loaded models."""
    cfg = _settings()
    models = VersionCache(cfg.model.make_source().load_version, size=cfg.models_kept)
    return scoring.Scorer(scoring.LatestHistory(registry.Registry(cfg.model_table)), models)


def store() -> live.LiveStore:
    cfg = _settings()
    return live.LiveStore(cfg.model_table, cfg.data_table, bucket_s=cfg.bucket_s)


def reset() -> None:
    """Forget the settings, the history and the models (tests)."""
    _settings.cache_clear()
    scorer.cache_clear()


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    records = list(event.get("Records") or [])
    try:
        failures = scoring.process(records, scorer(), store()).failures
    except Exception as err:  # noqa: BLE001 - report the batch for retry instead of crashing
        log.error("live_scoring_failed", error=repr(err), records=len(records))
        failures = [
            r["dynamodb"]["SequenceNumber"] for r in records if "SequenceNumber" in r.get("dynamodb", {})
        ]
    return {"batchItemFailures": [{"itemIdentifier": sequence} for sequence in failures]}
