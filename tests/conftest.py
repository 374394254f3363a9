"""Shared fixtures: fake credentials, no real AWS profile, moto resources from serverless.yml."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from lambdas.core import aws
from localcloud import infra

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test runs with fake credentials and no way to reach a real account."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    # moto: the DynamoDB Streams client under mock_aws needs this (see DESIGN.md).
    monkeypatch.setenv("AWS_ACCOUNT_ID_ENDPOINT_MODE", "disabled")
    aws.reset()
    yield
    aws.reset()


@pytest.fixture
def moto_aws() -> Iterator[None]:
    from moto import mock_aws

    with mock_aws():
        aws.reset()
        yield
    aws.reset()


@pytest.fixture
def stack(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> infra.Stack:
    """The resources of infra/serverless.yml created in moto, and their names in the environment."""
    created = infra.create_resources(infra.load(stage="test", region=REGION), boto3.Session())
    provider_env = created.config["provider"]["environment"]
    for key, value in provider_env.items():
        monkeypatch.setenv(key, str(created.resolve_intrinsics(value)))
    return created


@pytest.fixture
def dynamodb(stack: infra.Stack):
    return boto3.client("dynamodb", region_name=REGION)


@pytest.fixture
def s3(stack: infra.Stack):
    return boto3.client("s3", region_name=REGION)


@pytest.fixture
def moto_server() -> Iterator[str]:
    """A moto server on an ephemeral loopback port, emptied first (moto's state is per
    process, so an earlier test's resources would otherwise still be there). Yields its URL."""
    from localcloud.motoserver import MotoServer

    server = MotoServer().start()
    server.reset()
    yield server.url
    server.stop()


@pytest.fixture
def make_cloud(tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """Start local clouds (quiet, no drivers, no web page unless asked); all stopped after."""
    from localcloud.cloud import LocalCloud
    from tests.support.clouds import QUIET

    started: list[LocalCloud] = []

    def make(**kwargs: Any) -> LocalCloud:
        kwargs.setdefault("schedule_overrides", QUIET)
        kwargs.setdefault("drivers", ())
        kwargs.setdefault("function_log", tmp_path / "functions.log")
        kwargs.setdefault("web_dir", None)
        cloud = LocalCloud(tmp_path / f"state{len(started)}", **kwargs)
        started.append(cloud)
        return cloud.start()

    yield make
    for cloud in started:
        cloud.stop()


def subscribe_inbox(topic_arn: str, name: str = "inbox") -> Callable[[], list[dict[str, Any]]]:
    """Subscribe a new SQS queue to an SNS topic (raw delivery); the function returned drains
    it and gives the JSON messages received so far, in order."""
    sqs = boto3.client("sqs", region_name=REGION)
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.client("sns", region_name=REGION).subscribe(
        TopicArn=topic_arn, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"}
    )

    def read() -> list[dict[str, Any]]:
        out = []
        while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            for message in batch:
                out.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return out

    return read


# --- IAM coverage: which (role, action) pairs of serverless.yml the suite exercised ----------
# Every local cloud the suite starts (in this process or a child) appends the gate's IAM
# decisions to one file; the summary reports covered/total. With IAM_COVERAGE=strict (`make
# test`, the whole suite) a declared action that no test exercised and that carries no
# "not exercised:" reason in serverless.yml fails the run.
_IAM_RECORD_ENV = "LOCALCLOUD_IAM_RECORD"


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(_IAM_RECORD_ENV):
        return
    import tempfile

    handle, path = tempfile.mkstemp(prefix="iam-record-", suffix=".jsonl")
    os.close(handle)
    os.environ[_IAM_RECORD_ENV] = path
    config._iam_record_owned = path  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Runs inside the terminal reporter's own sessionfinish, before its summary."""
    from pathlib import Path

    from tests.support import iam_coverage

    record = Path(os.environ[_IAM_RECORD_ENV])
    result = iam_coverage.report(record)
    artifacts = Path(__file__).resolve().parents[1] / "artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "iam-coverage.txt").write_text("\n".join(result.lines()) + "\n")
    strict = os.environ.get("IAM_COVERAGE") == "strict"
    # The whole list for the full run; a partial run shows the figure and where the list is.
    session.config._iam_coverage_lines = (  # type: ignore[attr-defined]
        result.lines() if strict else [result.lines()[0] + " (list: artifacts/iam-coverage.txt)"]
    )
    if strict and result.unexplained and session.exitstatus == 0:
        session.config._iam_coverage_lines.append(  # type: ignore[attr-defined]
            "IAM coverage: declared actions neither exercised nor explained (above): the run fails"
        )
        session.exitstatus = 1
    owned = getattr(session.config, "_iam_record_owned", None)
    if owned:
        os.remove(owned)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    for line in getattr(config, "_iam_coverage_lines", []):
        terminalreporter.write_line(line)
