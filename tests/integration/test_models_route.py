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
from tests.support import live as live_support

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


# live accuracy over time (?live=) ---------------------------------------------------------------

T0 = 1_798_761_600_000  # 2027-01-01T00:00:00Z: after the fixture's promotion, made now
BUCKET_S = 10


def at(seconds: int) -> str:
    return f"2027-01-01T00:{seconds // 60:02d}:{seconds % 60:02d}.000Z"


@pytest.fixture
def served(runs: registry.Registry, stack: Any, monkeypatch: pytest.MonkeyPatch) -> registry.Registry:
    """VERSIONS[2] latest since now (the fixture), scored from T0 to T0 + 50 s; VERSIONS[4]
    promoted at T0 + 60 s and scored in six buckets from then; latest pinned at T0 + 120 s."""
    ddb = boto3.client("dynamodb")
    table = stack.physical["ModelTable"]
    scored = []
    for k in range(6):
        scored += live_support.outcomes(VERSIONS[2], T0 + k * 10_000, correct=9, wrong=1)
        scored += live_support.outcomes(VERSIONS[4], T0 + 60_000 + k * 10_000 + 5, correct=5 + k, wrong=5 - k)
    live_support.record(ddb, table, scored, BUCKET_S)
    monkeypatch.setattr(registry, "now_iso", lambda: at(60))
    runs.set_latest(VERSIONS[4], expected=VERSIONS[2], reason="test", actor="test")
    monkeypatch.setattr(registry, "now_iso", lambda: at(120))
    runs.pin(reason="test", actor="test")
    return runs


def test_models_live_timeline_gives_the_versions_buckets_newest_first_and_the_changes_over_them(
    served: registry.Registry,
) -> None:
    calls: list[str] = []
    aws.dynamodb().meta.events.register(
        "before-call.dynamodb.*", lambda model, **kw: calls.append(model.name)
    )
    status, body = get({"live": "latest"})
    assert status == 200
    assert sorted(calls) == ["BatchGetItem", "GetItem", "Query", "Query", "Query"]  # runs, buckets, history
    timeline = body["timeline"]
    assert timeline["version"] == VERSIONS[4] == body["latest"]
    buckets = timeline["buckets"]
    assert [b["start"] for b in buckets] == [at(s)[:19] + "Z" for s in (110, 100, 90, 80, 70, 60)]
    assert [b["start_ms"] for b in buckets] == [T0 + s * 1000 for s in (110, 100, 90, 80, 70, 60)]
    assert [(b["seen"], b["correct"]) for b in buckets] == [(10, 5 + k) for k in range(5, -1, -1)]
    assert buckets[0]["accuracy"] == 1.0 and buckets[0]["bucket_s"] == BUCKET_S
    assert buckets[-1]["ci_low"] == pytest.approx(0.2366, abs=1e-4)  # Wilson, 5 of 10
    assert buckets[-1]["ci_high"] == pytest.approx(0.7634, abs=1e-4)
    assert "confusion" not in buckets[0] and timeline["more"] is False
    # The changes over the buckets' span, down to the one in force at the oldest bucket.
    assert [(c["action"], c["version"], c["at"]) for c in timeline["changes"]] == [
        ("pin", VERSIONS[4], at(120)),
        ("auto", VERSIONS[4], at(60)),
    ]
    assert timeline["changes"][1]["previous"] == VERSIONS[2]


def test_models_live_timeline_of_an_older_version_reaches_back_to_its_promotion(
    served: registry.Registry,
) -> None:
    status, body = get({"live": VERSIONS[2]})
    assert status == 200
    timeline = body["timeline"]
    assert [b["start_ms"] for b in timeline["buckets"]] == [T0 + s * 1000 for s in (50, 40, 30, 20, 10, 0)]
    assert all(b["accuracy"] == pytest.approx(0.9) for b in timeline["buckets"])
    assert [(c["action"], c["version"]) for c in timeline["changes"]] == [
        ("pin", VERSIONS[4]),
        ("auto", VERSIONS[4]),
        ("auto", VERSIONS[2]),  # made now by the fixture, before T0: in force at the oldest bucket
    ]


@pytest.mark.parametrize(("limit", "more"), [(2, True), (5, True), (6, False), (7, False)])
def test_models_live_timeline_is_bounded_by_buckets_and_says_whether_there_are_more(
    served: registry.Registry, limit: int, more: bool
) -> None:
    status, body = get({"live": VERSIONS[4], "buckets": str(limit)})
    assert status == 200
    timeline = body["timeline"]
    newest = [T0 + s * 1000 for s in (110, 100, 90, 80, 70, 60)]
    assert [b["start_ms"] for b in timeline["buckets"]] == newest[:limit]
    assert timeline["more"] is more
    # Down to the change in force at the oldest bucket returned.
    assert [c["action"] for c in timeline["changes"]] == ["pin", "auto"]


def test_models_live_timeline_of_a_version_never_scored_is_empty(served: registry.Registry) -> None:
    status, body = get({"live": VERSIONS[0]})
    assert status == 200
    assert body["timeline"]["buckets"] == [] and body["timeline"]["more"] is False
    assert [c["action"] for c in body["timeline"]["changes"]] == ["pin"]  # the change in force now


def test_models_live_latest_before_any_promotion_is_an_empty_timeline(stack: Any) -> None:
    models.reset()
    status, body = get({"live": "latest"})
    assert status == 200
    assert body["timeline"] == {"version": None, "buckets": [], "more": False, "changes": []}


# the serving model's timeline (?live=serving) ----------------------------------------------------


def test_models_serving_timeline_joins_the_versions_that_served_and_sums_a_shared_bucket(
    served: registry.Registry, stack: Any
) -> None:
    # Two late samples of VERSIONS[2] in the bucket of VERSIONS[4]'s promotion (at 60 s).
    live_support.record(
        boto3.client("dynamodb"),
        stack.physical["ModelTable"],
        live_support.outcomes(VERSIONS[2], T0 + 61_000, correct=0, wrong=2, prefix="late-"),
        BUCKET_S,
    )
    status, body = get({"live": "serving"})
    assert status == 200
    timeline = body["timeline"]
    assert timeline["version"] == VERSIONS[4] and timeline["serving"] is True
    buckets = timeline["buckets"]
    assert [b["start_ms"] for b in buckets] == [T0 + s * 1000 for s in range(110, -10, -10)]
    # The drop and the recovery on one line: 0.9 under VERSIONS[2], 0.5 to 1.0 under VERSIONS[4].
    assert [b["version"] for b in buckets] == [VERSIONS[4]] * 6 + [VERSIONS[2]] * 6
    assert [(b["seen"], b["correct"]) for b in buckets[6:]] == [(10, 9)] * 6
    assert [(b["seen"], b["correct"]) for b in buckets[:5]] == [(10, 5 + k) for k in range(5, 0, -1)]
    shared = buckets[5]
    assert shared["versions"] == {VERSIONS[4]: 10, VERSIONS[2]: 2}
    assert (shared["seen"], shared["correct"]) == (12, 5)
    assert shared["accuracy"] == pytest.approx(5 / 12)
    assert shared["ci_low"] < shared["accuracy"] < shared["ci_high"]
    assert timeline["more"] is False
    assert [(c["action"], c["version"]) for c in timeline["changes"]] == [
        ("pin", VERSIONS[4]),
        ("auto", VERSIONS[4]),
        ("auto", VERSIONS[2]),
    ]


@pytest.mark.parametrize(("limit", "queries", "more"), [(3, 2, True), (8, 3, True), (12, 3, False)])
def test_models_serving_timeline_reads_only_the_versions_it_needs(
    served: registry.Registry, limit: int, queries: int, more: bool
) -> None:
    calls: list[str] = []
    aws.dynamodb().meta.events.register(
        "before-call.dynamodb.*", lambda model, **kw: calls.append(model.name)
    )
    status, body = get({"live": "serving", "buckets": str(limit)})
    assert status == 200
    timeline = body["timeline"]
    newest = [T0 + s * 1000 for s in range(110, -10, -10)]
    assert [b["start_ms"] for b in timeline["buckets"]] == newest[:limit]
    assert timeline["more"] is more
    # The runs page, the history page walked, one Query per version read, the changes, the runs:
    # a window within VERSIONS[4]'s span never reads VERSIONS[2].
    history_and_buckets = calls.count("Query") - 3
    assert history_and_buckets == queries


def test_models_serving_timeline_lists_the_runs_started_over_its_span_with_their_rule(
    served: registry.Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "now_iso", lambda: at(65))
    rejected = "v20270101T000105Z-0b0b"
    served.create_run(rejected, trigger={"rule": "quality", "quality": {"seen": 200}})
    served.update_run(rejected, status="rejected", gate={"decision": "reject"}, ended_at=at(80))
    status, body = get({"live": "serving"})
    assert status == 200
    # The fixture's runs started before the oldest bucket: not over the span.
    assert body["timeline"]["runs"] == [
        {
            "version": rejected,
            "status": "rejected",
            "rule": "quality",
            "started_at": at(65),
            "ended_at": at(80),
            "decision": "reject",
        }
    ]


def test_models_serving_timeline_before_any_promotion_is_empty(stack: Any) -> None:
    models.reset()
    status, body = get({"live": "serving"})
    assert status == 200
    assert body["timeline"] == {
        "version": None,
        "serving": True,
        "buckets": [],
        "more": False,
        "changes": [],
        "runs": [],
    }


def test_models_without_live_has_no_timeline(runs: registry.Registry) -> None:
    assert "timeline" not in get()[1]


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        (
            {"live": "v1"},
            "live",
            "live must be a model version like v20261123T091432Z-1a2b, 'latest' or 'serving'",
        ),
        ({"live": "latest", "buckets": "0"}, "buckets", "buckets must be an integer from 1 to 500"),
        ({"live": "latest", "buckets": "501"}, "buckets", "buckets must be an integer from 1 to 500"),
        ({"live": "latest", "buckets": "all"}, "buckets", "buckets must be an integer from 1 to 500"),
        ({"buckets": "5"}, "buckets", "buckets needs live=<version, latest or serving>"),
    ],
)
def test_models_rejects_bad_timeline_parameters(
    stack: Any, query: dict[str, str], field: str, message: str
) -> None:
    models.reset()
    status, body = get(query)
    assert status == 400 and body["field"] == field and body["message"].startswith(message)
