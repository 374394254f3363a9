"""Ingestion as a user meets it: ``make local`` in one shell, curl in another, then Ctrl-C.
(``make demo`` is checked end to end in test_retrain_e2e.py.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from localcloud import infra

ROOT = infra.ROOT
ORIGINAL_PAYLOAD = (
    '[{"created": 1570323309012, "temp": 75, "rh": 60, "wind": 0.6, "clo": 1.0, "label": "ok", "score": -1}]'
)
# Keeps the retraining trigger out of this story: ingestion only.
NO_RETRAIN = "MIN_NEW_SAMPLES=1000000"


def _wait_for_file(path: Path, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, (
            f"the local cloud exited early:\n{proc.stdout.read() if proc.stdout else ''}"
        )
        assert time.monotonic() < deadline, f"{path} was not written in {seconds:g} s"
        time.sleep(0.2)


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


@pytest.fixture
def local_cloud(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str], Path]]:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localcloud",
            *("--api-port", "0", "--aws-port", "0", "--state-dir", str(state), "--duration", "120"),
            *("--env", NO_RETRAIN, "--function-log", str(tmp_path / "functions.log")),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_file(state / "endpoints.json", proc)
        yield proc, json.loads((state / "endpoints.json").read_text()), state
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _count(dynamodb, table: str) -> int:
    return int(dynamodb.scan(TableName=table, Select="COUNT")["Count"])


@pytest.mark.slow
@pytest.mark.e2e
def test_ingestion_e2e_make_local_takes_curl_uploads_and_traffic_then_stops_on_sigterm(local_cloud) -> None:
    proc, endpoints, state = local_cloud
    dynamodb = boto3.client(
        "dynamodb",
        endpoint_url=endpoints["aws"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    table = infra.load(stage="local").table_name("DataTable")

    def curl(*headers: str) -> tuple[str, str]:
        done = subprocess.run(
            ["curl", "-s", "-w", "\\n%{http_code}", "-X", "POST", f"{endpoints['api']}/upload"]
            + [arg for header in headers for arg in ("-H", header)]
            + ["-d", ORIGINAL_PAYLOAD],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        body, status = done.stdout.rsplit("\n", 1)
        return body, status

    # As the README shows it: the default client's key from endpoints.json; without it, API
    # Gateway's 403.
    body, status = curl()
    assert (status, json.loads(body)) == ("403", {"message": "Forbidden"})
    body, status = curl(f"x-api-key: {endpoints['api_key']}")
    assert status == "200", body
    (sample_id,) = json.loads(body)["ids"]
    item = dynamodb.get_item(TableName=table, Key={"id": {"S": sample_id}}, ConsistentRead=True).get("Item")
    assert item is not None
    assert item["label"] == {"S": "ok"}
    assert item["source"] == {"S": "api"}
    assert item["client"] == {"S": "default"}

    # The traffic schedule (rate(5 seconds) locally) keeps adding samples on its own.
    seen = [_count(dynamodb, table)]
    deadline = time.monotonic() + 60
    while len(set(seen)) < 3 and time.monotonic() < deadline:
        time.sleep(1)
        seen.append(_count(dynamodb, table))
    assert len(set(seen)) >= 3, f"samples did not keep arriving: {seen}"
    assert seen == sorted(seen)

    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "stopped" in output
    assert not (state / "endpoints.json").exists()
    assert not _port_open(endpoints["api"])
    assert not _port_open(endpoints["aws"])
