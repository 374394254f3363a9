"""The traffic function's Dockerfile, read (no docker engine here) and linted with hadolint.

Its steps are carried out and its cold start measured in tests/integration/test_traffic_image.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from localcloud import dockerfile
from localcloud.dockerfile import Instruction
from localcloud.imagebuild import BASE_IMAGE

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "lambdas" / "traffic.Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")


def instructions(keyword: str | None = None) -> list[Instruction]:
    found = dockerfile.read(DOCKERFILE)
    return [i for i in found if keyword is None or i.keyword == keyword]


def image_env() -> dict[str, str]:
    env = {"LAMBDA_TASK_ROOT": "/var/task"}
    for instruction in instructions("ENV"):
        env.update(dockerfile.env_pairs(instruction, env))
    return env


def test_the_base_is_the_lambda_python_image_of_the_functions_runtime_pinned() -> None:
    (base,) = instructions("FROM")
    image = base.words()[0]
    runtime = yaml.safe_load((ROOT / "infra" / "serverless.yml").read_text())["provider"]["runtime"]
    version = runtime.removeprefix("python")
    # A dated release of the base image (3.12.YYYY.MM.DD.HH, here for x86_64), or a digest.
    dated = re.fullmatch(
        rf"{re.escape(BASE_IMAGE)}:{re.escape(version)}\.\d{{4}}(\.\d{{2}}){{3}}-x86_64", image
    )
    digest = re.fullmatch(rf"{re.escape(BASE_IMAGE)}:{re.escape(version)}[^@]*@sha256:[0-9a-f]{{64}}", image)
    assert dated or digest, f"{image} is not a pinned {BASE_IMAGE}:{version} release"


def test_the_requirements_installed_are_the_functions_pinned_ones() -> None:
    runs = " ".join(i.arguments for i in instructions("RUN"))
    assert re.search(r"pip install .*-r requirements/traffic\.txt -c requirements/lock\.txt", runs)
    assert '--target "${LAMBDA_TASK_ROOT}"' in runs
    copied = [i.words() for i in instructions("COPY")]
    assert ["requirements/traffic.txt", "requirements/lock.txt", "requirements/"] in copied
    lock = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for line in (ROOT / "requirements" / "traffic.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.]*", line.strip()), line
    # What pythermalcomfort brings is pinned too, through the lock file given as constraints.
    assert {"pythermalcomfort", "numba", "llvmlite", "scipy", "numpy"} <= set(lock)


def test_the_code_goes_where_the_runtime_imports_it_from() -> None:
    """The runtime puts LAMBDA_TASK_ROOT on the path: WORKDIR is it, and the code is copied
    relative to it, into lambdas/."""
    (workdir,) = instructions("WORKDIR")
    assert workdir.arguments == "${LAMBDA_TASK_ROOT}"
    code = [i.words() for i in instructions("COPY") if i.words()[0].startswith("lambdas/")]
    assert code and all(words[-1] in {"lambdas/", "lambdas/core"} for words in code)
    assert all(i.line > workdir.line for i in instructions("COPY"))


def test_the_handler_the_image_runs_is_copied_and_callable() -> None:
    (cmd,) = instructions("CMD")
    (handler,) = cmd.exec_form()
    module, attribute = handler.rsplit(".", 1)
    copied_files = {source for i in instructions("COPY") for source in i.words()[:-1]}
    module_file = module.replace(".", "/") + ".py"
    assert module_file in copied_files, f"{module_file} is not copied into the image"
    assert {"lambdas/__init__.py", "lambdas/core"} <= copied_files  # the package and its core
    imported = __import__(module, fromlist=[attribute])
    assert callable(getattr(imported, attribute))


def test_the_cache_step_compiles_the_kernels_for_a_portable_cpu_after_the_code_is_in() -> None:
    env = image_env()
    assert env["NUMBA_CPU_NAME"] == "generic"
    assert env["NUMBA_CACHE_DIR"].startswith("/tmp/")  # the only writable place on Lambda
    assert env["KERNEL_CACHE_IMAGE_DIR"].startswith(env["LAMBDA_TASK_ROOT"] + "/")
    order = [(i.keyword, i.arguments) for i in instructions()]
    cache_step = order.index(("RUN", 'python -m lambdas.core.kernels "${KERNEL_CACHE_IMAGE_DIR}"'))
    core_copied = order.index(("COPY", "lambdas/core lambdas/core"))
    assert core_copied < cache_step < order.index(("CMD", '["lambdas.traffic.handler"]'))


def test_no_secret_goes_into_the_image() -> None:
    text = DOCKERFILE.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    for instruction in instructions("ENV") + instructions("ARG"):
        for word in instruction.words():
            name = word.split("=", 1)[0]
            assert not re.search(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", name, re.I), name
    sources = {source for i in instructions("COPY") for source in i.words()[:-1]}
    assert "." not in sources  # never the whole context
    assert not any(re.search(r"\.aws|\.env|credentials|\.git", s) for s in sources)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git/", ".venv/", ".localcloud/"} <= set(ignored)


@pytest.mark.parametrize("path", ["lambdas/traffic.Dockerfile", "trainer/Dockerfile"])
def test_hadolint_finds_nothing(path: str) -> None:
    result = subprocess.run([str(HADOLINT), "--no-color", path], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_the_real_linter() -> None:
    """The check above could not pass by accident: the linter runs and fails a bad Dockerfile."""
    version = subprocess.run([str(HADOLINT), "--version"], capture_output=True, text=True)
    assert "Haskell Dockerfile Linter" in version.stdout
    bad = subprocess.run(
        [str(HADOLINT), "--no-color", "-"],
        input="FROM python:latest\nRUN pip install numba\n",
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "DL3007" in bad.stdout and "DL3013" in bad.stdout
