"""A Lambda container image built without a docker daemon.

This machine has a docker client but no engine. To exercise an image's steps anyway, its
Dockerfile is carried out into a directory standing for the image's root file system (the
"tree", ``OUT/rootfs``); ``localcloud/coldstart.py`` then starts it as Lambda would.

- ``FROM`` must name AWS's Lambda Python base image. Nothing is pulled: the tree starts empty,
  with the base image's environment and working directory (aws/aws-lambda-base-images,
  ``Dockerfile.python3.12``: ``LAMBDA_TASK_ROOT=/var/task``, ``LAMBDA_RUNTIME_DIR=/var/runtime``,
  ``WORKDIR /var/task``). Its Python is this machine's interpreter (3.12 in the image; the same
  pinned releases are installed, built for the interpreter that runs them), and the packages
  the base image carries for the runtime (boto3 and its dependencies) are this environment's.
- A ``RUN`` finds only the commands the base image has (``BASE_COMMANDS``, with sources):
  ``find``, for one, is not there, as it is not in the image.
- ``ARG``, ``ENV``, ``WORKDIR``, ``COPY`` (sources from the context, ``.dockerignore`` applied),
  ``RUN`` and ``CMD`` are carried out; any other instruction is refused.
- A path in the image (an environment value, a ``COPY`` destination, ``WORKDIR``) is the same
  path under the tree. A ``RUN`` should name paths only through the environment or relative to
  the working directory; one that names an absolute path literally is refused. That check
  reads the command's text (``/`` at the start of a word): it is a guard, not a sandbox.
- ``pip`` in a ``RUN`` is this environment's pip with this machine's pip settings and download
  cache (the image's ``--no-cache-dir`` and ``PIP_NO_CACHE_DIR`` keep that cache out of the
  image's layers, which a tree does not have).

Where docker differs and this does not follow (stricter or simply unsupported): ``RUN`` runs
with ``bash -euo pipefail`` (docker: ``/bin/sh -c``); ``COPY`` takes no options or wildcards,
copies files a symlink points to and leaves out empty directories; one stage, no ``ARG``
before ``FROM``; ``.dockerignore`` without ``!`` exceptions.

    python -m localcloud.imagebuild build DOCKERFILE CONTEXT OUT
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from localcloud import dockerfile
from localcloud.dockerfile import DockerfileError, Instruction

BASE_IMAGE = "public.ecr.aws/lambda/python"
BASE_ENV = {"LAMBDA_TASK_ROOT": "/var/task", "LAMBDA_RUNTIME_DIR": "/var/runtime", "LANG": "en_US.UTF-8"}
BASE_WORKDIR = "/var/task"
# The base image's site-packages (boto3 is there for every Python function), by name here.
RUNTIME_SITE = "/var/lang/lib/site-packages"
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")
SUPPORTED = {"FROM", "ARG", "ENV", "WORKDIR", "COPY", "RUN", "CMD"}
# The commands of the python3.12 base image a RUN may use, taken from this machine: its rpm list
# has bash, coreutils-single, grep, gawk and curl-minimal and no findutils
# (amazonlinux/amazon-linux-2023#585, `rpm -qa` in public.ecr.aws/lambda/python:3.12;
# "Missing `find` command in `lambda/python:3.12` image", aws/aws-lambda-base-images#196).
# python and pip are the image's own (/var/lang/bin), written as wrappers below.
BASE_COMMANDS = (
    "bash",
    "sh",
    *("basename", "cat", "chmod", "cp", "cut", "date", "dirname", "env", "false", "head", "ln", "ls"),
    *("mkdir", "mv", "rm", "rmdir", "sleep", "sort", "tail", "touch", "tr", "true", "uname", "wc"),
    "grep",
    "gawk",
    "awk",
    "curl",
)
# This machine's pip settings reach a RUN's pip (an index mirror, a certificate, a proxy).
_PASSED_THROUGH = re.compile(r"PIP_(?!NO_CACHE_DIR$)\w+|(?i:https?_proxy|no_proxy)|OPENBLAS_\w+")
# A literal absolute path in a RUN: "/" at the start of a word (after a space, quote, = or ().
_LITERAL_ABSOLUTE = re.compile(r"(?:^|[\s\"'=(])/")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    line: int
    instruction: str
    seconds: float


@dataclass(frozen=True)
class Image:
    """A built tree and what the image's config would hold."""

    out: Path
    dockerfile: str
    base: str
    env: dict[str, str]  # as in the image: paths are the image's
    workdir: str
    cmd: list[str]
    steps: list[Step] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.out / "rootfs"

    def path(self, image_path: str) -> Path:
        """Where a path of the image is in the tree."""
        return self.root / image_path.lstrip("/")

    @property
    def handler(self) -> str:
        return self.cmd[0]

    def size(self) -> int:
        """Bytes of the image's own files (the base image's are not in the tree)."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file() and not p.is_symlink())

    def save(self) -> None:
        data = asdict(self)
        data["out"] = str(self.out)
        (self.out / "image.json").write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, out: Path) -> Image:
        data = json.loads((out / "image.json").read_text())
        data["out"] = out
        data["steps"] = [Step(**s) for s in data["steps"]]
        return cls(**data)


def ignore_patterns(context: Path) -> list[re.Pattern[str]]:
    """The context's ``.dockerignore`` as regular expressions over paths relative to it."""
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    patterns = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!"):
            raise DockerfileError(f"{path}: exceptions ({line}) are not supported here")
        line = line.strip("/")
        regex = re.escape(line).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        patterns.append(re.compile(regex + r"\Z"))
    return patterns


def ignored(relative: str, patterns: list[re.Pattern[str]]) -> bool:
    """Whether ``relative`` (a path in the context) or a folder holding it is excluded."""
    parts = relative.split("/")
    return any(p.match("/".join(parts[:n])) for n in range(1, len(parts) + 1) for p in patterns)


class _Builder:
    def __init__(self, dockerfile_path: Path, context: Path, out: Path, progress: Progress) -> None:
        self.dockerfile_path = dockerfile_path
        self.context = context.resolve()
        self.out = out
        self.root = out / "rootfs"
        self.bin = out / "bin"
        self.progress = progress
        self.env: dict[str, str] = {}
        self.args: dict[str, str] = {}
        self.workdir = "/"
        self.cmd: list[str] = []
        self.base = ""
        self.ignore = ignore_patterns(self.context)

    def tree(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def image_path(self, path: str) -> str:
        return path if path.startswith("/") else f"{self.workdir.rstrip('/')}/{path}"

    def mapped_env(self) -> dict[str, str]:
        """The image's environment as a RUN sees it here: its paths inside the tree."""
        return {
            k: str(self.tree(v)) if v.startswith("/") else v for k, v in {**self.args, **self.env}.items()
        }

    def run_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if _PASSED_THROUGH.fullmatch(k)}
        env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
        env.update(self.mapped_env())
        env.update(PATH=str(self.bin), PYTHONPATH=str(self.tree(RUNTIME_SITE)), HOME=str(self.out / "home"))
        return env

    def build(self) -> Image:
        instructions = dockerfile.read(self.dockerfile_path)
        if not instructions or instructions[0].keyword not in {"FROM", "ARG"}:
            raise DockerfileError(f"{self.dockerfile_path}: must start with FROM")
        unsupported = [i for i in instructions if i.keyword not in SUPPORTED]
        if unsupported:
            raise DockerfileError(
                f"{self.dockerfile_path}:{unsupported[0].line}: {unsupported[0].keyword} is not supported"
            )
        if sum(i.keyword == "FROM" for i in instructions) != 1:
            raise DockerfileError(f"{self.dockerfile_path}: one FROM (one stage) is supported here")
        _remove(self.out)
        self.root.mkdir(parents=True)
        (self.out / "home").mkdir()
        self._write_tools()
        steps = []
        for number, instruction in enumerate(instructions, 1):
            started = time.perf_counter()
            self.progress(
                f"step {number}/{len(instructions)} {instruction.keyword} {instruction.arguments[:90]}"
            )
            getattr(self, f"_{instruction.keyword.lower()}")(instruction)
            steps.append(Step(instruction.line, instruction.keyword, round(time.perf_counter() - started, 3)))
        if not self.cmd:
            raise DockerfileError(f"{self.dockerfile_path}: no CMD: the image names no handler")
        image = Image(
            out=self.out,
            dockerfile=str(self.dockerfile_path),
            base=self.base,
            env=dict(self.env),
            workdir=self.workdir,
            cmd=self.cmd,
            steps=steps,
        )
        image.save()
        return image

    def _write_tools(self) -> None:
        """The base image's commands, and ``python`` and ``pip`` as a RUN finds them: this
        interpreter, without this environment's packages for python (the image has only its
        own). A command this machine lacks is left out: it fails, the strict side."""
        self.bin.mkdir()
        for name in BASE_COMMANDS:
            if host := shutil.which(name, path="/usr/bin:/bin"):
                (self.bin / name).symlink_to(host)
        python = self.bin / "python"
        python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
        pip = self.bin / "pip"
        pip.write_text(
            "#!/bin/bash\n"
            "# The image's pip, with this machine's download cache.\n"
            "args=()\n"
            'for arg in "$@"; do [ "$arg" = --no-cache-dir ] || args+=("$arg"); done\n'
            "unset PIP_NO_CACHE_DIR\n"
            f'exec "{sys.executable}" -m pip "${{args[@]}}"\n'
        )
        for tool in (python, pip):
            tool.chmod(0o755)
            (self.bin / f"{tool.name}3").symlink_to(tool.name)

    def _from(self, instruction: Instruction) -> None:
        image = dockerfile.expand(instruction.words()[0], self.args, line=instruction.line)
        repository = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
        if repository != BASE_IMAGE:
            raise DockerfileError(f"line {instruction.line}: only {BASE_IMAGE} is known here, not {image}")
        self.base = image
        self.env.update(BASE_ENV)
        self.workdir = BASE_WORKDIR
        self.tree(self.workdir).mkdir(parents=True, exist_ok=True)
        site = self.tree(RUNTIME_SITE)
        site.mkdir(parents=True)
        import boto3

        installed = Path(boto3.__file__).resolve().parents[1]
        for name in RUNTIME_PACKAGES:
            for candidate in (installed / name, installed / f"{name}.py"):
                if candidate.exists():
                    (site / candidate.name).symlink_to(candidate)

    def _arg(self, instruction: Instruction) -> None:
        name, _, default = instruction.arguments.partition("=")
        self.args[name.strip()] = dockerfile.expand(default.strip(), {**self.args, **self.env})

    def _env(self, instruction: Instruction) -> None:
        self.env.update(dockerfile.env_pairs(instruction, {**self.args, **self.env}))

    def _workdir(self, instruction: Instruction) -> None:
        path = dockerfile.expand(instruction.arguments, {**self.args, **self.env}, line=instruction.line)
        self.workdir = self.image_path(path)
        self.tree(self.workdir).mkdir(parents=True, exist_ok=True)

    def _copy(self, instruction: Instruction) -> None:
        words = [dockerfile.expand(w, {**self.args, **self.env}) for w in instruction.words()]
        if any(w.startswith("--") for w in words) or len(words) < 2:
            raise DockerfileError(f"line {instruction.line}: COPY [options] is not supported here")
        *sources, destination = words
        into_directory = destination.endswith("/") or len(sources) > 1
        target = self.tree(self.image_path(destination))
        for source in sources:
            if any(c in source for c in "*?["):
                raise DockerfileError(f"line {instruction.line}: wildcards in COPY are not supported here")
            path = (self.context / source).resolve()
            if not path.is_relative_to(self.context) or not path.exists():
                raise DockerfileError(f"line {instruction.line}: COPY {source}: not found in the context")
            relative = path.relative_to(self.context).as_posix()
            if ignored(relative, self.ignore):
                raise DockerfileError(f"line {instruction.line}: COPY {source}: excluded by .dockerignore")
            if path.is_dir():
                self._copy_tree(path, target)
            else:
                destination_file = target / path.name if into_directory else target
                destination_file.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination_file)

    def _copy_tree(self, source: Path, target: Path) -> None:
        """A directory's contents (not the directory itself), as docker copies them."""
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(self.context).as_posix()
            if path.is_dir() or ignored(relative, self.ignore):
                continue
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)

    def _run(self, instruction: Instruction) -> None:
        command = instruction.arguments
        if command.startswith("["):
            raise DockerfileError(f"line {instruction.line}: RUN in exec form is not supported here")
        if _LITERAL_ABSOLUTE.search(command):
            raise DockerfileError(
                f"line {instruction.line}: RUN names a literal absolute path; name it through the "
                "environment (e.g. ${LAMBDA_TASK_ROOT}) so it can be carried out here"
            )
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=self.tree(self.workdir),
            env=self.run_env(),
            capture_output=True,
            text=True,
        )
        for line in result.stdout.splitlines()[-5:]:
            self.progress(f"  {line}")
        if result.returncode != 0:
            raise DockerfileError(
                f"line {instruction.line}: RUN exited with {result.returncode}:\n{result.stderr[-3000:]}"
            )

    def _cmd(self, instruction: Instruction) -> None:
        self.cmd = instruction.exec_form()


def _remove(tree: Path) -> None:
    """Delete a previous build, write permission restored where a cold start removed it."""

    def writable_then_retry(function: Any, path: str, _: Any) -> None:
        os.chmod(os.path.dirname(path), stat.S_IRWXU)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, stat.S_IRWXU)
        function(path)

    if tree.exists():
        shutil.rmtree(tree, onerror=writable_then_retry)


def build(dockerfile_path: Path, context: Path, out: Path, *, progress: Progress = print) -> Image:
    """Carry out ``dockerfile_path`` with ``context`` into ``out`` (replaced)."""
    return _Builder(dockerfile_path, context, out, progress).build()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="carry out a Dockerfile into OUT/rootfs")
    build_parser.add_argument("dockerfile", type=Path)
    build_parser.add_argument("context", type=Path)
    build_parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        image = build(args.dockerfile, args.context, args.out)
    except DockerfileError as err:
        print(f"image build failed: {err}", file=sys.stderr)
        return 1
    print(f"built {args.out / 'rootfs'}: {image.size() / 1e6:.1f} MB, CMD {image.cmd}")
    print(f"start it cold: python -m localcloud.coldstart {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
