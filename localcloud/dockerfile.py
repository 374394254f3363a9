"""Read a Dockerfile: its instructions, in order, as docker's parser splits them.

Enough of the format for this project's Dockerfiles, and strict about the rest: comments and
blank lines, ``\\`` continuations, the instruction keyword (any case), and for ``CMD`` and
``ENTRYPOINT`` the exec (JSON) form. A parser directive (``# syntax=...``) is a comment here.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<modifier>:[?+-][^}]*)?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class DockerfileError(ValueError):
    """The Dockerfile cannot be read, or uses what this reader does not support."""


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, ENV, RUN, ...
    arguments: str  # the rest of the logical line, continuations joined
    line: int  # where it starts, 1-based

    def exec_form(self) -> list[str]:
        """``CMD ["a", "b"]`` -> ["a", "b"]; the shell form is refused."""
        try:
            value = json.loads(self.arguments)
        except json.JSONDecodeError as err:
            raise DockerfileError(f"line {self.line}: {self.keyword} must use the exec (JSON) form") from err
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise DockerfileError(
                f"line {self.line}: {self.keyword} must be a non-empty JSON list of strings"
            )
        return value

    def words(self) -> list[str]:
        return shlex.split(self.arguments)


def parse(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments may sit inside a continued instruction too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        logical = " ".join(part for part in pending if part)
        pending = []
        keyword, _, arguments = logical.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
    if pending:
        raise DockerfileError(f"line {start}: the file ends inside a continued instruction")
    return instructions


def read(path: Path) -> list[Instruction]:
    try:
        return parse(path.read_text())
    except OSError as err:
        raise DockerfileError(f"cannot read {path}: {err}") from err


def expand(value: str, env: dict[str, str], *, line: int = 0) -> str:
    """Docker's environment replacement: ``$NAME``, ``${NAME}``, ``${NAME:-default}``, ... ."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        modifier = match.group("modifier")
        value = env.get(name, "")
        if modifier is None:
            return value
        kind, word = modifier[1], modifier[2:]
        if kind == "-":
            return value or word
        if kind == "+":
            return word if value else ""
        if not value:  # "?"
            raise DockerfileError(f"line {line}: {name}: {word or 'is not set'}")
        return value

    return _VARIABLE.sub(substitute, value)


def env_pairs(instruction: Instruction, env: dict[str, str]) -> list[tuple[str, str]]:
    """``ENV A=1 B="two words"`` -> [("A", "1"), ("B", "two words")], each value expanded with
    the environment before the instruction (as docker does within one ENV)."""
    words = instruction.words()
    if len(words) == 2 and "=" not in words[0]:  # the legacy form: ENV NAME value
        return [(words[0], expand(words[1], env, line=instruction.line))]
    pairs = []
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise DockerfileError(f"line {instruction.line}: ENV wants NAME=value, got {word!r}")
        pairs.append((name, expand(value, env, line=instruction.line)))
    return pairs


def command(path: Path) -> list[str]:
    """The image's CMD (the last one), exec form."""
    commands = [i for i in read(path) if i.keyword == "CMD"]
    if not commands:
        raise DockerfileError(f"{path}: no CMD: the image names no handler")
    return commands[-1].exec_form()
