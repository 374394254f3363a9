"""Build the Lambda layer that infra/serverless.yml ships with its zip functions; check the package.

- ``numpy.zip``: numpy under ``python/`` (on the runtime's path as /opt/python), for infer and score.

The traffic function needs no layer: it is a container image (lambdas/traffic.Dockerfile), which
``osls package`` builds and pushes itself.

After ``osls package`` has written the functions' own zips, ``--check-sizes DIR`` checks the
package in DIR (``infra/.serverless``) the way Lambda does: each zip function's own code plus the
layers it references, unzipped, must fit in 262,144,000 bytes; an image function is listed with
its own limit, and must reference no layer. scripts/deploy.sh runs it between ``osls package``
and the upload, so a package AWS would refuse never leaves this machine.

Wheels come from the package index for the deployed platform (manylinux x86_64 up to glibc 2.34, CPython 3.12)
by default. ``--source venv`` copies the distributions installed in the running interpreter
instead: no index needed, and the result imports here (the tests use it).

    python -m scripts.package_functions [--out infra/build] [--source index|venv]
    python -m scripts.package_functions --check-sizes infra/.serverless
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements"
DEFAULT_OUT = ROOT / "infra" / "build"
# Lambda quotas (docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html): "250 MB The
# maximum size of the contents of a deployment package, including layers and custom runtimes.
# (unzipped)". In bytes, as the API states it (AccountLimit.CodeSizeUnzipped; the error below).
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024  # 262,144,000
# The same page: a container image function's code package may be 10 GB (the image uncompressed,
# all its layers included).
IMAGE_LINE = "{name}: container image (Lambda's limit is 10 GB uncompressed, not the 250 MB of a zip package)"
# The python3.12 runtime is Amazon Linux 2023 (glibc 2.34): manylinux wheels up to 2.34 run there.
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64")
PYTHON_VERSION = "3.12"

# Layer name -> the requirement files whose packages it carries.
LAYERS: dict[str, list[str]] = {
    "numpy": ["infer.txt"],
}

# Never needed at run time: test suites, byte code compiled here, console scripts.
_PRUNED_DIRS = {"tests", "__pycache__"}


def requirement_lines(files: list[str]) -> list[str]:
    lines: list[str] = []
    for name in files:
        for line in (REQUIREMENTS / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-") and line not in lines:
                lines.append(line)
    return lines


def install_from_index(requirements: list[str], target: Path, python_version: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-compile",
            "--target",
            str(target),
            *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            "--only-binary=:all:",
            "-c",
            str(REQUIREMENTS / "lock.txt"),
            *requirements,
        ],
        check=True,
    )


def _closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The installed distributions ``requirements`` need, dependencies included."""
    env = default_environment()
    seen: dict[str, metadata.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({**env, "extra": ""})):
            continue
        dist = metadata.distribution(req.name)
        seen[name] = dist
        todo.extend(Requirement(r) for r in dist.requires or [])
    return list(seen.values())


def copy_from_environment(requirements: list[str], target: Path) -> None:
    for dist in _closure(requirements):
        for file in dist.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue
            source = Path(str(dist.locate_file(file)))
            if source.is_file():
                destination = target / file
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)


def prune(tree: Path) -> None:
    for path in sorted(tree.rglob("*"), reverse=True):
        if path.is_dir() and path.name in _PRUNED_DIRS:
            shutil.rmtree(path)
    shutil.rmtree(tree / "bin", ignore_errors=True)


def tree_size(tree: Path) -> int:
    return sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())


def write_zip(zip_path: Path, files: dict[str, Path], *, compresslevel: int) -> None:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo.from_file(files[name], arcname=name)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with files[name].open("rb") as source, archive.open(info, "w") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)


def _files_under(tree: Path, prefix: str) -> dict[str, Path]:
    return {f"{prefix}{p.relative_to(tree).as_posix()}": p for p in tree.rglob("*") if p.is_file()}


def build(out: Path, *, source: str, python_version: str, compresslevel: int) -> dict[str, dict[str, int]]:
    """Write every layer zip into ``out``; figures per layer in bytes."""
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="layers-") as scratch:
        for layer, files in LAYERS.items():
            tree = Path(scratch) / layer
            tree.mkdir()
            requirements = requirement_lines(files)
            if source == "index":
                install_from_index(requirements, tree, python_version)
            else:
                copy_from_environment(requirements, tree)
            prune(tree)
            zip_path = out / f"{layer}.zip"
            write_zip(zip_path, _files_under(tree, "python/"), compresslevel=compresslevel)
            figures[layer] = {"layer_unzipped": tree_size(tree), "layer_zip": zip_path.stat().st_size}
    return figures


class PackageCheckError(Exception):
    """The generated package cannot be checked or would be refused by Lambda."""


class PackageTooLarge(PackageCheckError):
    """A function's code plus its layers, unzipped, exceed Lambda's limit."""


class UnknownLayer(PackageCheckError):
    """A function references a layer this package does not build (an ARN): its size is unknown."""


@dataclass(frozen=True)
class FunctionPackage:
    """What Lambda unpacks for one function: its own zip and the zips of its layers, in order."""

    name: str
    code: Path
    layers: tuple[tuple[str, Path], ...] = ()


@dataclass(frozen=True)
class UnzippedSize:
    function: str
    code: int
    layers: tuple[tuple[str, int], ...]
    limit: int = LAMBDA_UNZIPPED_LIMIT

    @property
    def total(self) -> int:
        return self.code + sum(size for _, size in self.layers)

    @property
    def margin(self) -> int:
        return self.limit - self.total

    def line(self) -> str:
        mb = 1024 * 1024
        parts = " + ".join([f"code {self.code:,}", *(f"layer {n} {s:,}" for n, s in self.layers)])
        return (
            f"{self.function}: {self.total:,} bytes unzipped ({parts}); "
            f"margin {self.margin:,} bytes ({self.margin / mb:.1f} MB) to the {self.limit:,}-byte limit"
        )


def unzipped_size(zip_path: Path) -> int:
    """The bytes ``zip_path`` extracts to: the sum of its entries' uncompressed sizes."""
    with zipfile.ZipFile(zip_path) as archive:
        return sum(info.file_size for info in archive.infolist())


def check_unzipped_sizes(
    functions: Iterable[FunctionPackage], *, limit: int = LAMBDA_UNZIPPED_LIMIT, out: TextIO | None = None
) -> list[UnzippedSize]:
    """Measure every function as Lambda does and refuse the package if one does not fit.

    Lambda's CreateFunction/UpdateFunctionConfiguration refuse a function whose code and layers
    together extract to more than the limit with InvalidParameterValueException "Function code
    combined with layers exceeds the maximum allowed size of 262144000 bytes. The actual size is
    N bytes." (the text AWS returns, e.g. lambci/git-lambda-layer#27, brefphp/bref#450). The same
    sentence, naming the function and every part, is raised here for each function over it.
    The limit itself is allowed ("maximum allowed size"). A line per function goes to ``out``.
    """
    layer_sizes: dict[Path, int] = {}
    sizes: list[UnzippedSize] = []
    for function in functions:
        for _, path in function.layers:
            if path not in layer_sizes:
                layer_sizes[path] = unzipped_size(path)
        size = UnzippedSize(
            function=function.name,
            code=unzipped_size(function.code),
            layers=tuple((name, layer_sizes[path]) for name, path in function.layers),
            limit=limit,
        )
        sizes.append(size)
        if out is not None:
            print(size.line(), file=out)
    too_large = [s for s in sizes if s.total > limit]
    if too_large:
        raise PackageTooLarge(
            "\n".join(
                f"{s.function}: Function code combined with layers exceeds the maximum allowed size "
                f"of {limit} bytes. The actual size is {s.total} bytes. "
                f"({' + '.join([f'code {s.code}', *(f'layer {n} {b}' for n, b in s.layers)])})"
                for s in too_large
            )
        )
    return sizes


def _resolve(state: Any, value: Any) -> Any:
    """Follow the ``{"$ref": '$["a"]["b"]'}`` pointers osls writes into serverless-state.json."""
    while isinstance(value, dict) and set(value) == {"$ref"}:
        node = state
        for key in re.findall(r'\["((?:[^"\\]|\\.)*)"\]', value["$ref"]):
            node = node[key]
        value = node
    return value


def packaged_functions(package_dir: Path) -> list[FunctionPackage]:
    """The zip functions of an ``osls package`` output folder, with the zips Lambda will unpack
    (an image function has none: ``image_functions``).

    The template says which layers each function references; the functions' zips are in
    ``package_dir`` and the layers' are the ``package.artifact`` paths of serverless.yml
    (relative to the service folder, the parent of ``package_dir``), as osls uploads them.
    """
    template = json.loads((package_dir / "cloudformation-template-update-stack.json").read_text())
    state = json.loads((package_dir / "serverless-state.json").read_text())
    service_dir = package_dir.parent
    layer_artifacts: dict[str, Path] = {}
    for layer in (_resolve(state, state["service"].get("layers")) or {}).values():
        artifact = (_resolve(state, layer).get("package") or {}).get("artifact")
        if artifact:
            layer_artifacts[Path(artifact).name] = service_dir / artifact
    resources = template["Resources"]

    def layer_zip(key: str) -> Path:
        name = PurePosixPath(key).name
        return layer_artifacts.get(name, package_dir / name)

    functions = []
    for logical, resource in resources.items():
        if resource["Type"] != "AWS::Lambda::Function" or "S3Key" not in resource["Properties"]["Code"]:
            continue
        props = resource["Properties"]
        name = props.get("FunctionName")
        name = name if isinstance(name, str) else logical
        layers = []
        for ref in props.get("Layers", []):
            target = resources.get(ref.get("Ref", "")) if isinstance(ref, dict) else None
            if target is None or target["Type"] != "AWS::Lambda::LayerVersion":
                raise UnknownLayer(f"{name}: layer {ref} is not built by this package; its size is unknown")
            path = layer_zip(target["Properties"]["Content"]["S3Key"])
            layers.append((path.stem, path))
        code = package_dir / PurePosixPath(props["Code"]["S3Key"]).name
        for path in (code, *(p for _, p in layers)):
            if not path.is_file():
                raise PackageCheckError(f"{name}: {path} is missing (run osls package first)")
        functions.append(FunctionPackage(name, code, tuple(layers)))
    return functions


def image_functions(package_dir: Path) -> list[str]:
    """The names of the package's container image functions (``PackageType: Image``).

    osls built and pushed their images; there is no zip to measure. An image function with
    layers is refused: Lambda gives layers to zip functions only, yet osls copies
    ``provider.layers`` onto every function (aws/aws-cdk#16781 describes the same refusal).
    """
    template = json.loads((package_dir / "cloudformation-template-update-stack.json").read_text())
    names = []
    for logical, resource in template["Resources"].items():
        props = resource.get("Properties") or {}
        if resource["Type"] != "AWS::Lambda::Function" or props.get("PackageType") != "Image":
            continue
        name = props.get("FunctionName")
        name = name if isinstance(name, str) else logical
        if props.get("Layers"):
            raise PackageCheckError(
                f"{name}: a container image function cannot have layers ({props['Layers']})"
            )
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the layer zips go")
    parser.add_argument("--source", choices=["index", "venv"], default="index")
    parser.add_argument("--python-version", default=PYTHON_VERSION, help="with --source index")
    parser.add_argument("--compresslevel", type=int, default=6, choices=range(10), metavar="0-9")
    parser.add_argument(
        "--check-sizes",
        type=Path,
        metavar="DIR",
        help="instead of building: check the osls package in DIR (infra/.serverless) against Lambda's limit",
    )
    args = parser.parse_args(argv)
    if args.check_sizes is not None:
        try:
            check_unzipped_sizes(packaged_functions(args.check_sizes), out=sys.stdout)
            for name in image_functions(args.check_sizes):
                print(IMAGE_LINE.format(name=name))
        except PackageCheckError as err:
            print(err, file=sys.stderr)
            return 1
        return 0
    figures = build(
        args.out, source=args.source, python_version=args.python_version, compresslevel=args.compresslevel
    )
    mb = 1024 * 1024
    for layer, sizes in figures.items():
        unzipped, zipped = sizes["layer_unzipped"] / mb, sizes["layer_zip"] / mb
        print(f"{layer}: layer {unzipped:.1f} MB unzipped ({zipped:.1f} MB zip)")
        if sizes["layer_unzipped"] > LAMBDA_UNZIPPED_LIMIT:
            # What PublishLayerVersion answers (InvalidParameterValueException).
            print(
                f"{layer}: Unzipped size must be smaller than {LAMBDA_UNZIPPED_LIMIT} bytes", file=sys.stderr
            )
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
