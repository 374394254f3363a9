"""The drift scenario's figures (not assertions): ``python -m scripts.bench_drift``.

1. **The scenario on the local cloud** (``scripts/demo_drift.py``, seeded traffic): live accuracy
   of the first model before the shift and on the shifted samples it scored, the rule that
   started the retrain with its figures, the **detection delay** (shifted samples in the window
   the rule judged when it asked), and the new model's live accuracy on the shifted traffic.
2. **False triggers on stationary traffic**: the first model of (1), its files and run record
   (holdout, training profile) copied into moto, then ``--stationary`` (10,000) office samples
   written by the upload path and delivered to ``lambdas.score.handler`` in batches of
   ``--batch`` (20, one traffic call) as their stream records: the score function's own code,
   rules included (``quality.Monitor``), judged after every batch. The window is scaled down
   like the local cloud's (``LIVE_BUCKET_S`` 1, ``LIVE_WINDOW_S`` ``--window-s``) so each look
   sees a rolling window of a few hundred samples. Time is simulated, not the wall clock's:
   ``--rate`` samples a second (100), each batch ingested and judged at its own moment from
   the second after the promotion, so the windows (and the figures) do not depend on how fast
   this machine scores. Every look where a rule held is a false trigger.
3. **Cost per scored sample**: ``scripts/bench_score.py``'s measurement (one batch of 1,000).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np

from lambdas.core import comfort, registry
from localcloud.cloud import LocalCloud
from scripts import bench_score, demo_drift

REGION = bench_score.REGION
STATIONARY_SEED = 21


def scenario(state_dir: Path, verbose: bool) -> tuple[dict[str, Any], dict[str, bytes], dict[str, Any]]:
    """The drift scenario's figures, and the first model's files and run record."""
    say = (lambda line: print(f"   {line}", flush=True)) if verbose else (lambda line: None)
    log = state_dir / "functions.log"
    options = demo_drift.cloud_options()
    with LocalCloud(state_dir, function_log=log, web_dir=None, say=say, **options) as cloud:
        s = demo_drift.Scenario(cloud, say)
        for title, step in demo_drift.STEPS[:-1]:
            print(f"  {title} ...", flush=True)
            step(s)
        assert s.first is not None
        run = s.registry().get_run(s.first)
        prefix = cloud.function_environment("score").get("MODEL_PREFIX", "models/")
        bucket = cloud.stack.physical["ModelBucket"]
        s3 = cloud.client("s3")
        files = {}
        for item in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}{s.first}/").get("Contents", []):
            name = item["Key"].rsplit("/", 1)[1]
            files[name] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return s.figures, files, run


@dataclass
class SimulatedTime:
    """The stationary run's clock, for the upload path (epoch ms) and the rules (epoch s)."""

    ms: int

    def millis(self) -> int:
        return self.ms

    def seconds(self) -> float:
        return self.ms / 1000


def stationary(
    files: dict[str, bytes], run: dict[str, Any], n: int, batch: int, window_s: int, rate: float = 100.0
) -> dict[str, Any]:
    """The score function on ``n`` stationary samples under moto, ``rate`` a second of simulated
    time: looks, windows, triggers."""
    import boto3
    from moto import mock_aws

    from lambdas import score
    from lambdas.core import aws, ingest, quality
    from localcloud import fasttransact, infra

    fasttransact.install()
    bench_score.moto_environment(
        LIVE_BUCKET_S="1",
        LIVE_WINDOW_S=str(window_s),
        LOG_LEVEL="WARNING",  # a line per batch otherwise; a false trigger's retrain_requested still shows
    )
    version = str(run["version"])
    looks: list[quality.Judged] = []
    with mock_aws():
        aws.reset()
        score.reset()
        stack = infra.create_resources(infra.load(stage="bench", region=REGION), boto3.Session())
        for key, value in stack.config["provider"]["environment"].items():
            os.environ[key] = str(stack.resolve_intrinsics(value))
        reg = registry.Registry(stack.physical["ModelTable"])
        bucket = stack.physical["ModelBucket"]
        for name, body in files.items():
            aws.s3().put_object(Bucket=bucket, Key=f"models/{version}/{name}", Body=body)
        reg.create_run(version, sample_count=run.get("sample_count", 0))
        reg.update_run(
            version,
            status=registry.PUBLISHED,
            metrics=run["metrics"],
            input_profile=run.get("input_profile"),
            finished_at=registry.now_iso(),
        )
        promoted = reg.set_latest(version, expected=None, reason="benchmark", actor="bench")
        # From the first whole second after the promotion: every sample is the model's to score,
        # and the 1 s buckets fall the same way on every run.
        start_ms = (registry.epoch_ms(str(promoted["at"])) // 1000 + 1) * 1000
        now = SimulatedTime(start_ms)

        monitor = score.monitor()
        monitor.clock = now.seconds
        check = monitor.check

        def recorded(counted: Any) -> quality.Judged:
            found = check(counted)
            looks.append(found)
            return found

        monitor.check = recorded  # type: ignore[method-assign]
        streams = aws.client("dynamodbstreams")
        arn = stack.arns["DataTable.StreamArn"]
        [shard] = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
        iterator = streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        config = ingest.IngestSettings(stack.physical["DataTable"])
        samples = comfort.generate(n, STATIONARY_SEED, demo_drift.NOISE)
        from localcloud.streams import lambda_record

        failures = 0
        for start in range(0, n, batch):
            now.ms = start_ms + round(start * 1000 / rate)
            ingest.ingest(samples[start : start + batch], config, source="traffic", clock=now.millis)
            reply = streams.get_records(ShardIterator=iterator, Limit=1000)
            iterator = reply["NextShardIterator"]
            records = [lambda_record(r, arn, REGION) for r in reply["Records"]]
            failures += len(score.handler({"Records": records})["batchItemFailures"])
        score.reset()
        aws.reset()
    quality_looks = [j.quality for j in looks if j.quality is not None]
    drift_looks = [j.drift for j in looks if j.drift is not None]
    return {
        "samples": n,
        "looks": len(looks),
        "failures": failures,
        "quality_looks": len(quality_looks),
        "drift_looks": len(drift_looks),
        "quality_triggers": sum(v.triggered for v in quality_looks),
        "drift_triggers": sum(v.triggered for v in drift_looks),
        "window_median": statistics.median(v.seen for v in quality_looks) if quality_looks else 0,
        "window_min": min((v.seen for v in quality_looks), default=0),
        "lowest_upper": min((v.upper for v in quality_looks), default=None),
        "holdout_lower": quality_looks[0].holdout_lower if quality_looks else None,
        "highest_psi": max((max(v.psi.values()) for v in drift_looks), default=None),
    }


def reasks(history: int, newest: int | None, window: int = 200, limit: int = 200, seed: int = 5) -> int:
    """How often the drift rule asks again after the world shifts for good, when each ask
    retrains at once: ``history`` office samples, then shifted ones; every ``window`` shifted
    samples the rule judges them against the serving model's reference, and an ask trains a
    model whose reference is the table's newest ``newest`` samples (None: the whole table, as
    before the trainer's DRIFT_REFERENCE_MAX). The asks until one window passes (``limit``: it
    never did). The rule's own code (``drift.profile``, ``drift.psi``) on ``comfort``'s worlds."""
    from lambdas.core import drift
    from lambdas.core.schema import FEATURE_NAMES

    def features(world: comfort.World, n: int, at_seed: int) -> np.ndarray:
        rows = comfort.generate(n, at_seed, 0.0, world=world)
        return np.array([[row[name] for name in FEATURE_NAMES] for row in rows], dtype=np.float64)

    table = features(comfort.OFFICE, history, seed)
    reference = drift.profile(table if newest is None else table[-newest:])
    for ask in range(limit + 1):
        live = features(comfort.SHIFTED, window, seed + 1 + ask)
        counts = [[0] * len(c) for c in reference.counts]
        for row in live:
            for f, b in enumerate(reference.bins(tuple(row))):
                counts[f][b] += 1
        table = np.vstack([table, live])
        if max(drift.psi(e, a) for e, a in zip(reference.counts, counts, strict=True)) <= 0.25:
            return ask
        reference = drift.profile(table if newest is None else table[-newest:])
    return limit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_drift", description=__doc__)
    parser.add_argument("--stationary", type=int, default=10_000, help="stationary samples (default 10,000)")
    parser.add_argument("--batch", type=int, default=demo_drift.PER_CALL, help="samples per stream batch")
    parser.add_argument("--window-s", type=int, default=2, help="the stationary run's LIVE_WINDOW_S")
    parser.add_argument(
        "--rate", type=float, default=100.0, help="the stationary run's samples a second (simulated time)"
    )
    parser.add_argument("--verbose", action="store_true", help="print the local cloud's lines too")
    args = parser.parse_args(argv)

    print("1. the drift scenario on the local cloud (seeded traffic, scripts/demo_drift.py)", flush=True)
    with TemporaryDirectory(prefix="bench-drift-") as tmp:
        try:
            figures, files, run = scenario(Path(tmp), args.verbose)
        except demo_drift.DemoFailed as err:
            print(f"the scenario failed: {err}", file=sys.stderr)
            return 1
    trigger = figures["trigger"]
    print(f"  live accuracy before the shift:         {figures['live_before_shift']:.3f}")
    print(f"  live accuracy after it (old model):     {figures['live_after_shift']:.3f}")
    print(f"  live accuracy after the retrain:        {figures['live_after_retrain']:.3f}")
    print(f"  rule-started runs the gate rejected first: {len(figures['rejected_runs'])}")
    print(f"  holdout accuracy of the first model:    {figures['holdout_first']}")
    print(
        f"  retrain started by the {figures['rule']} rule after {figures['detection_delay']} shifted samples "
        f"(window of {trigger['seen']}); new samples pending {figures['pending']} of "
        f"MIN_NEW_SAMPLES {demo_drift.MIN_NEW_SAMPLES}"
    )
    print(f"  the rule's figures: {trigger}")

    print(
        f"\n2. false triggers: {args.stationary:,} stationary office samples through lambdas.score.handler "
        f"under moto, batches of {args.batch}, {args.rate:g} a second (simulated), window {args.window_s} s "
        "of 1 s buckets",
        flush=True,
    )
    f = stationary(files, run, args.stationary, args.batch, args.window_s, args.rate)
    print(
        f"  {f['looks']} looks ({f['quality_looks']} judged by quality, {f['drift_looks']} by drift; "
        f"windows of {f['window_min']}-{f['window_median']:.0f} samples, min-median); "
        f"record failures {f['failures']}"
    )
    print(
        f"  false triggers: quality {f['quality_triggers']}, drift {f['drift_triggers']}"
        f"   (lowest upper bound {f['lowest_upper']:.3f} against {f['holdout_lower']:.3f} - 0.03;"
        f" highest PSI {f['highest_psi']:.3f} against 0.25)"
    )

    print(
        "\n3. the drift rule after a lasting shift: the asks before it falls quiet, each ask retraining at "
        "once on the table so far (windows of 200 shifted samples; office history, then shifted traffic)",
        flush=True,
    )
    for history in (1_000, 10_000, 100_000):
        whole, newest = reasks(history, None), reasks(history, 1000)
        shown = f"{whole}" if whole < 200 else "200+ (never quiet within 40,000 shifted samples)"
        print(f"  history {history:>7,}: reference = whole table {shown}; newest 1,000 (trainer) {newest}")

    print("\n4. cost per scored sample: scripts/bench_score.py, one batch of 1,000 records", flush=True)
    cost = bench_score.measure(1000, moto_transactions=False)
    print(
        f"  first delivery {cost['first_s'] / 1000 * 1e6:.0f} µs per record, "
        f"replay {cost['replay_s'] / 1000 * 1e6:.0f} µs per record"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
