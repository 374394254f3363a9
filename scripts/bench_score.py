"""The live scorer's cost per scored sample (figures, not assertions): ``python -m scripts.bench_score``.

Under moto, in this process: the tables, bucket and queue of ``infra/serverless.yml``, a published
model (``constant_model``: the numpy runtime's cost does not depend on the weights), ``--records``
samples written by the upload path (``lambdas.core.ingest``), their INSERT records read back from
the data table's stream and shaped as Lambda delivers them (``localcloud.streams.lambda_record``),
then ``lambdas.score.handler`` timed on that one batch: the first delivery (everything counted),
a replay of the same batch (everything refused as counted before), and how much of each went to
TransactWriteItems. DynamoDB's transactions are served as the local cloud serves them
(``localcloud/fasttransact.py``); ``--moto-transactions`` uses moto's own, which copies the
touched tables once per action: measured here, 91 s for the 1,000 records and 142 s for their
replay, and the process grew past 14 GB. The write units are counted from the transactions
themselves: on AWS a transactional write costs two units per item.

``constant_model`` and ``publish_constant`` are reused by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from typing import Any

import numpy as np

from lambdas.core import registry
from lambdas.core.schema import FEATURE_NAMES, FEATURES, LABELS

REGION = "us-east-1"
SHARD = "group1-shard1of1.bin"
VERSION = "v20261120T080000Z-0001"


# a published model ----------------------------------------------------------------------------


def constant_model(version: str, label: str) -> dict[str, bytes]:
    """A 4 -> 3 softmax model that answers ``label`` for every input, as the files of
    ``models/<version>/`` (weight paths pinned to the version, as the trainer publishes them)."""
    kernel = np.zeros((len(FEATURE_NAMES), len(LABELS)), dtype="float32")
    bias = np.zeros(len(LABELS), dtype="float32")
    bias[LABELS.index(label)] = 5.0
    layers = [
        {
            "class_name": "InputLayer",
            "config": {"name": "in", "batch_input_shape": [None, 4], "dtype": "float32"},
        },
        {
            "class_name": "Dense",
            "config": {"name": "out", "dtype": "float32", "units": len(LABELS), "activation": "softmax"},
        },
    ]
    model_json = {
        "format": "layers-model",
        "modelTopology": {
            "model_config": {"class_name": "Sequential", "config": {"name": "c", "layers": layers}}
        },
        "weightsManifest": [
            {
                "paths": [f"../{version}/{SHARD}"],
                "weights": [
                    {"name": "out/kernel", "shape": list(kernel.shape), "dtype": "float32"},
                    {"name": "out/bias", "shape": list(bias.shape), "dtype": "float32"},
                ],
            }
        ],
    }
    return {"model.json": json.dumps(model_json).encode(), SHARD: kernel.tobytes() + bias.tobytes()}


def publish_constant(
    s3: Any,
    reg: registry.Registry,
    bucket: str,
    version: str,
    label: str,
    *,
    holdout_accuracy: float = 0.9,
    promote: bool = True,
    prefix: str = "models/",
) -> None:
    """Upload a constant model, record its run as published and (``promote``) make it latest."""
    for name, body in constant_model(version, label).items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}{version}/{name}", Body=body)
    reg.create_run(version, sample_count=100)
    reg.update_run(
        version,
        status=registry.PUBLISHED,
        metrics={"holdout": {"accuracy": holdout_accuracy, "loss": 0.3}},
        finished_at=registry.now_iso(),
    )
    if promote:
        reg.set_latest(version, expected=reg.latest_version(), reason="benchmark", actor="bench")


# stream records --------------------------------------------------------------------------------


def stream_records(streams: Any, stream_arn: str) -> list[dict[str, Any]]:
    """Every record of the stream so far, as Lambda hands them to a function."""
    from localcloud.streams import lambda_record

    out = []
    for shard in streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(
            StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            reply = streams.get_records(ShardIterator=iterator, Limit=1000)
            if not reply["Records"]:
                break
            out += [lambda_record(r, stream_arn, REGION) for r in reply["Records"]]
            iterator = reply.get("NextShardIterator")
    return out


def samples(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            **{f.name: round(rng.uniform(f.minimum, f.maximum), 2) for f in FEATURES},
            "label": rng.choice(LABELS),
        }
        for _ in range(n)
    ]


# the measurement -------------------------------------------------------------------------------


def moto_environment(**settings: str) -> None:
    """The process environment of a score function measured under moto in this process: fake
    credentials, models read from S3, no endpoint, and ``settings`` on top."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_ACCOUNT_ID_ENDPOINT_MODE="disabled",
        MODEL_SOURCE="s3",
        **settings,
    )
    os.environ.pop("AWS_ENDPOINT_URL", None)


def measure(records: int, *, moto_transactions: bool) -> dict[str, float]:
    import boto3
    from moto import mock_aws

    from lambdas import score
    from lambdas.core import aws, ingest, live
    from localcloud import fasttransact, infra

    if moto_transactions:
        fasttransact.uninstall()
    else:
        fasttransact.install()
    moto_environment(LIVE_BUCKET_S="300")
    with mock_aws():
        aws.reset()
        score.reset()
        stack = infra.create_resources(infra.load(stage="bench", region=REGION), boto3.Session())
        for key, value in stack.config["provider"]["environment"].items():
            os.environ[key] = str(stack.resolve_intrinsics(value))
        reg = registry.Registry(stack.physical["ModelTable"])
        publish_constant(aws.s3(), reg, stack.physical["ModelBucket"], VERSION, "ok")
        time.sleep(0.01)
        config = ingest.IngestSettings(stack.physical["DataTable"])
        payload = samples(records)
        for start in range(0, len(payload), config.max_samples):
            ingest.ingest(payload[start : start + config.max_samples], config, source="api")
        batch = {"Records": stream_records(aws.client("dynamodbstreams"), stack.arns["DataTable.StreamArn"])}
        assert len(batch["Records"]) == records

        spent = {"transact_s": 0.0, "transactions": 0, "actions": 0}
        started: list[float] = []

        def before(params: dict[str, Any], **_: Any) -> None:
            started.append(time.perf_counter())
            spent["transactions"] += 1
            spent["actions"] += len(params["TransactItems"])

        def after(**_: Any) -> None:
            spent["transact_s"] += time.perf_counter() - started.pop()

        client = aws.dynamodb()
        client.meta.events.register("provide-client-params.dynamodb.TransactWriteItems", before)
        client.meta.events.register("after-call.dynamodb.TransactWriteItems", after)
        client.meta.events.register("after-call-error.dynamodb.TransactWriteItems", after)

        t0 = time.perf_counter()
        first = score.handler(batch)
        first_s = time.perf_counter() - t0
        first_transact, first_tx, first_actions = spent["transact_s"], spent["transactions"], spent["actions"]
        spent.update(transact_s=0.0, transactions=0, actions=0)
        t0 = time.perf_counter()
        replay = score.handler(batch)
        replay_s = time.perf_counter() - t0
        counts = live.LiveStore(stack.physical["ModelTable"]).totals([VERSION])[VERSION]
        assert not first["batchItemFailures"] and not replay["batchItemFailures"]
        assert counts.seen == records, "a sample was counted twice or not at all"
        score.reset()
        aws.reset()
    return {
        "first_s": first_s,
        "first_transact_s": first_transact,
        "transactions": first_tx,
        "actions": first_actions,
        "replay_s": replay_s,
        "replay_transact_s": spent["transact_s"],
        "replay_transactions": spent["transactions"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_score", description=__doc__)
    parser.add_argument("--records", type=int, default=1000, help="samples in the one batch (default 1,000)")
    parser.add_argument("--moto-transactions", action="store_true", help="moto's own TransactWriteItems")
    args = parser.parse_args(argv)
    f = measure(args.records, moto_transactions=args.moto_transactions)
    n = args.records
    served = "moto's own" if args.moto_transactions else "as the local cloud serves them (fasttransact)"
    print(f"score handler, one batch of {n:,} INSERT records under moto; transactions {served}")
    print(
        f"  first delivery: {f['first_s'] * 1000:8.1f} ms, {f['first_s'] / n * 1e6:7.0f} µs per record"
        f"   (TransactWriteItems {f['first_transact_s'] / f['first_s']:.0%}: {f['transactions']:.0f} calls,"
        f" {f['actions'] / n:.3f} items per sample, {2 * f['actions'] / n:.2f} write units per sample on AWS)"
    )
    print(
        f"  replay:         {f['replay_s'] * 1000:8.1f} ms, {f['replay_s'] / n * 1e6:7.0f} µs per record"
        f"   (TransactWriteItems {f['replay_transact_s'] / f['replay_s']:.0%}: {f['replay_transactions']:.0f}"
        " calls, every sample refused as counted before)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
