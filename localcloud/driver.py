"""The interface between the local cloud's core and its drivers (stream poller, instance
runner, alarm evaluator): the core builds one ``Context`` and starts each ``Driver`` with it."""

from __future__ import annotations

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
    invoke: Callable[[str, dict[str, Any]], Any]  # run a function's handler in-process
    say: Callable[[str], None]  # one line of human progress output
    settings: dict[str, Any] = field(default_factory=dict)  # custom.localCloud of serverless.yml

    def client(self, service: str) -> Any:
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.aws_endpoint,
            region_name=self.stack.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


class Driver(Protocol):
    name: str

    def start(self, ctx: Context) -> None:
        """Start background work and return quickly."""

    def stop(self) -> None:
        """Stop and join; safe to call twice."""
