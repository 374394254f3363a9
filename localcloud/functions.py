"""Lambda on this machine: each function runs in worker processes of its own.

A ``FunctionPool`` keeps a function's execution environments: processes running
``localcloud.runtime`` with exactly the function's environment (its serverless.yml variables,
the runtime's own variables and its role's temporary credentials; nothing inherited from the
local cloud). As in Lambda:
- an environment is created on the first invocation that finds none idle (a cold start: the
  handler module is imported once) and kept warm for the next;
- one environment serves one invocation at a time, so concurrency grows with concurrent
  requests, up to the function's ``reservedConcurrency`` or the local cloud's limit; an
  invocation that finds the limit reached waits for a free environment (Lambda would throttle
  it with a 429; waiting keeps a burst of local clients from failing);
- the function's ``timeout`` is enforced: past it the environment is killed and the
  invocation fails with Lambda's "Task timed out after N seconds";
- a synchronous request or response over 6 MB fails as Lambda's does
  (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html: "Invocation
  payload (request and response): 6 MB each for synchronous").
An unhandled exception in the handler fails that invocation only; the environment lives on.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from localcloud.infra import ROOT
from localcloud.runtime import RESPONSE_FD_ENV

MAX_SYNC_PAYLOAD_BYTES = 6 * 1024 * 1024
# Lambda gives the init phase 10 s; past it, init is retried inside the first invocation and
# counts against the function's timeout (https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html).
INIT_LIMIT_S = 10.0
STOP_GRACE_S = 2.0

LogSink = Callable[[str, str], None]  # (function name, one line of its output)


class FunctionError(Exception):
    """An invocation that failed: ``error_type`` as Lambda names it, and its message."""

    def __init__(self, function: str, error_type: str, message: str) -> None:
        super().__init__(f"{function}: {error_type}: {message}")
        self.function = function
        self.error_type = error_type
        self.message = message


class FunctionTimeout(FunctionError):
    pass


class PayloadTooLarge(FunctionError):
    pass


@dataclass(frozen=True)
class FunctionSpec:
    name: str  # the serverless.yml key, e.g. "upload"
    function_name: str  # the deployed name, e.g. "autoretrain-local-upload"
    handler: str  # "lambdas/upload.handler"
    environment: Mapping[str, str]  # the whole process environment
    timeout_s: float
    memory_mb: int
    max_concurrency: int


class _Worker:
    """One execution environment: a process, its request pipe and its answers."""

    def __init__(self, spec: FunctionSpec, sink: LogSink) -> None:
        self.spec = spec
        read_fd, write_fd = os.pipe()
        env = {**spec.environment, RESPONSE_FD_ENV: str(write_fd)}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "localcloud.runtime"],
                env=env,
                cwd=str(ROOT),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                start_new_session=True,  # its own process group: a kill takes its children too
            )
        finally:
            os.close(write_fd)
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        responses = os.fdopen(read_fd, "r")
        assert self.process.stdout is not None
        self._threads = [
            threading.Thread(target=self._read_answers, args=(responses,), daemon=True),
            threading.Thread(target=self._read_log, args=(self.process.stdout, sink), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.init_seconds: float | None = None

    def _read_answers(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self._answers.put(json.loads(line))
        self._answers.put(None)  # the process is gone

    def _read_log(self, stream: IO[bytes], sink: LogSink) -> None:
        with stream:
            for raw in stream:
                sink(self.spec.name, raw.decode("utf-8", "replace").rstrip("\n"))

    def _next_answer(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._answers.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise TimeoutError from None

    def wait_ready(self, deadline: float) -> None:
        answer = self._next_answer(deadline - time.monotonic())
        if answer is None:
            raise FunctionError(self.spec.name, "Runtime.ExitError", "the runtime exited during init")
        if answer.get("init") != "ok":
            raise FunctionError(
                self.spec.name,
                "Runtime.ImportModuleError",
                f"{answer.get('errorType')}: {answer.get('errorMessage')}",
            )
        self.init_seconds = float(answer.get("seconds", 0.0))

    def invoke(self, payload: str, request_id: str, deadline: float) -> dict[str, Any]:
        assert self.process.stdin is not None
        timeout_s = max(0.001, deadline - time.monotonic())
        line = json.dumps({"request_id": request_id, "timeout_s": timeout_s}).rstrip("}")
        self.process.stdin.write(f'{line}, "event": {payload}}}\n'.encode())
        self.process.stdin.flush()
        answer = self._next_answer(deadline - time.monotonic())
        if answer is None:
            raise FunctionError(
                self.spec.name, "Runtime.ExitError", f"the runtime exited (status {self.process.poll()})"
            )
        return answer

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # the runtime's loop ends at end of input
        try:
            self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill()


class FunctionPool:
    """The execution environments of one function."""

    def __init__(self, spec: FunctionSpec, sink: LogSink, platform_sink: LogSink | None = None) -> None:
        """``sink`` gets every line the function writes; ``platform_sink`` the lines Lambda's
        platform adds to its log (START, END, REPORT with the duration)."""
        self.spec = spec
        self._sink = sink
        self._platform_sink = platform_sink
        self._idle: list[_Worker] = []
        self._count = 0  # idle + busy + starting
        self._cond = threading.Condition()
        self._closed = False
        self._all: set[_Worker] = set()
        self.cold_starts = 0
        self.peak_concurrency = 0
        self._busy = 0

    def invoke(self, event: Any) -> Any:
        """Run one invocation; returns the handler's result or raises ``FunctionError``."""
        payload = json.dumps(event)
        if len(payload.encode()) > MAX_SYNC_PAYLOAD_BYTES:
            raise PayloadTooLarge(
                self.spec.name,
                "RequestEntityTooLargeException",
                f"Request must be smaller than {MAX_SYNC_PAYLOAD_BYTES} bytes for the "
                "InvokeFunction operation",
            )
        worker = self._acquire()
        request_id = str(uuid.uuid4())
        started = time.monotonic()
        self._platform(f"START RequestId: {request_id} Version: $LATEST")
        deadline = time.monotonic() + self.spec.timeout_s
        try:
            if worker.init_seconds is None:
                worker.wait_ready(time.monotonic() + INIT_LIMIT_S + self.spec.timeout_s)
                deadline = max(deadline, time.monotonic() + self.spec.timeout_s)
            answer = worker.invoke(payload, request_id, deadline)
        except TimeoutError:
            self._discard(worker)
            self._platform(f"END RequestId: {request_id}")
            self._platform(
                f"REPORT RequestId: {request_id} Duration: {self.spec.timeout_s * 1000:.2f} ms "
                "Status: timeout"
            )
            raise FunctionTimeout(
                self.spec.name,
                "Sandbox.Timedout",
                f"Task timed out after {self.spec.timeout_s:.2f} seconds",
            ) from None
        except BaseException:
            self._discard(worker)
            raise
        self._release(worker)
        elapsed_ms = (time.monotonic() - started) * 1000
        self._platform(f"END RequestId: {request_id}")
        self._platform(
            f"REPORT RequestId: {request_id} Duration: {elapsed_ms:.2f} ms "
            f"Billed Duration: {max(1, int(elapsed_ms + 0.999))} ms Memory Size: {self.spec.memory_mb} MB"
        )
        if "error" in answer:
            error = answer["error"]
            raise FunctionError(self.spec.name, str(error.get("errorType")), str(error.get("errorMessage")))
        result = answer.get("result")
        if len(json.dumps(result).encode()) > MAX_SYNC_PAYLOAD_BYTES:
            raise PayloadTooLarge(
                self.spec.name,
                "Function.ResponseSizeTooLarge",
                "Response payload size exceeded maximum allowed payload size "
                f"({MAX_SYNC_PAYLOAD_BYTES} bytes).",
            )
        return result

    def _platform(self, line: str) -> None:
        if self._platform_sink is not None:
            self._platform_sink(self.spec.name, line)

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise FunctionError(self.spec.name, "ServiceException", "the local cloud is stopping")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive:
                        self._busy += 1
                        self.peak_concurrency = max(self.peak_concurrency, self._busy)
                        return worker
                    self._count -= 1
                if self._count < self.spec.max_concurrency:
                    self._count += 1
                    self._busy += 1
                    self.peak_concurrency = max(self.peak_concurrency, self._busy)
                    break
                self._cond.wait()
        try:
            worker = _Worker(self.spec, self._sink)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._busy -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._all.add(worker)
        self.cold_starts += 1
        return worker

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            self._busy -= 1
            if self._closed:
                self._count -= 1
                self._all.discard(worker)
                worker.stop()
            else:
                self._idle.append(worker)
            self._cond.notify()

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._cond:
            self._all.discard(worker)
            self._count -= 1
            self._busy -= 1
            self._cond.notify()

    def stop(self) -> None:
        """Close every environment: idle ones at once, busy ones after their invocation (or
        ``STOP_GRACE_S``, then killed)."""
        with self._cond:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
            self._count -= len(self._idle)
            self._idle.clear()
            self._cond.notify_all()
        for worker in workers:
            worker.stop()
