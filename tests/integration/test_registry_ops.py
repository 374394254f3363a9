"""Registry operations end to end: rollback reaches /infer and TensorFlow.js clients, a pin holds
against a better retrain, and the history (API and CLI) lists every change in order."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lambdas import infer, promote, s3proxy
from lambdas.core import aws, comfort
from lambdas.core.registry import Registry
from scripts import models as cli
from scripts.bench_infer import ServingStack, publish
from tests.integration.test_infer import write_model
from tests.integration.test_trainer_outcomes import settings_for
from tests.integration.test_trainer_publish import write_samples
from tests.support.clouds import keyed
from tests.unit.test_tfjs_model import ROOT, load_numpy
from trainer import run as trainer_run

V1 = "v20261120T080000Z-0001"
V2 = "v20261121T080000Z-0002"
V3 = "v20261122T080000Z-0003"
ROWS = [[60.0 + 3 * i, 25.0 + 5 * i, 0.05 * i, 0.4 + 0.1 * i] for i in range(6)]


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OPERATOR_API_KEY_ID", "k-ops")  # the key id `route` calls with
    for module in (infer, s3proxy, promote):
        module.reset()
    yield
    for module in (infer, s3proxy, promote):
        module.reset()


def route(method: str, resource: str, body: Any = None, version: str | None = None) -> tuple[int, Any]:
    out = promote.handler(
        {
            "httpMethod": method,
            "resource": resource,
            "pathParameters": {"version": version} if version else None,
            "body": None if body is None else json.dumps(body),
            "requestContext": {"identity": {"sourceIp": "127.0.0.1", "apiKeyId": "k-ops"}},
        }
    )
    return out["statusCode"], json.loads(out["body"])


def http_route(serving: ServingStack, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A registry route through the local API (a private route: with the stack's API key): the
    registry function in its own worker."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{serving.api_url}{path}", data=data, method=method, headers=keyed(serving, operator=True)
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def post_infer(serving: ServingStack) -> dict[str, Any]:
    rows = [dict(zip(("temp", "rh", "wind", "clo"), r, strict=True)) for r in ROWS]
    request = urllib.request.Request(
        f"{serving.api_url}/infer",
        data=json.dumps(rows).encode(),
        headers=keyed(serving, {"Content-Type": "application/json"}),
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def tfjs_predict(model_url: str) -> np.ndarray:
    done = subprocess.run(
        ["node", str(ROOT / "tests/js/tfjs_predict.mjs"), model_url],
        input=json.dumps(ROWS),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return np.array(json.loads(done.stdout))


@pytest.mark.slow
def test_rollback_restores_the_older_version_for_infer_and_tensorflow_js(tmp_path: Path) -> None:
    fresh = {"MODEL_REFRESH_S": "0", "LATEST_CACHE_S": "0"}  # infer and the proxy follow at once
    with ServingStack(stage="test", environment=fresh) as serving:
        s3, reg = serving.clients()
        old, new = write_model(tmp_path / V1, seed=11), write_model(tmp_path / V2, seed=12)
        publish(s3, reg, serving.bucket, V1, old)
        publish(s3, reg, serving.bucket, V2, new)
        expected_old = load_numpy(old).predict(np.array(ROWS))
        expected_new = load_numpy(new).predict(np.array(ROWS))
        assert np.abs(expected_old - expected_new).max() > 1e-3  # the two are told apart
        latest_url = f"{serving.api_url}/s3proxy/latest/model.json"

        before = post_infer(serving)
        assert before["version"] == V2
        assert np.abs(tfjs_predict(latest_url) - expected_new).max() <= 1e-5

        status, change = http_route(serving, "POST", f"/models/{V1}/promote", {"reason": "V2 misbehaves"})
        assert status == 200 and (change["action"], change["previous"], change["version"]) == (
            "rollback",
            V2,
            V1,
        )

        after = post_infer(serving)
        assert after["version"] == V1
        assert np.abs(np.array(after["rawResult"]) - expected_old).max() <= 1e-5
        assert np.abs(tfjs_predict(latest_url) - expected_old).max() <= 1e-5

        # ... and forward again: the newer version comes back the same way.
        status, change = http_route(serving, "POST", f"/models/{V2}/promote", {})
        assert status == 200 and change["action"] == "promote"
        assert post_infer(serving)["version"] == V2
        assert np.abs(tfjs_predict(latest_url) - expected_new).max() <= 1e-5


SMALL = {"MIN_SAMPLES": "50", "EPOCHS": "5", "GATE_MIN_ACCURACY": "0"}


@pytest.mark.slow
def test_pinned_latest_survives_a_better_retrain(stack: Any, dynamodb: Any, s3: Any) -> None:
    registry = Registry(stack.physical["ModelTable"], dynamodb)
    release = trainer_run.ReleaseSettings()
    write_samples(dynamodb, stack.physical["DataTable"], comfort.generate(200, 7, 0.0), prefix="a")
    first = trainer_run.run(settings_for(stack, **SMALL), ddb=dynamodb, s3=s3, release=release)
    assert first.status == "published"
    assert route("POST", "/models/pin", {"reason": "audited model"})[0] == 200

    # More data and more epochs: a model the gate would take (any accuracy passes tolerance 1).
    # Versions name their second: the second run's must sort after the first's, or promoting it
    # is recorded as a rollback.
    time.sleep(1.1)
    write_samples(dynamodb, stack.physical["DataTable"], comfort.generate(400, 8, 0.0), prefix="b")
    better = trainer_run.run(
        settings_for(stack, **{**SMALL, "EPOCHS": "30", "GATE_TOLERANCE": "1"}),
        ddb=dynamodb,
        s3=s3,
        release=release,
    )
    assert (better.status, better.exit_code) == ("rejected", trainer_run.EXIT_OK)
    run_item = registry.get_run(better.version)
    assert run_item["gate"]["decision"] == "pinned" and run_item["promoted"] is False
    assert run_item["gate"]["reason"].startswith(f"not promoted: pinned (latest {first.version} is pinned)")
    assert "would have passed" in run_item["gate"]["reason"]
    assert run_item["metrics"]["holdout"]["accuracy"] > 0 and run_item["load_check"]["ok"] is True
    assert registry.latest()["version"] == first.version and registry.latest()["pinned"] is True

    # A person may still take the pinned-out model (it is rejected, so only with force).
    status, body = route("POST", "/models/{version}/promote", None, better.version)
    assert status == 409 and "force" in body["message"]
    status, body = route("POST", "/models/{version}/promote", {"force": True, "pin": False}, better.version)
    assert status == 200 and body["version"] == better.version and body["pinned"] is False
    assert [(h["action"], h["version"]) for h in registry.list_history()[0]] == [
        ("auto", first.version),
        ("pin", first.version),
        ("promote", better.version),
    ]


def test_history_lists_every_change_in_order_through_api_and_cli(
    stack: Any, dynamodb: Any, s3: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USER", "alice")
    reg = Registry(stack.physical["ModelTable"], dynamodb)
    for version in (V1, V2, V3):
        reg.create_run(version)
        reg.update_run(version, status="published")
        s3.put_object(Bucket=stack.physical["ModelBucket"], Key=f"models/{version}/model.json", Body=b"{}")
    reg.set_latest(V1, expected=None, reason="first model", actor="gate")
    reg.set_latest(V3, expected=V1, reason="better", actor="gate")

    assert cli.main(["rollback", V2, "--reason", "V3 drifts"]) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"latest: {V3} -> {V2} (rollback, not pinned) by cli:alice: V3 drifts"
    )
    assert route("POST", "/models/pin", {"reason": "hold"})[0] == 200
    assert cli.main(["promote", V3, "--no-pin"]) == 0
    assert cli.main(["pin"]) == 0
    assert cli.main(["unpin", "--reason", "resume"]) == 0
    assert cli.main(["unpin"]) == 0  # nothing to do: no history item
    capsys.readouterr()

    expected = [
        ("auto", None, V1, False, "gate"),
        ("auto", V1, V3, False, "gate"),
        ("rollback", V3, V2, False, "cli:alice"),
        ("pin", V2, V2, True, "api-key:k-ops"),
        ("promote", V2, V3, False, "cli:alice"),
        ("pin", V3, V3, True, "cli:alice"),
        ("unpin", V3, V3, False, "cli:alice"),
    ]
    status, page = route("GET", "/models/history")
    assert status == 200
    got = [(h["action"], h["previous"], h["version"], h["pinned"], h["actor"]) for h in page["items"]]
    assert got == expected
    assert [h["seq"] for h in page["items"]] == list(range(1, 8))

    assert cli.main(["history"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines[:7]] == [e[0] for e in expected]
    assert lines[2].endswith(f"{V3} -> {V2}  by cli:alice: V3 drifts")
    assert lines[-1] == f"latest: {V3}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rollback", V3], f"error: no model version {V3}"),
        (["pin"], "error: no latest version yet; nothing to pin or unpin"),
    ],
)
def test_cli_refusals_print_the_reason_and_exit_1(
    stack: Any, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli.main(argv) == 1
    assert capsys.readouterr().out.strip() == message
    assert Registry(stack.physical["ModelTable"], aws.dynamodb()).list_history()[0] == []


def test_cli_local_reads_the_local_cloud_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoints = tmp_path / "endpoints.json"
    endpoints.write_text(json.dumps({"api": "http://127.0.0.1:1", "aws": "http://127.0.0.1:2"}))
    environment = dict(os.environ)
    monkeypatch.setattr(os, "environ", environment)  # use_local_cloud sets the process environment
    env = cli.use_local_cloud(endpoints)
    assert environment["AWS_ENDPOINT_URL"] == "http://127.0.0.1:2"
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:2"
    assert env["MODEL_TABLE"] == "autoretrain-local-models"
    assert env["NOTIFY_TOPIC_ARN"] == "arn:aws:sns:us-east-1:123456789012:autoretrain-local-notifications"
