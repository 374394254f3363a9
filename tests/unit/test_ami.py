"""localcloud/ami.py: the training AMI's commands, each with its source, and a local bin
directory that holds exactly those."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from localcloud import ami, instances
from localcloud.infra import ROOT

ALL = (*ami.HAS, *ami.LACKS, *(c for commands in ami.PACKAGES.values() for c in commands))


@pytest.mark.parametrize("command", ALL, ids=lambda c: c.name)
def test_ami_every_command_names_its_source(command: ami.Command) -> None:
    assert command.name and len(command.source) > 20


def test_ami_has_and_lacks_do_not_overlap_and_stand_ins_exist() -> None:
    has, lacks = {c.name for c in ami.HAS}, {c.name for c in ami.LACKS}
    assert not has & lacks and "aws" in lacks and "python3" not in has
    for command in ALL:
        if command.standin:
            assert (ami.STANDINS / command.standin).is_file()


def test_ami_packages_add_only_what_the_ami_lacks() -> None:
    lacks = {c.name for c in ami.LACKS}
    assert {c.name for c in ami.PACKAGES["awscli-2"]} == {"aws"}
    for commands in ami.PACKAGES.values():
        assert {c.name for c in commands} <= lacks


def test_ami_parameter_is_the_one_serverless_yml_resolves() -> None:
    assert f"resolve:ssm:{ami.SSM_PARAMETER}" in (ROOT / "infra" / "serverless.yml").read_text()


def test_ami_bin_dir_holds_exactly_the_ami_commands(tmp_path: Path) -> None:
    bin_dir = ami.populate(tmp_path / "bin")
    assert ami.commands(bin_dir) <= {c.name for c in ami.HAS}
    assert {"bash", "timeout", "date", "docker", "dnf", "shutdown"} <= ami.commands(bin_dir)
    ami.install(bin_dir, "awscli-2")
    assert "aws" in ami.commands(bin_dir)


@pytest.mark.parametrize("name", ["aws", "python3", "python", "pip3", "yum", "apt-get"])
def test_instance_user_data_cannot_call_what_the_ami_lacks(tmp_path: Path, name: str) -> None:
    env = instances.instance_env(
        "i-0", aws_endpoint="http://aws", region="us-east-1", imds_endpoint="http://imds", workdir=tmp_path
    )
    result = subprocess.run(
        ["bash", "-c", f"{name} --version"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 127 and f"{name}: command not found" in result.stderr


def test_instance_dnf_install_awscli_makes_aws_appear(tmp_path: Path) -> None:
    env = instances.instance_env(
        "i-0", aws_endpoint="http://aws", region="us-east-1", imds_endpoint="http://imds", workdir=tmp_path
    )
    script = "command -v aws || echo missing; dnf install -y -q awscli-2; command -v aws"
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["missing", str(tmp_path / "bin" / "aws")]
    unknown = subprocess.run(
        ["bash", "-c", "dnf install -y nosuchthing"], env=env, capture_output=True, text=True, timeout=30
    )
    assert unknown.returncode == 1 and "Unable to find a match: nosuchthing" in unknown.stderr
