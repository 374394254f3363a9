"""Bulk import on the local cloud, as a user runs it: ``python -m scripts.models import FILE``
against the API, the presigned POST through the gate (its policy checked as S3 checks it), the
S3 event the local cloud delivers, the importer in its own worker process with its own role.

A 25,000-row CSV with bad rows imports with every row accounted for and the bad ones reported
by line (the 100,000-row file is ``make bench-import``'s, which exits 1 unless every row is
accounted for: here it would take four minutes of the suite, the local cloud writing about 450
rows a second); the retraining trigger waits for the import and starts one run after it; the same file
again writes nothing; an importer killed mid-import (SIGKILL of its worker) resumes from its
checkpoint without losing or duplicating a row."""

from __future__ import annotations

import csv
import io
import os
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from lambdas.core import comfort, registry
from localcloud import cloud as cloud_module
from localcloud.cloud import LocalCloud
from scripts import models
from tests.support.clouds import keyed, narrator, print_function_log, wait

ROWS = 12_000
COLUMNS = ("created", "temp", "rh", "wind", "clo", "label")
CREATED_MS = 1_767_225_600_000  # 2026-01-01
# (line in the file, the bad row, the field its rejection names); line 1 is the header.
BAD_ROWS = [
    (2, ["1767225600000", "hot", "50", "0.1", "0.5", "ok"], "temp"),
    (5_002, ["1767225600000", "75", "50", "0.1", "0.5", "tepid"], "label"),
    (11_999, ["1767225600000", "75", "250", "0.1", "0.5", "ok"], "rh"),
]
# The instance runner is off: a run is launched (its record, its EC2 call) but trains nothing,
# so no trainer competes with the import for the two cores.
DRIVERS = [d for d in cloud_module.DRIVER_MODULES if d != "instances"]


def write_csv(path: Path, rows: int, seed: int, bad: Sequence[tuple[int, list[str], str]] = ()) -> int:
    """``rows`` good samples as CSV, with ``bad`` rows put at their lines; the rows written."""
    samples = iter(comfort.generate(rows, seed, 0.05))
    at = {line: row for line, row, _ in bad}
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        line = 1
        for i in range(rows + len(bad)):
            line += 1
            if line in at:
                writer.writerow(at[line])
                continue
            sample = next(samples)
            sample["created"] = CREATED_MS + i * 60_000
            writer.writerow([sample[name] for name in COLUMNS])
    return rows + len(bad)


def cli_import(cloud: LocalCloud, path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    argv = ["import", str(path), "--api", cloud.api_url, "--api-key", cloud.api_key]
    with redirect_stdout(out), redirect_stderr(err):
        code = models.main([*argv, "--poll", "0.5", "--timeout", "600"])
    return code, out.getvalue(), err.getvalue()


def status(cloud: LocalCloud, import_id: str) -> dict[str, Any]:
    reply = requests.get(f"{cloud.api_url}/imports/{import_id}", headers=keyed(cloud), timeout=30)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def import_id_of(output: str) -> str:
    return next(word for word in output.split() if word.startswith("imp-"))


def count_items(cloud: LocalCloud) -> int:
    ddb = cloud.client("dynamodb")
    table = cloud.stack.physical["DataTable"]
    total, start = 0, None
    while True:
        page = ddb.scan(TableName=table, Select="COUNT", **({"ExclusiveStartKey": start} if start else {}))
        total += page["Count"]
        start = page.get("LastEvaluatedKey")
        if not start:
            return total


@dataclass
class Imported:
    cloud: LocalCloud
    log: Path
    file: Path
    lines: int
    first: dict[str, Any]
    output: str
    runs_during: list[dict[str, Any]]
    runs_after: list[dict[str, Any]]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Imported]:
    tmp = tmp_path_factory.mktemp("import")
    log = tmp / "functions.log"
    path = tmp / "history.csv"
    lines = write_csv(path, ROWS, 31, BAD_ROWS)
    cloud = LocalCloud(
        tmp / "state",
        function_log=log,
        web_dir=None,
        say=narrator(),
        drivers=DRIVERS,
        schedule_overrides={"traffic": {"enabled": False}},
        # Parts of 8 s instead of 20, so that 12,000 rows still take several parts.
        environment={"IMPORT_PART_S": "8"},
    )
    try:
        with cloud:
            reg = registry.Registry(cloud.stack.table_name("ModelTable"), cloud.client("dynamodb"))
            code, out, err = cli_import(cloud, path)
            assert code == 0, f"{out}\n{err}"
            runs_during, _ = reg.list_runs()
            first = status(cloud, import_id_of(out))
            # The train function's schedule (2 s locally) starts one run once the hold is gone.
            wait(lambda: reg.list_runs()[0], 30, "a run after the import")
            time.sleep(6)  # three more ticks: no second run
            runs_after, _ = reg.list_runs()
            yield Imported(cloud, log, path, lines, first, out, runs_during, runs_after)
    finally:
        print_function_log(log, 40)


@pytest.mark.slow
@pytest.mark.e2e
def test_import_e2e_every_row_accounted_for_and_bad_rows_reported_by_line(
    imported: Imported,
) -> None:
    first = imported.first
    assert first["status"] == "done" and first["format"] == "csv" and first["filename"] == "history.csv"
    assert first["rows_read"] == imported.lines == ROWS + len(BAD_ROWS)
    assert first["written"] + first["duplicates"] + first["rejected"] == first["rows_read"]
    assert (first["written"], first["duplicates"], first["rejected"]) == (ROWS, 0, len(BAD_ROWS))
    assert count_items(imported.cloud) == ROWS
    assert [(r["line"], r["field"]) for r in first["rejections"]] == [(line, f) for line, _, f in BAD_ROWS]
    assert all(r["reason"] for r in first["rejections"])
    assert first["progress"] == 1.0 and "cursor" not in first and "lease" not in first
    # What the CLI printed: the counts and the rejected rows by line.
    assert (
        f"{ROWS + len(BAD_ROWS):,} rows read, {ROWS:,} written, 0 duplicates, 3 rejected" in imported.output
    )
    assert "line 5002: label:" in imported.output


@pytest.mark.slow
@pytest.mark.e2e
def test_import_e2e_the_retraining_trigger_starts_one_run_after_the_import_not_one_per_part(
    imported: Imported,
) -> None:
    assert imported.runs_during == []
    [run] = imported.runs_after
    assert run["trigger"]["rule"] == "count"
    assert registry.epoch_ms(str(run["started_at"])) >= registry.epoch_ms(str(imported.first["finished_at"]))
    # The import took more than one part (IMPORT_PART_S locally), each a separate invocation.
    parts = [line for line in imported.log.read_text().splitlines() if '"import_part"' in line]
    assert len(parts) >= 2


@pytest.mark.slow
@pytest.mark.e2e
def test_import_e2e_the_same_file_again_writes_nothing(imported: Imported) -> None:
    before = count_items(imported.cloud)
    code, out, err = cli_import(imported.cloud, imported.file)
    assert code == 0, f"{out}\n{err}"
    again = status(imported.cloud, import_id_of(out))
    assert again["import_id"] != imported.first["import_id"]
    assert (again["written"], again["duplicates"], again["rejected"]) == (0, ROWS, len(BAD_ROWS))
    assert count_items(imported.cloud) == before


def _importer_workers(function: str) -> list[int]:
    """The pids of ``function``'s worker processes (their environment names the function)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"AWS_LAMBDA_FUNCTION_NAME={function}".encode() in environ:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.e2e
def test_import_e2e_a_killed_importer_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    rows = 8_000
    path = tmp_path / "killed.csv"
    write_csv(path, rows, 32)
    log = tmp_path / "functions.log"
    said: list[str] = []
    cloud = LocalCloud(
        tmp_path / "state",
        function_log=log,
        web_dir=None,
        say=narrator(said),
        drivers=DRIVERS,
        schedule_overrides={"traffic": {"enabled": False}},
        # One part for the whole file, so the kill lands inside an invocation (after its first
        # checkpoint), and a lease of 8 s, so the schedule resumes the killed import soon after.
        environment={"IMPORT_PART_S": "0", "IMPORT_LEASE_S": "8"},
    )
    try:
        with cloud:
            created = requests.post(
                f"{cloud.api_url}/imports",
                json={"format": "csv", "filename": path.name},
                headers=keyed(cloud),
                timeout=30,
            )
            assert created.status_code == 201, created.text
            import_id = created.json()["import_id"]
            models.upload(created.json()["upload"], path, path.stat().st_size)
            wait(lambda: status(cloud, import_id)["rows_read"] > 0, 60, "the import to start")
            killed = _importer_workers(cloud.function_name("importer"))
            assert killed, "no importer worker to kill"
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
            at_kill = status(cloud, import_id)
            assert at_kill["status"] == "importing" and at_kill["rows_read"] < rows
            done = wait(
                lambda: status(cloud, import_id)["status"] in ("done", "failed"), 240, "the import to end"
            )
            final = status(cloud, import_id)
            assert done and final["status"] == "done", final
            assert final["rows_read"] == rows
            assert (final["written"], final["duplicates"], final["rejected"]) == (rows, 0, 0)
            assert count_items(cloud) == rows
    finally:
        print_function_log(log, 40)
    # The local cloud saw the invocation die, as Lambda reports a runtime killed mid-invocation.
    assert any("importer" in line and "Runtime.ExitError" in line for line in said)
