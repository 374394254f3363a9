"""What the training instance's AMI has on its PATH, and how a local instance gets exactly that.

The train function launches the ECS-optimised Amazon Linux 2023 AMI (``AMI_ID`` in
infra/serverless.yml resolves ``SSM_PARAMETER``). The instance runner gives the user-data a
bin directory holding only the commands below: host binaries for the ordinary ones, stand-ins
(``localcloud/standins/``) for those that reach AWS or the machine. A command the AMI lacks is
"command not found" locally too, until the user-data installs the package that provides it.

Sources (read, not copied):
- recipe: github.com/aws/amazon-ecs-ami (al2023.pkr.hcl, variables.pkr.hcl ``packages_al2023``,
  release-al2023.auto.pkrvars.hcl ``source_ami_al2023 = al2023-ami-minimal-…``,
  scripts/install-docker.sh, scripts/install-ecs-init.sh, scripts/enable-services.sh).
- AL2023 base container package list (bash, coreutils-single, curl-minimal, grep, gawk…):
  github.com/amazonlinux/amazon-linux-2023/issues/585; the AL2023 guide says that image is
  "most similar to … the AL2023 minimal AMI" (docs.aws.amazon.com/linux/al2023/ug/container.html).
- awscli-2 is not on minimal images and ``dnf install awscli-2`` provides ``aws``:
  github.com/amazonlinux/amazon-linux-2023/issues/625; docs.aws.amazon.com/linux/al2023/ug/awscli2.html.

python3 is left out on purpose: dnf on AL2023 is a Python program, so the AMI very likely has
it, but no package list of the minimal AMI we can cite says so and the user-data does not need
it. Locally it is therefore missing (stricter than AWS, never more lenient).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

SSM_PARAMETER = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"
STANDINS = Path(__file__).with_name("standins")
# Where the ordinary commands are taken from on this machine.
HOST_PATH = "/usr/bin:/bin"

_RECIPE = "github.com/aws/amazon-ecs-ami"
_BASE_IMAGE = "AL2023 base container rpm list (amazonlinux/amazon-linux-2023#585), ~ minimal AMI"
_COREUTILS = f"coreutils-single in the {_BASE_IMAGE}"


@dataclass(frozen=True)
class Command:
    name: str
    source: str  # where the claim that the AMI has (or lacks) it comes from
    standin: str | None = None  # file in standins/ that plays it locally; None: the host's binary


HAS: tuple[Command, ...] = (
    Command("bash", f"bash in the {_BASE_IMAGE}; {_RECIPE} scripts/*.sh run under bash on it"),
    Command("sh", f"bash provides /usr/bin/sh; {_RECIPE} al2023.pkr.hcl inline_shebang /bin/sh"),
    *(
        Command(name, _COREUTILS)
        for name in (
            "cat",
            "date",
            "env",
            "false",
            "head",
            "mkdir",
            "printf",
            "rm",
            "sleep",
            "timeout",
            "true",
            "uname",
        )
    ),
    Command("mktemp", f"{_COREUTILS}; used on the AMI by {_RECIPE} scripts/install-ecs-init.sh"),
    Command("grep", f"grep in the {_BASE_IMAGE}"),
    Command(
        "curl",
        "curl-minimal (docs.aws.amazon.com/linux/al2023/ug/minimized-pkg-dependencies.html); "
        f"used on the AMI by {_RECIPE} scripts/install-ecs-init.sh",
    ),
    Command(
        "dnf",
        f"{_RECIPE} al2023.pkr.hcl runs `dnf update -y` and `dnf install -y` on the minimal AMI",
        standin="dnf",
    ),
    Command(
        "docker",
        f"{_RECIPE} scripts/install-docker.sh (docker, containerd, runc); ecs.service wants "
        "docker.service (aws/amazon-ecs-agent packaging/amazon-linux-ami-integrated/ecs.service)",
        standin="docker",
    ),
    Command(
        "shutdown",
        f"systemd (AL2023's init; {_RECIPE} scripts/enable-services.sh uses systemctl)",
        standin="shutdown",
    ),
)

LACKS: tuple[Command, ...] = (
    Command(
        "aws",
        f"no awscli in {_RECIPE} (packages_al2023 lists amazon-efs-utils amazon-ssm-agent "
        "amazon-ec2-net-utils acpid iproute-tc ec2-instance-connect) nor on the minimal source "
        "AMI (amazonlinux/amazon-linux-2023#625)",
    ),
)

# What `dnf install <package>` adds to the PATH.
PACKAGES: dict[str, tuple[Command, ...]] = {
    "awscli-2": (
        Command(
            "aws",
            "docs.aws.amazon.com/linux/al2023/ug/awscli2.html; amazonlinux/amazon-linux-2023#625",
            standin="aws",
        ),
    ),
}


def populate(bin_dir: Path) -> Path:
    """Fill ``bin_dir`` with exactly the AMI's commands. A command this machine lacks is
    left out (a missing command fails loudly, which is the strict side)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for command in HAS:
        if command.standin:
            _write_standin(bin_dir, command)
        elif host := shutil.which(command.name, path=HOST_PATH):
            target = bin_dir / command.name
            target.unlink(missing_ok=True)
            target.symlink_to(host)
    return bin_dir


def install(bin_dir: Path, package: str) -> tuple[Command, ...]:
    """What ``dnf install package`` does to the PATH. KeyError for a package we do not know."""
    commands = PACKAGES[package]
    for command in commands:
        _write_standin(bin_dir, command)
    return commands


def _write_standin(bin_dir: Path, command: Command) -> None:
    """A stand-in is a Python script; run it with this interpreter by absolute path, so that
    python never becomes a command the user-data itself can call."""
    assert command.standin is not None
    bash = shutil.which("bash", path=HOST_PATH) or "/bin/bash"
    script = STANDINS / command.standin
    path = bin_dir / command.name
    path.unlink(missing_ok=True)
    path.write_text(f'#!{bash}\nexec {shlex.quote(sys.executable)} {shlex.quote(str(script))} "$@"\n')
    path.chmod(0o755)


def commands(bin_dir: Path) -> set[str]:
    """The command names present in ``bin_dir`` (for tests and logs)."""
    return {entry.name for entry in bin_dir.iterdir() if os.access(entry, os.X_OK)}
