"""One real training run on ~2,000 synthetic samples in moto, shared by the tests of this module."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws

from lambdas.core import comfort, drift
from lambdas.core.registry import Registry
from lambdas.core.schema import FEATURE_NAMES, LABELS
from localcloud import infra
from tests.unit.test_trainer_imds import FakeImds
from trainer import data, export
from trainer.config import Settings
from trainer.run import Outcome, run, trained_until_ms

pytestmark = pytest.mark.slow

REGION = "us-east-1"
ROOT = Path(__file__).resolve().parents[2]
NOISE = 0.05
N_SAMPLES = 2000
CREATED = 1_790_000_000_000


def write_samples(
    ddb: Any, table: str, samples: list[dict[str, Any]], prefix: str = "t", ingested_ms: int = CREATED
) -> list[str]:
    """Write samples as data-table items (the upload path's format), the i-th ingested at
    ``ingested_ms + i``; returns their ids."""
    ids = []
    requests = []
    for i, sample in enumerate(samples):
        sample_id = f"{prefix}-{i:05d}"
        ids.append(sample_id)
        item = {
            "id": {"S": sample_id},
            **{name: {"N": repr(float(sample[name]))} for name in FEATURE_NAMES},
            "label": {"S": sample["label"]},
            "created": {"N": str(sample.get("created", CREATED) + i)},
            "ingested": {"N": str(ingested_ms + i)},
            "source": {"S": "api"},
        }
        requests.append({"PutRequest": {"Item": item}})
    for start in range(0, len(requests), 25):
        ddb.batch_write_item(RequestItems={table: requests[start : start + 25]})
    return ids


@dataclass
class World:
    env: dict[str, str]
    ddb: Any
    s3: Any
    registry: Registry
    settings: Settings
    samples: list[dict[str, Any]]
    outcome: Outcome
    imds: FakeImds


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        }.items():
            mp.setenv(name, value)
        with mock_aws(), FakeImds(instance_id="i-0feedc0ffee000001") as imds:
            stack = infra.create_resources(infra.load(stage="test", region=REGION), boto3.Session())
            env = {
                k: str(stack.resolve_intrinsics(v))
                for k, v in stack.config["provider"]["environment"].items()
            }
            ddb = boto3.client("dynamodb", region_name=REGION)
            s3 = boto3.client("s3", region_name=REGION)
            samples = comfort.generate(N_SAMPLES, 20261123, NOISE, now_ms=CREATED)
            write_samples(ddb, env["DATA_TABLE"], samples)
            settings = Settings.from_env(
                {
                    **env,
                    "IMDS_ENDPOINT": imds.endpoint,
                    "SPOT_POLL_SECONDS": "0.2",
                    "CODE_VERSION": "test-sha",
                }
            )
            outcome = run(settings, ddb=ddb, s3=s3)
            yield World(env, ddb, s3, Registry(env["MODEL_TABLE"], ddb), settings, samples, outcome, imds)


def test_trainer_publishes_a_model_from_2000_samples(world: World) -> None:
    version = world.outcome.version
    assert (world.outcome.status, world.outcome.exit_code) == ("published", 0)
    assert world.registry.latest_version() == version
    run_item = world.registry.get_run(version)
    assert run_item["status"] == "published"
    assert run_item["promoted"] is True
    assert run_item["instance_id"] == "i-0feedc0ffee000001"
    assert run_item["sample_count"] == N_SAMPLES
    assert run_item["watermark"] == CREATED + N_SAMPLES - 1
    assert run_item["code_version"] == "test-sha"
    assert run_item["hyperparameters"]["hidden_units"] == [32, 16]
    assert run_item["train_count"] + run_item["validation_count"] + run_item["holdout_count"] == N_SAMPLES
    assert run_item["train_count"] > 0.7 * N_SAMPLES
    assert run_item["started_at"] <= run_item["ended_at"] and run_item["duration_s"] > 0
    assert run_item["gate"]["decision"] == "promote"
    assert run_item["gate"].get("baseline_version") is None  # first model: no baseline
    for split in ("train", "validation", "holdout"):
        assert set(run_item["metrics"][split]) >= {"loss", "accuracy", "count"}
    assert set(run_item["metrics"]["holdout"]["per_class"]) == set(LABELS)
    profile = drift.Profile.from_dict(run_item["input_profile"])  # the drift rule's reference
    assert profile is not None and profile.count == min(N_SAMPLES, world.settings.drift_reference_max)
    assert [len(counts) for counts in profile.counts] == [drift.BINS] * len(FEATURE_NAMES)
    runs, _ = world.registry.list_runs()
    assert runs[0]["version"] == version


def test_trainer_published_files_are_pinned_typed_and_described(world: World) -> None:
    version = world.outcome.version
    bucket, base = world.env["MODEL_BUCKET"], f"models/{version}/"
    listed = {o["Key"] for o in world.s3.list_objects_v2(Bucket=bucket, Prefix=base)["Contents"]}
    assert listed == {base + "model.json", base + "metadata.json", base + "group1-shard1of1.bin"}
    assert world.outcome.summary["files"][-1] == base + "model.json"  # model.json is written last
    for name, kind in [
        ("model.json", "application/json"),
        ("metadata.json", "application/json"),
        ("group1-shard1of1.bin", "application/octet-stream"),
    ]:
        assert world.s3.head_object(Bucket=bucket, Key=base + name)["ContentType"] == kind
    model_json = json.loads(world.s3.get_object(Bucket=bucket, Key=base + "model.json")["Body"].read())
    paths = [p for group in model_json["weightsManifest"] for p in group["paths"]]
    assert paths == [f"../{version}/group1-shard1of1.bin"]
    layers = [
        layer["class_name"] for layer in model_json["modelTopology"]["model_config"]["config"]["layers"]
    ]
    assert "Normalization" not in layers
    meta = json.loads(world.s3.get_object(Bucket=bucket, Key=base + "metadata.json")["Body"].read())
    assert [i["name"] for i in meta["inputs"]] == list(FEATURE_NAMES)
    assert [i["unit"] for i in meta["inputs"]] == ["°F", "%", "m/s", "clo"]
    assert meta["labels"] == list(LABELS)
    assert meta["version"] == version
    assert meta["watermark"] == CREATED + N_SAMPLES - 1
    assert meta["sample_count"] == N_SAMPLES
    assert meta["code_version"] == "test-sha"
    assert meta["hyperparameters"]["seed"] == 42
    assert meta["metrics"]["holdout"]["accuracy"] == world.outcome.summary["metrics"]["holdout"]["accuracy"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    requested: list[str] = []

    def log_message(self, *args: object) -> None:
        _Quiet.requested.append(self.path)


@pytest.fixture
def served_models(world: World, tmp_path: Path) -> Iterator[str]:
    """The bucket's models/ folder on 127.0.0.1, plus a ``latest/`` folder holding only a copy of
    model.json: loading it works only if the weight paths pin the version."""
    version = world.outcome.version
    folder = tmp_path / "models" / version
    folder.mkdir(parents=True)
    for name in ("model.json", "group1-shard1of1.bin"):
        body = world.s3.get_object(Bucket=world.env["MODEL_BUCKET"], Key=f"models/{version}/{name}")["Body"]
        (folder / name).write_bytes(body.read())
    (tmp_path / "models" / "latest").mkdir()
    shutil.copy(folder / "model.json", tmp_path / "models" / "latest" / "model.json")
    _Quiet.requested = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/models"
    finally:
        server.shutdown()
        server.server_close()


def test_trainer_model_in_tensorflow_js_matches_keras(world: World, served_models: str) -> None:
    version = world.outcome.version
    from trainer import model as net

    keras_model = export.load_published(world.s3, world.env["MODEL_BUCKET"], "models/", version)
    inputs = np.array(
        [[s[name] for name in FEATURE_NAMES] for s in comfort.generate(100, 99, 0.0)], dtype=np.float32
    )
    expected = net.predict(keras_model, inputs)
    result = subprocess.run(
        ["node", str(ROOT / "tests/js/tfjs_predict.mjs"), f"{served_models}/latest/model.json"],
        input=json.dumps(inputs.tolist()),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    got = np.array(json.loads(result.stdout), dtype=np.float64)
    assert got.shape == (100, 3)
    difference = float(np.abs(got - expected).max())
    print(f"max |tfjs - keras| over 100 inputs: {difference:.3g}")
    assert difference <= 1e-5
    assert f"/models/{version}/group1-shard1of1.bin" in _Quiet.requested


def test_trainer_holdout_accuracy_is_near_the_best_achievable(world: World) -> None:
    holdout = [
        s
        for i, s in enumerate(world.samples)
        if data.in_holdout(f"t-{i:05d}", world.settings.holdout_percent)
    ]
    truth = comfort.labels(*([s[name] for s in holdout] for name in FEATURE_NAMES))
    # A perfect classifier predicts the noise-free label; its accuracy on these stored labels is
    # the ceiling for this holdout (about comfort.best_accuracy(NOISE) = 1 - NOISE).
    ceiling = float(np.mean([t == s["label"] for t, s in zip(truth, holdout, strict=True)]))
    accuracy = world.outcome.summary["metrics"]["holdout"]["accuracy"]
    print(
        f"holdout accuracy {accuracy:.4f}, ceiling on this holdout {ceiling:.4f}, "
        f"best_accuracy({NOISE}) {comfort.best_accuracy(NOISE):.4f}, holdout size {len(holdout)}"
    )
    assert world.outcome.summary["holdout_count"] == len(holdout)
    assert abs(ceiling - comfort.best_accuracy(NOISE)) < 0.05
    assert accuracy >= ceiling - 0.03


def test_trainer_rejects_a_worse_candidate_and_keeps_latest(world: World) -> None:
    published = world.outcome.version
    shuffled_table = world.env["DATA_TABLE"] + "-shuffled"
    world.ddb.create_table(
        TableName=shuffled_table,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    # Same inputs and the same holdout labels; the labels it trains on are shuffled.
    rng = np.random.default_rng(5)
    trainable = [
        i for i in range(N_SAMPLES) if not data.in_holdout(f"t-{i:05d}", world.settings.holdout_percent)
    ]
    labels = [world.samples[i]["label"] for i in trainable]
    rng.shuffle(labels)
    worse = [dict(s) for s in world.samples]
    for i, label in zip(trainable, labels, strict=True):
        worse[i]["label"] = label
    write_samples(world.ddb, shuffled_table, worse)

    settings = Settings.from_env(
        {**world.env, "DATA_TABLE": shuffled_table, "IMDS_ENDPOINT": world.imds.endpoint, "EPOCHS": "20"}
    )
    outcome = run(settings, ddb=world.ddb, s3=world.s3)

    assert (outcome.status, outcome.exit_code) == ("rejected", 0)
    assert world.registry.latest_version() == published
    run_item = world.registry.get_run(outcome.version)
    assert run_item["status"] == "rejected"
    assert run_item["promoted"] is False
    gate = run_item["gate"]
    assert gate["decision"] == "reject"
    assert gate["baseline_version"] == published
    assert gate["baseline_accuracy"] == world.outcome.summary["metrics"]["holdout"]["accuracy"]
    assert gate["candidate_accuracy"] < gate["baseline_accuracy"] - settings.gate_tolerance
    kept = world.s3.list_objects_v2(Bucket=world.env["MODEL_BUCKET"], Prefix=f"models/{outcome.version}/")
    assert {o["Key"].rsplit("/", 1)[1] for o in kept["Contents"]} >= {"model.json", "metadata.json"}


def test_trainer_gate_judges_the_present_after_the_world_drifted(world: World) -> None:
    # Runs last: it moves latest. The same 2,000 samples, then 4,000 that arrive after latest
    # was trained, labelled by people who now feel 6 °F warmer than the air (the labels of many
    # conditions change): latest is wrong on much of the present.
    published = world.registry.latest_version()
    assert published == world.outcome.version
    drifted_table = world.env["DATA_TABLE"] + "-drifted"
    world.ddb.create_table(
        TableName=drifted_table,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    write_samples(world.ddb, drifted_table, world.samples)
    drifted = comfort.generate(4000, 20261130, 0.0, now_ms=CREATED)
    shifted = comfort.labels(
        *([s[name] + (6.0 if name == "temp" else 0.0) for s in drifted] for name in FEATURE_NAMES)
    )
    for sample, label in zip(drifted, shifted, strict=True):
        sample["label"] = label
    arrived = int(time.time() * 1000) + 1000
    drifted_ids = write_samples(world.ddb, drifted_table, drifted, prefix="d", ingested_ms=arrived)

    settings = Settings.from_env(
        {**world.env, "DATA_TABLE": drifted_table, "IMDS_ENDPOINT": world.imds.endpoint, "EPOCHS": "40"}
    )
    outcome = run(settings, ddb=world.ddb, s3=world.s3)

    run_item = world.registry.get_run(outcome.version)
    gate = run_item["gate"]
    recent = gate["recent"]
    print(f"gate: {gate['decision']}: {gate['reason']}")
    # The window: what arrived after latest's training data, in the holdout or the next 10 % of ids.
    assert recent["after_ms"] == trained_until_ms(world.registry.get_run(published))
    window = [
        i for i in drifted_ids if data.id_bucket(i) < settings.holdout_percent + settings.gate_recent_percent
    ]
    assert recent["count"] == run_item["recent_count"] == len(window)
    assert recent["in_holdout"] == sum(data.in_holdout(i, settings.holdout_percent) for i in window)
    # ... and none of it trained the candidate: train, validation and holdout hold the rest.
    trained_or_validated = run_item["train_count"] + run_item["validation_count"]
    assert trained_or_validated + run_item["holdout_count"] + recent["count"] - recent["in_holdout"] == 6000
    # Both models scored on it; latest fails the present, the candidate is significantly better.
    assert recent["baseline_accuracy"] < 0.75
    assert recent["verdict"] == "better" and recent["lower"] > 0
    assert recent["candidate_accuracy"] - recent["baseline_accuracy"] == pytest.approx(
        recent["difference"], abs=1e-5
    )
    assert gate["baseline_version"] == published and gate["holdout_floor"] is not None
    assert (outcome.status, gate["decision"]) == ("published", "promote")
    assert world.registry.latest_version() == outcome.version
