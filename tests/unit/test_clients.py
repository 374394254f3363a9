"""The clients' registry: records, identity pointers, trust changes and their events, and the
resolution of a request's client from what API Gateway authenticated."""

from __future__ import annotations

from typing import Any

import pytest

from lambdas.core import clients
from lambdas.core.clients import Clients, Resolver
from lambdas.core.errors import BadRequest, Conflict, Forbidden, NotFound


@pytest.fixture
def reg(stack: Any, dynamodb: Any) -> Clients:
    return Clients(stack.physical["ModelTable"], dynamodb)


def request(**identity: str) -> dict[str, Any]:
    return {"requestContext": {"identity": {"sourceIp": "10.0.0.7", **identity}}, "headers": {}}


def test_a_client_is_recorded_with_its_key_and_found_by_it(reg: Clients) -> None:
    made = reg.create(
        "alice", trust=clients.TRUSTED, api_key_id="k-alice", plan="clients", actor="ops", reason="lab A"
    )
    assert reg.get("alice") == made
    found = reg.by_api_key("k-alice")
    assert found is not None and (found.name, found.trust, found.source) == ("alice", "trusted", "api")
    assert reg.by_api_key("k-other") is None
    assert [c.name for c in reg.list()] == ["alice"]
    assert reg.events()[0]["event"] == clients.CREATED


def test_a_name_or_an_identity_is_never_recorded_twice(reg: Clients) -> None:
    reg.create("alice", api_key_id="k1", actor="ops")
    with pytest.raises(Conflict):
        reg.create("alice", api_key_id="k2", actor="ops")
    with pytest.raises(Conflict):
        reg.create("bob", api_key_id="k1", actor="ops")
    assert reg.by_api_key("k2") is None  # the refused transaction wrote nothing
    assert [c.name for c in reg.list()] == ["alice"]


@pytest.mark.parametrize("name", ["", "Alice", "a b", "-x", "x" * 64, "client#1"])
def test_a_bad_name_is_refused(reg: Clients, name: str) -> None:
    with pytest.raises(BadRequest) as err:
        reg.create(name, actor="ops")
    assert err.value.details["field"] == "name"


def test_a_new_client_is_untrusted_by_default_and_a_bad_trust_is_refused(reg: Clients) -> None:
    assert reg.create("carol", api_key_id="k3", actor="ops").trust == clients.UNTRUSTED
    with pytest.raises(BadRequest):
        reg.set_trust("carol", "sometimes", actor="ops", reason="x")


def test_a_trust_change_moves_record_and_pointer_together_and_is_recorded(reg: Clients) -> None:
    reg.create("alice", trust=clients.TRUSTED, api_key_id="k-alice", actor="ops")
    reg.set_trust("alice", clients.REVOKED, actor="ops", reason="posted wrong labels")
    assert reg.get("alice").trust == clients.REVOKED
    assert reg.by_api_key("k-alice").trust == clients.REVOKED
    event = reg.events()[0]
    assert (event["event"], event["name"], event["from"], event["to"]) == (
        "trust",
        "alice",
        "trusted",
        "revoked",
    )
    assert event["reason"] == "posted wrong labels"
    with pytest.raises(NotFound):
        reg.set_trust("nobody", clients.TRUSTED, actor="ops", reason="x")


def test_the_trust_map_has_the_built_ins_until_they_are_recorded(reg: Clients) -> None:
    reg.create("alice", trust=clients.TRUSTED, api_key_id="k-alice", actor="ops")
    reg.create("mallory", api_key_id="k-m", actor="ops")
    assert reg.trust_map() == {
        "alice": "trusted",
        "mallory": "untrusted",
        "traffic": "trusted",
        "unattributed": "trusted",
    }
    reg.set_trust("unattributed", clients.UNTRUSTED, actor="ops", reason="old data is unknown")
    assert reg.trust_map()["unattributed"] == "untrusted"


def test_the_resolver_takes_the_client_from_the_authenticated_identity_only(
    reg: Clients, stack: Any, dynamodb: Any
) -> None:
    reg.create("alice", trust=clients.TRUSTED, api_key_id="k-alice", actor="ops")
    reg.create(
        "svc", trust=clients.TRUSTED, principal_arn="arn:aws:iam::123456789012:role/feeder", actor="ops"
    )
    resolver = Resolver(stack.physical["ModelTable"], traffic_api_key_id="k-traffic", ddb=dynamodb)
    assert resolver.client_for(request(apiKeyId="k-alice")).name == "alice"
    assert resolver.client_for(request(userArn="arn:aws:iam::123456789012:role/feeder")).name == "svc"
    traffic = resolver.client_for(request(apiKeyId="k-traffic"))
    assert (traffic.name, traffic.source) == ("traffic", "traffic")
    for event in (
        request(),
        {**request(), "headers": {"x-api-key": "k-alice"}},
        request(apiKeyId="k-unknown"),
    ):
        with pytest.raises(Forbidden):
            resolver.client_for(event)


def test_a_revoked_client_is_refused_once_the_cache_expires(reg: Clients, stack: Any, dynamodb: Any) -> None:
    reg.create("alice", trust=clients.TRUSTED, api_key_id="k-alice", actor="ops")
    now = [0.0]
    resolver = Resolver(stack.physical["ModelTable"], ddb=dynamodb, ttl_s=10.0, clock=lambda: now[0])
    assert resolver.client_for(request(apiKeyId="k-alice")).name == "alice"
    reg.set_trust("alice", clients.REVOKED, actor="ops", reason="x")
    now[0] = 10.5
    with pytest.raises(Forbidden) as err:
        resolver.client_for(request(apiKeyId="k-alice"))
    assert err.value.status == 403 and "revoked" in err.value.message


def test_revoking_the_built_in_traffic_client_reaches_the_resolver(
    reg: Clients, stack: Any, dynamodb: Any
) -> None:
    resolver = Resolver(stack.physical["ModelTable"], traffic_api_key_id="k-traffic", ddb=dynamodb, ttl_s=0.0)
    assert resolver.client_for(request(apiKeyId="k-traffic")).name == "traffic"
    reg.set_trust(
        "traffic", clients.REVOKED, actor="ops", reason="a bug made bad labels", api_key_id="k-traffic"
    )
    assert reg.get("traffic").source == "traffic"
    with pytest.raises(Forbidden):
        resolver.client_for(request(apiKeyId="k-traffic"))


def test_a_built_in_record_made_without_its_key_names_it_on_the_next_change(
    reg: Clients, stack: Any, dynamodb: Any
) -> None:
    reg.set_trust("traffic", clients.UNTRUSTED, actor="ops", reason="key unknown yet")
    assert reg.by_api_key("k-traffic") is None
    reg.set_trust("traffic", clients.REVOKED, actor="ops", reason="bad labels", api_key_id="k-traffic")
    assert reg.get("traffic").api_key_id == "k-traffic"
    resolver = Resolver(stack.physical["ModelTable"], traffic_api_key_id="k-traffic", ddb=dynamodb)
    with pytest.raises(Forbidden):
        resolver.client_for(request(apiKeyId="k-traffic"))
