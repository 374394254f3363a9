"""Which (role, action) pairs of serverless.yml the test suite exercised through the gate.

The local cloud's gate appends one JSON line per IAM decision to the file named by
``LOCALCLOUD_IAM_RECORD`` (``{"role", "action", "resource", "allowed"}``); the suite points
every local cloud it starts at one file. A declared pair counts as covered when the gate
allowed it at least once. A pair that no test can exercise carries, in the comment lines
right above its statement, the words ``not exercised:`` and the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from localcloud import infra

NOT_EXERCISED = re.compile(r"#.*not exercised:\s*(?P<reason>.+)", re.IGNORECASE)


@dataclass(frozen=True)
class Declared:
    role: str  # logical id, e.g. "UploadFunctionRole"
    action: str
    line: int  # 1-based line of its statement in serverless.yml
    waiver: str | None  # the "not exercised:" reason, if any


@dataclass(frozen=True)
class Report:
    declared: list[Declared]
    covered: set[tuple[str, str]]

    @property
    def missing(self) -> list[Declared]:
        return [d for d in self.declared if (d.role, d.action) not in self.covered]

    @property
    def unexplained(self) -> list[Declared]:
        return [d for d in self.missing if d.waiver is None]

    def lines(self) -> list[str]:
        pairs = {(d.role, d.action) for d in self.declared}
        out = [
            f"IAM coverage: {len(pairs & self.covered)}/{len(pairs)} declared (role, action) pairs exercised"
        ]
        for d in sorted(self.missing, key=lambda d: (d.role, d.action)):
            why = f"not exercised: {d.waiver}" if d.waiver else "NOT EXERCISED and no reason given"
            out.append(f"  {d.role} {d.action} (serverless.yml:{d.line}): {why}")
        return out


def declared(path: Path = infra.SERVERLESS_YML, stage: str = "local") -> list[Declared]:
    """Every Allow action of every role's active policies (an ``Fn::If`` branch whose
    condition is false for the stage's parameters is not part of the deployment)."""
    stack = infra.load(path, stage=stage)
    text = path.read_text().splitlines()
    root = yaml.compose(path.read_text())
    resources = _child(_child(root, "resources"), "Resources")
    out = []
    for logical in stack.resources_of_type("AWS::IAM::Role"):
        policies = _child(_child(_child(resources, logical), "Properties"), "Policies")
        for policy in policies.value if policies is not None else []:
            policy = _active(stack, policy)
            if policy is None:
                continue
            statements = _child(_child(policy, "PolicyDocument"), "Statement")
            for statement in statements.value:
                effect = _scalar(_child(statement, "Effect"))
                if effect != "Allow":
                    continue
                action_node = _child(statement, "Action")
                actions = (
                    [_scalar(action_node)]
                    if isinstance(action_node, yaml.ScalarNode)
                    else [_scalar(a) for a in action_node.value]
                )
                line = statement.start_mark.line  # 0-based line of "- Effect: ..."
                waiver = _waiver(text, line)
                out += [Declared(logical, str(a), line + 1, waiver) for a in actions]
    return out


def exercised(record: Path, stage_prefix: str) -> set[tuple[str, str]]:
    """(role logical id, action) pairs the gate allowed; role names are ``<prefix><logical>``."""
    out = set()
    if not record.exists():
        return out
    for line in record.read_text().splitlines():
        entry = json.loads(line)
        role = str(entry["role"])
        if entry.get("allowed") and role.startswith(stage_prefix):
            out.add((role[len(stage_prefix) :], str(entry["action"])))
    return out


def report(record: Path, stages: Iterable[str] = ("local", "test")) -> Report:
    covered: set[tuple[str, str]] = set()
    for stage in stages:
        covered |= exercised(record, f"autoretrain-{stage}-")
    return Report(declared(), covered)


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return None


def _scalar(node: yaml.Node | None) -> str | None:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else None


def _active(stack: infra.Stack, policy: yaml.Node) -> yaml.Node | None:
    """A policy entry, or the branch of its ``Fn::If`` that the stack's conditions select."""
    branch = _child(policy, "Fn::If")
    if branch is None:
        return policy
    name, if_true, if_false = branch.value
    chosen = if_true if stack.condition(str(name.value)) else if_false
    return None if _child(chosen, "Ref") is not None else chosen


def _waiver(text: list[str], line: int) -> str | None:
    """The ``not exercised:`` reason in the comment block right above line ``line``."""
    index = line - 1
    while index >= 0 and text[index].strip().startswith("#"):
        found = NOT_EXERCISED.search(text[index])
        if found:
            reason = [found.group("reason").strip()]
            for follow in text[index + 1 : line]:
                reason.append(follow.strip().lstrip("#").strip())
            return " ".join(r for r in reason if r)
        index -= 1
    return None
