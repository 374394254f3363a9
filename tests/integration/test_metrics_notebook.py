"""notebooks/metrics.ipynb: committed without outputs, and it runs against a seeded model table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from lambdas.core import aws, registry
from scripts.bench_infer import ServingStack
from tests.support import live as live_support

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "metrics.ipynb"


def test_metrics_notebook_is_committed_without_outputs() -> None:
    code = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


@pytest.mark.slow
def test_metrics_notebook_executes_against_a_seeded_model_table(tmp_path: Path) -> None:
    with ServingStack(stage="nb") as stack:
        reg = registry.Registry(stack.table)
        versions = [f"v2026112{d}T09000{d}Z-0b0{d}" for d in range(3)]
        for i, version in enumerate(versions):
            reg.create_run(version, sample_count=200 * (i + 1))
            metrics = {
                split: {"accuracy": 0.7 + i / 20 - k / 50, "loss": 0.8 - i / 10 + k / 20}
                for k, split in enumerate(("train", "validation", "holdout"))
            }
            reg.update_run(version, status="published", metrics=metrics)
        # versions[0] served first, then a retrain promoted versions[1]; both were scored live.
        reg.set_latest(versions[0], expected=None, reason="test", actor="test")
        reg.set_latest(versions[1], expected=versions[0], reason="test", actor="test")
        history, _ = reg.list_history()
        promoted = [
            int(datetime.fromisoformat(h["at"].replace("Z", "+00:00")).timestamp() * 1000) for h in history
        ]
        scored = [
            o for k in range(2) for o in live_support.outcomes(versions[0], promoted[0] + k * 10_000, 9, 1)
        ]
        for k, wrong in enumerate((2, 1, 3)):  # 24 of 30 in three buckets
            scored += live_support.outcomes(versions[1], promoted[1] + k * 10_000, 10 - wrong, wrong)
        live_support.record(aws.dynamodb(), stack.table, scored, bucket_s=10)
        reg.create_run("v20261129T090000Z-0bff")  # still training: listed, not plotted
        env = {
            **{k: v for k, v in os.environ.items() if k != "MPLBACKEND"},
            "PYTHONPATH": str(ROOT),
            "LOG_LEVEL": "WARNING",
            "MODEL_TABLE": stack.table,
        }
        result = subprocess.run(
            [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
             "--ExecutePreprocessor.timeout=300", "--output-dir", str(tmp_path), str(NOTEBOOK)],
            capture_output=True, text=True, env=env, cwd=ROOT / "notebooks", timeout=600, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    cells = json.loads((tmp_path / "metrics.ipynb").read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c["outputs"]]
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "plotted 3 evaluated runs of 4" in text
    assert f"* {versions[1]}" in text
    assert "0.800 [" in text and "n=30" in text  # the listing's live column for latest
    assert "live accuracy: 5 time buckets of 2 versions, 2 changes of latest marked" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # metrics, live accuracy
