"""The load check: a candidate is read back the way clients read it before it may become latest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lambdas import s3proxy
from lambdas.core import comfort
from lambdas.core.registry import Registry
from scripts.bench_infer import ServingStack
from tests.integration.test_trainer_outcomes import settings_for
from tests.integration.test_trainer_publish import write_samples
from trainer import export, gate
from trainer import run as trainer_run

SMALL = {"MIN_SAMPLES": "50", "EPOCHS": "5", "GATE_MIN_ACCURACY": "0", "IMDS_ENDPOINT": "http://127.0.0.1:9"}


def truncate_shard(s3: Any, bucket: str, keys: list[str]) -> None:
    shard = next(k for k in keys if k.endswith(".bin"))
    body = s3.get_object(Bucket=bucket, Key=shard)["Body"].read()
    s3.put_object(Bucket=bucket, Key=shard, Body=body[: len(body) // 2])


def flip_bytes(s3: Any, bucket: str, keys: list[str]) -> None:
    """Same size, different weights: loads fine, predicts differently."""
    shard = next(k for k in keys if k.endswith(".bin"))
    body = bytearray(s3.get_object(Bucket=bucket, Key=shard)["Body"].read())
    for i in range(0, 64, 4):
        body[i + 3] ^= 0x40  # float32 exponent bits of the first kernel weights
    s3.put_object(Bucket=bucket, Key=shard, Body=bytes(body))


def corrupt_after_upload(monkeypatch: pytest.MonkeyPatch, damage: Any) -> None:
    """Between export and promotion, something damages the uploaded files."""
    real_publish = export.publish

    def publish_then_damage(s3: Any, bucket: str, *args: Any, **kwargs: Any) -> list[str]:
        keys = real_publish(s3, bucket, *args, **kwargs)
        damage(s3, bucket, keys)
        return keys

    monkeypatch.setattr(export, "publish", publish_then_damage)


def seed(dynamodb: Any, table: str, n: int = 200, seed_value: int = 5) -> None:
    write_samples(dynamodb, table, comfort.generate(n, seed_value, 0.0))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "expected"),
    [(truncate_shard, "load check failed via s3://"), (flip_bytes, "load check failed via s3://")],
)
def test_load_check_corrupted_upload_fails_the_run_and_keeps_latest(
    stack: Any, dynamodb: Any, s3: Any, monkeypatch: pytest.MonkeyPatch, damage: Any, expected: str
) -> None:
    seed(dynamodb, stack.physical["DataTable"])
    registry = Registry(stack.physical["ModelTable"], dynamodb)
    good = trainer_run.run(
        settings_for(stack, **SMALL), ddb=dynamodb, s3=s3, release=trainer_run.ReleaseSettings()
    )
    assert good.status == "published"
    assert registry.get_run(good.version)["load_check"]["ok"] is True

    corrupt_after_upload(monkeypatch, damage)
    bad = trainer_run.run(
        settings_for(stack, **SMALL, GATE_TOLERANCE="1"),
        ddb=dynamodb,
        s3=s3,
        release=trainer_run.ReleaseSettings(),
    )
    assert (bad.status, bad.exit_code) == ("failed", trainer_run.EXIT_FAILED)
    run_item = registry.get_run(bad.version)
    assert run_item["status"] == "failed"
    assert run_item["error"].startswith(f"LoadCheckFailed: {expected}")
    assert run_item["load_check"]["ok"] is False
    assert "promoted" not in run_item
    assert registry.latest_version() == good.version
    assert [h["version"] for h in registry.list_history()[0]] == [good.version]


def test_load_check_reports_a_missing_model_without_raising(stack: Any, s3: Any, dynamodb: Any) -> None:
    import numpy as np

    check = gate.load_check(
        "v20261123T091432Z-1a2b",
        np.zeros((2, 4)),
        np.zeros((2, 3)),
        api_url=None,
        bucket=stack.physical["ModelBucket"],
        prefix="models/",
        table=stack.physical["ModelTable"],
        s3=s3,
        ddb=dynamodb,
    )
    assert not check.ok and check.max_abs_diff is None
    assert check.error.startswith("NoSuchKey") and check.reason.startswith("load check failed via s3://")


# through the S3 proxy, like clients ---------------------------------------------------------------


@pytest.fixture
def serving() -> Any:
    s3proxy.reset()
    with ServingStack(stage="test") as stack:
        yield stack
    s3proxy.reset()


def proxy_settings(serving: Any, **overrides: str) -> Any:
    from trainer.config import Settings

    env = {k: serving.env[k] for k in ("DATA_TABLE", "MODEL_TABLE", "MODEL_BUCKET", "MODEL_PREFIX")}
    return Settings.from_env({**env, **SMALL, **overrides})


@pytest.mark.slow
def test_load_check_goes_through_the_proxy_redirect_and_catches_a_truncated_shard(
    serving: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from lambdas.core import aws

    ddb, s3 = aws.dynamodb(), aws.s3()
    seed(ddb, serving.env["DATA_TABLE"])
    release = trainer_run.ReleaseSettings(api_url=serving.api_url)
    registry = Registry(serving.table, ddb)

    good = trainer_run.run(proxy_settings(serving), ddb=ddb, s3=s3, release=release)
    assert good.status == "published"
    check = registry.get_run(good.version)["load_check"]
    assert check["ok"] is True and check["via"] == f"{serving.api_url}/s3proxy/{good.version}/model.json"
    assert check["max_abs_diff"] <= gate.LOAD_CHECK_TOLERANCE and check["rows"] > 0

    corrupt_after_upload(monkeypatch, truncate_shard)
    bad = trainer_run.run(proxy_settings(serving, GATE_TOLERANCE="1"), ddb=ddb, s3=s3, release=release)
    assert bad.status == "failed"
    assert registry.get_run(bad.version)["error"].startswith(
        f"LoadCheckFailed: load check failed via {serving.api_url}/s3proxy/{bad.version}/model.json"
    )
    assert registry.latest_version() == good.version
