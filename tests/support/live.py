"""Live counts as the score function leaves them in the model table, without running it.

``record`` sends the model-table half of ``LiveStore.actions`` (the totals and time-bucket
updates; the data-table marks come first and are left out), so the items are the score
function's own writes, whatever their shape becomes."""

from __future__ import annotations

from typing import Any

from lambdas.core import live


def outcomes(version: str, at_ms: int, correct: int, wrong: int, prefix: str = "") -> list[live.Outcome]:
    """``correct`` samples labelled and predicted ok, ``wrong`` labelled cold and predicted ok."""
    pairs = [("ok", "ok")] * correct + [("cold", "ok")] * wrong
    return [
        live.Outcome(f"{prefix}{version}-{at_ms}-{i}", version, label, predicted, at_ms, None)
        for i, (label, predicted) in enumerate(pairs)
    ]


def record(ddb: Any, model_table: str, scored: list[live.Outcome], bucket_s: int) -> None:
    store = live.LiveStore(model_table, data_table="unused", client=ddb, bucket_s=bucket_s)
    for chunk in live.chunks(scored, bucket_s):
        ddb.transact_write_items(TransactItems=store.actions(chunk)[len(chunk) :])
