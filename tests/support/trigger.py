"""The train function's settings against the moto stack, as its trigger tests use them."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from lambdas import train

PROFILE = "autoretrain-test-profile"
TRAIN_ARN = "arn:aws:lambda:us-east-1:123456789012:function:autoretrain-test-train"


def train_settings(stack: Any, monkeypatch: pytest.MonkeyPatch, **overrides: str) -> train.TrainSettings:
    """An instance profile created in moto, the train function's environment set (the stack's
    provider environment plus small, fast trigger settings and ``overrides``) and read."""
    iam = boto3.client("iam")
    arn = iam.create_instance_profile(InstanceProfileName=PROFILE)["InstanceProfile"]["Arn"]
    env = {
        **{k: str(stack.resolve_intrinsics(v)) for k, v in stack.config["provider"]["environment"].items()},
        "AWS_REGION": "us-east-1",
        "MIN_NEW_SAMPLES": "3",
        "MIN_INTERVAL_S": "0",
        "TRAIN_TIME_LIMIT_S": "600",
        "LOCK_TTL_S": "900",
        "TRAINER_IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/autoretrain-test-trainer:latest",
        "TRAINER_SETTINGS": "EPOCHS=5 SEED=7",
        "AMI_ID": "ami-12c6146b",
        "INSTANCE_TYPE": "c5.large",
        "INSTANCE_PROFILE_ARN": arn,
        "SPOT_FALLBACK_ON_DEMAND": "true",
        "ALARM_PERIOD_S": "60",
        "ALARM_EVALUATION_PERIODS": "2",
        "ALARM_CPU_THRESHOLD": "5",
        "TRAIN_FUNCTION_ARN": TRAIN_ARN,
        **overrides,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    train._settings.cache_clear()
    return train.TrainSettings.from_env(env)
