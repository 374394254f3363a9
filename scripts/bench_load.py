"""Load on the local cloud (figures, not assertions): ``make bench-load``.

1. **Bursts**: 50, 100 and 200 clients post 200 samples each at the same moment. Counted:
   requests answered 200, errors (resets, timeouts, other statuses), samples in the table
   after the burst against samples sent.
2. **Flow**: 100,000 samples posted by 8 clients in requests of 500, as fast as the API takes
   them, while a probe asks ``GET /models?limit=5`` every 0.25 s. Measured: samples/s
   ingested, the stream's iterator age (how old a record is when the train function gets it,
   as Lambda's IteratorAge) p50/p99/max, ``GET /models`` p50/p99/max, samples lost.

The clients run in processes of their own (``python -m scripts.bench_load client``), so the
local cloud's API front does not share its interpreter with them. They all send the default
client's API key (``x-api-key``, from the local cloud's endpoints.json). Retraining is held back
(MIN_NEW_SAMPLES huge), and so is that key's usage plan (its throttle and quota lifted, as
``aws apigateway update-usage-plan`` would): this measures ingestion, not the plan's limits.
Results: a table on stdout and ``artifacts/bench-load.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
BURSTS = (50, 100, 200)
BURST_SAMPLES = 200
FLOW_TOTAL = 100_000
FLOW_CLIENTS = 8
FLOW_BATCH = 500
# The default client's plan, lifted for the benchmark: one key sends every request.
UNLIMITED = "1000000000"


# --- the client side (its own process) ----------------------------------------------------------


def client_main(args: argparse.Namespace) -> int:
    import warnings

    from lambdas.core import comfort

    warnings.filterwarnings("ignore")  # pythermalcomfort warns about out-of-range PMV values

    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    start_at = float(args.start_at)
    headers = {"x-api-key": args.api_key}

    def burst_client(index: int) -> None:
        samples = comfort.generate(args.samples, args.seed * 100_003 + index, 0.05)
        time.sleep(max(0.0, start_at - time.time()))
        began = time.perf_counter()
        try:
            reply = requests.post(f"{args.url}/upload", json=samples, headers=headers, timeout=120)
            outcome = {
                "status": reply.status_code,
                "written": reply.json().get("written", 0) if reply.ok else 0,
            }
        except requests.RequestException as err:
            outcome = {"status": None, "error": type(err).__name__, "written": 0}
        outcome["seconds"] = time.perf_counter() - began
        with lock:
            results.append(outcome)

    def flow_client(index: int) -> None:
        sent = 0
        batch_no = 0
        while sent < args.samples:
            n = min(FLOW_BATCH, args.samples - sent)
            samples = comfort.generate(n, args.seed * 1_000_003 + index * 10_007 + batch_no, 0.05)
            batch_no += 1
            began = time.perf_counter()
            try:
                reply = requests.post(f"{args.url}/upload", json=samples, headers=headers, timeout=120)
                outcome = {
                    "status": reply.status_code,
                    "written": reply.json().get("written", 0) if reply.ok else 0,
                }
            except requests.RequestException as err:
                outcome = {"status": None, "error": type(err).__name__, "written": 0}
            outcome["seconds"] = time.perf_counter() - began
            outcome["sent"] = n
            with lock:
                results.append(outcome)
            sent += n

    target = burst_client if args.mode == "burst" else flow_client
    threads = [threading.Thread(target=target, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(results))
    return 0


def _clients(
    url: str, key: str, mode: str, clients: int, samples: int, seed: int, processes: int
) -> list[dict[str, Any]]:
    start_at = time.time() + 3.0  # every client process ready before the burst
    per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "scripts.bench_load", "client", "--url", url, "--mode", mode),
                *("--api-key", key),
                *("--clients", str(n), "--samples", str(samples), "--seed", str(seed * 10 + i)),
                *("--start-at", str(start_at)),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i, n in enumerate(per)
        if n
    ]
    out: list[dict[str, Any]] = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=3600)
        out += json.loads(stdout)
    return out


# --- the orchestrator ---------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _count(cloud: Any) -> int:
    ddb = cloud.client("dynamodb")
    table = cloud.stack.table_name("DataTable")
    total, kwargs = 0, {"TableName": table, "Select": "COUNT"}
    while True:
        page = ddb.scan(**kwargs)
        total += int(page["Count"])
        if "LastEvaluatedKey" not in page:
            return total
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def lift_usage_plan(cloud: Any, key: str) -> None:
    """Lift the throttle and quota of the usage plan that holds ``key`` (UpdateUsagePlan's
    replace operations on /throttle/rateLimit, /throttle/burstLimit and /quota/limit: API Gateway
    REST API Reference, UpdateUsagePlan and PatchOperation); the local cloud's gateway reads
    plans from the AWS endpoint, so it applies at once."""
    apigateway = cloud.client("apigateway")
    key_ids = [k["id"] for k in apigateway.get_api_keys(includeValues=True)["items"] if k.get("value") == key]
    if not key_ids:
        raise RuntimeError("the default client's API key is not among the local cloud's API Gateway keys")
    plans = apigateway.get_usage_plans(keyId=key_ids[0])["items"]
    if not plans:
        raise RuntimeError("the default client's API key is in no usage plan")
    for plan in plans:
        apigateway.update_usage_plan(
            usagePlanId=plan["id"],
            patchOperations=[
                {"op": "replace", "path": path, "value": UNLIMITED}
                for path in ("/throttle/rateLimit", "/throttle/burstLimit", "/quota/limit")
            ],
        )


def run(total: int, bursts: tuple[int, ...]) -> dict[str, Any]:
    from localcloud.cloud import LocalCloud
    from scripts import demo_drift

    report: dict[str, Any] = {"bursts": [], "flow": {}}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        cloud = LocalCloud(
            Path(tmp),
            schedule_overrides={"traffic": {"enabled": False}},
            environment={"MIN_NEW_SAMPLES": "1000000000"},
            drivers=("streams",),
            function_log=Path(tmp) / "functions.log",
            web_dir=None,
            say=lambda line: None,
        )
        with cloud:
            key = demo_drift.api_key(cloud)
            lift_usage_plan(cloud, key)
            streams = next(d for d in cloud.drivers if d.name == "streams")
            for seed, clients in enumerate(bursts, start=1):
                before = _count(cloud)
                results = _clients(cloud.api_url, key, "burst", clients, BURST_SAMPLES, seed, processes=4)
                # A request API Gateway gave up on (504 after 29 s) runs on in its function, as
                # in AWS: count once the table stops growing.
                landed, stable_since, give_up = -1, time.monotonic(), time.monotonic() + 120
                while time.monotonic() - stable_since < 3 and time.monotonic() < give_up:
                    now = _count(cloud) - before
                    if now != landed:
                        landed, stable_since = now, time.monotonic()
                    time.sleep(0.5)
                ok = sum(1 for r in results if r["status"] == 200)
                row = {
                    "clients": clients,
                    "answered_200": ok,
                    "errors": len(results) - ok,
                    "error_kinds": sorted(
                        {str(r.get("error") or r["status"]) for r in results if r["status"] != 200}
                    ),
                    "samples_sent": clients * BURST_SAMPLES,
                    "samples_in_table": landed,
                    "lost": clients * BURST_SAMPLES - landed,
                    "p99_request_s": _percentile([r["seconds"] for r in results], 0.99),
                }
                report["bursts"].append(row)
                print(f"burst of {clients}: {row}", flush=True)

            before = _count(cloud)
            streams.iterator_ages.clear()
            probe: list[float] = []
            probe_errors: list[str] = []
            stop = threading.Event()

            def probing() -> None:
                while not stop.wait(0.25):
                    began = time.perf_counter()
                    try:
                        ok = requests.get(f"{cloud.api_url}/models?limit=5", timeout=60).status_code == 200
                        if not ok:
                            probe_errors.append("status")
                    except requests.RequestException as err:
                        probe_errors.append(type(err).__name__)
                    probe.append(time.perf_counter() - began)

            prober = threading.Thread(target=probing)
            prober.start()
            began = time.perf_counter()
            results = _clients(
                cloud.api_url, key, "flow", FLOW_CLIENTS, total // FLOW_CLIENTS, 99, processes=2
            )
            ingest_s = time.perf_counter() - began
            sent = sum(r.get("sent", 0) for r in results)
            # the stream catches up: wait until every record has reached the train function
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and streams.invocations.get("train", 0) < sent + before:
                time.sleep(0.5)
            drain_s = time.perf_counter() - began
            stop.set()
            prober.join()
            landed = _count(cloud) - before
            ages = [
                a for label, values in streams.iterator_ages.items() if "samples" in label for a in values
            ]
            report["flow"] = {
                "samples_sent": sent,
                "samples_in_table": landed,
                "lost": sent - landed,
                "request_errors": sum(1 for r in results if r["status"] != 200),
                "ingest_seconds": ingest_s,
                "samples_per_second": sent / ingest_s,
                "stream_delivered_seconds": drain_s,
                "iterator_age_p50_s": _percentile(ages, 0.5),
                "iterator_age_p99_s": _percentile(ages, 0.99),
                "iterator_age_max_s": max(ages) if ages else float("nan"),
                "models_p50_s": statistics.median(probe) if probe else float("nan"),
                "models_p99_s": _percentile(probe, 0.99),
                "models_max_s": max(probe) if probe else float("nan"),
                "models_probes": len(probe),
                "models_errors": len(probe_errors),
            }
    return report


def print_report(report: dict[str, Any]) -> None:
    print("\nconcurrent clients (200 samples each, posted at the same moment)")
    print("  clients  answered 200  errors  samples sent  in table  lost  p99 request")
    for row in report["bursts"]:
        print(
            f"  {row['clients']:>7}  {row['answered_200']:>12}  {row['errors']:>6}  {row['samples_sent']:>12}"
            f"  {row['samples_in_table']:>8}  {row['lost']!s:>4}  {row['p99_request_s']:>9.2f} s"
        )
    flow = report["flow"]
    print(f"\n{flow['samples_sent']:,} samples by {FLOW_CLIENTS} clients in requests of {FLOW_BATCH}")
    f = flow
    print(
        f"  ingested: {f['samples_per_second']:.0f} samples/s ({f['ingest_seconds']:.1f} s);"
        f" lost: {f['lost']}"
    )
    print(
        f"  stream iterator age: p50 {f['iterator_age_p50_s']:.1f} s,"
        f" p99 {f['iterator_age_p99_s']:.1f} s,"
        f" max {f['iterator_age_max_s']:.1f} s; all delivered after {f['stream_delivered_seconds']:.1f} s"
    )
    print(
        f"  GET /models while it flows: p50 {f['models_p50_s'] * 1000:.0f} ms,"
        f" p99 {f['models_p99_s'] * 1000:.0f} ms, max {f['models_max_s'] * 1000:.0f} ms"
        f" over {f['models_probes']} probes, {f['models_errors']} errors"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_load", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("client")
    client.add_argument("--url", required=True)
    client.add_argument("--api-key", required=True, help="sent as x-api-key")
    client.add_argument("--mode", choices=("burst", "flow"), required=True)
    client.add_argument("--clients", type=int, required=True)
    client.add_argument("--samples", type=int, required=True)
    client.add_argument("--seed", type=int, required=True)
    client.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--total", type=int, default=FLOW_TOTAL, help="samples in the flow phase")
    parser.add_argument("--bursts", default=",".join(map(str, BURSTS)), help="client counts, comma-separated")
    args = parser.parse_args(argv)
    if args.command == "client":
        return client_main(args)
    report = run(args.total, tuple(int(n) for n in args.bursts.split(",")))
    print_report(report)
    out = ROOT / "artifacts" / "bench-load.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
