"""The traffic function's image, its steps carried out without a docker engine, started cold.

The Dockerfile's requirements are installed as it installs them (pip, pinned, into
LAMBDA_TASK_ROOT), its cache step runs, and the handler is started as Lambda starts an image:
a new process, the image read-only, /tmp its own (localcloud/imagebuild.py says what is emulated).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from localcloud import imagebuild

ROOT = Path(__file__).resolve().parents[2]
IMAGE_LIMIT = 10 * 1024**3  # Lambda: "10 GB (maximum uncompressed image size, including all layers)"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> imagebuild.Image:
    out = tmp_path_factory.mktemp("traffic-image")
    return imagebuild.build(ROOT / "lambdas" / "traffic.Dockerfile", ROOT, out, progress=print)


@pytest.fixture(scope="module")
def api_url() -> str:
    with imagebuild.upload_stub() as url:
        yield url  # type: ignore[misc]


def _kernels(directory: Path) -> dict[str, int]:
    return {
        p.relative_to(directory).as_posix(): p.stat().st_size for p in directory.rglob("*") if p.is_file()
    }


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
    assert not list(task.glob("*/tests"))  # test suites removed in the install step
    kernels = _kernels(image.path(image.env["KERNEL_CACHE_IMAGE_DIR"]))
    assert any(name.endswith(".nbi") for name in kernels) and any(name.endswith(".nbc") for name in kernels)
    assert 0 < image.size() < IMAGE_LIMIT


def test_a_cold_start_loads_the_kernels_and_compiles_nothing(image: imagebuild.Image, api_url: str) -> None:
    cold = imagebuild.start_cold(image, {"seed": 5}, env={"API_URL": api_url, "TRAFFIC_MAX_SAMPLES": "20"})
    assert cold.result["via"] == "http"
    assert cold.result["written"] == cold.result["sent"] >= 1
    built = _kernels(image.path(image.env["KERNEL_CACHE_IMAGE_DIR"]))
    # /tmp holds exactly the image's kernels: numba found every one it needed and saved none.
    assert cold.tmp_files == {f"numba-cache/{name}": size for name, size in built.items()}
    print(f"cold start: init {cold.init_s:.2f} s, first answer {cold.first_s:.3f} s, {cold.process_s:.2f} s")


def test_without_the_image_kernels_a_cold_start_compiles(image: imagebuild.Image, api_url: str) -> None:
    """What the check above tells apart: with the kernels left out, numba compiles them all again
    into /tmp (and the init takes several times longer)."""
    cold = imagebuild.start_cold(image, {"seed": 5}, env={"API_URL": api_url, "KERNEL_CACHE_IMAGE_DIR": ""})
    assert cold.result["written"] == cold.result["sent"]
    compiled = {name for name in cold.tmp_files if name.endswith(".nbc")}
    built = {f"numba-cache/{n}" for n in _kernels(image.path(image.env["KERNEL_CACHE_IMAGE_DIR"]))}
    assert compiled and compiled <= built  # the same kernels, made again
