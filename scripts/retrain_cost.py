"""What one retrain costs on AWS, from ``make bench-train``'s figures and documented prices.

``python -m scripts.retrain_cost`` reads ``artifacts/bench-train.json`` (the in-memory rows:
every size, old and new trainer) and prints, for 10,000, 100,000 and 1,000,000 samples, the
instance time and the cost of each part, for the trainer as it is and for the original design
(100 epochs at batch 32, and the instance left idle for 10 minutes before it stopped).

Assumptions, each named: this 2-core machine's fit and decode times stand for a c5.large's
(2 vCPUs of a similar class; not measured on one); the boot-to-trainer and AWS page-latency
figures are estimates from the sources in infra/README.md, not measurements.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Prices, us-east-1. Each with where it was read and the date the source shows.
# c5.large on demand: aws/karpenter-provider-aws, pkg/providers/pricing/zz_generated.pricing_aws.go
# ("generated at 2026-01-19" for us-east-1). Spot: 59% below on demand for c5.large, in the Spot
# Instance Advisor feed (spot-bid-advisor.s3.amazonaws.com, as embedded in alexei-led/spotinfo,
# changed 2025-06-28; interruption band "<5%").
ON_DEMAND_PER_H = 0.085
SPOT_SAVING = 0.59
# EBS gp3 $0.08 per GB-month (AWS Prescriptive Guidance, "Migrate Amazon EBS volumes from gp2 to
# gp3": 20% below gp2's $0.10; undated); the ECS-optimized AL2023 AMI has a 30 GiB root volume
# (Amazon ECS Developer Guide, "Amazon ECS-optimized Linux AMIs"). EC2 and EBS bill per second
# with a 60 s minimum (aws.amazon.com/ec2/pricing).
EBS_GB_MONTH = 0.08
ROOT_GB = 30
# DynamoDB on demand: $0.125 per million read request units (after the November 2024 cut;
# third-party price notes of 2025-2026 quoting aws.amazon.com/dynamodb/pricing/on-demand). A
# strongly consistent Scan reads 256 units per MB (Developer Guide, "Query and Scan best
# practices").
RRU_PER_MILLION = 0.125
RRU_PER_MB_CONSISTENT = 256
# Lambda x86: $0.20 per million requests, $0.0000166667 per GB-second (AWS whitepaper "How AWS
# Pricing Works", Lambda). The train function (128 MB, about 0.3 s a call) is invoked for a
# retrain by the stream batch that starts it, the model table's stream, the instance's state
# changes and the schedule's ticks while it runs: about 10 calls. (Ingesting the samples costs
# one call per 1,000 records, once per sample, not per retrain.)
LAMBDA_PER_REQUEST = 0.20 / 1e6
LAMBDA_PER_GB_S = 0.0000166667
TRAIN_FUNCTION_GB = 0.125
TRAIN_CALL_S = 0.3
TRAIN_CALLS_PER_RUN = 10
# CloudWatch, prorated by the hour (CloudWatch pricing; amazon-cloudwatch-user-guide,
# cloudwatch_billing.md): detailed monitoring of the instance's 7 EC2 metrics at $0.30 per
# metric-month (the 60 s alarm period needs it), the idle alarm's 2 metrics at $0.10 per
# alarm-metric-month, the heartbeat's custom metric at $0.30, PutMetricData $0.01 per 1,000.
HOURS_PER_MONTH = 730
CLOUDWATCH_PER_RUN = (7 * 0.30 + 2 * 0.10 + 0.30) / HOURS_PER_MONTH
# S3: 3 PUTs ($0.005 per 1,000) and a few GETs ($0.0004 per 1,000); ECR pulls and S3 in the
# same region transfer for free.
S3_PER_RUN = 3 * 0.005 / 1000 + 10 * 0.0004 / 1000

# Time outside the trainer's scan and fit, estimated (infra/README.md, "The training instance's
# AMI" and "Scaling and what a retrain costs" in the README): launch to user-data about 30 s,
# the CLI install 10-30 s, ECR login and the image pull 30-90 s, the container's start 5 s; after
# the fit: evaluation, export, upload, load check, gate about 20 s, shutdown 10 s.
BOOT_TO_TRAINER_S = 120
AFTER_FIT_S = 30
# AWS serving a Scan page of 2,000 items (~300 KB), one segment's requests one after another:
# tens of milliseconds each (an estimate, not a measurement); 4 segments.
PAGE_LATENCY_S = 0.03
PAGE_ITEMS = 2000
SEGMENTS = 4
ITEM_BYTES = 180
ORIGINAL_IDLE_S = 600  # the original design kept the instance 10 minutes after training


@dataclass(frozen=True)
class Cost:
    instance_s: float
    instance: float
    ebs: float
    dynamodb: float
    lambda_: float
    cloudwatch: float
    s3: float

    @property
    def total(self) -> float:
        return self.instance + self.ebs + self.dynamodb + self.lambda_ + self.cloudwatch + self.s3


def cost(samples: int, scan_s: float, fit_s: float, *, spot: bool = True, idle_s: float = 0.0) -> Cost:
    pages = samples / PAGE_ITEMS / SEGMENTS
    seconds = BOOT_TO_TRAINER_S + scan_s + pages * PAGE_LATENCY_S + fit_s + AFTER_FIT_S + idle_s
    billed = max(60.0, seconds)
    per_s = ON_DEMAND_PER_H * ((1 - SPOT_SAVING) if spot else 1.0) / 3600
    ebs_per_s = EBS_GB_MONTH * ROOT_GB / (HOURS_PER_MONTH * 3600)
    scanned_mb = samples * ITEM_BYTES / 1e6
    return Cost(
        instance_s=seconds,
        instance=billed * per_s,
        ebs=billed * ebs_per_s,
        dynamodb=scanned_mb * RRU_PER_MB_CONSISTENT * RRU_PER_MILLION / 1e6,
        lambda_=TRAIN_CALLS_PER_RUN
        * (LAMBDA_PER_REQUEST + TRAIN_FUNCTION_GB * TRAIN_CALL_S * LAMBDA_PER_GB_S),
        cloudwatch=CLOUDWATCH_PER_RUN * math.ceil(seconds / 3600),
        s3=S3_PER_RUN,
    )


def table(results: list[dict[str, Any]], sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)) -> str:
    rows = {(r["variant"], r["samples"]): r for r in results if r["source"] == "in memory"}
    lines = [
        "| samples | design | instance time | instance (spot) | EBS | DynamoDB scan | Lambda (train "
        "function) | CloudWatch | S3 | **total** |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        for variant, label, idle in (
            ("new", "now", 0.0),
            ("old", "original (+10 min idle)", ORIGINAL_IDLE_S),
        ):
            measured = rows.get((variant, n))
            if measured is None:
                continue
            c = cost(n, measured["scan_s"], measured["fit_s"], idle_s=idle)
            lines.append(
                f"| {n:,} | {label} | {c.instance_s:,.0f} s | ${c.instance:.4f} | ${c.ebs:.4f} | "
                f"${c.dynamodb:.4f} | ${c.lambda_:.4f} | ${c.cloudwatch:.4f} | ${c.s3:.5f} "
                f"| **${c.total:.4f}** |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.retrain_cost", description=__doc__)
    parser.add_argument("--bench", type=Path, default=ROOT / "artifacts" / "bench-train.json")
    args = parser.parse_args(argv)
    if not args.bench.exists():
        parser.error(f"{args.bench} not found: run `make bench-train` first")
    print(table(json.loads(args.bench.read_text())["results"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
