"""The trainer's scan of a large data table on the local AWS endpoint, with ``localcloud/fastscan.py``
and with moto's own Scan (figures, not assertions): ``python -m scripts.bench_scan``.

For each, a local AWS endpoint of its own (``localcloud.awsserver``, memory only, ``--moto-scan``
for moto's), the data table as ``infra/serverless.yml`` declares it, ``--items`` samples made as
the upload function makes them (synthetic traffic, keys and items from ``lambdas/core``)
written with BatchWriteItem (25 per call, 8 threads), then two scans timed: ``trainer.data.scan``
(4 segments in parallel, ConsistentRead, ProjectionExpression, pages followed to the end) and
the same pages with ``Select=COUNT``, which leaves out what every page costs after the scan
itself (moto's projection and its serialization of the items into the answer).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config

from lambdas.core import comfort, ingest
from lambdas.core.samples import item_keys, parse_samples
from localcloud import infra
from localcloud.awsserver import AwsServer
from trainer import data

REGION = "us-east-1"
WRITERS = 8


def sample_items(n: int) -> list[dict[str, Any]]:
    """``n`` data table items, in batches of 500 as the upload function would write them."""
    items: list[dict[str, Any]] = []
    for start in range(0, n, 500):
        payload = comfort.generate(min(500, n - start), start, 0.05)
        now = int(time.time() * 1000)
        samples = parse_samples(payload, now_ms=now, max_samples=500)
        items += ingest.to_items(samples, item_keys(samples), ingested_ms=now, source="api")
    return items


def _client(url: str) -> Any:
    # moto's own scan answers a page of a large table in seconds: no timeout should end it
    return boto3.client(
        "dynamodb",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(read_timeout=3600, retries={"max_attempts": 1}),
    )


def measure(items: list[dict[str, Any]], *, moto_scan: bool) -> dict[str, float]:
    table = infra.load(stage="bench", region=REGION).resources["DataTable"]["Properties"]
    server = AwsServer(moto_scan=moto_scan).start()
    try:
        client = _client(server.url)
        client.create_table(
            TableName="samples",
            KeySchema=table["KeySchema"],
            AttributeDefinitions=table["AttributeDefinitions"],
            BillingMode="PAY_PER_REQUEST",
        )

        def write(start: int) -> None:
            batch = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
            assert not client.batch_write_item(RequestItems={"samples": batch})["UnprocessedItems"]

        began = time.perf_counter()
        with ThreadPoolExecutor(WRITERS) as pool:
            list(pool.map(write, range(0, len(items), 25)))
        written = time.perf_counter() - began
        timed = _TimedScans(client)
        began = time.perf_counter()
        scanned = data.scan("samples", timed, segments=4)
        seconds = time.perf_counter() - began
        assert len(scanned) == len(items), f"scanned {len(scanned)} of {len(items)}"
        began = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            pages = sum(pool.map(lambda segment: _count_pages(client, segment, 4), range(4)))
        return {
            "write_s": written,
            "scan_s": seconds,
            "slowest_page_s": max(timed.seconds),
            "count_s": time.perf_counter() - began,
            "pages": pages,
        }
    finally:
        server.stop()


class _TimedScans:
    """The client as ``trainer.data.scan`` uses it, timing each page: a page slower than the
    trainer's read timeout (30 s, ``lambdas/core/aws.py``) is a ReadTimeoutError."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.seconds: list[float] = []

    def scan(self, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return self.client.scan(**kwargs)
        finally:
            self.seconds.append(time.perf_counter() - began)


def _count_pages(client: Any, segment: int, segments: int) -> int:
    kwargs: dict[str, Any] = {"TableName": "samples", "Segment": segment, "TotalSegments": segments}
    pages = 0
    while True:
        page = client.scan(Select="COUNT", ConsistentRead=True, **kwargs)
        pages += 1
        if "LastEvaluatedKey" not in page:
            return pages
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_scan", description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--skip-moto", action="store_true", help="measure fastscan only")
    args = parser.parse_args(argv)
    items = sample_items(args.items)
    print(f"{len(items):,} samples; a full 4-segment scan (trainer.data.scan) on the local AWS endpoint")
    for name, moto_scan in (("fastscan", False), ("moto's scan", True)):
        if moto_scan and args.skip_moto:
            continue
        f = measure(items, moto_scan=moto_scan)
        print(
            f"  {name:<12} trainer's scan {f['scan_s']:6.1f} s (slowest page {f['slowest_page_s']:5.1f} s)"
            f"   the same {f['pages']} pages, COUNT only {f['count_s']:6.1f} s"
            f"   (written in {f['write_s']:.1f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
