"""Faults the local AWS endpoint can inject, for the fault suite and for trying things by hand.

AWS fails in ways moto never does: DynamoDB throttles and hands back ``UnprocessedItems``, S3
answers 500/503 now and then. A fault is a rule the gate applies to matching calls, after
identity, limits and IAM (a refused call is refused first, as in AWS):

```
POST   /localcloud-api/faults  {"action": "s3:PutObject", "resource": "arn:aws:s3:::b/models/*",
                                "error": "InternalError", "status": 500, "times": 1}
GET    /localcloud-api/faults  the rules and how often each fired
DELETE /localcloud-api/faults  no more faults
```

- ``action``: ``service:Operation`` as IAM names it (``dynamodb:BatchWriteItem``), ``*`` wildcards
  allowed; ``resource``: an ARN pattern matched against the call's resources (optional);
  ``principal``: a role-name pattern (optional);
- ``error``/``status``/``message``: the error the call gets instead of reaching moto;
- ``unprocessed: true`` (BatchWriteItem only): moto applies the first half of the items and
  the answer lists the rest under ``UnprocessedItems``, as DynamoDB does under load;
- ``times``: how many matching calls it affects (default 1; ``-1``: until removed).
"""

from __future__ import annotations

import fnmatch
import json
import threading
from dataclasses import dataclass, field
from typing import Any

PATH = "/localcloud-api/faults"


@dataclass
class Fault:
    action: str
    resource: str = "*"
    principal: str = "*"
    error: str = "InternalError"
    status: int = 500
    message: str = "injected by the local cloud"
    unprocessed: bool = False
    times: int = 1
    fired: int = 0

    def matches(self, action: str, resources: list[str], principal: str) -> bool:
        if self.times == 0:
            return False
        if not fnmatch.fnmatchcase(action.lower(), self.action.lower()):
            return False
        if not fnmatch.fnmatchcase(principal, self.principal):
            return False
        return self.resource == "*" or any(fnmatch.fnmatchcase(r, self.resource) for r in resources)

    def fire(self) -> None:
        self.fired += 1
        if self.times > 0:
            self.times -= 1


@dataclass
class Faults:
    rules: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, action: str, resources: list[str], principal: str) -> Fault | None:
        """The first rule matching this call, counted as fired; None: no fault."""
        with self._lock:
            for rule in self.rules:
                if rule.matches(action, resources, principal):
                    rule.fire()
                    return rule
        return None

    def handle(self, method: str, body: bytes) -> tuple[int, bytes]:
        """The admin route: add, list or clear rules."""
        with self._lock:
            if method == "POST":
                spec = json.loads(body or b"{}")
                specs = spec if isinstance(spec, list) else [spec]
                for one in specs:
                    if "action" not in one:
                        return 400, b'{"message": "a fault needs an action"}'
                    known = set(Fault.__dataclass_fields__) - {"fired"}
                    unknown = set(one) - known
                    if unknown:
                        message = f"unknown fault fields: {sorted(unknown)}"
                        return 400, json.dumps({"message": message}).encode()
                    self.rules.append(Fault(**one))
            elif method == "DELETE":
                self.rules.clear()
            elif method != "GET":
                return 405, b'{"message": "GET, POST or DELETE"}'
            listed = [{k: v for k, v in vars(rule).items()} for rule in self.rules]
        return 200, json.dumps({"faults": listed}).encode()


def resources_of(checks: list[Any]) -> list[str]:
    return [str(check.resource) for check in checks]


def split_batch(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """BatchWriteItem's RequestItems cut in two: what moto applies, what comes back unprocessed."""
    flat = [(table, item) for table, items in params["RequestItems"].items() for item in items]
    keep = flat[: max(1, len(flat) // 2)]
    rest = flat[len(keep) :]
    applied: dict[str, list[Any]] = {}
    unprocessed: dict[str, list[Any]] = {}
    for table, item in keep:
        applied.setdefault(table, []).append(item)
    for table, item in rest:
        unprocessed.setdefault(table, []).append(item)
    return applied, unprocessed
