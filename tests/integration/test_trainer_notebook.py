from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "train.ipynb"


def test_trainer_notebook_is_committed_without_outputs() -> None:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)


@pytest.mark.slow
def test_trainer_notebook_executes(tmp_path: Path) -> None:
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter",
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            "--ExecutePreprocessor.timeout=600",
            "--output-dir",
            str(tmp_path),
            str(NOTEBOOK),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT / "notebooks",
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    executed = json.loads((tmp_path / "train.ipynb").read_text())
    text = "".join(
        "".join(o.get("text", ""))
        for c in executed["cells"]
        if c["cell_type"] == "code"
        for o in c["outputs"]
    )
    assert "published exit code 0" in text
    assert "agreement with the noise-free label on the grid" in text
