"""No Docker engine here: the trainer image is checked by parsing its Dockerfile."""

from __future__ import annotations

import json
import re
from pathlib import Path

from localcloud import dockerfile

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    return [(i.keyword, i.arguments) for i in dockerfile.read(ROOT / "trainer" / "Dockerfile")]


def test_trainer_dockerfile_base_image_is_slim_and_pinned() -> None:
    bases = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert len(bases) == 1
    image = bases[0].split()[0]
    assert "slim" in image
    pinned_tag = re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", image)
    pinned_digest = re.fullmatch(r"python:[^@]+@sha256:[0-9a-f]{64}", image)
    assert pinned_tag or pinned_digest, image


def test_trainer_dockerfile_runs_as_a_non_root_user() -> None:
    users = [rest for keyword, rest in instructions() if keyword == "USER"]
    assert users, "no USER instruction"
    assert users[-1] not in {"root", "0", "0:0"}
    assert [k for k, _ in instructions()][-2:] == ["USER", "ENTRYPOINT"]


def test_trainer_dockerfile_runs_the_trainer_entry_point() -> None:
    commands = [(k, rest) for k, rest in instructions() if k in {"ENTRYPOINT", "CMD"}]
    assert commands[-1][0] == "ENTRYPOINT"
    assert json.loads(commands[-1][1]) == ["python", "-m", "trainer"]
    copied = [rest.split()[0] for keyword, rest in instructions() if keyword == "COPY"]
    assert {"trainer", "lambdas/core", "lambdas/__init__.py"} <= set(copied)


def test_trainer_dockerfile_installs_pinned_requirements() -> None:
    runs = " ".join(rest for keyword, rest in instructions() if keyword == "RUN")
    assert re.search(r"pip install .*-r \S*requirements/trainer\.txt", runs)
    assert "-c /tmp/requirements/lock.txt" in runs
    lines = (ROOT / "requirements" / "trainer.txt").read_text().splitlines()
    requirements = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert requirements
    for requirement in requirements:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][A-Za-z0-9.]*", requirement), requirement
    assert {r.split("==")[0] for r in requirements} >= {"tensorflow", "tf-keras", "tensorflowjs", "boto3"}
