"""Bulk import against ``POST /upload`` on the local cloud (figures, not assertions):
``python -m scripts.bench_import`` (``make bench-import``).

One local cloud (the instance runner off, so no retrain competes for the two cores; the traffic
schedule off), one file of ``--rows`` (100,000) seeded samples as CSV (and a tenth of it first,
for the memory comparison):

1. **Import**: the CLI's own steps (``scripts/models.py``: ``POST /imports``, the streamed upload
   to the presigned POST, ``GET /imports/{id}`` every 0.2 s until ``done``). Rows per second
   from the start of the upload to ``done``, and the time from the end of the upload to
   ``done`` (the S3 event's delivery, the digest pass, the import).
2. **The importer's peak memory**: the highest ``peak_rss_mb`` of its ``import_part`` log lines
   (the worker process's maximum resident set, ``getrusage``), for the tenth-size file and the
   whole one: streaming keeps it flat as the file grows.
3. **The same rows through ``POST /upload``**: ``--per-request`` (1,000) samples a request,
   ``--clients`` (8) at once, as a user would cut the file, a request answered 503 sent again
   (as the answer says is safe). Rows per second, against (1). At the API's limit of 5,000 a
   request, 8 clients make each request outlast the function here (503 "ran out of time").
4. **Re-import** of the same file: written must be 0; its time.
"""

from __future__ import annotations

import argparse
import csv
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import requests

from lambdas.core import comfort
from localcloud import cloud as cloud_module
from localcloud.cloud import LocalCloud
from scripts import demo_drift, models

SEED = 17
COLUMNS = ("created", "temp", "rh", "wind", "clo", "label")
CREATED_MS = 1_767_225_600_000  # 2026-01-01: a year of history before the run


def write_csv(path: Path, rows: int, seed: int = SEED) -> list[dict[str, Any]]:
    """``rows`` samples as CSV at ``path`` (one ``created`` per minute); the samples."""
    samples = comfort.generate(rows, seed, 0.05)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for i, sample in enumerate(samples):
            sample["created"] = CREATED_MS + i * 60_000
            writer.writerow([sample[name] for name in COLUMNS])
    return samples


def import_file(api: str, key: str, path: Path) -> dict[str, Any]:
    """The CLI's steps, timed: the final status with ``upload_s``, ``after_upload_s``, ``total_s``."""
    headers = {"x-api-key": key}  # POST /imports and GET /imports/{id} are private routes
    started = time.perf_counter()
    reply = requests.post(
        f"{api}/imports", json={"format": "csv", "filename": path.name}, headers=headers, timeout=30
    )
    reply.raise_for_status()
    created = reply.json()
    models.upload(created["upload"], path, path.stat().st_size)
    uploaded = time.perf_counter()
    while True:
        status = requests.get(created["status_url"], headers=headers, timeout=30).json()
        if status["status"] in ("done", "failed"):
            break
        time.sleep(0.2)
    done = time.perf_counter()
    return {
        **status,
        "upload_s": uploaded - started,
        "after_upload_s": done - uploaded,
        "total_s": done - started,
    }


def upload_all(
    api: str, key: str, samples: list[dict[str, Any]], clients: int, per_request: int = 5000
) -> tuple[float, int]:
    """Seconds to send ``samples`` through ``POST /upload``, ``per_request`` a request, ``clients``
    at once, and how many requests were sent again after a 503 (which says resending is safe)."""
    chunks = [samples[i : i + per_request] for i in range(0, len(samples), per_request)]
    resent = 0
    lock = threading.Lock()

    def send(chunk: list[dict[str, Any]]) -> None:
        nonlocal resent
        for _ in range(10):
            reply = requests.post(f"{api}/upload", json=chunk, headers={"x-api-key": key}, timeout=120)
            if reply.status_code == 200:
                return
            if reply.status_code != 503:
                break
            with lock:
                resent += 1
        raise RuntimeError(f"POST /upload answered {reply.status_code}: {reply.text[:200]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, chunks))
    return time.perf_counter() - started, resent


def peak_memory(log: Path, import_id: str) -> float | None:
    """The highest ``peak_rss_mb`` the importer logged for ``import_id``."""
    peaks = []
    for line in log.read_text().splitlines():
        if '"import_part"' not in line or import_id not in line:
            continue
        record = json.loads(line)
        if record.get("event") == "import_part" and record.get("import_id") == import_id:
            peaks.append(float(record["peak_rss_mb"]))
    return max(peaks) if peaks else None


def print_nothing(line: str) -> None:
    """The local cloud's narration, silenced: the figures are the output."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_import", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the file (default 100,000)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent POST /upload clients (default 8)")
    parser.add_argument(
        "--per-request", type=int, default=1000, help="samples per POST /upload (default 1,000)"
    )
    args = parser.parse_args(argv)

    drivers = [d for d in cloud_module.DRIVER_MODULES if d != "instances"]
    with TemporaryDirectory(prefix="bench-import-") as tmp:
        root = Path(tmp)
        log = root / "functions.log"
        small, whole = root / "tenth.csv", root / "history.csv"
        write_csv(small, args.rows // 10, SEED + 1)
        samples = write_csv(whole, args.rows)
        print(f"file: {args.rows:,} rows, {whole.stat().st_size / 1e6:.1f} MB of CSV", flush=True)
        options = {"schedule_overrides": {"traffic": {"enabled": False}}}
        with LocalCloud(
            root / "state", function_log=log, web_dir=None, say=print_nothing, drivers=drivers, **options
        ) as cloud:
            api, key = cloud.api_url, demo_drift.api_key(cloud)
            first = import_file(api, key, small)
            got = import_file(api, key, whole)
            again = import_file(api, key, whole)
            upload_s, resent = upload_all(api, key, samples, args.clients, args.per_request)
            peaks = (peak_memory(log, first["import_id"]), peak_memory(log, got["import_id"]))

    accounted = got["written"] + got["duplicates"] + got["rejected"]
    rate_import = got["rows_read"] / got["total_s"]
    rate_upload = len(samples) / upload_s
    print(f"\n1. import of {args.rows:,} rows: {got['status']}, {got['rows_read']:,} read")
    print(
        f"   = {got['written']:,} written + {got['duplicates']:,} duplicates + {got['rejected']:,} rejected "
        f"({accounted:,} accounted for)"
    )
    print(
        f"   {got['total_s']:.1f} s from the start of the upload to done: {rate_import:,.0f} rows/s; "
        f"upload {got['upload_s']:.1f} s, end of upload to done {got['after_upload_s']:.1f} s"
    )
    print(
        f"2. importer peak memory (worker max RSS): {peaks[0]} MB after {args.rows // 10:,} rows, "
        f"{peaks[1]} MB after {args.rows:,}"
    )
    print(
        f"3. POST /upload, {args.clients} clients, {args.per_request:,} a request: {upload_s:.1f} s, "
        f"{rate_upload:,.0f} rows/s ({resent} requests sent again after a 503); "
        f"the import is {rate_import / rate_upload:.2f}x that"
    )
    print(
        f"4. re-import: {again['status']}, written {again['written']:,}, duplicates {again['duplicates']:,} "
        f"in {again['total_s']:.1f} s"
    )
    return 0 if got["status"] == "done" and accounted == got["rows_read"] == args.rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
