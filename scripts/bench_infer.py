"""The prediction benchmark: figures, not assertions (``make bench``).

On one model and one set of inputs it measures, in a single run:

- the infer handler warm (p50/p99, 1 and 1,000 inputs), model loaded through the S3 proxy;
- cold start: a new Python process that imports the handler and answers one request, with the
  model fetched through the proxy from a moto server (timed end to end, and inside the process);
- TensorFlow Python: ``model.predict`` and a direct ``model(x)`` call;
- TensorFlow.js in Node: the model loaded once through the proxy URL, predict timed in node;
- the size of the infer function's installed dependencies (numpy).

``ServingStack`` (a moto server plus a small HTTP front that turns requests into API Gateway
events for the s3proxy and infer handlers) and ``publish`` are reused by the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
_ROUTE = re.compile(r"/s3proxy/([^/]+)/([^/]+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# publishing -----------------------------------------------------------------------------------


def pin_manifest(model_json: dict[str, Any], version: str) -> dict[str, Any]:
    """Rewrite weight paths to ``../<version>/<shard>`` (see lambdas/s3proxy.py for why)."""
    pinned = json.loads(json.dumps(model_json))
    for group in pinned["weightsManifest"]:
        group["paths"] = [f"../{version}/{Path(p).name}" for p in group["paths"]]
    return pinned


def publish(
    s3: Any,
    reg: Any,
    bucket: str,
    version: str,
    model_dir: Path,
    *,
    prefix: str = "models/",
    promote: bool = True,
    metrics: dict[str, Any] | None = None,
) -> None:
    """Upload an exported model as ``version`` and, with ``promote``, make it latest."""
    model_json = json.loads((model_dir / "model.json").read_text())
    for group in model_json["weightsManifest"]:
        for path in group["paths"]:
            s3.put_object(
                Bucket=bucket,
                Key=f"{prefix}{version}/{Path(path).name}",
                Body=(model_dir / path).read_bytes(),
            )
    s3.put_object(
        Bucket=bucket, Key=f"{prefix}{version}/metadata.json", Body=json.dumps({"version": version})
    )
    s3.put_object(
        Bucket=bucket, Key=f"{prefix}{version}/model.json", Body=json.dumps(pin_manifest(model_json, version))
    )
    reg.create_run(version, **(metrics or {}))
    reg.update_run(version, status="published", finished_at=reg_now())
    if promote:
        reg.set_latest(version, expected=reg.latest_version(), reason="benchmark", actor="bench")


def reg_now() -> str:
    from lambdas.core import registry

    return registry.now_iso()


# the serving stack -----------------------------------------------------------------------------


class _Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _event(self, method: str) -> dict[str, Any]:
        split = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        query = dict(urllib.parse.parse_qsl(split.query)) or None
        return {
            "httpMethod": method,
            "path": urllib.parse.unquote(split.path),
            "queryStringParameters": query,
            "headers": dict(self.headers),
            "body": self.rfile.read(length).decode() if length else None,
            "isBase64Encoded": False,
            "requestContext": {"requestId": f"local-{time.time_ns()}"},
        }

    def _send(self, result: dict[str, Any]) -> None:
        body = (result.get("body") or "").encode()
        self.send_response(int(result.get("statusCode", 200)))
        for key, value in (result.get("headers") or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        from lambdas import s3proxy

        event = self._event("GET")
        match = _ROUTE.fullmatch(urllib.parse.urlsplit(self.path).path)
        if not match:
            self._send({"statusCode": 404, "body": '{"message":"no such route"}'})
            return
        event["pathParameters"] = {
            "version": urllib.parse.unquote(match.group(1)),
            "filename": urllib.parse.unquote(match.group(2)),
        }
        self._send(s3proxy.handler(event))

    def do_POST(self) -> None:
        from lambdas import infer

        event = self._event("POST")
        if urllib.parse.urlsplit(self.path).path != "/infer":
            self._send({"statusCode": 404, "body": '{"message":"no such route"}'})
            return
        self._send(infer.handler(event))


class ServingStack:
    """moto server + resources from serverless.yml + an HTTP front for s3proxy and infer.

    Sets the environment variables the handlers read for as long as it runs.
    """

    def __init__(self, stage: str = "bench") -> None:
        self.stage = stage
        self.env: dict[str, str] = {}
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> ServingStack:
        import boto3
        from moto.server import ThreadedMotoServer

        from lambdas.core import aws
        from scripts.localcloud import infra

        moto_port, api_port = free_port(), free_port()
        self.moto = ThreadedMotoServer("127.0.0.1", moto_port, verbose=False)
        self.moto.start()
        self.aws_endpoint = f"http://127.0.0.1:{moto_port}"
        # An in-process moto server shares moto's global state: start from nothing.
        urllib.request.urlopen(urllib.request.Request(f"{self.aws_endpoint}/moto-api/reset", method="POST"))
        self.api_url = f"http://127.0.0.1:{api_port}"
        self._set(
            AWS_ENDPOINT_URL=self.aws_endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
            API_URL=self.api_url,
        )
        aws.reset()
        self.stack = infra.create_resources(infra.load(stage=self.stage, region=REGION), boto3.Session())
        for key, value in self.stack.config["provider"]["environment"].items():
            self._set(**{key: str(self.stack.resolve_intrinsics(value))})
        self.bucket = self.env["MODEL_BUCKET"]
        self.table = self.env["MODEL_TABLE"]
        self.server = ThreadingHTTPServer(("127.0.0.1", api_port), _Api)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def _set(self, **values: str) -> None:
        for key, value in values.items():
            self._saved.setdefault(key, os.environ.get(key))
            os.environ[key] = value
            self.env[key] = value

    def clients(self) -> tuple[Any, Any]:
        from lambdas.core import aws, registry

        return aws.s3(), registry.Registry(self.table)

    def __exit__(self, *exc: object) -> None:
        from lambdas.core import aws

        self.server.shutdown()
        self.server.server_close()
        self.moto.stop()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        aws.reset()


# the benchmark -------------------------------------------------------------------------------


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    return {
        "p50_us": statistics.median(ordered) * 1e6,
        "p99_us": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e6,
    }


def _time(fn: Any, repeats: int, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return _percentiles(samples)


def _train_model(out_dir: Path, seed: int) -> tuple[Path, Any]:
    """A small model of the trainer's shape, exported with the tensorflowjs converter."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np
    import tensorflowjs as tfjs
    import tf_keras as keras

    from lambdas.core.schema import FEATURES

    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    low = np.array([f.minimum for f in FEATURES])
    high = np.array([f.maximum for f in FEATURES])
    mean, std = (low + high) / 2, (high - low) / 4
    model = keras.Sequential(
        [
            keras.layers.InputLayer(input_shape=(4,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    # Fold a normalisation into the first layer, as the trainer does: x' = (x - mean) / std.
    kernel, bias = model.layers[0].get_weights()
    kernel = rng.normal(size=kernel.shape).astype("float32")
    model.layers[0].set_weights([kernel / std[:, None], bias - (mean / std) @ kernel])
    tfjs.converters.save_keras_model(model, str(out_dir))
    return out_dir, model


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


def cold_start(body: str, env: dict[str, str], runs: int) -> dict[str, float]:
    totals, inner = [], []
    child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"}
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


_PRUNABLE = ("tests", "f2py", "__pycache__")


def numpy_footprint() -> dict[str, Any]:
    """The installed numpy (the infer function's only dependency beyond the runtime's boto3),
    in full and without what a package can leave out (tests, f2py, bytecode caches, stubs)."""
    import numpy

    folder = Path(numpy.__file__).parent
    files = [
        p for d in (folder, folder.parent / "numpy.libs") if d.exists() for p in d.rglob("*") if p.is_file()
    ]
    pruned = [p for p in files if not (set(p.parts) & set(_PRUNABLE)) and p.suffix != ".pyi"]
    return {
        "numpy_version": numpy.__version__,
        "installed_mb": sum(p.stat().st_size for p in files) / 1e6,
        "pruned_mb": sum(p.stat().st_size for p in pruned) / 1e6,
        "measured": str(folder),
    }


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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from lambdas import infer, s3proxy
    from lambdas.core import registry

    results: dict[str, Any] = {"repeats": repeats}
    one, thousand = inputs(1), inputs(1000)
    events = {n: {"httpMethod": "POST", "body": json.dumps(b)} for n, b in (("1", one), ("1000", thousand))}
    with tempfile.TemporaryDirectory() as tmp, ServingStack() as stack:
        model_dir, model = _train_model(Path(tmp) / "model", seed=1)
        s3, reg = stack.clients()
        version = registry.new_version()
        publish(s3, reg, stack.bucket, version, model_dir)
        results["version"] = version
        os.environ["MODEL_SOURCE"] = "proxy"
        os.environ["MODEL_REFRESH_S"] = "3600"  # measure the request path, not the refresh check
        infer.reset()
        s3proxy.reset()
        first = infer.handler(events["1"])
        assert first["statusCode"] == 200, first
        for name, event in events.items():
            results[f"numpy_handler_{name}"] = _time(lambda e=event: infer.handler(e), repeats)
        loaded = infer.model_cache().get()
        results["numpy_forward_only_1"] = _time(
            lambda: loaded.model.predict(np.array([[70.0, 50.0, 0.1, 0.5]])), repeats
        )

        results["cold_start"] = cold_start(json.dumps(one), {"MODEL_SOURCE": "proxy"}, cold_runs)

        rows = {
            n: np.array([[r[k] for k in ("temp", "rh", "wind", "clo")] for r in b], dtype="float32")
            for n, b in (("1", one), ("1000", thousand))
        }
        for name, x in rows.items():
            results[f"tf_predict_{name}"] = _time(
                lambda x=x: model.predict(x, verbose=0), max(20, repeats // 10)
            )
            results[f"tf_call_{name}"] = _time(lambda x=x: model(x, training=False).numpy(), repeats)
        results["tfjs_node"] = tfjs_node(
            f"{stack.api_url}/s3proxy/latest/model.json",
            {"1": rows["1"].tolist(), "1000": rows["1000"].tolist()},
            repeats,
        )
    results["dependencies"] = numpy_footprint()
    results["speedup_vs_tfjs_1"] = results["tfjs_node"]["1"]["p50_us"] / results["numpy_handler_1"]["p50_us"]
    return results


def _report(r: dict[str, Any]) -> str:
    def row(name: str, stats: dict[str, float]) -> str:
        return f"{name:<42} p50 {stats['p50_us']:>10.1f} us   p99 {stats['p99_us']:>10.1f} us"

    lines = [f"model {r['version']}, {r['repeats']} timed repeats per figure"]
    lines += [row("infer handler, warm, 1 input", r["numpy_handler_1"])]
    lines += [row("infer handler, warm, 1,000 inputs", r["numpy_handler_1000"])]
    lines += [row("numpy forward pass only, 1 input", r["numpy_forward_only_1"])]
    for n in ("1", "1000"):
        lines += [row(f"TensorFlow model.predict, {n} input(s)", r[f"tf_predict_{n}"])]
        lines += [row(f"TensorFlow model(x), {n} input(s)", r[f"tf_call_{n}"])]
        lines += [row(f"TensorFlow.js (Node, cpu), {n} input(s)", r["tfjs_node"][n])]
    c, deps = r["cold_start"], r["dependencies"]
    lines += [
        f"cold start (new process -> first answer, via proxy): p50 {c['process_to_answer_ms_p50']:.0f} ms, "
        f"max {c['process_to_answer_ms_max']:.0f} ms (import {c['import_ms_p50']:.0f} ms, "
        f"load + first answer {c['first_answer_ms_p50']:.0f} ms)",
        f"TensorFlow.js load through the proxy: {r['tfjs_node']['load_ms']:.0f} ms",
        f"warm 1-input speed-up over TensorFlow.js in Node: {r['speedup_vs_tfjs_1']:.0f}x",
        f"infer dependencies: numpy {deps['numpy_version']} {deps['installed_mb']:.1f} MB installed, "
        f"{deps['pruned_mb']:.1f} MB without tests/f2py/caches/stubs ({deps['measured']})",
    ]
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
