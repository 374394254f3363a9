"""Who may teach the model, as the trainer applies it (trainer/README.md, "Holdout and trust"):
a revoked client's samples are left out of the next run, an untrusted client's poisoned batch
cannot move latest because the gate judges on a holdout only trusted clients form, and the
holdout is keyed by the stack's secret, whose version (never its value) the run records."""

from __future__ import annotations

import os
import time
from typing import Any

import boto3
import pytest

from lambdas.core import clients, comfort
from lambdas.core.registry import Registry
from lambdas.core.schema import FEATURE_NAMES, LABELS
from trainer import run as trainer_run
from trainer.config import Settings

pytestmark = pytest.mark.slow

REGION = "us-east-1"
SMALL = {"MIN_SAMPLES": "50", "EPOCHS": "20", "IMDS_ENDPOINT": "http://127.0.0.1:9", "IMDS_TIMEOUT": "0.2"}
# Each label replaced by another: what a client that wants the model wrong would send.
FLIPPED = {"cold": "warm", "ok": "cold", "warm": "ok"}


def write(ddb: Any, table: str, samples: list[dict[str, Any]], *, client: str | None, prefix: str) -> None:
    """Data-table items as the upload function writes them, with the sender's ``client``
    (None: a sample from before clients existed)."""
    # Ingested just before now, one ms apart (never in the future: a run scanning right after
    # must count them as arrived before its scan).
    now = int(time.time() * 1000) - len(samples)
    requests = []
    for i, sample in enumerate(samples):
        item = {
            "id": {"S": f"{prefix}-{i:05d}"},
            **{name: {"N": repr(float(sample[name]))} for name in FEATURE_NAMES},
            "label": {"S": sample["label"]},
            "created": {"N": str(now + i)},
            "ingested": {"N": str(now + i)},
            "source": {"S": "api"},
        }
        if client is not None:
            item["client"] = {"S": client}
        requests.append({"PutRequest": {"Item": item}})
    for start in range(0, len(requests), 25):
        ddb.batch_write_item(RequestItems={table: requests[start : start + 25]})


def settings_for(stack: Any, **overrides: str) -> Settings:
    env = {k: os.environ[k] for k in ("DATA_TABLE", "MODEL_TABLE", "MODEL_BUCKET", "MODEL_PREFIX")}
    # The secret the stack creates and the train function passes on (infra/serverless.yml).
    env["HOLDOUT_KEY_SECRET"] = str(stack.resolve_intrinsics({"Ref": "HoldoutKeySecret"}))
    return Settings.from_env({**env, **SMALL, **overrides})


def train(stack: Any, ddb: Any, s3: Any, **overrides: str) -> tuple[trainer_run.Outcome, dict[str, Any]]:
    secrets = boto3.client("secretsmanager", region_name=REGION)
    outcome = trainer_run.run(
        settings_for(stack, **overrides),
        ddb=ddb,
        s3=s3,
        secrets=secrets,
        release=trainer_run.ReleaseSettings(),
    )
    time.sleep(1.1)  # versions name their second: the next run's must sort after this one's
    return outcome, Registry(stack.physical["ModelTable"], ddb).get_run(outcome.version)


def test_trust_a_revoked_clients_samples_are_left_out_of_the_next_run(stack, dynamodb, s3) -> None:
    table, models = stack.physical["DataTable"], stack.physical["ModelTable"]
    registry = clients.Clients(models, dynamodb)
    registry.create("alice", trust=clients.TRUSTED, actor="test", reason="our sensor network")
    registry.create("mallory", trust=clients.TRUSTED, actor="test", reason="a new partner")
    write(dynamodb, table, comfort.generate(300, 1, 0.0), client="alice", prefix="a")
    write(dynamodb, table, comfort.generate(150, 2, 0.0), client="mallory", prefix="m")
    write(dynamodb, table, comfort.generate(50, 3, 0.0), client=None, prefix="u")

    before, first = train(stack, dynamodb, s3, GATE_MIN_ACCURACY="0")
    assert before.status == "published", first.get("gate")
    assert first["sample_count"] == 500 and first.get("excluded") == {}
    assert {name: c["samples"] for name, c in first["clients"].items()} == {
        "alice": 300,
        "mallory": 150,
        clients.UNATTRIBUTED: 50,
    }
    assert first["clients"]["mallory"]["holdout"] > 0  # trusted: part of the exam

    registry.set_trust("mallory", clients.REVOKED, actor="test", reason="sent made-up labels")
    after, second = train(stack, dynamodb, s3, GATE_TOLERANCE="1")
    assert after.status in ("published", "rejected") and after.exit_code == 0
    assert second["excluded"] == {"mallory": 150}
    assert set(second["clients"]) == {"alice", clients.UNATTRIBUTED}
    assert second["clients"]["alice"] == {
        "trust": "trusted",
        "samples": 300,
        "holdout": first["clients"]["alice"]["holdout"],  # same key, same rows
    }
    assert second["sample_count"] == 350
    assert second["train_count"] + second["validation_count"] + second["holdout_count"] == 350
    assert second["holdout_count"] == sum(c["holdout"] for c in second["clients"].values())


def test_trust_a_poisoned_untrusted_batch_does_not_move_latest(stack, dynamodb, s3) -> None:
    table, models = stack.physical["DataTable"], stack.physical["ModelTable"]
    registry = clients.Clients(models, dynamodb)
    registry.create("alice", trust=clients.TRUSTED, actor="test", reason="our sensor network")
    registry.create("mallory", trust=clients.UNTRUSTED, actor="test", reason="signed up today")
    write(dynamodb, table, comfort.generate(400, 11, 0.0), client="alice", prefix="a")

    first, trusted_run = train(stack, dynamodb, s3)
    assert first.status == "published", trusted_run.get("gate")
    latest = Registry(models, dynamodb).latest_version()
    assert latest == first.version

    # Many samples, every label wrong: more than three times the trusted data.
    poisoned = [{**s, "label": FLIPPED[s["label"]]} for s in comfort.generate(1500, 12, 0.0)]
    assert {s["label"] for s in poisoned} <= set(LABELS)
    write(dynamodb, table, poisoned, client="mallory", prefix="m")
    second, poisoned_run = train(stack, dynamodb, s3)

    assert (second.status, second.exit_code) == ("rejected", trainer_run.EXIT_OK)
    assert Registry(models, dynamodb).latest_version() == first.version
    assert poisoned_run["clients"]["mallory"] == {"trust": "untrusted", "samples": 1500, "holdout": 0}
    # The exam is the trusted run's, row for row; the candidate learned the flipped labels.
    assert (
        poisoned_run["holdout_count"]
        == trusted_run["holdout_count"]
        == poisoned_run["clients"]["alice"]["holdout"]
    )
    gate = poisoned_run["gate"]
    assert gate["decision"] == "reject" and gate["baseline_version"] == first.version
    assert gate["candidate_accuracy"] < gate["holdout_floor"]
    assert poisoned_run.get("recent_count", 0) == 0  # the window takes no untrusted samples


def test_trust_a_holdout_of_too_few_trusted_samples_rejects_the_run(stack, dynamodb, s3) -> None:
    table, models = stack.physical["DataTable"], stack.physical["ModelTable"]
    clients.Clients(models, dynamodb).create(
        "stranger", trust=clients.UNTRUSTED, actor="test", reason="unknown"
    )
    # 150 trusted samples: a holdout of 15 +- 3.7 under the stack's random key, never near 40
    # nor empty; the untrusted 400 would add ~40 if they counted.
    write(dynamodb, table, comfort.generate(150, 21, 0.0), client=None, prefix="u")
    write(dynamodb, table, comfort.generate(400, 22, 0.0), client="stranger", prefix="s")
    outcome, run_item = train(stack, dynamodb, s3, GATE_MIN_ACCURACY="0", GATE_HOLDOUT_MIN="40")
    assert (outcome.status, outcome.exit_code) == ("rejected", trainer_run.EXIT_OK)
    trusted = run_item["clients"][clients.UNATTRIBUTED]["holdout"]
    assert 0 < trusted == run_item["holdout_count"] < 40
    assert run_item["clients"]["stranger"]["holdout"] == 0
    assert run_item["gate"]["reason"].startswith(
        f"holdout too small: {trusted} trusted holdout samples < GATE_HOLDOUT_MIN 40"
    )
    assert Registry(models, dynamodb).latest_version() is None


def test_trust_the_run_records_the_keys_version_never_its_value(stack, dynamodb, s3) -> None:
    write(dynamodb, stack.physical["DataTable"], comfort.generate(300, 31, 0.0), client=None, prefix="u")
    secret = str(stack.resolve_intrinsics({"Ref": "HoldoutKeySecret"}))
    current = boto3.client("secretsmanager", region_name=REGION).get_secret_value(SecretId=secret)
    outcome, run_item = train(stack, dynamodb, s3, GATE_MIN_ACCURACY="0")
    assert outcome.exit_code == 0
    assert run_item["holdout"] == {"keyed": True, "key_version": current["VersionId"], "trusted_only": True}
    assert current["SecretString"] not in repr(run_item) and current["SecretString"] not in repr(
        outcome.summary
    )


def test_trust_without_a_key_the_run_says_its_holdout_is_unkeyed(stack, dynamodb, s3) -> None:
    write(dynamodb, stack.physical["DataTable"], comfort.generate(300, 41, 0.0), client=None, prefix="u")
    settings = Settings.from_env(
        {k: os.environ[k] for k in ("DATA_TABLE", "MODEL_TABLE", "MODEL_BUCKET", "MODEL_PREFIX")}
        | SMALL
        | {"GATE_MIN_ACCURACY": "0"}
    )
    outcome = trainer_run.run(settings, ddb=dynamodb, s3=s3, release=trainer_run.ReleaseSettings())
    run_item = Registry(stack.physical["ModelTable"], dynamodb).get_run(outcome.version)
    assert run_item["holdout"] == {"keyed": False, "trusted_only": True}  # key_version None: not stored


def test_trust_the_training_role_may_read_the_trust_map_and_the_holdout_key_only(make_cloud) -> None:
    """Under the local cloud's IAM gate (the instance role of infra/serverless.yml): the
    trainer's two new reads are allowed, and the role reads no other secret."""
    from botocore.exceptions import ClientError

    cloud = make_cloud()
    models = cloud.stack.table_name("ModelTable")
    clients.Clients(models, cloud.client("dynamodb")).create(
        "mallory", trust=clients.REVOKED, actor="test", reason="revoked before it sent anything"
    )
    trainer_ddb = cloud.role_client("dynamodb", "TrainInstanceRole")
    trust = clients.Clients(models, trainer_ddb).trust_map()
    assert trust["mallory"] == clients.REVOKED and trust[clients.UNATTRIBUTED] == clients.TRUSTED

    trainer_secrets = cloud.role_client("secretsmanager", "TrainInstanceRole")
    settings = Settings.from_env(
        {
            "DATA_TABLE": cloud.stack.table_name("DataTable"),
            "MODEL_TABLE": models,
            "MODEL_BUCKET": "unused",
            "HOLDOUT_KEY_SECRET": str(cloud.stack.resolve_intrinsics({"Ref": "HoldoutKeySecret"})),
        }
    )
    key, recorded = trainer_run.holdout_key(settings, trainer_secrets)
    assert key and recorded["keyed"] is True and recorded["key_version"]
    with pytest.raises(ClientError) as denied:
        trainer_secrets.get_secret_value(
            SecretId=str(cloud.stack.resolve_intrinsics({"Ref": "TrafficApiKeySecret"}))
        )
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"


def test_trust_the_train_function_hands_the_key_secrets_arn_to_the_trainer(stack, monkeypatch) -> None:
    from lambdas import train
    from tests.support.trigger import train_settings

    # The train function's own environment in infra/serverless.yml, resolved in moto.
    declared = stack.config["functions"]["train"]["environment"]["HOLDOUT_KEY_SECRET"]
    arn = str(stack.resolve_intrinsics(declared))
    assert arn.startswith("arn:aws:secretsmanager:") and ":secret:autoretrain-test/holdout-key-" in arn
    cfg = train_settings(stack, monkeypatch, HOLDOUT_KEY_SECRET=arn)
    env = train.trainer_environment("v20261130T000000Z-0001", cfg)
    assert env["HOLDOUT_KEY_SECRET"] == arn
    assert Settings.from_env(env).holdout_key_secret == arn
    # Without it (an older stack) the trainer runs unkeyed rather than failing.
    unkeyed = train.TrainSettings.from_env({**os.environ, "HOLDOUT_KEY_SECRET": ""})
    assert "HOLDOUT_KEY_SECRET" not in train.trainer_environment("v20261130T000000Z-0002", unkeyed)
