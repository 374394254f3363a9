"""The training instance's user-data: lint-clean, within EC2's limit, it installs the AWS CLI the
AMI lacks, and it always powers off. It runs here under exactly the AMI's commands
(localcloud/ami.py), with the instance role's credentials served by the fake IMDS."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from lambdas.core import userdata
from localcloud import infra, instances

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


def test_userdata_uses_get_login_password_and_installs_only_the_cli_with_dnf() -> None:
    text = script()
    assert "aws ecr get-login-password --region" in text and "--password-stdin" in text
    assert "dnf install -y -q awscli-2" in text
    for word in ("ecr get-login ", "yum", "apt-get", "pip install", "unzip", "BlockDuration"):
        assert word not in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"environment": {"bad-name": "x"}}, "not a valid environment variable name"),
        ({"environment": {"BIG": "x" * 17000}}, "EC2 accepts at most 16384"),
        ({"time_limit_s": 0}, "at least 1 second"),
        ({"install_retry_s": -1}, "must not be negative"),
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


@pytest.fixture
def imds(tmp_path: Path) -> Iterator[instances.Imds]:
    server = instances.Imds(tmp_path / "state")
    server.start()
    yield server
    server.stop()


def instance_profile(endpoint: str) -> str:
    """An instance profile whose role EC2 may assume, as serverless.yml declares one."""
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    name = f"trainer-{uuid.uuid4().hex[:8]}"  # moto's state outlives one server in a process
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return str(profile["Arn"])


def without_cli_install(text: str) -> str:
    """The user-data as it was before the AMI's lack of a CLI was found: no dnf step."""
    old, count = re.subn(r'log "installing the AWS CLI"\n.*?\ndone\n', "", text, flags=re.S)
    assert count == 1 and "dnf" not in old.split("set -euo pipefail", 1)[1]
    return old


def run_instance(
    endpoint: str,
    tmp_path: Path,
    trainer: str,
    imds: instances.Imds,
    *,
    text: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess, str, dict]:
    """Launch an instance with a profile, give it its role's credentials as the instance runner
    does, and run its user-data under the AMI's commands only."""
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1")
    instance_id = ec2.run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        UserData=text if text is not None else script(install_retry_s=0),
        IamInstanceProfile={"Arn": instance_profile(endpoint)},
    )["Instances"][0]["InstanceId"]
    admin = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    ecr = boto3.client("ecr", **admin)  # the trainer image, pushed as `make image` would
    with contextlib.suppress(ecr.exceptions.RepositoryAlreadyExistsException):
        ecr.create_repository(repositoryName="autoretrain-test-trainer")
    with contextlib.suppress(ecr.exceptions.ImageAlreadyExistsException):
        ecr.put_image(
            repositoryName="autoretrain-test-trainer",
            imageManifest=infra.trainer_manifest(),
            imageTag="latest",
        )
    role = instances.role_credentials(
        ec2, boto3.client("iam", **admin), boto3.client("sts", **admin), instance_id
    )
    assert role is not None
    imds.set_role(instance_id, *role)
    stored = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"][
        "Value"
    ]
    (tmp_path / "user-data.sh").write_text(base64.b64decode(stored).decode())
    env = instances.instance_env(
        instance_id,
        aws_endpoint=endpoint,
        region="us-east-1",
        imds_endpoint=imds.endpoint(instance_id),
        workdir=tmp_path,
    )
    env[instances.TRAINER_CMD_ENV] = trainer
    env.update(extra_env or {})
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
def test_userdata_without_the_cli_install_fails_on_the_ami_and_still_powers_off(
    moto_server: str, tmp_path: Path, imds: instances.Imds
) -> None:
    """The defect: the ECS-optimised AL2023 AMI has no `aws`, so the old script dies at login."""
    old = without_cli_install(script())
    result, state, env = run_instance(moto_server, tmp_path, recorder(tmp_path, 0), imds, text=old)
    assert "aws: command not found" in result.stderr
    assert result.returncode != 0 and env == {}  # the trainer never ran
    assert state in ("shutting-down", "terminated")
    assert "powering off" in result.stdout


@pytest.mark.slow
def test_userdata_installs_the_cli_logs_in_runs_the_trainer_with_its_environment_then_terminates(
    moto_server: str, tmp_path: Path, imds: instances.Imds
) -> None:
    result, state, env = run_instance(moto_server, tmp_path, recorder(tmp_path, 0), imds)
    assert result.returncode == 0, result.stdout + result.stderr
    assert state in ("shutting-down", "terminated")
    assert (tmp_path / "bin" / "aws").exists()  # put there by `dnf install awscli-2`
    assert {k: env[k] for k in ENV} == ENV  # quoted values arrive unchanged
    assert env["AWS_ENDPOINT_URL"] == moto_server
    # The trainer finds the instance role through this instance's metadata endpoint, no keys.
    assert env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == env["IMDS_ENDPOINT"]
    assert env["IMDS_ENDPOINT"].startswith(imds.url + "/i-")
    static = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_EC2_METADATA_DISABLED"}
    assert static.isdisjoint(env)
    # The password came from ECR through the instance role (moto's is "<account>-auth-token").
    password = "123456789012-auth-token"
    login = "docker stand-in: login --username AWS --password-stdin 123456789012.dkr.ecr.us-east-1"
    assert f"{login}.amazonaws.com (token of {len(password)} chars)" in result.stdout
    assert "powering off" in result.stdout


@pytest.mark.slow
def test_userdata_powers_off_when_the_cli_cannot_be_installed(
    moto_server: str, tmp_path: Path, imds: instances.Imds
) -> None:
    result, state, env = run_instance(
        moto_server, tmp_path, recorder(tmp_path, 0), imds, extra_env={instances.DNF_FAIL_ENV: "1"}
    )
    assert result.returncode == 1 and env == {}
    assert result.stdout.count("dnf failed (attempt") == 2
    assert "could not install the AWS CLI after 3 attempts" in result.stdout
    assert state in ("shutting-down", "terminated")
    assert "powering off" in result.stdout


@pytest.mark.slow
def test_userdata_terminates_the_instance_after_a_trainer_failure(
    moto_server: str, tmp_path: Path, imds: instances.Imds
) -> None:
    result, state, env = run_instance(moto_server, tmp_path, recorder(tmp_path, 3), imds)
    assert result.returncode == 3
    assert state in ("shutting-down", "terminated")
    assert env["RUN_VERSION"] == VERSION
    assert "the trainer exited with status 3" in result.stdout and "terminated i-" in result.stdout


@pytest.mark.slow
def test_userdata_fails_and_powers_off_when_the_trainer_image_is_not_in_the_registry(
    moto_server: str, tmp_path: Path, imds: instances.Imds
) -> None:
    text = script(install_retry_s=0).replace(
        "autoretrain-test-trainer:latest", "autoretrain-test-trainer:missing"
    )
    result, state, _ = run_instance(moto_server, tmp_path, recorder(tmp_path, 0), imds, text=text)
    assert result.returncode != 0
    assert "manifest unknown" in result.stderr
    assert state == "terminated"
    assert not (tmp_path / "trainer-env.json").exists()
