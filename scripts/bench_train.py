"""What a retrain costs as the table grows (figures, not assertions): ``make bench-train``.

For 1,000, 10,000, 100,000 and 1,000,000 samples of the project's generator (the same data for
both), two trainers are measured, each in a fresh process so that its peak memory is its own:

- **old**: the settings before the training budget: every item kept as boto3 dictionaries
  until the scan ends, then decoded; 100 epochs at batch 32 (early stopping, patience 20);
- **new**: the trainer as it is: pages decoded into column arrays as they arrive
  (``trainer.data``), the fit planned within its step and time budget (``trainer.model``).

Each process scans, splits (holdout by id hash), fits and scores the holdout: the trainer's
work short of export and publish, which do not depend on the table's size. Every size is read
from an in-memory table that answers Scan pages of DynamoDB's shape and size (JSON text parsed
per page, as boto3 parses a response): those figures measure the decode, not a network, and
the slopes are computed from them. Up to 100,000 samples the same data is also read from a
data table on the local cloud's AWS endpoint (moto behind the gate, in its own process, over
HTTP, strongly consistent); writing a million items through moto would take longer than
everything else here. Memory is the peak resident memory above what the process held before
the scan (the in-memory table's text included there), after the scan ("scan", before
TensorFlow is imported) and over the whole run ("peak", TensorFlow's ~550 MB included). The
old fit stops after ``--old-fit-cap`` seconds: its full time is projected from the epochs it
ran (marked ``~``).

Output: a table on stdout, ``artifacts/bench-train.json`` and the plot
``docs/bench-train.png`` (time and memory against samples, log-log), with the slope of each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SIZES = (1_000, 10_000, 100_000, 1_000_000)
LOCAL_CLOUD_UP_TO = 100_000
NOISE = 0.05
SEED = 11
TABLE = "bench-samples"
PAGE_BYTES = 1024 * 1024  # a Scan page is at most 1 MB (Scan API reference)
MEMORY, LOCAL = "in memory", "local cloud"


# --- the data ------------------------------------------------------------------------------------


CHUNK = 50_000


def write_rows(n: int, path: Path) -> Path:
    """``n`` data-table items as DynamoDB's wire format has them (the upload's attributes), one
    JSON line each, generated in chunks so that no process holds them all as dictionaries."""
    import numpy as np

    from lambdas.core import comfort

    rng = np.random.default_rng(SEED)
    with path.open("w") as out:
        for start in range(0, n, CHUNK):
            samples = comfort.generate(min(CHUNK, n - start), rng, NOISE, now_ms=1_790_000_000_000)
            for i, sample in enumerate(samples, start=start):
                sample_id = "s-" + hashlib.sha256(f"{SEED}:{i}".encode()).hexdigest()[:40]
                item = {"id": {"S": sample_id}, "label": {"S": sample["label"]}, "source": {"S": "api"}}
                for name in ("temp", "rh", "wind", "clo", "created"):
                    item[name] = {"N": str(sample[name])}
                item["ingested"] = {"N": str(sample["created"])}
                out.write(json.dumps(item) + "\n")
    return path


def read_rows(path: Path) -> list[str]:
    """The file's lines, read one at a time (never the whole file as one string: that would be
    the process's peak and hide what the scan adds)."""
    with path.open() as lines:
        return [line.rstrip("\n") for line in lines]


class MemoryTable:
    """A table answering Scan like DynamoDB: segments by key hash, pages of at most 1 MB (or
    Limit items), LastEvaluatedKey; each page's items are fresh dictionaries, as boto3 parses
    them."""

    def __init__(self, rows: list[str]) -> None:
        self.rows = rows  # JSON text, as on the wire: parsed for each page
        self.size = len(rows[0]) if rows else 1

    def scan(self, **kwargs: Any) -> dict[str, Any]:
        segment, total = kwargs.get("Segment", 0), kwargs.get("TotalSegments", 1)
        start = int(kwargs.get("ExclusiveStartKey", {}).get("at", {}).get("N", segment))
        per_page = min(max(1, PAGE_BYTES // self.size), int(kwargs.get("Limit") or 10**9))
        index = range(start, len(self.rows), total)[:per_page]
        page: dict[str, Any] = {"Items": [json.loads(self.rows[i]) for i in index]}
        if len(index) == per_page and index[-1] + total < len(self.rows):
            page["LastEvaluatedKey"] = {"at": {"N": str(index[-1] + total)}}
        return page

    def describe_table(self, **kwargs: Any) -> dict[str, Any]:
        return {"Table": {"TableSizeBytes": self.size * len(self.rows)}}


def fill_local_table(endpoint: str, path: Path) -> None:
    client = _client(endpoint)
    client.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )

    rows = read_rows(path)

    def write(start: int) -> None:
        batch = [{"PutRequest": {"Item": json.loads(row)}} for row in rows[start : start + 25]]
        while batch:
            reply = client.batch_write_item(RequestItems={TABLE: batch})
            batch = reply.get("UnprocessedItems", {}).get(TABLE, [])

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, range(0, len(rows), 25)))


def _client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(read_timeout=300, retries={"mode": "standard", "max_attempts": 5}),
    )


# --- one measurement (its own process) --------------------------------------------------------------


def measure(variant: str, rows: Path, endpoint: str | None, old_fit_cap_s: float) -> dict[str, Any]:
    from trainer import data
    from trainer.config import HyperParameters

    client: Any = _client(endpoint) if endpoint else MemoryTable(read_rows(rows))
    rss_before = _rss_mb()
    started = time.monotonic()
    if variant == "old":
        samples = data.to_samples(_scan_keeping_items(client, segments=4))
        segments = 4
    else:
        segments = data.segments_for(data.table_bytes(TABLE, client))
        samples = data.load(TABLE, client, segments)
    scan_s = time.monotonic() - started
    scan_peak = _rss_mb()  # before TensorFlow is imported: what the scan and its decode keep
    from trainer import model as net

    hyper = HyperParameters()
    parts = data.split(samples, holdout_percent=10, validation_fraction=hyper.validation_fraction, seed=42)
    fit_started = time.monotonic()
    if variant == "old":
        fit = _old_fit(parts, old_fit_cap_s)
    else:
        result = net.train(parts.train, parts.validation, hyper)
        steps = result.epochs_run * result.plan.steps_per_epoch
        fit = {
            "model": result.model,
            "epochs": result.epochs_run,
            "batch": result.plan.batch_size,
            "steps": steps,
        }
    fit_s = fit.get("projected_s", time.monotonic() - fit_started)
    score_started = time.monotonic()
    holdout = net.metrics(net.predict(net.fold_normalization(fit["model"]), parts.holdout.x), parts.holdout.y)
    total_s = scan_s + fit_s + (time.monotonic() - score_started)
    return {
        "variant": variant,
        "samples": len(samples),
        "source": LOCAL if endpoint else MEMORY,
        "segments": segments,
        "scan_s": round(scan_s, 2),
        "fit_s": round(fit_s, 2),
        "total_s": round(total_s, 2),
        "fit_projected": "projected_s" in fit,
        "epochs": fit["epochs"],
        "batch": fit["batch"],
        "steps": fit["steps"],
        # Memory above what the process held before the scan (the in-memory table at 1M).
        "scan_peak_mb": round(scan_peak - rss_before, 1),
        "peak_rss_mb": round(_rss_mb() - rss_before, 1),
        "rss_before_mb": rss_before,
        "holdout_accuracy": holdout["accuracy"],
        "holdout_count": holdout["count"],
    }


def _scan_keeping_items(client: Any, segments: int) -> list[dict[str, Any]]:
    """The scan as it was: every page's items kept until the last page, then decoded."""
    kept: list[list[dict[str, Any]]] = [[] for _ in range(segments)]

    def read(segment: int) -> None:
        kwargs: dict[str, Any] = {"TableName": TABLE, "Segment": segment, "TotalSegments": segments}
        while True:
            page = client.scan(ConsistentRead=True, **kwargs)
            kept[segment].extend(page.get("Items", []))
            if not page.get("LastEvaluatedKey"):
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    with ThreadPoolExecutor(max_workers=segments) as pool:
        list(pool.map(read, range(segments)))
    return [item for part in kept for item in part]


def _old_fit(parts: Any, cap_s: float) -> dict[str, Any]:
    """100 epochs at batch 32, constant learning rate, early stopping (patience 20), as before;
    stopped after ``cap_s`` and projected to where it would have ended (the measured time per
    epoch times the epochs left, up to 100: early stopping could end it sooner, so the
    projection is an upper bound)."""
    from trainer import model as net
    from trainer.config import HyperParameters
    from trainer.data import one_hot

    hyper = HyperParameters(batch_size=32, step_budget=10**9, fit_budget_s=cap_s)
    model = net.build_model(parts.train.x.mean(axis=0), parts.train.x.var(axis=0), hyper)
    stopper = net.keras.callbacks.EarlyStopping(monitor="val_loss", patience=20, restore_best_weights=True)
    budget = net.TimeBudget(cap_s)
    started = time.monotonic()
    history = model.fit(
        parts.train.x,
        one_hot(parts.train.y),
        validation_data=(parts.validation.x, one_hot(parts.validation.y)),
        epochs=100,
        batch_size=32,
        shuffle=True,
        verbose=0,
        callbacks=[stopper, budget],
    )
    seconds = time.monotonic() - started
    epochs = len(history.history["loss"])
    steps = epochs * math.ceil(len(parts.train) / 32)
    out: dict[str, Any] = {"model": model, "epochs": epochs, "batch": 32, "steps": steps}
    if budget.reached and not stopper.stopped_epoch:
        out.update(projected_s=seconds / epochs * 100, steps=100 * math.ceil(len(parts.train) / 32))
    return out


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def one_main(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging

    logging.getLogger("autoretrain").setLevel(logging.WARNING)
    print(json.dumps(measure(args.variant, args.rows, args.endpoint, args.old_fit_cap)), flush=True)
    return 0


# --- the run ---------------------------------------------------------------------------------------


def run(sizes: tuple[int, ...], old_fit_cap_s: float, say: Any = print) -> list[dict[str, Any]]:
    from localcloud.awsserver import AwsServer

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for n in sizes:
            rows = write_rows(n, Path(tmp) / f"{n}.jsonl")
            server = None
            endpoint = None
            if n <= LOCAL_CLOUD_UP_TO:
                server = AwsServer().start()
                endpoint = server.url
                started = time.monotonic()
                fill_local_table(endpoint, rows)
                say(f"{n:>9,} samples written to the local cloud in {time.monotonic() - started:.1f} s")
            try:
                for source in (None, endpoint) if endpoint else (None,):
                    for variant in ("old", "new"):
                        say(f"{n:>9,} samples: {variant} trainer, {LOCAL if source else MEMORY} ...")
                        results.append(_measure_in_process(variant, rows, source, old_fit_cap_s))
                        say("           " + _row(results[-1]))
            finally:
                if server is not None:
                    server.stop()
    return results


def _measure_in_process(variant: str, rows: Path, endpoint: str | None, cap: float) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "scripts.bench_train",
        "one",
        variant,
        str(rows),
        "--old-fit-cap",
        str(cap),
    ]
    if endpoint:
        command += ["--endpoint", endpoint]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} on {rows.name}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


HEADER = (
    f"{'samples':>9}  {'trainer':<7} {'source':<11} {'seg':>3} {'scan s':>7} {'fit s':>8} {'total s':>8} "
    f"{'epochs':>6} {'batch':>5} {'steps':>7} {'scan MB':>8} {'peak MB':>8} {'holdout':>7}"
)


def _row(r: dict[str, Any]) -> str:
    mark = "~" if r["fit_projected"] else " "
    return (
        f"{r['samples']:>9,}  {r['variant']:<7} {r['source']:<11} {r['segments']:>3} {r['scan_s']:>7.2f} "
        f"{mark}{r['fit_s']:>7.1f} {mark}{r['total_s']:>7.1f} {r['epochs']:>6} {r['batch']:>5} "
        f"{r['steps']:>7,} {r['scan_peak_mb']:>8.0f} {r['peak_rss_mb']:>8.0f} {r['holdout_accuracy']:>7.3f}"
    )


def slope(results: list[dict[str, Any]], variant: str, key: str, source: str = MEMORY) -> float | None:
    """The exponent b of key ~ samples**b, by least squares on the logs (1.0: linear), over the
    measurements of one source (the in-memory one has every size)."""
    rows = [r for r in results if r["variant"] == variant and r["source"] == source and r[key] > 0]
    points = [(math.log(r["samples"]), math.log(r[key])) for r in rows]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else None


def report(results: list[dict[str, Any]]) -> str:
    lines = [HEADER, *(_row(r) for r in results), ""]
    lines.append("How each grows with the samples, read from an in-memory table at every size")
    lines.append("(exponent b of samples**b; 1 is linear, 0 flat):")
    for key in ("scan_s", "fit_s", "total_s", "scan_peak_mb", "peak_rss_mb"):
        old, new = slope(results, "old", key), slope(results, "new", key)
        lines.append(f"  {key:<12} old {_fmt(old)}   new {_fmt(new)}")
    lines.append(
        "~: the old fit was stopped and its full time projected (an upper bound: see the docstring)."
    )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.2f}"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant, style in (("old", "o--"), ("new", "s-")):
        rows = [r for r in results if r["variant"] == variant and r["source"] == MEMORY]
        n = [r["samples"] for r in rows]
        time_ax.plot(n, [r["total_s"] for r in rows], style, label=f"{variant}: scan + fit + score")
        time_ax.plot(n, [r["scan_s"] for r in rows], style, alpha=0.45, label=f"{variant}: scan")
        local = [r for r in results if r["variant"] == variant and r["source"] == LOCAL]
        time_ax.plot(
            [r["samples"] for r in local],
            [r["scan_s"] for r in local],
            style[0],
            mfc="none",
            label=f"{variant}: scan through the local cloud",
        )
        memory_ax.plot(n, [r["peak_rss_mb"] for r in rows], style, label=f"{variant}: whole run")
        memory_ax.plot(
            n, [max(r["scan_peak_mb"], 1) for r in rows], style, alpha=0.45, label=f"{variant}: scan"
        )
    time_ax.axhline(1800, color="grey", linewidth=0.8)
    time_ax.text(1000, 1900, "time limit (1,800 s)", fontsize=8, color="grey")
    memory_ax.set_title("memory added by the run (RSS; 1 MB: none)")
    for ax, title, unit in ((time_ax, "time per retrain", "seconds"), (memory_ax, "", "MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("samples in the table")
        ax.set_ylabel(unit)
        if title:
            ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is time_ax else "upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_train", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("one", help="one measurement (run by the benchmark in a process of its own)")
    one.add_argument("variant", choices=("old", "new"))
    one.add_argument("rows", type=Path, help="a file of items, one JSON line each")
    one.add_argument("--endpoint", default=None)
    one.add_argument("--old-fit-cap", type=float, default=300.0)
    parser.add_argument(
        "--sizes", default=",".join(str(n) for n in SIZES), help="comma-separated sample counts"
    )
    parser.add_argument("--old-fit-cap", type=float, default=300.0, help="seconds the old fit may run")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench-train.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench-train.png")
    args = parser.parse_args(argv)
    if args.command == "one":
        return one_main(args)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    print(f"bench-train: {', '.join(f'{n:,}' for n in sizes)} samples, old and new trainer, one process each")
    results = run(sizes, args.old_fit_cap)
    text = report(results)
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "report": text}, indent=2) + "\n")
    plot(results, args.plot)
    print(
        f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out} and {args.plot}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
