"""The inside of one function's worker process: what Lambda's Python runtime does.

``python -m localcloud.runtime`` is started by ``localcloud.functions`` with the function's
environment and nothing else (its variables from serverless.yml, the runtime's own such as
``_HANDLER`` and ``AWS_LAMBDA_FUNCTION_NAME``, and its role's temporary credentials). It
imports the handler once (the init phase), then serves invocations one at a time, as a warm
Lambda execution environment does: a request is one JSON line on stdin, the answer one JSON
line on the file descriptor named by ``LOCALCLOUD_RESPONSE_FD``. stdout and stderr are the
function's log, as in Lambda.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

RESPONSE_FD_ENV = "LOCALCLOUD_RESPONSE_FD"


@dataclass
class LambdaContext:
    """What the Lambda runtime passes as the handler's second argument."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    timeout_s: float
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    _deadline: float = 0.0

    def __post_init__(self) -> None:
        if not self._deadline:
            self._deadline = time.monotonic() + self.timeout_s

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return f"{time.strftime('%Y/%m/%d')}/[$LATEST]{self.aws_request_id.replace('-', '')}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(spec: str) -> Any:
    """``lambdas/upload.handler`` -> the callable, as the runtime resolves ``_HANDLER``."""
    module_path, _, attribute = spec.rpartition(".")
    module = importlib.import_module(module_path.replace("/", "."))
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise AttributeError(f"{spec}: module {module.__name__!r} has no callable {attribute!r}")
    return handler


def error_payload(err: BaseException) -> dict[str, Any]:
    """Lambda's shape of an unhandled error."""
    return {
        "errorType": type(err).__name__,
        "errorMessage": str(err),
        "stackTrace": traceback.format_tb(err.__traceback__),
    }


def main() -> int:
    out = os.fdopen(int(os.environ[RESPONSE_FD_ENV]), "w", buffering=1)
    started = time.monotonic()
    try:
        handler = load_handler(os.environ["_HANDLER"])
    except Exception as err:  # noqa: BLE001 - an init error is reported, as Lambda does
        out.write(json.dumps({"init": "error", **error_payload(err)}) + "\n")
        return 1
    out.write(json.dumps({"init": "ok", "seconds": round(time.monotonic() - started, 3)}) + "\n")

    name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
    region = os.environ.get("AWS_REGION", "us-east-1")
    account = os.environ.get("LOCALCLOUD_ACCOUNT", "123456789012")
    for line in sys.stdin:
        request = json.loads(line)
        context = LambdaContext(
            function_name=name,
            invoked_function_arn=f"arn:aws:lambda:{region}:{account}:function:{name}",
            memory_limit_in_mb=int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")),
            timeout_s=float(request["timeout_s"]),
            aws_request_id=request["request_id"],
        )
        try:
            result = handler(request["event"], context)
        except Exception as err:  # noqa: BLE001 - the invocation fails, the environment lives on
            payload = error_payload(err)
            print(json.dumps(payload), file=sys.stderr)  # as Lambda writes it to the function's log
            answer = json.dumps({"error": payload})
        else:
            try:
                answer = json.dumps({"result": result})
            except (TypeError, ValueError) as err:  # Lambda: Runtime.MarshalError
                answer = json.dumps(
                    {"error": {"errorType": "Runtime.MarshalError", "errorMessage": str(err)}}
                )
        sys.stdout.flush()
        sys.stderr.flush()
        out.write(answer + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
