"""The interface between the local cloud's core and its drivers (stream poller, instance
runner, alarm evaluator): the core builds one ``Context`` and starts each ``Driver`` with it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import boto3

from localcloud import infra


@dataclass
class Context:
    stack: infra.Stack  # resolved serverless.yml plus the physical names/ARNs created
    aws_endpoint: str  # the moto server, e.g. http://127.0.0.1:4566
    api_url: str  # the local API's base URL
    state_dir: Path  # .localcloud/: logs, notifications, knobs
    invoke: Callable[[str, dict[str, Any]], Any]  # invoke a function (its worker processes)
    say: Callable[[str], None]  # one line of human progress output
    settings: dict[str, Any] = field(default_factory=dict)  # custom.localCloud of serverless.yml
    # role logical id -> its temporary credentials (AWS_ACCESS_KEY_ID, ..._SECRET_..., ..._SESSION_TOKEN)
    role_credentials: Callable[[str], dict[str, str]] | None = None
    # The state outlives the process (``make local``): drivers keep their positions too.
    durable: bool = False

    def invoke_async(self, function: str, event: dict[str, Any], what: str) -> bool:
        """Invoke ``function`` as an asynchronous source does (EventBridge, a CloudWatch alarm
        action): a function error is retried twice, after 1 and then 2 minutes in AWS ("How
        Lambda handles errors and retries with asynchronous invocation",
        https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html), after
        ``asyncInvoke.retryDelaysSeconds`` here. Each failure is said; after the last the event
        is dropped, as Lambda drops it without a dead-letter queue. True if an attempt succeeded."""
        # Local delays unless serverless.yml names others: AWS's minutes would hold a driver's thread.
        configured = (self.settings.get("asyncInvoke") or {}).get("retryDelaysSeconds", [1, 2])
        delays = [float(d) for d in configured]
        for attempt, delay in enumerate([*delays, None], start=1):
            try:
                self.invoke(function, event)
                return True
            except Exception as err:  # noqa: BLE001 - reported; Lambda retries, then drops the event
                then = f"retried in {delay:g} s" if delay is not None else "dropped"
                self.say(f"{what}: {function} failed (attempt {attempt}): {err!r}; {then}")
            if delay is not None:
                time.sleep(delay)
        return False

    def client(self, service: str) -> Any:
        """An administrator's client: what AWS itself does (deliver events, run instances)."""
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.aws_endpoint,
            region_name=self.stack.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def function_client(self, service: str, function: str) -> Any:
        """A client acting with a function's execution role, for what AWS does on the
        function's behalf with that role: an event source mapping reads the stream and sends
        to the on-failure destination with it
        (https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html#events-dynamodb-permissions)."""
        role = self.stack.function(function).role
        if self.role_credentials is None or role is None:
            return self.client(service)
        creds = self.role_credentials(role)
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.aws_endpoint,
            region_name=self.stack.region,
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=creds["AWS_SESSION_TOKEN"],
        )


class Driver(Protocol):
    name: str

    def start(self, ctx: Context) -> None:
        """Start background work and return quickly."""

    def stop(self) -> None:
        """Stop and join; safe to call twice."""
