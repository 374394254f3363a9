"""Render the training instance's user-data (``userdata.sh``) for one run.

Every value is shell-quoted, so nothing in a setting can change what the script does.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

TEMPLATE = Path(__file__).with_name("userdata.sh")
MAX_BYTES = 16 * 1024  # EC2's limit on user data (before base64)
_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def render(
    *,
    region: str,
    image: str,
    time_limit_s: int,
    run_version: str,
    environment: Mapping[str, str],
    install_retry_s: int = 10,
) -> str:
    """The user-data script that installs the AWS CLI (the AMI has none), runs ``image`` once
    with ``environment``, then powers off. ``install_retry_s`` is the first pause between
    attempts at installing the CLI (the next ones are longer)."""
    if time_limit_s < 1:
        raise ValueError(f"time limit must be at least 1 second, got {time_limit_s}")
    if install_retry_s < 0:
        raise ValueError(f"install retry pause must not be negative, got {install_retry_s}")
    lines = []
    for name, value in environment.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        lines.append(f"  -e {shlex.quote(f'{name}={value}')}")
    script = (
        TEMPLATE.read_text()
        .replace("@REGION@", shlex.quote(region))
        .replace("@IMAGE@", shlex.quote(image))
        .replace("@TIME_LIMIT_S@", str(int(time_limit_s)))
        .replace("@RUN_VERSION@", shlex.quote(run_version))
        .replace("@INSTALL_RETRY_S@", str(int(install_retry_s)))
        .replace("@DOCKER_ENV@", "\n".join(lines))
    )
    size = len(script.encode("utf-8"))
    if size > MAX_BYTES:
        raise ValueError(f"user-data is {size} bytes; EC2 accepts at most {MAX_BYTES}")
    return script
