"""The traffic function's image, its steps carried out without a docker engine, started cold.

The Dockerfile's requirements are installed as it installs them (pip, pinned, into
LAMBDA_TASK_ROOT, with only the base image's commands), its cache step runs, and the handler
is started as Lambda starts an image: a new process, the image read-only, /tmp its own
(localcloud/imagebuild.py and localcloud/coldstart.py say what is emulated).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localcloud import coldstart, imagebuild

ROOT = Path(__file__).resolve().parents[2]
IMAGE_LIMIT = 10 * 1024**3  # Lambda: "10 GB (maximum uncompressed image size, including all layers)"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> imagebuild.Image:
    out = tmp_path_factory.mktemp("traffic-image")
    return imagebuild.build(ROOT / "lambdas" / "traffic.Dockerfile", ROOT, out, progress=print)


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    with coldstart.upload_stub() as url:
        yield url


def _built_kernels(image: imagebuild.Image) -> dict[str, list[int]]:
    return coldstart.files_of(image.path(image.env["KERNEL_CACHE_IMAGE_DIR"]))


def test_the_image_holds_the_handler_its_dependencies_and_the_compiled_kernels(
    image: imagebuild.Image,
) -> None:
    task = image.path(image.env["LAMBDA_TASK_ROOT"])
    assert image.handler == "lambdas.traffic.handler"
    assert (task / "lambdas" / "traffic.py").is_file()
    for package in ("pythermalcomfort", "numba", "llvmlite", "scipy", "numpy"):
        assert (task / package / "__init__.py").is_file(), package
    # Nothing of the rest of the repository or of the other functions' heavy dependencies.
    for absent in ("tensorflow", "trainer", "tests", "moto", "requirements", "bin"):
        assert not (task / absent).exists(), absent
    assert not list(task.rglob("tests"))  # test suites removed in the install step
    kernels = _built_kernels(image)
    assert any(name.endswith(".nbi") for name in kernels) and any(name.endswith(".nbc") for name in kernels)
    assert 0 < image.size() < IMAGE_LIMIT


def test_a_cold_start_loads_the_kernels_and_compiles_nothing(image: imagebuild.Image, api_url: str) -> None:
    env = {**coldstart.stub_environment(api_url), "TRAFFIC_MAX_SAMPLES": "20"}
    cold = coldstart.start_cold(image, {"seed": 5}, env=env)
    assert cold.result["via"] == "http"
    assert cold.result["written"] == cold.result["sent"] >= 1
    # /tmp holds exactly the image's kernels, each with the size and time of its copy: numba found
    # every one it needed and wrote none, not even one compiled again under the same name.
    assert cold.tmp_files == {f"numba-cache/{name}": stamp for name, stamp in _built_kernels(image).items()}
    assert any('"event":"numba_kernels_loaded"' in line for line in cold.logs), cold.logs
    print(f"cold start: import {cold.import_s:.2f} s, init {cold.init_s:.2f} s, call {cold.first_s:.3f} s")


def test_without_the_image_kernels_a_cold_start_compiles(image: imagebuild.Image, api_url: str) -> None:
    """What the check above tells apart: with the kernels left out, numba compiles them all again
    into /tmp (and the init takes several times longer)."""
    env = {**coldstart.stub_environment(api_url), "KERNEL_CACHE_IMAGE_DIR": ""}
    cold = coldstart.start_cold(image, {"seed": 5}, env=env)
    assert cold.result["written"] == cold.result["sent"]
    compiled = {name for name in cold.tmp_files if name.endswith(".nbc")}
    built = {f"numba-cache/{name}" for name in _built_kernels(image)}
    assert compiled and compiled <= built  # the same kernels, made again
