"""A Lambda container image built without a docker daemon, and started cold.

This machine has a docker client but no engine. To exercise an image's steps anyway, its
Dockerfile is carried out into a directory standing for the image's root file system (the
"tree", ``OUT/rootfs``):

- ``FROM`` must name AWS's Lambda Python base image. Nothing is pulled: the tree starts empty,
  with the base image's environment and working directory (aws/aws-lambda-base-images,
  ``Dockerfile.python3.12``: ``LAMBDA_TASK_ROOT=/var/task``, ``LAMBDA_RUNTIME_DIR=/var/runtime``,
  ``WORKDIR /var/task``). Its Python is this machine's interpreter (3.12 in the image, this
  machine's otherwise: the same pinned releases, built for the interpreter that runs them), and
  the packages the base image carries for the runtime (boto3 and its dependencies) are this
  environment's.
- ``ARG``, ``ENV``, ``WORKDIR``, ``COPY`` (sources from the context, ``.dockerignore`` applied),
  ``RUN`` (bash, in the working directory, with the image's environment) and ``CMD`` are
  carried out; any other instruction is refused.
- A path in the image (an environment value, a ``COPY`` destination, ``WORKDIR``) is the same
  path under the tree. A ``RUN`` may name paths only through the environment or relative to
  the working directory: a literal absolute path would reach outside the tree and is refused.
- ``pip`` in a ``RUN`` is this environment's pip, with its download cache (the image's
  ``--no-cache-dir`` and ``PIP_NO_CACHE_DIR`` only keep that cache out of the image's layers).

``start_cold`` starts the image as Lambda does on a cold start: a new process, the tree
read-only (Lambda runs an image on a read-only file system, ``/tmp`` apart: "Create a Lambda
function using a container image", requirements), ``/tmp`` a new empty directory, ``HOME``
unwritable. It imports the handler that ``CMD`` names (the init phase, which Lambda limits to
10 s: "Understanding the Lambda execution environment lifecycle") and calls it once.

    python -m localcloud.imagebuild build DOCKERFILE CONTEXT OUT
    python -m localcloud.imagebuild start OUT [--event JSON] [--env K=V ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


def _ignore_patterns(context: Path) -> list[re.Pattern[str]]:
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


def _ignored(relative: str, patterns: list[re.Pattern[str]]) -> bool:
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
        self.ignore = _ignore_patterns(self.context)

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
        env = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")}
        env.update(self.mapped_env())
        env.update(
            PATH=f"{self.bin}:/usr/bin:/bin",
            PYTHONPATH=str(self.tree(RUNTIME_SITE)),
            HOME=str(self.out / "home"),
        )
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
        shutil.rmtree(self.out, ignore_errors=True)
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
        """``python`` and ``pip`` as a RUN finds them: this interpreter, without this
        environment's packages for python (the image has only its own)."""
        self.bin.mkdir()
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
            if _ignored(relative, self.ignore):
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
            if path.is_dir() or _ignored(relative, self.ignore):
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


def build(dockerfile_path: Path, context: Path, out: Path, *, progress: Progress = print) -> Image:
    """Carry out ``dockerfile_path`` with ``context`` into ``out`` (replaced)."""
    return _Builder(dockerfile_path, context, out, progress).build()


# --- a cold start -----------------------------------------------------------------------------

_BOOTSTRAP = """
import importlib, json, os, sys, time
started = time.perf_counter()
module_name, attribute = os.environ["_HANDLER"].rsplit(".", 1)
sys.path.insert(0, os.environ["LAMBDA_TASK_ROOT"])
handler = getattr(importlib.import_module(module_name.replace("/", ".")), attribute)
initialised = time.perf_counter()
result = handler(json.loads(sys.argv[1]), None)
answered = time.perf_counter()
print(json.dumps({"init_s": initialised - started, "first_s": answered - initialised, "result": result}))
"""
# A mount namespace of its own, where the tree is bound read-only onto itself ($0: the tree).
_UNSHARE = ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c"]
_READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


@dataclass(frozen=True)
class ColdStart:
    init_s: float  # importing the handler module: Lambda's init phase
    first_s: float  # the first invocation
    process_s: float  # from starting the process to its answer, the interpreter's start included
    result: Any
    read_only: str  # how the tree was made read-only
    tmp_files: dict[str, int]  # what the run left in /tmp: path -> bytes

    @property
    def cold_s(self) -> float:
        return self.process_s


def _can_mount_read_only() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory() as scratch:
        probe = subprocess.run(
            [
                *_UNSHARE,
                _READ_ONLY_MOUNT,
                scratch,
                "bash",
                "-c",
                'touch "$0/x" 2>/dev/null && exit 1 || exit 0',
                scratch,
            ],
            capture_output=True,
        )
        return probe.returncode == 0


def run_environment(image: Image, tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """What the function's process gets: the image's environment (its paths in the tree, /tmp
    the run's own), the variables Lambda's runtime sets, and ``extra`` (the function's)."""

    def mapped(value: str) -> str:
        if value == "/tmp" or value.startswith("/tmp/"):
            return str(tmp / value.removeprefix("/tmp").lstrip("/"))
        return str(image.path(value)) if value.startswith("/") else value

    env = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")}
    env.update({k: mapped(v) for k, v in image.env.items()})
    env.update(
        _HANDLER=image.handler,
        PATH="/usr/bin:/bin",
        PYTHONPATH=str(image.path(RUNTIME_SITE)),
        HOME=str(image.path("/home/sbx_user")),  # absent and read-only, as Lambda's user's is
        TMPDIR=str(tmp),
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_LAMBDA_FUNCTION_NAME="cold-start",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1024",
    )
    env.update(extra or {})
    return env


def invoke_fresh(
    cwd: Path, env: dict[str, str], event: Any, *, prefix: list[str] | None = None, timeout: float = 120.0
) -> tuple[dict[str, Any], float]:
    """Import ``_HANDLER`` in a new interpreter and call it once: its timings and answer, and the
    seconds from starting the process to its answer. ``prefix`` wraps the command."""
    command = [*(prefix or []), sys.executable, "-S", "-c", _BOOTSTRAP, json.dumps(event)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"the cold start failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]), elapsed


def start_cold(
    image: Image, event: Any, *, env: dict[str, str] | None = None, timeout: float = 120.0
) -> ColdStart:
    """Import the image's handler in a new process, the tree read-only, and call it once."""
    with tempfile.TemporaryDirectory(prefix="lambda-tmp-") as scratch:
        tmp = Path(scratch)
        prefix: list[str] = []
        restore: list[tuple[Path, int]] = []
        if _can_mount_read_only():
            how = "read-only bind mount"
            prefix = [*_UNSHARE, _READ_ONLY_MOUNT, str(image.root)]
        else:
            how = "write permission removed"
            for path in [image.root, *image.root.rglob("*")]:
                if not path.is_symlink():
                    mode = path.stat().st_mode
                    restore.append((path, mode))
                    path.chmod(mode & ~0o222)
        try:
            answer, elapsed = invoke_fresh(
                image.path(image.env.get("LAMBDA_TASK_ROOT", image.workdir)),
                run_environment(image, tmp, env),
                event,
                prefix=prefix,
                timeout=timeout,
            )
        finally:
            for path, mode in reversed(restore):
                path.chmod(mode)
        files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in tmp.rglob("*") if p.is_file()}
        return ColdStart(
            init_s=answer["init_s"],
            first_s=answer["first_s"],
            process_s=elapsed,
            result=answer["result"],
            read_only=how,
            tmp_files=files,
        )


@contextlib.contextmanager
def upload_stub() -> Iterator[str]:
    """A stand-in for ``POST /upload`` that accepts every batch (a first invocation that needs no
    cloud): its base URL, for the traffic function's API_URL."""

    class Upload(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            count = len(body.get("samples", []))
            reply = json.dumps({"written": count, "ids": [f"stub-{i}" for i in range(count)]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Upload)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="carry out a Dockerfile into OUT/rootfs")
    build_parser.add_argument("dockerfile", type=Path)
    build_parser.add_argument("context", type=Path)
    build_parser.add_argument("out", type=Path)
    start_parser = commands.add_parser("start", help="a cold start of a built image")
    start_parser.add_argument("out", type=Path)
    start_parser.add_argument("--event", default="{}", help="the first invocation's event, JSON")
    start_parser.add_argument("--env", action="append", default=[], metavar="K=V", help="(API_URL: a stub)")
    args = parser.parse_args(argv)
    if args.command == "build":
        try:
            image = build(args.dockerfile, args.context, args.out)
        except DockerfileError as err:
            print(f"image build failed: {err}", file=sys.stderr)
            return 1
        print(f"built {args.out / 'rootfs'}: {image.size() / 1e6:.1f} MB, CMD {image.cmd}")
        return 0
    extra = dict(pair.split("=", 1) for pair in args.env)
    with upload_stub() as url:
        cold = start_cold(Image.load(args.out), json.loads(args.event), env={"API_URL": url, **extra})
    print(json.dumps(asdict(cold), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
