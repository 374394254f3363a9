"""The importer: streams an uploaded import file into the data table (``lambdas.core.imports``).

Two event sources, both asynchronous invocations:

- S3's ObjectCreated notification for ``imports/<import_id>.<csv|jsonl>`` in the import
  bucket: take the import and run its first part (all of it if it fits). Another key, an id
  with no status item, or a duplicate event for an import already done, failed or leased is
  logged and changes nothing.
- A schedule (every minute): run the next part of every ``importing`` import whose lease
  expired or was released at the end of a part, and settle every import still waiting for its
  upload 15 minutes after its form expired (imported if the file is there, failed if not).

An infrastructure error propagates (Lambda retries the invocation; the part resumes from its
last checkpoint); a fault of the file fails the import instead.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

from lambdas.core import imports

SCHEDULED_EVENT = "Scheduled Event"


@functools.cache
def _settings() -> imports.ImporterSettings:
    return imports.ImporterSettings.from_env()


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    cfg, clients = _settings(), imports.Clients.default()
    # The lease's holder: this invocation (a retry of it is another holder, whose take waits
    # for this one's lease to end).
    holder = str(getattr(context, "aws_request_id", None) or uuid.uuid4())
    time_left = context.get_remaining_time_in_millis if context is not None else None
    if event.get("source") == "aws.events" and event.get("detail-type") == SCHEDULED_EVENT:
        outcomes = imports.resume(cfg, clients, holder=holder, time_left_ms=time_left)
        return {"resumed": [o.to_dict() for o in outcomes]}
    outcomes = imports.start_from_event(event, cfg, clients, holder=holder, time_left_ms=time_left)
    return {"imports": [o.to_dict() for o in outcomes]}
