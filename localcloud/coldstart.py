"""A cold start of a Lambda container image built by ``localcloud/imagebuild.py``.

``start_cold`` starts the image as Lambda does on a cold start: a new process, the image's file
system read-only (Lambda runs an image on "a read-only file system", ``/tmp`` apart: "Create a
Lambda function using a container image", requirements), ``/tmp`` a new empty directory,
``HOME`` absent. It imports the handler that ``CMD`` names (the init phase, which Lambda limits
to 10 s: "Understanding the Lambda execution environment lifecycle") and calls it once.

Read-only is made by binding the tree read-only onto itself in a mount namespace of the
process's own: as root with ``unshare --mount``, otherwise in a user namespace
(``unshare --user --map-root-user --mount``). Where neither is allowed, a user other than root
gets the tree's write permission removed for the run; root, whom permissions do not stop, gets
an error rather than a start that only looks read-only.

    python -m localcloud.coldstart OUT [--event JSON] [--env K=V ...]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from localcloud.imagebuild import RUNTIME_SITE, Image

_BOOTSTRAP = """
import importlib, json, os, sys, time
started = time.perf_counter()
module_name, attribute = os.environ["_HANDLER"].rsplit(".", 1)
sys.path.insert(0, os.environ["LAMBDA_TASK_ROOT"])
handler = getattr(importlib.import_module(module_name.replace("/", ".")), attribute)
initialised = time.perf_counter()
result = handler(json.loads(sys.argv[1]), None)
answered = time.perf_counter()
print(json.dumps({"import_s": initialised - started, "first_s": answered - initialised, "result": result}))
"""
# In a mount namespace of its own, the tree ($0) bound read-only onto itself, then the command.
_READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
_NAMESPACES = {
    "read-only bind mount": ["unshare", "--mount", "--propagation", "private"],
    "read-only bind mount (user namespace)": ["unshare", "--user", "--map-root-user", "--mount"],
}
PERMISSIONS_REMOVED = "write permission removed"


class ReadOnlyUnavailable(RuntimeError):
    """The image's file system cannot be made read-only here."""


@dataclass(frozen=True)
class ColdStart:
    import_s: float  # importing the handler module, in the new process
    first_s: float  # the first invocation
    process_s: float  # from starting the process to its answer, the interpreter's start included
    result: Any
    read_only: str  # how the tree was made read-only
    tmp_files: dict[str, list[int]]  # what the run left in /tmp: path -> [bytes, mtime_ns]
    logs: list[str]  # what the process printed before its answer

    @property
    def init_s(self) -> float:
        """Lambda's init phase: the interpreter's start and the import, before the first call."""
        return self.process_s - self.first_s


@functools.cache
def read_only_method() -> str:
    """How a start here makes the tree read-only (a key of ``_NAMESPACES``, or
    ``PERMISSIONS_REMOVED``); ReadOnlyUnavailable for root where no namespace is allowed."""
    with tempfile.TemporaryDirectory() as scratch:
        for how, unshare in _NAMESPACES.items():
            if shutil.which("unshare") is None:
                break
            writes = 'touch "$0/x" 2>/dev/null && exit 1 || exit 0'
            probe = subprocess.run(
                [*unshare, "--", "bash", "-c", _READ_ONLY_MOUNT, scratch, "bash", "-c", writes, scratch],
                capture_output=True,
            )
            if probe.returncode == 0:
                return how
    if os.geteuid() == 0:
        raise ReadOnlyUnavailable(
            "cannot make the image read-only: no mount namespace is allowed here, and as root "
            "removing write permission would not stop a write"
        )
    return PERMISSIONS_REMOVED


def files_of(directory: Path) -> dict[str, list[int]]:
    """Every file under ``directory``: relative path -> [bytes, mtime_ns]."""
    return {
        p.relative_to(directory).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns]
        for p in directory.rglob("*")
        if p.is_file()
    }


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
    *logs, last = result.stdout.strip().splitlines()
    return {**json.loads(last), "logs": logs}, elapsed


def start_cold(
    image: Image, event: Any, *, env: dict[str, str] | None = None, timeout: float = 120.0
) -> ColdStart:
    """Import the image's handler in a new process, the tree read-only, and call it once."""
    how = read_only_method()
    with tempfile.TemporaryDirectory(prefix="lambda-tmp-") as scratch:
        tmp = Path(scratch)
        prefix: list[str] = []
        restore: list[tuple[Path, int]] = []
        try:
            if how == PERMISSIONS_REMOVED:
                for path in [image.root, *image.root.rglob("*")]:
                    if not path.is_symlink():
                        mode = path.stat().st_mode
                        restore.append((path, mode))
                        path.chmod(mode & ~0o222)
            else:
                prefix = [*_NAMESPACES[how], "--", "bash", "-c", _READ_ONLY_MOUNT, str(image.root)]
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
        return ColdStart(
            import_s=answer["import_s"],
            first_s=answer["first_s"],
            process_s=elapsed,
            result=answer["result"],
            read_only=how,
            tmp_files=files_of(tmp),
            logs=answer["logs"],
        )


# The traffic client's key the stub hands out (GetSecretValue) and then requires (x-api-key).
STUB_API_KEY = "coldstartstubkey0123456789"
STUB_SECRET_ARN = (
    "arn:aws:secretsmanager:us-east-1:000000000000:secret:autoretrain-cold/traffic-api-key-AbCdEf"
)


@contextlib.contextmanager
def upload_stub() -> Iterator[str]:
    """A stand-in for ``POST /upload`` that accepts every batch sent with the key, and for
    Secrets Manager's GetSecretValue that hands the key out, so a first invocation needs no
    cloud yet does what the deployed one does (read its key, then post). Its base URL: pass
    ``stub_environment(url)`` to the function."""

    class Upload(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}"
            if self.headers.get("X-Amz-Target") == "secretsmanager.GetSecretValue":
                reply = json.dumps(
                    {
                        "ARN": STUB_SECRET_ARN,
                        "Name": "autoretrain-cold/traffic-api-key",
                        "SecretString": STUB_API_KEY,
                        "VersionId": "00000000-0000-0000-0000-000000000001",
                    }
                ).encode()
                self._answer(200, reply, "application/x-amz-json-1.1")
                return
            if self.headers.get("x-api-key") != STUB_API_KEY:
                self._answer(403, b'{"message":"Forbidden"}', "application/json")
                return
            count = len(json.loads(raw).get("samples", []))
            reply = json.dumps({"written": count, "ids": [f"stub-{i}" for i in range(count)]}).encode()
            self._answer(200, reply, "application/json")

        def _answer(self, status: int, reply: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
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


def stub_environment(url: str) -> dict[str, str]:
    """The traffic function's variables pointing at ``upload_stub``'s URL: the upload API, and the
    AWS endpoint (with throw-away credentials) its key's secret is read from."""
    return {
        "API_URL": url,
        "API_KEY_SECRET": STUB_SECRET_ARN,
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "cold-start",
        "AWS_SECRET_ACCESS_KEY": "cold-start",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out", type=Path, help="where `python -m localcloud.imagebuild build` built the image"
    )
    parser.add_argument("--event", default="{}", help="the first invocation's event, JSON")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="(API_URL: a stub)")
    args = parser.parse_args(argv)
    extra = dict(pair.split("=", 1) for pair in args.env)
    with upload_stub() as url:
        env = {**stub_environment(url), **extra}
        cold = start_cold(Image.load(args.out), json.loads(args.event), env=env)
    summary = {**asdict(cold), "init_s": cold.init_s, "tmp_files": len(cold.tmp_files)}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
