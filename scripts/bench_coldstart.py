"""The traffic function's cold start, its image against the old layer (figures, not assertions).

``make bench-cold``. Both are measured in the same run, on the same installed dependencies: the
image's, built here without a docker daemon (``localcloud/imagebuild.py`` says what is emulated).

- **image**: a new process, the image read-only and ``/tmp`` empty, imports the handler (which
  copies the image's compiled numba kernels to ``/tmp`` and loads them) and answers one
  invocation (a batch of samples posted to a stub of ``POST /upload``).
- **old layer**: what the function did before it was an image. Its dependencies were one
  compressed archive in a layer (deflate level 6, as it was built); a wrapper unpacked it to
  ``/tmp`` with ``python3 -m zipfile -e`` before the runtime started, then the same import ran
  with an empty numba cache, so numba compiled the kernels, and the same first answer.

Lambda's init phase (the wrapper's unpacking, the runtime's start, the import) is limited to
10 s ("Understanding the Lambda execution environment lifecycle"); here it is everything before
the first call: the unpacking, then the new interpreter's start and the import. Each start runs
``--repeat`` times (5); the table shows the median and the slowest. This machine's core is
faster than a 1,024 MB function's share of one: Lambda allocates CPU in proportion to memory,
one vCPU at 1,769 MB ("Configure Lambda function memory"). Unpacking and importing are one
thread, so at 1,024 MB they are estimated at 1,769 / 1,024 = 1.73 times what is measured here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from localcloud import coldstart, imagebuild

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "lambdas" / "traffic.Dockerfile"
INIT_LIMIT_S = 10.0
MEMORY_MB = 1024  # infra/serverless.yml, functions.traffic.memorySize
ONE_VCPU_MB = 1769
EVENT = {"seed": 1}


def _median_max(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "max": max(values)}


def build_old_layer(image: imagebuild.Image, out: Path) -> dict[str, Any]:
    """The old layer's archive of the image's dependencies, and the function's own code beside it."""
    task = image.path(image.env["LAMBDA_TASK_ROOT"])
    kernels = image.path(image.env["KERNEL_CACHE_IMAGE_DIR"])
    archive = out / "deps.zip"
    unpacked = 0
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as deps:
        for path in sorted(task.rglob("*")):
            relative = path.relative_to(task)
            # The layer shipped no byte code (the image does: its file system is read-only).
            if (
                path.is_file()
                and relative.parts[0] not in {"lambdas", kernels.name}
                and "__pycache__" not in relative.parts
            ):
                deps.write(path, relative.as_posix())
                unpacked += path.stat().st_size
    code = out / "task"
    shutil.copytree(task / "lambdas", code / "lambdas")
    return {"archive": archive, "code": code, "zip_bytes": archive.stat().st_size, "unpacked_bytes": unpacked}


def start_old_layer(image: imagebuild.Image, layer: dict[str, Any], api_url: str) -> dict[str, float]:
    """The wrapper's unpacking, then the runtime's import and first invocation, in new processes."""
    with tempfile.TemporaryDirectory(prefix="lambda-tmp-") as scratch:
        tmp = Path(scratch)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "zipfile", "-e", str(layer["archive"]), str(tmp / "traffic-deps")],
            check=True,
        )
        unpack_s = time.perf_counter() - started
        env = coldstart.run_environment(image, tmp)
        for name in ("KERNEL_CACHE_IMAGE_DIR", "NUMBA_CPU_NAME"):  # the layer had neither
            env.pop(name, None)
        env.update(
            _HANDLER="lambdas/traffic.handler",
            LAMBDA_TASK_ROOT=str(layer["code"]),
            PYTHONPATH=f"{tmp / 'traffic-deps'}:{env['PYTHONPATH']}",
            NUMBA_CACHE_DIR=str(tmp / "numba-cache"),
            **coldstart.stub_environment(api_url),
        )
        answer, process_s = coldstart.invoke_fresh(layer["code"], env, EVENT)
    return {
        "unpack_s": unpack_s,
        "import_s": answer["import_s"],
        "first_s": answer["first_s"],
        "init_s": unpack_s + process_s - answer["first_s"],
        "cold_s": unpack_s + process_s,
    }


def start_image(image: imagebuild.Image, api_url: str) -> dict[str, float]:
    cold = coldstart.start_cold(image, EVENT, env=coldstart.stub_environment(api_url))
    return {
        "unpack_s": 0.0,
        "import_s": cold.import_s,
        "first_s": cold.first_s,
        "init_s": cold.init_s,
        "cold_s": cold.process_s,
    }


def run(out: Path, repeat: int, reuse: bool) -> dict[str, Any]:
    if reuse and (out / "image.json").is_file():
        image = imagebuild.Image.load(out)
        print(f"reusing the image built in {out}")
    else:
        print(f"building {DOCKERFILE.relative_to(ROOT)} into {out} (no docker daemon needed)")
        image = imagebuild.build(DOCKERFILE, ROOT, out)
    kernels = image.path(image.env["KERNEL_CACHE_IMAGE_DIR"])
    kernel_bytes = sum(p.stat().st_size for p in kernels.rglob("*") if p.is_file())
    starts: dict[str, list[dict[str, float]]] = {"image": [], "old layer": []}
    with tempfile.TemporaryDirectory(prefix="old-layer-") as scratch, coldstart.upload_stub() as api_url:
        print("writing the old layer's archive of the same dependencies")
        layer = build_old_layer(image, Path(scratch))
        for attempt in range(1, repeat + 1):
            starts["image"].append(start_image(image, api_url))
            starts["old layer"].append(start_old_layer(image, layer, api_url))
            print(
                f"  start {attempt}/{repeat}: image {starts['image'][-1]['cold_s']:.2f} s, "
                f"old layer {starts['old layer'][-1]['cold_s']:.2f} s"
            )
    phases = ("unpack_s", "import_s", "first_s", "init_s", "cold_s")
    summary = {kind: {p: _median_max([s[p] for s in runs]) for p in phases} for kind, runs in starts.items()}
    return {
        "repeat": repeat,
        "image_bytes": image.size(),
        "kernel_bytes": kernel_bytes,
        "old_layer_zip_bytes": layer["zip_bytes"],
        "old_layer_unpacked_bytes": layer["unpacked_bytes"],
        "build_steps_s": {f"{s.line} {s.instruction}": s.seconds for s in image.steps},
        "summary": summary,
        "starts": starts,
        "cpu_scale_at_memory": ONE_VCPU_MB / MEMORY_MB,
    }


def print_report(report: dict[str, Any]) -> None:
    summary = report["summary"]
    scale = report["cpu_scale_at_memory"]
    rows = [
        ("unpack to /tmp", "unpack_s"),
        ("import (kernels)", "import_s"),
        ("init phase, all", "init_s"),
        ("first answer", "first_s"),
        ("cold start, all", "cold_s"),
    ]
    print(f"\ntraffic function cold start, median (slowest) of {report['repeat']}, this machine:")
    print(f"  {'':<20} {'image':>16} {'old layer':>16}")
    for label, key in rows:
        cells = [
            f"{summary[k][key]['median']:.2f} ({summary[k][key]['max']:.2f}) s"
            for k in ("image", "old layer")
        ]
        print(f"  {label:<20} {cells[0]:>16} {cells[1]:>16}")
    for kind in ("image", "old layer"):
        init = summary[kind]["init_s"]["max"]
        share = f"{init / INIT_LIMIT_S:.0%} of Lambda's {INIT_LIMIT_S:.0f} s"
        print(
            f"  {kind}: slowest init {init:.2f} s = {share}; "
            f"at {MEMORY_MB} MB (x{scale:.2f}) about {init * scale:.1f} s"
        )
    ratio = summary["old layer"]["cold_s"]["median"] / summary["image"]["cold_s"]["median"]
    print(f"  the image starts {ratio:.1f}x faster than the old layer")
    mb = 1e6
    print(
        f"image: {report['image_bytes'] / mb:.0f} MB of its own files, "
        f"kernels {report['kernel_bytes'] / mb:.1f} MB"
    )
    print(
        f"old layer: {report['old_layer_zip_bytes'] / mb:.0f} MB archive, "
        f"{report['old_layer_unpacked_bytes'] / mb:.0f} MB unpacked"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_coldstart", description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--image", type=Path, default=ROOT / "build" / "traffic-image", help="where to build it"
    )
    parser.add_argument("--reuse", action="store_true", help="start the image already built in --image")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench-coldstart.json")
    args = parser.parse_args(argv)
    report = run(args.image, args.repeat, args.reuse)
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
