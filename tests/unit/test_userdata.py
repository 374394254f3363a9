"""The training instance's user-data: lint-clean, within EC2's limit, and it always powers off."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from lambdas.core import userdata
from localcloud import instances

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/autoretrain-test-trainer:latest"
VERSION = "v20261123T091432Z-1a2b"
ENV = {"RUN_VERSION": VERSION, "DATA_TABLE": "samples", "NOTE": "it's $HOME; rm -rf /"}


def script(**overrides) -> str:
    args = {
        "region": "us-east-1",
        "image": IMAGE,
        "time_limit_s": 60,
        "run_version": VERSION,
        "environment": ENV,
    }
    return userdata.render(**{**args, **overrides})


def test_userdata_passes_shellcheck(tmp_path: Path) -> None:
    path = tmp_path / "user-data.sh"
    path.write_text(script())
    result = subprocess.run(["shellcheck", "--shell=bash", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_userdata_uses_get_login_password_and_installs_nothing() -> None:
    text = script()
    assert "aws ecr get-login-password --region" in text and "--password-stdin" in text
    for word in ("ecr get-login ", "yum", "dnf", "apt-get", "pip install", "BlockDuration"):
        assert word not in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"environment": {"bad-name": "x"}}, "not a valid environment variable name"),
        ({"environment": {"BIG": "x" * 17000}}, "EC2 accepts at most 16384"),
        ({"time_limit_s": 0}, "at least 1 second"),
    ],
)
def test_userdata_rejects_what_ec2_or_bash_would_not_take(overrides, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        script(**overrides)


@pytest.fixture
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def run_instance(
    endpoint: str, tmp_path: Path, trainer: str
) -> tuple[subprocess.CompletedProcess, str, dict]:
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1")
    text = script()
    instance_id = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, UserData=text)[
        "Instances"
    ][0]["InstanceId"]
    stored = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"][
        "Value"
    ]
    (tmp_path / "user-data.sh").write_text(base64.b64decode(stored).decode())
    env = instances.instance_env(
        instance_id, aws_endpoint=endpoint, region="us-east-1", imds_endpoint="http://imds", workdir=tmp_path
    )
    env[instances.TRAINER_CMD_ENV] = trainer
    result = subprocess.run(
        ["bash", "user-data.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"][
        "Name"
    ]
    recorded = tmp_path / "trainer-env.json"
    return result, state, json.loads(recorded.read_text()) if recorded.exists() else {}


def recorder(tmp_path: Path, exit_code: int) -> str:
    path = tmp_path / "fake-trainer.py"
    path.write_text(
        "import json, os, sys\n"
        f"json.dump(dict(os.environ), open({str(tmp_path / 'trainer-env.json')!r}, 'w'))\n"
        f"sys.exit({exit_code})\n"
    )
    return f"python3 {path}"


@pytest.mark.slow
def test_userdata_runs_the_trainer_with_its_environment_then_terminates(
    moto_server: str, tmp_path: Path
) -> None:
    result, state, env = run_instance(moto_server, tmp_path, recorder(tmp_path, 0))
    assert result.returncode == 0, result.stdout + result.stderr
    assert state in ("shutting-down", "terminated")
    assert {k: env[k] for k in ENV} == ENV  # quoted values arrive unchanged
    assert env["AWS_ENDPOINT_URL"] == moto_server and env["IMDS_ENDPOINT"] == "http://imds"
    assert "docker stand-in: login --username AWS --password-stdin 123456789012.dkr.ecr" in result.stdout
    assert "powering off" in result.stdout


@pytest.mark.slow
def test_userdata_terminates_the_instance_after_a_trainer_failure(moto_server: str, tmp_path: Path) -> None:
    result, state, env = run_instance(moto_server, tmp_path, recorder(tmp_path, 3))
    assert result.returncode == 3
    assert state in ("shutting-down", "terminated")
    assert env["RUN_VERSION"] == VERSION
    assert "the trainer exited with status 3" in result.stdout and "terminated i-" in result.stdout
