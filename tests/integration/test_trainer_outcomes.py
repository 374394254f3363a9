"""How a run ends when it cannot publish: no data, a spot notice, an error, a lost race."""

from __future__ import annotations

import os
from typing import Any

import pytest

from lambdas.core import comfort
from lambdas.core.registry import Registry, new_version
from tests.integration.test_trainer_publish import write_samples
from tests.unit.test_trainer_imds import FakeImds
from trainer import run as trainer_run
from trainer.config import Settings

SMALL = {"MIN_SAMPLES": "50", "EPOCHS": "5", "IMDS_ENDPOINT": "http://127.0.0.1:9", "IMDS_TIMEOUT": "0.5"}


def settings_for(stack: Any, **overrides: str) -> Settings:
    env = {k: os.environ[k] for k in ("DATA_TABLE", "MODEL_TABLE", "MODEL_BUCKET", "MODEL_PREFIX")}
    return Settings.from_env({**env, **SMALL, **overrides})


def bucket_keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def all_runs(registry: Registry) -> list[dict[str, Any]]:
    return registry.list_runs(limit=100)[0]


@pytest.mark.parametrize("count", [0, 10])
def test_trainer_too_little_data_with_trigger_run_records_failed(stack, dynamodb, s3, count: int) -> None:
    settings = settings_for(stack)
    write_samples(dynamodb, settings.data_table, comfort.generate(count, 1, 0.0))
    registry = Registry(settings.model_table, dynamodb)
    version = new_version()
    registry.create_run(version, instance_id="i-0abc")
    outcome = trainer_run.run(settings_for(stack, RUN_VERSION=version), ddb=dynamodb, s3=s3)
    assert (outcome.status, outcome.exit_code) == ("failed", trainer_run.EXIT_NOT_ENOUGH_DATA)
    run_item = registry.get_run(version)
    assert run_item["status"] == "failed"
    assert run_item["error"] == f"not enough data: {count} usable samples < MIN_SAMPLES 50"
    assert run_item["sample_count"] == count
    assert bucket_keys(s3, settings.model_bucket) == []
    assert registry.latest() is None


def test_trainer_empty_table_without_trigger_run_leaves_no_trace(stack, dynamodb, s3) -> None:
    settings = settings_for(stack)
    outcome = trainer_run.run(settings, ddb=dynamodb, s3=s3)
    assert (outcome.status, outcome.exit_code) == ("skipped", trainer_run.EXIT_NOT_ENOUGH_DATA)
    assert outcome.summary["error"].startswith("not enough data: 0 usable samples")
    registry = Registry(settings.model_table, dynamodb)
    assert all_runs(registry) == []
    assert registry.latest() is None
    assert bucket_keys(s3, settings.model_bucket) == []


@pytest.mark.slow
def test_trainer_spot_notice_mid_training_interrupts_and_publishes_nothing(stack, dynamodb, s3) -> None:
    write_samples(dynamodb, stack.physical["DataTable"], comfort.generate(300, 2, 0.0))
    with FakeImds(instance_id="i-0spot", notice_after=3) as imds:
        settings = settings_for(
            stack,
            IMDS_ENDPOINT=imds.endpoint,
            SPOT_POLL_SECONDS="0.1",
            EPOCHS="100000",
            PATIENCE="100000",
            BATCH_SIZE="8",
        )
        outcome = trainer_run.run(settings, ddb=dynamodb, s3=s3)
    assert (outcome.status, outcome.exit_code) == ("interrupted", trainer_run.EXIT_INTERRUPTED)
    registry = Registry(settings.model_table, dynamodb)
    run_item = registry.get_run(outcome.version)
    assert run_item["status"] == "interrupted"
    assert run_item["instance_id"] == "i-0spot"
    assert run_item["error"] == "spot interruption notice"
    assert 1 <= run_item["epochs_run"] < 100000
    assert "ended_at" in run_item
    assert imds.spot_requests == 4
    assert registry.latest() is None
    assert bucket_keys(s3, settings.model_bucket) == []


@pytest.mark.slow
def test_trainer_error_is_recorded_as_failed(stack, dynamodb, s3) -> None:
    write_samples(dynamodb, stack.physical["DataTable"], comfort.generate(200, 3, 0.0))
    registry = Registry(stack.physical["ModelTable"], dynamodb)
    version = new_version()
    registry.create_run(version)
    settings = settings_for(stack, RUN_VERSION=version, MODEL_BUCKET="no-such-bucket")
    outcome = trainer_run.run(settings, ddb=dynamodb, s3=s3)
    assert (outcome.status, outcome.exit_code) == ("failed", trainer_run.EXIT_FAILED)
    run_item = registry.get_run(version)
    assert run_item["status"] == "failed"
    assert "NoSuchBucket" in run_item["error"]
    assert registry.latest() is None


@pytest.mark.slow
def test_trainer_latest_moved_meanwhile_records_rejected(stack, dynamodb, s3, monkeypatch) -> None:
    write_samples(dynamodb, stack.physical["DataTable"], comfort.generate(200, 4, 0.0))
    settings = settings_for(stack, GATE_MIN_ACCURACY="0")
    real_set_latest = Registry.set_latest
    rival = new_version()

    def rival_promotes_first(self: Registry, version: str, **kwargs: Any) -> dict[str, Any]:
        real_set_latest(self, rival, expected=None, reason="rival", actor="test")
        return real_set_latest(self, version, **kwargs)

    monkeypatch.setattr(Registry, "set_latest", rival_promotes_first)
    outcome = trainer_run.run(settings, ddb=dynamodb, s3=s3)
    assert (outcome.status, outcome.exit_code) == ("rejected", trainer_run.EXIT_OK)
    registry = Registry(settings.model_table, dynamodb)
    assert registry.latest_version() == rival
    run_item = registry.get_run(outcome.version)
    assert run_item["status"] == "rejected"
    assert run_item["gate"]["decision"] == "reject"
    assert run_item["gate"]["reason"].startswith("latest moved during the run")


def test_trainer_main_exits_1_on_missing_configuration(monkeypatch) -> None:
    logged: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(trainer_run.log, "error", lambda event, **fields: logged.append((event, fields)))
    monkeypatch.delenv("DATA_TABLE", raising=False)
    assert trainer_run.main() == trainer_run.EXIT_FAILED
    assert logged == [
        (
            "run_summary",
            {
                "status": "config_error",
                "exit_code": 1,
                "error": "environment variable DATA_TABLE is required but not set",
            },
        )
    ]
