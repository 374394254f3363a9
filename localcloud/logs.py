"""Lambda's log delivery: every line a function writes goes to its CloudWatch Logs group,
sent with the function's execution role, as the Lambda service does
(https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs.html: "your function's
execution role needs permission to upload logs to CloudWatch Logs": logs:CreateLogStream and
logs:PutLogEvents on its log group). A role without them loses its logs, silently in AWS;
here the local cloud says so once. Lines are batched and sent once a second.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

# PutLogEvents takes at most 10,000 events and 1,048,576 bytes (each event counted as its
# UTF-8 size plus 26 bytes): https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutLogEvents.html
MAX_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD = 26
MAX_EVENT_BYTES = 256 * 1024 - EVENT_OVERHEAD


class LogShipper:
    """``add(function, line)`` from any thread; ``flush()`` sends what is buffered."""

    def __init__(
        self,
        client_for: Callable[[str], Any],  # function name -> a logs client with its role
        group_for: Callable[[str], str],  # function name -> its log group
        say: Callable[[str], None],
        interval_s: float = 1.0,
    ) -> None:
        self._client_for = client_for
        self._group_for = group_for
        self._say = say
        self._interval = interval_s
        self._lock = threading.Lock()
        self._pending: dict[str, list[tuple[int, str]]] = {}
        self._streams: dict[str, str] = {}
        self._refused: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="localcloud-logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()

    def add(self, function: str, line: str) -> None:
        with self._lock:
            self._pending.setdefault(function, []).append((int(time.time() * 1000), line))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for function, events in pending.items():
            if function in self._refused:
                continue
            try:
                self._send(function, events)
            except ClientError as err:
                code = err.response.get("Error", {}).get("Code", "")
                if code in ("AccessDeniedException", "AccessDenied"):
                    self._refused.add(function)
                    self._say(
                        f"{function}: its role may not write its logs ({code}); they are dropped, as in AWS"
                    )
                else:
                    self._say(f"{function}: {len(events)} log lines not delivered: {code or err}")

    def _send(self, function: str, events: list[tuple[int, str]]) -> None:
        client = self._client_for(function)
        group = self._group_for(function)
        stream = self._streams.get(function)
        if stream is None:
            stream = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}"
            client.create_log_stream(logGroupName=group, logStreamName=stream)
            self._streams[function] = stream
        batch: list[dict[str, Any]] = []
        size = 0
        for stamp, message in events:
            message = message.encode()[:MAX_EVENT_BYTES].decode("utf-8", "ignore") or " "
            cost = len(message.encode()) + EVENT_OVERHEAD
            if batch and (len(batch) >= MAX_EVENTS or size + cost > MAX_BATCH_BYTES):
                client.put_log_events(logGroupName=group, logStreamName=stream, logEvents=batch)
                batch, size = [], 0
            batch.append({"timestamp": stamp, "message": message})
            size += cost
        if batch:
            client.put_log_events(logGroupName=group, logStreamName=stream, logEvents=batch)
