"""How fresh the model is (figures, not assertions): ``make bench-fresh``.

On the local cloud, ``--samples`` labelled samples (100,000 by default) are posted by 8 clients
in requests of 500, with the retraining settings as they are: runs start and coalesce while
the data flows in, as they would under real traffic. Every request sends the default client's
API key, its usage plan lifted as ``scripts/bench_load.py`` lifts it. Measured: from the moment the last POST
was answered to the moment ``POST /infer`` answers with the first model trained on every
sample (the first run whose scan started after that moment), split into phases:

- **trigger**: the stream window and the train function, until that run's item exists (0 when
  the run was launched before the last POST and scanned after it);
- **launch to trainer**: the instance launch, user-data, CLI install, image pull, container and
  Python start (``ended_at - duration_s`` is the trainer's start);
- **scan**, **fit** (the run record's ``scan`` and ``fit``), **evaluate and publish** (the rest
  of the trainer's run: split, holdout scoring, export, upload, load check, gate, record);
- **to /infer**: the run's end to the prediction function answering with the version (its
  model cache refreshes every MODEL_REFRESH_S).

The local cloud's stand-ins take seconds where AWS takes longer (boot, ``dnf``, the pull): the
README's freshness table estimates those phases for AWS from documented figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from scripts import bench_load

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 8
INFER_ROWS = [{"temp": 70.0, "rh": 45, "wind": 0.1, "clo": 0.6}]


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _finished(cloud: Any, after_ms: int) -> dict[str, Any] | None:
    """The first run whose scan started at or after ``after_ms``, once it has ended."""
    from lambdas.core import registry

    table = cloud.stack.table_name("ModelTable")
    listed, _ = registry.Registry(table, cloud.client("dynamodb")).list_runs(limit=20)
    covering = [run for run in listed if int(run.get("scan_started_ms") or 0) >= after_ms]
    first = min(covering, key=lambda run: int(run["scan_started_ms"]), default=None)
    return first if first is not None and first["status"] in registry.FINAL_STATUSES else None


def _wait(what: str, check: Any, seconds: float, poll: float = 1.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"gave up after {seconds:g} s waiting for {what}")


def _infer_version(url: str, key: str) -> str | None:
    reply = requests.post(f"{url}/infer", json=INFER_ROWS, headers={"x-api-key": key}, timeout=60)
    return str(reply.json().get("version")) if reply.status_code == 200 else None


def run(total: int, deadline_s: float) -> dict[str, Any]:
    from localcloud.cloud import LocalCloud
    from scripts import demo_drift

    with tempfile.TemporaryDirectory(prefix="bench-fresh-") as tmp:
        said: list[str] = []
        cloud = LocalCloud(
            Path(tmp),
            schedule_overrides={"traffic": {"enabled": False}},
            function_log=Path(tmp) / "functions.log",
            web_dir=None,
            say=lambda line: said.append(f"{time.strftime('%H:%M:%S')} {line}"),
        )
        with cloud:
            key = demo_drift.api_key(cloud)
            bench_load.lift_usage_plan(cloud, key)
            print(
                f"posting {total:,} samples ({CLIENTS} clients, requests of {bench_load.FLOW_BATCH}) ...",
                flush=True,
            )
            began = time.time()
            results = bench_load._clients(
                cloud.api_url, key, "flow", CLIENTS, total // CLIENTS, seed=7, processes=2
            )
            posted = time.time()
            written = sum(r["written"] for r in results)
            # A request that was not answered 200 is not retried here (a client would): its
            # samples may or may not be in; the runs train on whatever is.
            failed = sorted(str(r.get("error") or r["status"]) for r in results if r["status"] != 200)
            print(
                f"  {written:,} written in {posted - began:.0f} s ({len(failed)} requests not answered 200: "
                f"{', '.join(sorted(set(failed))) or 'none'}); waiting for the run ...",
                flush=True,
            )
            try:
                run_item = _wait(
                    "the run to finish", lambda: _finished(cloud, int(posted * 1000)), deadline_s
                )
            except TimeoutError:
                print("\n".join(said[-40:]))
                raise
            version = str(run_item["version"])
            if run_item["status"] == "published":
                _wait(
                    "/infer to answer with the new version",
                    lambda: _infer_version(cloud.api_url, key) == version,
                    120,
                    0.2,
                )
            answered = time.time()
            if run_item["status"] != "published":
                print("\n".join(said[-40:]))
    created = _epoch(str(run_item["started_at"]))
    ended = _epoch(str(run_item["ended_at"]))
    trainer_start = ended - float(run_item["duration_s"])
    scan_s = float((run_item.get("scan") or {}).get("seconds", 0))
    fit_s = float((run_item.get("fit") or {}).get("seconds", 0))
    return {
        "samples_posted": written,
        "requests_not_answered_200": failed,
        "post_seconds": round(posted - began, 1),
        "run": {
            k: run_item.get(k) for k in ("version", "status", "sample_count", "epochs_run", "fit", "scan")
        },
        "holdout_accuracy": ((run_item.get("metrics") or {}).get("holdout") or {}).get("accuracy"),
        "phases_s": {
            "trigger": round(max(0.0, created - posted), 1),
            "launch to trainer": round(trainer_start - max(created, posted), 1),
            "scan": round(scan_s, 1),
            "fit": round(fit_s, 1),
            "evaluate and publish": round(ended - trainer_start - scan_s - fit_s, 1),
            "to /infer": round(answered - ended, 1),
        },
        # Only a published model answers /infer: otherwise there is no freshness to report.
        "freshness_s": round(answered - posted, 1) if run_item["status"] == "published" else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_fresh", description=__doc__)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--deadline", type=float, default=1800.0, help="seconds to wait for the run")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench-fresh.json")
    args = parser.parse_args(argv)
    report = run(args.samples, args.deadline)
    done = report["run"]
    print(f"\nrun {done['version']}: {done['status']}, {done['sample_count']:,} samples, ", end="")
    print(f"holdout accuracy {report['holdout_accuracy']}")
    for phase, seconds in report["phases_s"].items():
        print(f"  {phase:<22} {seconds:>8.1f} s")
    if report["freshness_s"] is not None:
        print(f"  {'POST to /infer':<22} {report['freshness_s']:>8.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0 if report["run"]["status"] == "published" else 1


if __name__ == "__main__":
    raise SystemExit(main())
