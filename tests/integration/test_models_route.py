"""GET /models: newest first, paginated with a cursor, the latest marked; and the CLI table."""

from __future__ import annotations

import json
import re
from typing import Any

import boto3
import pytest

from lambdas import models
from lambdas.core import aws, registry
from scripts import models as models_cli

VERSIONS = [f"v2026112{d}T0900{d}0Z-00a{d}" for d in range(5)]  # oldest first


@pytest.fixture
def runs(stack: Any) -> registry.Registry:
    models.reset()
    reg = registry.Registry(stack.physical["ModelTable"])
    for i, version in enumerate(VERSIONS):
        reg.create_run(version, sample_count=100 * (i + 1), hyperparameters={"units": 8})
        status = "rejected" if i == 3 else "published"
        reg.update_run(
            version, status=status, metrics={"holdout": {"accuracy": 0.6 + i / 20, "loss": 0.9 - i / 10}}
        )
    reg.set_latest(VERSIONS[2], expected=None, reason="test", actor="test")
    yield reg
    models.reset()


def get(query: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    out = models.handler({"httpMethod": "GET", "path": "/models", "queryStringParameters": query})
    return out["statusCode"], json.loads(out["body"])


def test_models_lists_newest_first_and_marks_latest(runs: registry.Registry) -> None:
    status, body = get()
    assert status == 200
    assert [item["version"] for item in body["items"]] == VERSIONS[::-1]
    assert body["latest"] == VERSIONS[2]
    assert [item["latest"] for item in body["items"]] == [False, False, True, False, False]
    assert body["items"][0]["sample_count"] == 500 and "pk" not in body["items"][0]


def test_models_paginates_with_the_next_cursor(runs: registry.Registry) -> None:
    seen: list[str] = []
    query: dict[str, str] = {"limit": "2"}
    for _ in range(4):
        status, body = get(query)
        assert status == 200 and len(body["items"]) <= 2
        seen += [item["version"] for item in body["items"]]
        if not body["next"]:
            break
        query = {"limit": "2", "cursor": body["next"]}
    assert seen == VERSIONS[::-1]


def test_models_before_any_run_is_an_empty_page(stack: Any) -> None:
    models.reset()
    assert get() == (200, {"items": [], "next": None, "latest": None})


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ({"limit": "0"}, "limit", "limit must be an integer from 1 to 100"),
        ({"limit": "101"}, "limit", "limit must be an integer from 1 to 100"),
        ({"limit": "ten"}, "limit", "limit must be an integer from 1 to 100"),
        ({"cursor": "../x"}, "cursor", "cursor must be the 'next' value of a previous page"),
        ({"order": "asc"}, "order", "unknown query parameter 'order'"),
    ],
)
def test_models_rejects_bad_query_parameters(
    stack: Any, query: dict[str, str], field: str, message: str
) -> None:
    models.reset()
    status, body = get(query)
    assert status == 400 and body["field"] == field and body["message"].startswith(message)


def test_models_cli_prints_a_table_newest_first(
    runs: registry.Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models_cli.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.lstrip("* ").startswith("v2026")]
    assert [row.lstrip("* ").split()[0] for row in rows] == VERSIONS[::-1]
    assert rows[2].startswith("*") and not rows[0].startswith("*")
    assert "0.700" in rows[2]  # holdout accuracy of the latest


# live accuracy -----------------------------------------------------------------------------------


def put_live_totals(stack: Any, version: str, cells: dict[str, int]) -> None:
    """A version's live totals item as the score function leaves it (lambdas/core/live.py)."""
    item = {"pk": {"S": f"live#{version}"}, "version": {"S": version}}
    item.update({name: {"N": str(n)} for name, n in cells.items()})
    boto3.client("dynamodb").put_item(TableName=stack.physical["ModelTable"], Item=item)


def test_models_carries_live_accuracy_of_the_runs_that_served_in_one_extra_read(
    runs: registry.Registry, stack: Any
) -> None:
    put_live_totals(stack, VERSIONS[2], {"cm_ok_ok": 1149, "cm_cold_ok": 85})
    put_live_totals(stack, VERSIONS[0], {"cm_warm_warm": 3})
    calls: list[str] = []
    aws.dynamodb().meta.events.register(
        "before-call.dynamodb.*", lambda model, **kw: calls.append(model.name)
    )
    status, body = get()
    assert status == 200 and sorted(calls) == ["BatchGetItem", "GetItem", "Query"]
    by_version = {item["version"]: item for item in body["items"]}
    scored = by_version[VERSIONS[2]]["live"]
    assert (scored["seen"], scored["correct"]) == (1234, 1149)
    assert scored["accuracy"] == pytest.approx(0.9311, abs=1e-4)
    assert (scored["ci_low"], scored["ci_high"]) == (
        pytest.approx(0.9156, abs=1e-4),
        pytest.approx(0.9440, abs=1e-4),
    )
    assert scored["confusion"]["cold"] == {"cold": 0, "ok": 85, "warm": 0}
    assert by_version[VERSIONS[0]]["live"]["accuracy"] == 1.0
    assert "live" not in by_version[VERSIONS[1]]  # never served


def test_models_cli_shows_live_accuracy_next_to_holdout_accuracy(
    runs: registry.Registry, stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    put_live_totals(stack, VERSIONS[2], {"cm_ok_ok": 1149, "cm_cold_ok": 85})
    assert models_cli.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    cells = {
        line.lstrip("* ").split()[0]: re.split(r"\s{2,}", line.lstrip("* "))
        for line in lines[2:]
        if line.strip()
    }
    header = re.split(r"\s{2,}", lines[0].strip())
    assert header[5:7] == ["holdout acc", "live acc [95% CI]"]
    assert cells[VERSIONS[2]][5:7] == ["0.700", "0.931 [0.916, 0.944] n=1,234"]
    assert cells[VERSIONS[1]][5:7] == ["0.650", "-"]  # never served
