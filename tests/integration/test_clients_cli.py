"""`python -m scripts.models clients ...` and `holdout-key rotate` against a running local cloud:
the API key it prints works on POST /upload, a revoked client's key is refused at the gateway,
purge deletes exactly a revoked client's samples, rotation makes a new secret version; each
change recorded as an event. One local cloud for the module (no drivers, traffic off)."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import requests

from lambdas.core import clients
from localcloud.cloud import LocalCloud
from scripts import models as cli
from tests.support.clouds import QUIET, keyed, narrator, print_function_log, wait

SAMPLE: dict[str, Any] = {"temp": 75, "rh": 50, "wind": 0.1, "clo": 0.5, "label": "ok"}


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloud]:
    tmp = tmp_path_factory.mktemp("clients")
    log = tmp / "functions.log"
    try:
        with LocalCloud(
            tmp / "state",
            drivers=(),
            schedule_overrides=QUIET,
            function_log=log,
            web_dir=None,
            say=narrator(),
        ) as running:
            yield running
    finally:
        print_function_log(log, 40)


@pytest.fixture
def cloud(started: LocalCloud, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCloud]:
    """The module's local cloud; the CLI's ``--local`` reads its endpoints.json, and whatever
    that sets in the environment is undone after the test."""
    monkeypatch.setattr(cli, "ENDPOINTS", started.endpoints_file)
    saved = dict(os.environ)
    yield started
    os.environ.clear()
    os.environ.update(saved)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main([*argv, "--local"])
    return code, out.getvalue(), err.getvalue()


def add(name: str, *extra: str) -> str:
    """A new client through the CLI; its API key's value."""
    code, out, err = run("clients", "add", name, "--reason", f"test client {name}", *extra)
    assert code == 0, out + err
    [key] = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("api key: ")]
    return key


def upload(cloud: LocalCloud, key: str, count: int = 1) -> requests.Response:
    samples = [{**SAMPLE, "temp": 60 + i % 30, "rh": 20 + i % 60} for i in range(count)]
    return requests.post(f"{cloud.api_url}/upload", json=samples, headers={"x-api-key": key}, timeout=30)


def registry(cloud: LocalCloud) -> clients.Clients:
    return clients.Clients(cloud.stack.table_name("ModelTable"), cloud.client("dynamodb"))


def samples_by_client(cloud: LocalCloud) -> dict[str, int]:
    ddb = cloud.client("dynamodb")
    counts: dict[str, int] = {}
    kwargs: dict[str, Any] = {"TableName": cloud.stack.table_name("DataTable")}
    while True:
        page = ddb.scan(**kwargs)
        for item in page["Items"]:
            name = item.get("client", {}).get("S", clients.UNATTRIBUTED)
            counts[name] = counts.get(name, 0) + 1
        if not page.get("LastEvaluatedKey"):
            return counts
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def events_of(cloud: LocalCloud, name: str | None, event: str) -> list[dict[str, Any]]:
    return [e for e in registry(cloud).events(limit=500) if e.get("name") == name and e["event"] == event]


def api_key(cloud: LocalCloud, key_id: str) -> dict[str, Any]:
    return dict(cloud.client("apigateway").get_api_key(apiKey=key_id))


@pytest.mark.slow
def test_clients_add_prints_a_key_that_uploads_as_that_client(cloud: LocalCloud) -> None:
    key = add("acme", "--trust", "trusted")
    record = registry(cloud).get("acme")
    assert (record.trust, record.source, record.plan) == (clients.TRUSTED, "api", "clients")
    moto_key = api_key(cloud, str(record.api_key_id))
    assert moto_key["name"] == "autoretrain-local-client-acme" and moto_key["enabled"] is True
    gateway = cloud.client("apigateway")
    [plan] = [p for p in gateway.get_usage_plans()["items"] if p["name"] == "autoretrain-clients-local"]
    assert record.api_key_id in [
        k["id"] for k in gateway.get_usage_plan_keys(usagePlanId=plan["id"])["items"]
    ]
    [created] = events_of(cloud, "acme", clients.CREATED)
    assert created["reason"] == "test client acme" and created["actor"].startswith("cli:")

    reply = upload(cloud, key, 3)
    assert reply.status_code == 200, reply.text
    assert reply.json()["written"] == 3
    assert samples_by_client(cloud)["acme"] == 3


@pytest.mark.slow
def test_clients_add_with_an_iam_principal_records_it_and_makes_no_key(cloud: LocalCloud) -> None:
    arn = "arn:aws:iam::123456789012:user/ingest-bot"
    keys_before = len(cloud.client("apigateway").get_api_keys()["items"])
    code, out, _ = run("clients", "add", "bot", "--iam-arn", arn, "--reason", "server to server")
    assert code == 0, out
    assert "api key:" not in out and arn in out
    record = registry(cloud).get("bot")
    assert (record.principal_arn, record.api_key_id, record.trust) == (arn, None, clients.UNTRUSTED)
    pointer = registry(cloud).by_principal(arn)
    assert pointer is not None and (pointer.name, pointer.trust) == ("bot", clients.UNTRUSTED)
    assert len(cloud.client("apigateway").get_api_keys()["items"]) == keys_before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["Not-Valid!"], "client name must match"),
        (["traffic"], "'traffic' is a built-in client"),
        (["noplan", "--plan", "gold"], "no usage plan 'autoretrain-gold-local'"),
        (["badarn", "--iam-arn", "alice"], "--iam-arn must be an IAM user's or assumed role's ARN"),
    ],
)
def test_clients_add_refuses_with_a_reason_and_leaves_no_key(
    cloud: LocalCloud, argv: list[str], message: str
) -> None:
    keys_before = cloud.client("apigateway").get_api_keys()["items"]
    code, out, _ = run("clients", "add", *argv, "--reason", "r")
    assert code == 1
    assert out.startswith("error: ") and message in out
    assert cloud.client("apigateway").get_api_keys()["items"] == keys_before


@pytest.mark.slow
def test_clients_add_refuses_a_name_taken(cloud: LocalCloud) -> None:
    add("twice")
    code, out, _ = run("clients", "add", "twice", "--reason", "again")
    assert code == 1
    assert "error: client 'twice' already exists" in out
    names = [k["name"] for k in cloud.client("apigateway").get_api_keys()["items"]]
    assert names.count("autoretrain-local-client-twice") == 1


@pytest.mark.slow
def test_clients_trust_refuses_an_unknown_client_and_a_bad_level(cloud: LocalCloud) -> None:
    code, out, _ = run("clients", "trust", "ghost", "trusted", "--reason", "r")
    assert (code, out.strip()) == (1, "error: no client 'ghost' (clients list shows them)")
    with pytest.raises(SystemExit) as usage:
        run("clients", "trust", "acme", "superb", "--reason", "r")
    assert usage.value.code == 2
    assert events_of(cloud, "ghost", clients.TRUST) == []


@pytest.mark.slow
def test_clients_revoke_refuses_the_key_at_the_gateway_and_retrust_enables_it_again(
    cloud: LocalCloud,
) -> None:
    key = add("leaky")
    assert upload(cloud, key).status_code == 200
    code, out, _ = run("clients", "revoke", "leaky", "--reason", "key posted in a forum")
    assert code == 0, out
    assert "untrusted -> revoked" in out and "API key is disabled" in out

    record = registry(cloud).get("leaky")
    assert record.trust == clients.REVOKED and record.reason == "key posted in a forum"
    assert api_key(cloud, str(record.api_key_id))["enabled"] is False
    assert registry(cloud).by_api_key(str(record.api_key_id)).trust == clients.REVOKED  # type: ignore[union-attr]
    [event] = events_of(cloud, "leaky", clients.TRUST)
    assert (event["from"], event["to"], event["reason"]) == ("untrusted", "revoked", "key posted in a forum")
    # The gateway refuses a disabled key before the function runs.
    statuses = []
    for _ in range(20):
        reply = upload(cloud, key)
        statuses.append(reply.status_code)
        if reply.status_code == 403:
            break
        time.sleep(0.25)
    assert statuses[-1] == 403, statuses
    refused = reply
    assert refused.json() == {"message": "Forbidden"}

    code, out, _ = run("clients", "trust", "leaky", "untrusted", "--reason", "new key policy agreed")
    assert code == 0, out
    assert "revoked -> untrusted" in out and "API key is enabled" in out
    assert api_key(cloud, str(record.api_key_id))["enabled"] is True
    # The upload function's resolver keeps an answer CLIENT_CACHE_S (10 s) per environment.
    wait(lambda: upload(cloud, key).status_code == 200, 20, "the key accepted again")


@pytest.mark.slow
def test_clients_purge_refuses_a_client_that_is_not_revoked(cloud: LocalCloud) -> None:
    key = add("keeper")
    assert upload(cloud, key, 4).status_code == 200
    code, out, _ = run("clients", "purge", "keeper", "--reason", "tidy", "--yes")
    assert code == 1
    assert "client 'keeper' is untrusted, not revoked" in out and "clients revoke keeper" in out
    assert samples_by_client(cloud)["keeper"] == 4
    assert events_of(cloud, "keeper", clients.PURGED) == []
    code, out, _ = run("clients", "purge", "nobody", "--reason", "tidy", "--yes")
    assert (code, out.strip()) == (1, "error: no client 'nobody' (clients list shows them)")


@pytest.mark.slow
def test_clients_purge_deletes_exactly_the_revoked_clients_samples_and_records_the_count(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    spam, good = add("spammer"), add("honest")
    assert upload(cloud, spam, 120).status_code == 200  # more than four batches of 25
    assert upload(cloud, good, 7).status_code == 200
    assert (
        requests.post(
            f"{cloud.api_url}/upload", json=[SAMPLE, SAMPLE], headers=keyed(cloud), timeout=30
        ).json()["written"]
        == 2
    )
    before = samples_by_client(cloud)
    assert before["spammer"] == 120
    assert run("clients", "revoke", "spammer", "--reason", "garbage labels")[0] == 0

    monkeypatch.setattr(cli, "PURGE_PROGRESS_EVERY", 50)
    code, out, err = run(
        "clients", "purge", "spammer", "--reason", "garbage labels", "--yes", "--segments", "3"
    )
    assert code == 0, out + err
    assert "purged 120 samples of client 'spammer'" in out
    progress = [line for line in err.splitlines() if line.startswith("purge spammer:")]
    assert len(progress) == 2  # past 50 and past 100
    after = samples_by_client(cloud)
    assert "spammer" not in after
    assert after == {name: n for name, n in before.items() if name != "spammer"}
    [event] = events_of(cloud, "spammer", clients.PURGED)
    assert (event["deleted"], event["complete"], event["reason"]) == (120, True, "garbage labels")

    # Again: nothing left, and that is recorded too.
    code, out, _ = run("clients", "purge", "spammer", "--reason", "check", "--yes")
    assert code == 0 and "purged 0 samples" in out


@pytest.mark.slow
def test_clients_purge_asks_for_the_name_and_deletes_nothing_without_it(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = add("doubtful")
    assert upload(cloud, key, 3).status_code == 200
    assert run("clients", "revoke", "doubtful", "--reason", "r")[0] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("doubtfull\n"))
    code, out, err = run("clients", "purge", "doubtful", "--reason", "r")
    assert code == 1 and "purge cancelled: nothing deleted" in out
    assert "Type its name to confirm" in err
    assert samples_by_client(cloud)["doubtful"] == 3
    assert events_of(cloud, "doubtful", clients.PURGED) == []


@pytest.mark.slow
def test_holdout_key_rotate_makes_a_new_secret_version_and_records_it(cloud: LocalCloud) -> None:
    secrets = cloud.client("secretsmanager")
    name = "autoretrain-local/holdout-key"
    before = secrets.get_secret_value(SecretId=name)
    code, out, _ = run("holdout-key", "rotate", "--reason", "suspected leak")
    assert code == 0, out
    after = secrets.get_secret_value(SecretId=name)
    assert after["VersionId"] != before["VersionId"]
    assert after["SecretString"] != before["SecretString"] and len(after["SecretString"]) == 64
    assert after["VersionId"] in out and "next training run draws a different holdout" in out
    [event] = events_of(cloud, None, clients.HOLDOUT_KEY_ROTATED)
    assert (event["version_id"], event["secret"], event["reason"]) == (
        after["VersionId"],
        name,
        "suspected leak",
    )
    assert after["SecretString"] not in json.dumps(registry(cloud).events(limit=500))


@pytest.mark.slow
def test_clients_list_and_events_show_the_records(cloud: LocalCloud) -> None:
    add("listed", "--trust", "trusted")
    code, out, _ = run("clients", "list")
    assert code == 0
    header, _, *rows = out.splitlines()
    assert header.split() == ["name", "trust", "source", "plan", "created", "reason"]
    listed = next(r.split(None, 4) for r in rows if r.startswith("listed "))
    assert listed[:4] == ["listed", "trusted", "api", "clients"]
    assert any(r.split()[:2] == ["traffic", "trusted"] for r in rows)  # a built-in without a record
    code, out, _ = run("clients", "list", "--json")
    assert {"name": "default", "trust": "trusted"}.items() <= next(
        c for c in json.loads(out) if c["name"] == "default"
    ).items()
    code, out, _ = run("clients", "events", "--limit", "1", "--json")
    [newest] = json.loads(out)
    assert (newest["event"], newest["name"]) == (clients.CREATED, "listed")
    code, out, _ = run("clients", "events", "--limit", "1")
    assert "created" in out and "listed" in out and "test client listed" in out


def test_import_cli_sends_the_local_clouds_key_only_to_its_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoints = tmp_path / "endpoints.json"
    endpoints.write_text(json.dumps({"api": "http://127.0.0.1:8123", "aws": "x", "api_key": "local-key"}))
    monkeypatch.delenv("API_KEY", raising=False)
    assert cli.api_key_for("http://127.0.0.1:8123", None, endpoints) == "local-key"
    assert cli.api_key_for("https://abc.execute-api.us-east-1.amazonaws.com/dev", None, endpoints) is None
    assert cli.api_key_for("http://127.0.0.1:8123", "given", endpoints) == "given"
    monkeypatch.setenv("API_KEY", "from-env")
    assert (
        cli.api_key_for("https://abc.execute-api.us-east-1.amazonaws.com/dev", None, endpoints) == "from-env"
    )


@pytest.mark.slow
def test_clients_revoke_traffic_disables_the_stacks_traffic_key_and_trust_enables_it(
    cloud: LocalCloud,
) -> None:
    gateway = cloud.client("apigateway")
    [key] = [k for k in gateway.get_api_keys()["items"] if k["name"] == "autoretrain-local-traffic"]
    code, out, _ = run("clients", "revoke", "traffic", "--reason", "synthetic data drowns the real")
    assert code == 0, out
    assert "trusted (built-in) -> revoked; its API key is disabled" in out
    assert api_key(cloud, key["id"])["enabled"] is False
    assert registry(cloud).get("traffic").trust == clients.REVOKED
    code, out, _ = run("clients", "trust", "traffic", "trusted", "--reason", "back on")
    assert code == 0 and "revoked -> trusted; its API key is enabled" in out
    assert api_key(cloud, key["id"])["enabled"] is True


@pytest.mark.slow
def test_clients_purge_unattributed_deletes_the_samples_without_a_client(cloud: LocalCloud) -> None:
    ddb, table = cloud.client("dynamodb"), cloud.stack.table_name("DataTable")
    for i in range(30):
        ddb.put_item(TableName=table, Item={"id": {"S": f"legacy-{i}"}, "label": {"S": "ok"}})
    before = samples_by_client(cloud)
    assert before[clients.UNATTRIBUTED] == 30
    assert run("clients", "revoke", "unattributed", "--reason", "unknown origin")[0] == 0
    code, out, _ = run("clients", "purge", "unattributed", "--reason", "unknown origin", "--yes")
    assert code == 0 and "purged 30 samples" in out
    assert samples_by_client(cloud) == {n: c for n, c in before.items() if n != clients.UNATTRIBUTED}
    assert run("clients", "trust", "unattributed", "trusted", "--reason", "restore the default")[0] == 0


def test_clients_commands_without_a_stage_name_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STAGE", "MODEL_TABLE", "DATA_TABLE"):
        monkeypatch.delenv(name, raising=False)
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["clients", "list"]) == 2
    assert "environment variable STAGE is required" in out.getvalue() and "--local" in out.getvalue()


class Unprocessed:
    """DynamoDB leaving the first ``unprocessed`` requests of its first ``fail_times``
    BatchWriteItem calls unprocessed (moto never does), then none."""

    def __init__(self, unprocessed: int, fail_times: int = 1) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.unprocessed = unprocessed
        self.fail_times = fail_times

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        [(table, requests_)] = RequestItems.items()
        self.calls.append(requests_)
        if len(self.calls) <= self.fail_times:
            return {"UnprocessedItems": {table: requests_[: self.unprocessed]}}
        return {"UnprocessedItems": {}}


def test_clients_purge_retries_unprocessed_deletions_until_none_are_left() -> None:
    ddb = Unprocessed(unprocessed=7)
    ops = cli.ClientOps(cli.ClientSettings("autoretrain", "t", "models", "samples"), ddb=ddb)
    keys = [{"id": {"S": f"s{i}"}} for i in range(25)]
    ops._delete("samples", keys, cli.Backoff(sleep=lambda s: None))
    assert [len(c) for c in ddb.calls] == [25, 7]
    assert ddb.calls[1] == [{"DeleteRequest": {"Key": k}} for k in keys[:7]]


def test_clients_purge_gives_up_after_its_attempts_with_the_count_left() -> None:
    ddb = Unprocessed(unprocessed=3, fail_times=cli.BATCH_ATTEMPTS)
    ops = cli.ClientOps(cli.ClientSettings("autoretrain", "t", "models", "samples"), ddb=ddb)
    with pytest.raises(cli.Unavailable, match="left 3 deletions unprocessed after 8 attempts"):
        ops._delete("samples", [{"id": {"S": f"s{i}"}} for i in range(10)], cli.Backoff(sleep=lambda s: None))
    assert len(ddb.calls) == cli.BATCH_ATTEMPTS
