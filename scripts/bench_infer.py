"""The prediction benchmark: figures, not assertions (``make bench``).

On one model of the trainer's own architecture (briefly fitted on generated comfort data,
normalisation folded, exported and published as the trainer does) and one set of inputs it
measures, in a single run on the local cloud:

- the infer handler warm (p50/p99, 1 and 1,000 inputs: parse, validate, forward pass, JSON),
  model loaded through the S3 proxy, and the numpy forward pass alone;
- cold start: a new Python process that imports the handler and answers one request, with the
  model fetched through the local cloud's S3 proxy (timed end to end, and inside the process);
- TensorFlow Python: ``model.predict`` and a direct ``model(x)`` call;
- TensorFlow.js in Node: the model loaded once through the proxy URL, predict timed in Node;
- the infer function's dependencies, as the layer build ships them and as installed.

Each target is printed with whether this run met it. ``ServingStack`` (the local cloud with
only what serving needs) and ``publish`` are reused by the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Targets: upper limits, except the speed-up over TensorFlow.js (a lower limit).
TARGET_WARM_1_US = 100.0
TARGET_WARM_1000_US = 2000.0
TARGET_SPEEDUP = 20.0
TARGET_COLD_MS = 500.0
TARGET_DEPS_MB = 50.0


# publishing -----------------------------------------------------------------------------------


def publish(
    s3: Any,
    reg: Any,
    bucket: str,
    version: str,
    model_dir: Path,
    *,
    prefix: str = "models/",
    promote: bool = True,
    metrics: Mapping[str, Any] | None = None,
) -> list[str]:
    """Upload a model directory as ``trainer.export.save_tfjs`` writes it (weight paths pinned
    to ``version``) with the trainer's upload order, record the run as published and, with
    ``promote``, make it latest. Returns the keys written."""
    from lambdas.core import registry
    from trainer import export

    model_json = model_dir / export.MODEL_JSON
    shards: list[Path] = []
    for group in json.loads(model_json.read_text())["weightsManifest"]:
        for path in group["paths"]:
            if Path(path).parent != Path("..", version):
                raise ValueError(f"{model_json}: weight path {path!r} is not pinned to {version}")
            shards.append(model_dir / Path(path).name)
    keys = export.publish(
        s3, bucket, prefix, version, [*shards, model_json], export.metadata(version, source="benchmark")
    )
    reg.create_run(version, **dict(metrics or {}))
    reg.update_run(version, status="published", finished_at=registry.now_iso())
    if promote:
        reg.set_latest(version, expected=reg.latest_version(), reason="benchmark", actor="bench")
    return keys


# the serving stack -----------------------------------------------------------------------------


def _quiet(line: str) -> None:
    return


class ServingStack:
    """The local cloud without drivers, schedules or web files: the tables, bucket and HTTP
    routes of infra/serverless.yml, its functions run in this process.

    While it runs, the process environment is the functions' (``env`` holds what it set);
    function log lines go to ``function_log`` in its state directory.
    """

    def __init__(
        self,
        stage: str = "bench",
        *,
        environment: Mapping[str, str] | None = None,
        say: Callable[[str], None] = _quiet,
    ) -> None:
        self.stage = stage
        self.env: dict[str, str] = {}
        self._environment = dict(environment or {})
        self._say = say
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.cloud: Any = None

    def __enter__(self) -> ServingStack:
        from localcloud.cloud import LocalCloud

        self._tmp = tempfile.TemporaryDirectory(prefix="serving-")
        state = Path(self._tmp.name)
        self.function_log = state / "functions.log"
        self.cloud = LocalCloud(
            state_dir=state,
            stage=self.stage,
            drivers=(),
            schedule_overrides={"traffic": {"enabled": False}},
            environment=self._environment,
            web_dir=None,
            function_log=self.function_log,
            say=self._say,
        )
        try:
            self.cloud.start()
            # The stack's settings as the functions see them (each function has only its own).
            self.env = {}
            for fn in self.cloud.stack.functions():
                for key, value in self.cloud.function_environment(fn.name).items():
                    self.env.setdefault(key, value)
            self.api_url: str = self.cloud.api_url
            self.aws_endpoint: str = self.cloud.aws_url
            self.bucket = self.env["MODEL_BUCKET"]
            self.table = self.env["MODEL_TABLE"]
        except BaseException:
            self.cloud.stop()
            self._tmp.cleanup()
            raise
        return self

    @property
    def stack(self) -> Any:
        return self.cloud.stack

    @property
    def api_key(self) -> str:
        """The local cloud's default client's API key (x-api-key): POST /infer and POST /upload
        are private routes."""
        return str(self.cloud.api_key)

    @property
    def operator_api_key(self) -> str:
        """The operators' key, the only one the registry POSTs (promote, pin, unpin) accept."""
        return str(self.cloud.operator_api_key)

    def clients(self) -> tuple[Any, Any]:
        from lambdas.core import aws, registry

        return aws.s3(), registry.Registry(self.table)

    def __exit__(self, *exc: object) -> None:
        self.cloud.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


# the benchmark -------------------------------------------------------------------------------


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    return {
        "p50_us": statistics.median(ordered) * 1e6,
        "p99_us": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e6,
    }


def _time(fn: Callable[[], Any], repeats: int, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return _percentiles(samples)


def trainer_model(seed: int, samples: int = 2000, epochs: int = 3) -> Any:
    """The trainer's network with its default hyper-parameters, fitted for a few epochs on
    generated comfort data and with its normalisation folded, as it is exported."""
    import numpy as np

    from lambdas.core import comfort
    from lambdas.core.schema import FEATURE_NAMES, LABELS
    from trainer.config import HyperParameters
    from trainer.data import one_hot
    from trainer.model import build_model, fold_normalization

    rows = comfort.generate(samples, seed, 0.05)
    x = np.array([[row[name] for name in FEATURE_NAMES] for row in rows], dtype="float32")
    y = np.array([LABELS.index(row["label"]) for row in rows])
    hyper = HyperParameters(seed=seed, epochs=epochs)
    model = build_model(x.mean(axis=0), x.var(axis=0), hyper)
    model.fit(x, one_hot(y), epochs=hyper.epochs, batch_size=hyper.batch_size, verbose=0)
    return fold_normalization(model)


def inputs(n: int, seed: int = 7) -> list[dict[str, float]]:
    import numpy as np

    from lambdas.core.schema import FEATURES

    rng = np.random.default_rng(seed)
    return [{f.name: round(float(rng.uniform(f.minimum, f.maximum)), 2) for f in FEATURES} for _ in range(n)]


_COLD = """
import json, sys, time
t0 = time.perf_counter()
from lambdas import infer
t1 = time.perf_counter()
out = infer.handler({"httpMethod": "POST", "body": sys.argv[1]})
t2 = time.perf_counter()
assert out["statusCode"] == 200, out
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "first_answer_ms": (t2 - t1) * 1e3}))
"""


def cold_start(body: str, runs: int) -> dict[str, float]:
    """New processes with the functions' environment (the running stack's)."""
    totals, inner = [], []
    child_env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"}
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _COLD, body], env=child_env, capture_output=True, text=True, check=True
        )
        totals.append(time.perf_counter() - start)
        inner.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        "process_to_answer_ms_p50": statistics.median(totals) * 1e3,
        "process_to_answer_ms_max": max(totals) * 1e3,
        "import_ms_p50": statistics.median(i["import_ms"] for i in inner),
        "first_answer_ms_p50": statistics.median(i["first_answer_ms"] for i in inner),
    }


def dependency_footprint() -> dict[str, Any]:
    """The infer layer's dependencies: as the layer build ships them (copied from this
    environment and pruned by scripts/package_functions.py) and as installed here."""
    from scripts import package_functions as layers

    requirements = layers.requirement_lines(layers.LAYERS["numpy"])
    installed = 0
    for dist in layers._closure(requirements):
        for file in dist.files or []:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                installed += path.stat().st_size
    with tempfile.TemporaryDirectory(prefix="infer-layer-") as tmp:
        tree = Path(tmp)
        layers.copy_from_environment(requirements, tree)
        layers.prune(tree)
        shipped = layers.tree_size(tree)
    return {"requirements": requirements, "installed_mb": installed / 1e6, "shipped_mb": shipped / 1e6}


def tfjs_node(model_url: str, batches: dict[str, Any], repeats: int) -> dict[str, Any]:
    done = subprocess.run(
        ["node", str(ROOT / "tests/js/tfjs_bench.mjs"), model_url, str(repeats)],
        input=json.dumps(batches),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run(repeats: int, cold_runs: int) -> dict[str, Any]:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from lambdas import infer, s3proxy
    from lambdas.core import registry
    from lambdas.core.schema import FEATURE_NAMES
    from trainer.export import save_tfjs

    results: dict[str, Any] = {"repeats": repeats}
    one, thousand = inputs(1), inputs(1000)
    events = {n: {"httpMethod": "POST", "body": json.dumps(b)} for n, b in (("1", one), ("1000", thousand))}
    rows = {
        n: np.array([[r[k] for k in FEATURE_NAMES] for r in b], dtype="float32")
        for n, b in (("1", one), ("1000", thousand))
    }
    model = trainer_model(seed=1)
    # MODEL_REFRESH_S: the warm figures measure the request path, not the check for a new latest.
    serving = ServingStack(environment={"MODEL_SOURCE": "proxy", "MODEL_REFRESH_S": "3600"})
    with tempfile.TemporaryDirectory() as tmp, serving as stack:
        s3, reg = stack.clients()
        version = registry.new_version()
        save_tfjs(model, Path(tmp) / version, version)
        publish(s3, reg, stack.bucket, version, Path(tmp) / version)
        results["version"] = version
        results["model"] = [
            f"{layer.name}:{layer.units}:{layer.activation.__name__}" for layer in model.layers[1:]
        ]
        infer.reset()
        s3proxy.reset()
        first = infer.handler(events["1"])
        assert first["statusCode"] == 200, first
        for name, event in events.items():
            results[f"numpy_handler_{name}"] = _time(lambda e=event: infer.handler(e), repeats)
        loaded = infer.model_cache().get()
        row = rows["1"].tolist()
        # Array creation included, as the TF.js timing includes tensor creation.
        results["numpy_forward_1"] = _time(lambda: loaded.model.predict(np.array(row)), repeats)

        results["cold_start"] = cold_start(json.dumps(one), cold_runs)

        for name, x in rows.items():
            results[f"tf_predict_{name}"] = _time(
                lambda x=x: model.predict(x, verbose=0), max(20, repeats // 10)
            )
            results[f"tf_call_{name}"] = _time(lambda x=x: model(x, training=False).numpy(), repeats)
        results["tfjs_node"] = tfjs_node(
            f"{stack.api_url}/s3proxy/latest/model.json",
            {name: x.tolist() for name, x in rows.items()},
            repeats,
        )
    results["dependencies"] = dependency_footprint()
    tfjs_1 = results["tfjs_node"]["1"]["p50_us"]
    results["speedup_forward_vs_tfjs_1"] = tfjs_1 / results["numpy_forward_1"]["p50_us"]
    results["speedup_handler_vs_tfjs_1"] = tfjs_1 / results["numpy_handler_1"]["p50_us"]
    return results


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _report(r: dict[str, Any]) -> str:
    def row(name: str, stats: dict[str, float]) -> str:
        return f"{name:<50} p50 {stats['p50_us']:>10.1f} us   p99 {stats['p99_us']:>10.1f} us"

    c, deps, tfjs = r["cold_start"], r["dependencies"], r["tfjs_node"]
    lines = [
        f"model {r['version']} ({', '.join(r['model'])}), {r['repeats']} timed repeats per figure",
        row("infer handler, warm, 1 input", r["numpy_handler_1"]),
        row("infer handler, warm, 1,000 inputs", r["numpy_handler_1000"]),
        row("numpy forward pass only, 1 input", r["numpy_forward_1"]),
    ]
    for n in ("1", "1000"):
        lines += [row(f"TensorFlow model.predict, {n} input(s)", r[f"tf_predict_{n}"])]
        lines += [row(f"TensorFlow model(x), {n} input(s)", r[f"tf_call_{n}"])]
        lines += [row(f"TensorFlow.js predict (Node, cpu), {n} input(s)", tfjs[n])]
    lines += [
        f"cold start (new process -> first answer, model via the proxy): p50 "
        f"{c['process_to_answer_ms_p50']:.0f} ms, max {c['process_to_answer_ms_max']:.0f} ms "
        f"(import {c['import_ms_p50']:.0f} ms, load + first answer {c['first_answer_ms_p50']:.0f} ms)",
        f"TensorFlow.js load through the proxy: {tfjs['load_ms']:.0f} ms",
        f"1 input, forward pass vs forward pass (numpy predict vs TF.js predict): "
        f"{r['speedup_forward_vs_tfjs_1']:.1f}x",
        f"1 input, infer handler (parse + validate + forward + JSON) vs TF.js predict: "
        f"{r['speedup_handler_vs_tfjs_1']:.1f}x",
        f"infer dependencies ({', '.join(deps['requirements'])}): {deps['shipped_mb']:.1f} MB as the "
        f"layer ships them (pruned), {deps['installed_mb']:.1f} MB installed",
        "",
        "targets:",
    ]
    warm_1 = r["numpy_handler_1"]["p50_us"]
    warm_1000 = r["numpy_handler_1000"]["p50_us"]
    cold = c["process_to_answer_ms_p50"]
    targets = [
        (f"warm p50, 1 input <= {TARGET_WARM_1_US:.0f} us", f"{warm_1:.1f} us", warm_1 <= TARGET_WARM_1_US),
        (
            f">= {TARGET_SPEEDUP:.0f}x faster than TF.js in Node, handler vs predict",
            f"{r['speedup_handler_vs_tfjs_1']:.1f}x",
            r["speedup_handler_vs_tfjs_1"] >= TARGET_SPEEDUP,
        ),
        (
            f">= {TARGET_SPEEDUP:.0f}x faster than TF.js in Node, forward vs forward",
            f"{r['speedup_forward_vs_tfjs_1']:.1f}x",
            r["speedup_forward_vs_tfjs_1"] >= TARGET_SPEEDUP,
        ),
        (
            f"warm p50, 1,000 inputs <= {TARGET_WARM_1000_US / 1000:.0f} ms",
            f"{warm_1000 / 1000:.2f} ms",
            warm_1000 <= TARGET_WARM_1000_US,
        ),
        (f"cold start p50 <= {TARGET_COLD_MS / 1000:.1f} s", f"{cold / 1000:.2f} s", cold <= TARGET_COLD_MS),
        (
            f"infer dependencies <= {TARGET_DEPS_MB:.0f} MB (shipped, pruned)",
            f"{deps['shipped_mb']:.1f} MB",
            deps["shipped_mb"] <= TARGET_DEPS_MB,
        ),
    ]
    lines += [f"  {name:<58} {value:>10}  {_verdict(ok)}" for name, value, ok in targets]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        results = run(args.repeats, args.cold_runs)
    print(json.dumps(results, indent=2) if args.json else _report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
