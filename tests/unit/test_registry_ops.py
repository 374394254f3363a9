"""Registry operations on the model table: history, promote/rollback, pin/unpin, the routes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lambdas import promote
from lambdas.core import notify, registry
from lambdas.core.errors import Conflict, NotFound
from lambdas.core.registry import Registry
from trainer import gate

V1 = "v20261120T080000Z-0001"
V2 = "v20261121T080000Z-0002"
V3 = "v20261122T080000Z-0003"
BAD = "v20261123T080000Z-0004"


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OPERATOR_API_KEY_ID", "k-ops, k-123,k-1")
    promote.reset()
    yield
    promote.reset()


@pytest.fixture
def reg(stack: Any, dynamodb: Any, s3: Any) -> Registry:
    """Three published runs with model files, one failed; V1 latest (promoted by the gate)."""
    r = Registry(stack.physical["ModelTable"], dynamodb)
    for version in (V1, V2, V3):
        r.create_run(version)
        r.update_run(version, status=registry.PUBLISHED)
        s3.put_object(Bucket=stack.physical["ModelBucket"], Key=f"models/{version}/model.json", Body=b"{}")
    r.create_run(BAD)
    r.update_run(BAD, status=registry.FAILED)
    r.set_latest(V1, expected=None, reason="first model", actor="gate")
    return r


def event(method: str, resource: str, body: Any = None, version: str | None = None, **identity: str) -> dict:
    return {
        "httpMethod": method,
        "resource": resource,
        "pathParameters": {"version": version} if version else None,
        "queryStringParameters": None,
        "body": None if body is None else (body if isinstance(body, str) else json.dumps(body)),
        "requestContext": {
            "requestId": "r-1",
            "identity": {"sourceIp": "10.0.0.7", **(identity or {"apiKeyId": "k-ops"})},
        },
    }


def call(evt: dict) -> tuple[int, dict[str, Any]]:
    out = promote.handler(evt)
    return out["statusCode"], json.loads(out["body"])


def history_of(reg: Registry) -> list[tuple[str, str | None, str, bool]]:
    items, _ = reg.list_history()
    return [(h["action"], h["previous"], h["version"], h["pinned"]) for h in items]


# registry -----------------------------------------------------------------------------------


def test_registry_set_latest_appends_a_history_item(reg: Registry) -> None:
    (entry,) = reg.list_history()[0]
    assert entry["action"] == "auto" and entry["actor"] == "gate" and entry["reason"] == "first model"
    assert (entry["previous"], entry["version"], entry["seq"]) == (None, V1, 1)
    assert reg.latest()["seq"] == 1 and reg.latest()["pinned"] is False


def test_registry_history_lists_every_change_in_order(reg: Registry) -> None:
    reg.set_latest(V3, expected=V1, reason="better", actor="gate")
    reg.promote(V2, reason="incident", actor="alice")
    reg.pin(reason="hold", actor="alice")
    reg.promote(V1, reason="older still", actor="bob")
    reg.unpin(reason="resume", actor="bob")
    assert history_of(reg) == [
        ("auto", None, V1, False),
        ("auto", V1, V3, False),
        ("rollback", V3, V2, False),
        ("pin", V2, V2, True),
        ("rollback", V2, V1, True),
        ("unpin", V1, V1, False),
    ]
    newest, _ = reg.list_history(newest_first=True)
    assert [h["seq"] for h in newest] == [6, 5, 4, 3, 2, 1]


def test_registry_history_pages_with_a_cursor(reg: Registry) -> None:
    reg.promote(V2, reason="r", actor="a")
    reg.promote(V3, reason="r", actor="a")
    first, cursor = reg.list_history(limit=2)
    assert cursor is not None
    rest, _ = reg.list_history(limit=2, cursor=cursor)
    assert [h["seq"] for h in first + rest] == [1, 2, 3]


def test_registry_set_latest_refuses_a_pinned_latest(reg: Registry) -> None:
    reg.pin(reason="hold", actor="alice")
    with pytest.raises(Conflict) as caught:
        reg.set_latest(V2, expected=V1, reason="better", actor="gate")
    assert caught.value.details["pinned"] is True
    assert caught.value.message == f"latest {V1} is pinned; not moved to {V2}"
    assert reg.latest_version() == V1 and len(reg.list_history()[0]) == 2


def test_registry_promote_keeps_the_pin_unless_told(reg: Registry) -> None:
    reg.pin(reason="hold", actor="alice")
    assert reg.promote(V2, reason="r", actor="a")["pinned"] is True
    assert reg.promote(V3, reason="r", actor="a", pin=False)["pinned"] is False
    assert reg.latest()["pinned"] is False


@pytest.mark.parametrize(
    ("version", "force", "error", "message"),
    [
        (BAD, False, Conflict, f"run {BAD} is failed; only published runs can be promoted"),
        (BAD, True, Conflict, f"run {BAD} is failed; only published or rejected runs can be promoted"),
        ("v20261124T080000Z-0005", False, NotFound, "no model version v20261124T080000Z-0005"),
    ],
)
def test_registry_promote_refuses_runs_that_are_not_promotable(
    reg: Registry, version: str, force: bool, error: type, message: str
) -> None:
    with pytest.raises(error) as caught:
        reg.promote(version, reason="r", actor="a", force=force)
    assert caught.value.message == message
    assert reg.latest_version() == V1 and len(reg.list_history()[0]) == 1


def test_registry_promote_rejected_run_needs_force(reg: Registry) -> None:
    rejected = "v20261124T080000Z-0006"
    reg.create_run(rejected)
    reg.update_run(rejected, status=registry.REJECTED)
    with pytest.raises(Conflict) as caught:
        reg.promote(rejected, reason="r", actor="a")
    assert "force promotes a rejected run" in caught.value.message
    assert reg.promote(rejected, reason="r", actor="a", force=True)["action"] == "promote"
    assert reg.latest_version() == rejected


def test_registry_promote_current_latest_is_a_no_op(reg: Registry) -> None:
    assert reg.promote(V1, reason="r", actor="a") == {
        "changed": False,
        "version": V1,
        "previous": V1,
        "pinned": False,
    }
    assert reg.pin(reason="r", actor="a")["changed"] is True
    assert reg.pin(reason="r", actor="a")["changed"] is False
    assert len(reg.list_history()[0]) == 2


def test_registry_change_against_a_stale_pointer_is_a_conflict(reg: Registry) -> None:
    stale = reg.latest()
    reg.promote(V2, reason="first", actor="alice")
    with pytest.raises(Conflict):
        reg._change(stale, V3, pinned=False, action="promote", reason="second", actor="bob")
    assert reg.latest_version() == V2 and len(reg.list_history()[0]) == 2


def test_registry_pin_without_latest_is_a_conflict(stack: Any, dynamodb: Any) -> None:
    r = Registry(stack.physical["ModelTable"], dynamodb)
    with pytest.raises(Conflict, match="no latest version yet"):
        r.pin(reason="r", actor="a")
    assert r.list_history()[0] == []


def test_registry_history_is_not_listed_as_runs(reg: Registry) -> None:
    reg.promote(V2, reason="r", actor="a")
    runs, _ = reg.list_runs(limit=10)
    assert sorted(r["version"] for r in runs) == sorted([V1, V2, V3, BAD])


# the routes ---------------------------------------------------------------------------------


def test_promote_route_rolls_back_and_records_the_api_key_as_actor(reg: Registry) -> None:
    reg.set_latest(V3, expected=V1, reason="better", actor="gate")
    status, body = call(
        event("POST", "/models/{version}/promote", {"reason": "bad predictions"}, V2, apiKeyId="k-123")
    )
    assert status == 200
    assert (body["changed"], body["action"], body["previous"], body["version"]) == (True, "rollback", V3, V2)
    assert body["actor"] == "api-key:k-123" and body["reason"] == "bad predictions"
    assert reg.latest_version() == V2


def test_promote_route_without_body_uses_default_reason_and_the_key_as_actor(reg: Registry) -> None:
    status, body = call(event("POST", "/models/{version}/promote", None, V2))
    assert status == 200 and body["reason"] == "promoted by hand" and body["actor"] == "api-key:k-ops"


def test_promote_route_iam_caller_is_the_actor(reg: Registry) -> None:
    arn = "arn:aws:iam::123456789012:user/alice"
    _, body = call(event("POST", "/models/{version}/promote", {}, V2, userArn=arn, apiKeyId="k-1"))
    assert body["actor"] == f"iam:{arn}"


@pytest.mark.parametrize(
    ("version", "body", "status", "message"),
    [
        ("latest", None, 400, "version must be a model version like v20261123T091432Z-1a2b"),
        (
            "v\uff120261121T080000Z-0002",
            None,
            400,
            "version must be a model version like v20261123T091432Z-1a2b",
        ),
        (V2, "not json", 400, "request body is not valid JSON"),
        (V2, [1], 400, "body must be a JSON object"),
        (V2, {"reason": ""}, 400, "reason must be a non-empty string of at most 500 characters"),
        (V2, {"reason": "x" * 501}, 400, "reason must be a non-empty string of at most 500 characters"),
        (V2, {"pin": "yes"}, 400, "pin must be true or false"),
        (V2, {"force": 1}, 400, "force must be true or false"),
        (V2, {"actor": "mallory"}, 400, "unknown field 'actor'"),
        (BAD, None, 409, f"run {BAD} is failed; only published runs can be promoted"),
        ("v20261124T080000Z-0005", None, 404, "no model version v20261124T080000Z-0005"),
    ],
)
def test_promote_route_refuses_bad_requests_and_changes_nothing(
    reg: Registry, version: str, body: Any, status: int, message: str
) -> None:
    got_status, got = call(event("POST", "/models/{version}/promote", body, version))
    assert got_status == status
    assert got["message"].startswith(message)
    assert reg.latest_version() == V1 and len(reg.list_history()[0]) == 1


def test_promote_route_refuses_a_version_without_model_files(reg: Registry, stack: Any, s3: Any) -> None:
    s3.delete_object(Bucket=stack.physical["ModelBucket"], Key=f"models/{V2}/model.json")
    status, body = call(event("POST", "/models/{version}/promote", None, V2))
    assert status == 409 and body["message"] == f"run {V2} has no model.json in the bucket; not promoted"
    assert reg.latest_version() == V1


def test_pin_and_unpin_routes(reg: Registry) -> None:
    status, body = call(event("POST", "/models/pin", {"reason": "freeze for the audit", "version": V1}))
    assert status == 200 and body["action"] == "pin" and body["pinned"] is True
    status, body = call(event("POST", "/models/pin", None))
    assert status == 200 and body["changed"] is False
    status, body = call(event("POST", "/models/unpin", None))
    assert status == 200 and body["action"] == "unpin" and body["reason"] == "unpinned by hand"
    assert reg.latest()["pinned"] is False


def test_pin_route_with_a_version_that_is_not_latest_is_a_conflict(reg: Registry) -> None:
    status, body = call(event("POST", "/models/pin", {"version": V2}))
    assert status == 409 and body["message"] == f"latest is {V1}, not {V2}; nothing changed"
    assert reg.latest()["pinned"] is False


def test_history_route_pages_in_order(reg: Registry) -> None:
    reg.promote(V2, reason="r", actor="a")
    reg.promote(V3, reason="r", actor="a")
    evt = event("GET", "/models/history")
    evt["queryStringParameters"] = {"limit": "2"}
    status, first = call(evt)
    assert status == 200 and [h["version"] for h in first["items"]] == [V1, V2]
    evt["queryStringParameters"] = {"limit": "2", "cursor": first["next"]}
    _, rest = call(evt)
    assert [h["version"] for h in rest["items"]] == [V3] and rest["latest"]["version"] == V3
    evt["queryStringParameters"] = {"order": "desc"}
    _, newest = call(evt)
    assert [h["version"] for h in newest["items"]] == [V3, V2, V1]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"limit": "0"}, "limit must be an integer from 1 to 100"),
        ({"limit": "many"}, "limit must be an integer from 1 to 100"),
        ({"order": "random"}, "order must be asc (oldest first) or desc (newest first)"),
        ({"cursor": "../x"}, "cursor must be the 'next' value of a previous page"),
        ({"page": "2"}, "unknown query parameter 'page'"),
    ],
)
def test_history_route_refuses_bad_queries(reg: Registry, query: dict, message: str) -> None:
    evt = event("GET", "/models/history")
    evt["queryStringParameters"] = query
    status, body = call(evt)
    assert status == 400 and body["message"].startswith(message)


def test_registry_route_unknown_is_400(reg: Registry) -> None:
    status, body = call(event("DELETE", "/models/pin"))
    assert status == 400 and body["message"] == "no registry operation for 'DELETE /models/pin'"


# the gate and notifications ------------------------------------------------------------------


@pytest.mark.parametrize(("candidate", "verdict"), [(0.95, "would have passed"), (0.5, "would have failed")])
def test_gate_pinned_latest_is_never_promoted(candidate: float, verdict: str) -> None:
    decision = gate.decide(
        candidate, baseline_version=V1, baseline_accuracy=0.9, tolerance=0.01, min_accuracy=0.6, pinned=True
    )
    assert decision.decision == "pinned" and not decision.promote
    assert decision.reason.startswith(f"not promoted: pinned (latest {V1} is pinned); the gate {verdict}")


class FakeSns:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail = fail

    def publish(self, **kwargs: Any) -> dict[str, str]:
        if self.fail:
            raise RuntimeError("throttled")
        self.sent.append(kwargs)
        return {"MessageId": "m-1"}


def test_notify_publishes_the_contract_message() -> None:
    sns = FakeSns()
    cfg = notify.NotifySettings("arn:aws:sns:us-east-1:123456789012:topic")
    assert notify.run_outcome(
        V2, "published", previous=V1, reason="better", metrics={"holdout": {}}, cfg=cfg, client=sns
    )
    (sent,) = sns.sent
    body = json.loads(sent["Message"])
    assert set(body) == {"type", "version", "status", "previous", "reason", "actor", "metrics", "at"}
    assert (body["type"], body["version"], body["status"], body["previous"]) == (
        "run_outcome",
        V2,
        "published",
        V1,
    )
    assert sent["MessageAttributes"]["status"]["StringValue"] == "published"


def test_notify_without_topic_or_with_failing_sns_never_raises() -> None:
    change = {
        "version": V2,
        "action": "rollback",
        "previous": V3,
        "reason": "r",
        "actor": "a",
        "pinned": False,
    }
    assert notify.latest_changed(change, cfg=notify.NotifySettings(None), client=FakeSns()) is False
    cfg = notify.NotifySettings("arn:aws:sns:us-east-1:123456789012:topic")
    assert notify.latest_changed(change, cfg=cfg, client=FakeSns(fail=True)) is False


def test_notify_settings_read_the_topic_from_the_environment() -> None:
    assert notify.NotifySettings.from_env({"NOTIFY_TOPIC_ARN": " arn:x "}).topic_arn == "arn:x"
    assert notify.NotifySettings.from_env({}).topic_arn is None


@pytest.mark.parametrize(
    "identity",
    [{"apiKeyId": "k-client"}, {"sourceIp": "10.0.0.8"}],
    ids=["a client's key", "no key"],
)
@pytest.mark.parametrize(
    ("resource", "body"),
    [("/models/{version}/promote", {"reason": "mine is better"}), ("/models/pin", {}), ("/models/unpin", {})],
)
def test_only_an_operator_may_change_latest(
    reg: Registry, identity: dict[str, str], resource: str, body: Any
) -> None:
    before = reg.latest()
    status, answer = call(event("POST", resource, body, V2 if "version" in resource else None, **identity))
    assert (status, answer["error"]) == (403, "forbidden")
    assert "operator" in answer["message"]
    assert reg.latest() == before
