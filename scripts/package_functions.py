"""Build the Lambda layers that infra/serverless.yml ships with its functions.

- ``numpy.zip``: numpy under ``python/`` (on the runtime's path as /opt/python), for infer.
- ``traffic-deps.zip``: pythermalcomfort with numba, llvmlite, scipy and numpy. Unpacked they
  are larger than Lambda's 250 MB limit, so the layer holds them as one compressed archive
  (``traffic/deps.zip``) and a wrapper script (``traffic/unpack``, set as the function's
  ``AWS_LAMBDA_EXEC_WRAPPER``) that unpacks it to /tmp before the runtime starts.

Wheels come from the package index for the deployed platform (manylinux x86_64 up to glibc 2.34, CPython 3.12)
by default. ``--source venv`` copies the distributions installed in the running interpreter
instead: no index needed, and the result imports here (the tests use it).

    python -m scripts.package_functions [--out infra/build] [--source index|venv]
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements"
DEFAULT_OUT = ROOT / "infra" / "build"
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
# The python3.12 runtime is Amazon Linux 2023 (glibc 2.34): manylinux wheels up to 2.34 run there.
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64")
PYTHON_VERSION = "3.12"

# Layer name -> the requirement files whose packages it carries.
LAYERS: dict[str, list[str]] = {
    "numpy": ["infer.txt"],
    "traffic-deps": ["traffic.txt", "infer.txt"],
}

# Never needed at run time: test suites, byte code compiled here, console scripts.
_PRUNED_DIRS = {"tests", "__pycache__"}

UNPACK_SCRIPT = """#!/bin/sh
# AWS_LAMBDA_EXEC_WRAPPER of the traffic function: runs before the Python runtime starts.
# Unpacks the dependencies that do not fit Lambda's 250 MB limit into /tmp once per execution
# environment, then starts the runtime with them on its path.
set -eu
here=$(dirname "$0")
archive="${TRAFFIC_DEPS_ARCHIVE:-$here/deps.zip}"
target="${TRAFFIC_DEPS_DIR:-/tmp/traffic-deps}"
if [ ! -f "$target/.complete" ]; then
  rm -rf "$target.partial" "$target"
  python3 -m zipfile -e "$archive" "$target.partial"
  touch "$target.partial/.complete"
  mv "$target.partial" "$target"
fi
PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH
exec "$@"
"""


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


def write_zip(zip_path: Path, files: dict[str, Path], *, compresslevel: int, executable: set[str]) -> None:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo.from_file(files[name], arcname=name)
            mode = 0o755 if name in executable else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
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
            unpacked = tree_size(tree)
            zip_path = out / f"{layer}.zip"
            if layer == "traffic-deps":
                inner = Path(scratch) / "deps.zip"
                write_zip(inner, _files_under(tree, ""), compresslevel=compresslevel, executable=set())
                script = Path(scratch) / "unpack"
                script.write_text(UNPACK_SCRIPT)
                write_zip(
                    zip_path,
                    {"traffic/deps.zip": inner, "traffic/unpack": script},
                    compresslevel=1,
                    executable={"traffic/unpack"},
                )
                layer_unzipped = inner.stat().st_size + script.stat().st_size
            else:
                write_zip(
                    zip_path, _files_under(tree, "python/"), compresslevel=compresslevel, executable=set()
                )
                layer_unzipped = unpacked
            figures[layer] = {
                "dependencies_unpacked": unpacked,
                "layer_unzipped": layer_unzipped,
                "layer_zip": zip_path.stat().st_size,
            }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the layer zips go")
    parser.add_argument("--source", choices=["index", "venv"], default="index")
    parser.add_argument("--python-version", default=PYTHON_VERSION, help="with --source index")
    parser.add_argument("--compresslevel", type=int, default=6, choices=range(10), metavar="0-9")
    args = parser.parse_args(argv)
    figures = build(
        args.out, source=args.source, python_version=args.python_version, compresslevel=args.compresslevel
    )
    mb = 1024 * 1024
    for layer, sizes in figures.items():
        print(
            f"{layer}: dependencies {sizes['dependencies_unpacked'] / mb:.1f} MB unpacked, "
            f"layer {sizes['layer_unzipped'] / mb:.1f} MB unzipped ({sizes['layer_zip'] / mb:.1f} MB zip)"
        )
        if sizes["layer_unzipped"] > LAMBDA_UNZIPPED_LIMIT:
            print(f"{layer}: larger than Lambda's 250 MB unzipped limit", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
