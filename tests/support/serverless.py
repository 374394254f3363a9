"""Altered copies of infra/serverless.yml, for tests that prove what one setting does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from localcloud import infra


def load_raw(path: Path = infra.SERVERLESS_YML) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=infra._CfnLoader)


def write(config: dict[str, Any], folder: Path) -> Path:
    out = folder / "serverless.yml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def edited(folder: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A changed copy in ``folder``. Its images still build from the repository: an image's
    ``path`` is relative to the folder of serverless.yml, so the copy gets it absolute."""
    config = load_raw()
    images = ((config.get("provider") or {}).get("ecr") or {}).get("images") or {}
    for name, image in images.items():
        if isinstance(image, str):
            image = images[name] = {"path": image}
        if "path" in image:
            image["path"] = str((infra.SERVERLESS_YML.parent / image["path"]).resolve())
    change(config)
    return write(config, folder)


def without_action(folder: Path, role: str, action: str) -> Path:
    """serverless.yml with ``action`` removed from every Allow statement of ``role`` (a
    statement left with no action goes). Fails if the role never granted it."""

    def change(config: dict[str, Any]) -> None:
        removed = 0
        for policy in config["resources"]["Resources"][role]["Properties"]["Policies"]:
            document = policy.get("PolicyDocument")
            if document is None:  # an Fn::If entry
                continue
            kept = []
            for statement in document["Statement"]:
                actions = (
                    statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                )
                if statement["Effect"] == "Allow" and action in actions:
                    removed += 1
                    actions = [a for a in actions if a != action]
                    if not actions:
                        continue
                    statement = {**statement, "Action": actions}
                kept.append(statement)
            document["Statement"] = kept
        if not removed:
            raise AssertionError(f"{role} never allowed {action}")

    return edited(folder, change)
