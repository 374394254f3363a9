"""POST /infer: answers per the contract, validates like the upload, follows latest without a restart."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from lambdas import infer, s3proxy
from lambdas.core import aws, registry
from lambdas.core.errors import NotFound, Unavailable
from lambdas.core.modelstore import LoadedModel, ModelCache, ProxySource
from lambdas.core.schema import LABELS
from scripts.bench_infer import ServingStack, publish
from tests.support.clouds import keyed
from tests.unit.test_tfjs_model import ROOT, hand_model, load_numpy, sample_inputs

EVENTS = Path(__file__).resolve().parents[1] / "events"
V1 = "v20261123T091432Z-1a2b"
V2 = "v20261124T101500Z-3c4d"


@pytest.fixture(autouse=True)
def fresh() -> Any:
    infer.reset()
    s3proxy.reset()
    yield
    infer.reset()
    s3proxy.reset()


def write_model(folder: Path, seed: int) -> Path:
    """A hand-made model as the trainer exports it: in a folder named after its version, its
    weight paths pinned to that version."""
    model_json, files, _ = hand_model(seed)
    for group in model_json["weightsManifest"]:
        group["paths"] = [f"../{folder.name}/{name}" for name in group["paths"]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text(json.dumps(model_json))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def direct(stack: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The infer function reading S3 and the model table directly, refreshing on every request."""
    monkeypatch.setenv("MODEL_SOURCE", "s3")
    monkeypatch.setenv("MODEL_REFRESH_S", "0")
    monkeypatch.setenv("INFER_MAX_BATCH", "10")
    return stack


def post(body: Any) -> tuple[int, dict[str, Any]]:
    out = infer.handler({"httpMethod": "POST", "body": body if isinstance(body, str) else json.dumps(body)})
    return out["statusCode"], json.loads(out["body"])


def publish_hand_model(stack: Any, tmp_path: Path, version: str, seed: int) -> Path:
    folder = write_model(tmp_path / version, seed)
    publish(
        aws.s3(),
        registry.Registry(stack.physical["ModelTable"]),
        stack.physical["ModelBucket"],
        version,
        folder,
    )
    return folder


ROW = {"temp": 72.5, "rh": 40, "wind": 0.1, "clo": 0.6}


def test_infer_answers_labels_probabilities_and_version(direct: Any, tmp_path: Path) -> None:
    folder = publish_hand_model(direct, tmp_path, V1, seed=1)
    rows = [ROW, {"temp": 50, "rh": 80, "wind": 3, "clo": 1.5, "label": "cold"}]
    status, body = post(json.loads((EVENTS / "infer_two_inputs.json").read_text())["body"])
    assert status == 200
    expected = load_numpy(folder).predict(
        np.array([[r[k] for k in ("temp", "rh", "wind", "clo")] for r in rows])
    )
    assert body["version"] == V1
    assert np.abs(np.array(body["rawResult"]) - expected).max() <= 1e-6
    labels = [LABELS[i] for i in expected.argmax(axis=1)]
    assert body["simpleResult"] == labels
    assert [p["label"] for p in body["predictions"]] == labels
    assert [[p["probabilities"][k] for k in LABELS] for p in body["predictions"]] == body["rawResult"]


def test_infer_accepts_the_inputs_envelope_and_large_batches_alike(direct: Any, tmp_path: Path) -> None:
    publish_hand_model(direct, tmp_path, V1, seed=1)
    rows = [{"temp": float(t), "rh": 50, "wind": 0.2, "clo": 0.5} for t in np.linspace(40, 100, 10)]
    _, plain = post(rows)
    status, wrapped = post({"inputs": rows})
    assert status == 200 and wrapped == plain and len(plain["rawResult"]) == 10


def test_infer_fast_and_slow_formatting_agree(direct: Any, tmp_path: Path) -> None:
    folder = publish_hand_model(direct, tmp_path, V1, seed=2)
    x = sample_inputs(40).astype("float64")
    model = load_numpy(folder)
    loaded = LoadedModel(V1, model, 0.0, 0.0)
    big = json.loads(infer.answer(loaded, x))
    small = [json.loads(infer.answer(loaded, x[i : i + 1])) for i in range(len(x))]
    assert big["rawResult"] == [s["rawResult"][0] for s in small]
    assert big["predictions"] == [s["predictions"][0] for s in small]


@pytest.mark.parametrize(
    ("item", "field", "reason"),
    [
        ({"rh": 40, "wind": 0.1, "clo": 0.6}, "temp", "is required"),
        ({**ROW, "temp": "72"}, "temp", "must be a number, got string"),
        ({**ROW, "rh": True}, "rh", "must be a number, got boolean"),
        ({**ROW, "rh": None}, "rh", "is required"),
        ({**ROW, "wind": -1}, "wind", "outside the accepted range"),
        ({**ROW, "clo": 9}, "clo", "outside the accepted range"),
        ({**ROW, "temp": 1e400}, "temp", "must be a finite number"),
        ({**ROW, "temp": [70]}, "temp", "must be a number, got array"),
        ("72,40,0.1,0.6", None, "must be a JSON object"),
    ],
)
def test_infer_rejects_a_bad_input_naming_field_and_index(
    direct: Any, tmp_path: Path, item: Any, field: str | None, reason: str
) -> None:
    publish_hand_model(direct, tmp_path, V1, seed=1)
    status, body = post([ROW, item])
    assert status == 400
    assert body["index"] == 1 and body["field"] == field
    assert reason in body["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "request body is empty"),
        ("{not json", "not valid JSON"),
        ("[]", "no inputs"),
        ('{"samples": []}', 'or {"inputs": [...]}'),
        ('"x"', 'or {"inputs": [...]}'),
    ],
)
def test_infer_rejects_a_malformed_body(direct: Any, body: str, message: str) -> None:
    status, answer = post(body)
    assert status == 400 and message in answer["message"]


def test_infer_rejects_nan_written_as_json(direct: Any, tmp_path: Path) -> None:
    publish_hand_model(direct, tmp_path, V1, seed=1)
    status, body = post('[{"temp": NaN, "rh": 40, "wind": 0.1, "clo": 0.6}]')
    assert status == 400 and body["field"] == "temp" and "finite" in body["message"]


def test_infer_refuses_more_than_the_batch_limit(direct: Any) -> None:
    status, body = post([ROW] * 11)
    assert status == 413
    assert body["message"] == "11 inputs in one request; at most 10 are accepted"


def test_infer_without_a_published_model_is_503(direct: Any) -> None:
    status, body = post([ROW])
    assert status == 503
    assert body["message"] == "no model has been published yet; retry after the first training run"


def test_infer_picks_up_a_new_latest_without_a_restart(direct: Any, tmp_path: Path) -> None:
    publish_hand_model(direct, tmp_path, V1, seed=1)
    _, first = post([ROW])
    publish_hand_model(direct, tmp_path, V2, seed=2)
    _, second = post([ROW])
    assert (first["version"], second["version"]) == (V1, V2)
    assert first["rawResult"] != second["rawResult"]


class FakeSource:
    def __init__(self) -> None:
        self.version: str | None = None
        self.checks = 0
        self.loads = 0
        self.fail = False

    def current_version(self) -> str | None:
        self.checks += 1
        if self.fail:
            raise OSError("proxy unreachable")
        return self.version

    def load(self) -> LoadedModel | None:
        self.loads += 1
        if self.fail:
            raise OSError("proxy unreachable")
        model_json, files, _ = hand_model()
        from lambdas.core.tfjs_model import parse

        return (
            None
            if self.version is None
            else LoadedModel(self.version, parse(model_json, files.__getitem__), 0, 0)
        )


def test_model_cache_checks_latest_at_most_every_refresh_interval() -> None:
    now = [0.0]
    source = FakeSource()
    source.version = V1
    cache = ModelCache(source, refresh_s=30, clock=lambda: now[0])
    assert cache.get().version == V1
    source.version = V2
    now[0] = 29.0
    assert cache.get().version == V1 and source.checks == 0
    now[0] = 30.0
    assert cache.get().version == V2
    assert (source.checks, source.loads) == (1, 2)


def test_model_cache_keeps_serving_when_the_check_fails() -> None:
    now = [0.0]
    source = FakeSource()
    source.version = V1
    cache = ModelCache(source, refresh_s=5, clock=lambda: now[0])
    cache.get()
    source.fail, now[0] = True, 10.0
    assert cache.get().version == V1


def test_model_cache_without_model_retries_at_most_every_second() -> None:
    now = [0.0]
    source = FakeSource()
    cache = ModelCache(source, refresh_s=30, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(Unavailable, match="no model has been published yet"):
            cache.get()
    assert source.loads == 1
    source.version, now[0] = V1, 1.0
    assert cache.get().version == V1


def test_infer_answers_a_warmup_event_without_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MODEL_TABLE", "MODEL_BUCKET", "API_URL"):
        monkeypatch.delenv(name, raising=False)
    assert infer.handler(json.loads((EVENTS / "infer_warmup.json").read_text())) == {"warm": True}
    assert infer.handler({"source": "aws.events", "detail-type": "Scheduled Event"}) == {"warm": True}


def test_infer_has_no_tensorflow_import() -> None:
    code = "import sys, lambdas.infer, lambdas.s3proxy, lambdas.models; print('tensorflow' in sys.modules)"
    out = subprocess.run(["python", "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


# through the proxy, like a TensorFlow.js client --------------------------------------------


@pytest.fixture
def serving(tmp_path: Path) -> Any:
    with ServingStack(stage="test") as stack:
        yield stack


@pytest.mark.slow
def test_infer_loads_through_the_proxy_and_never_mixes_versions(serving: Any, tmp_path: Path) -> None:
    s3, reg = serving.clients()
    publish(s3, reg, serving.bucket, V1, write_model(tmp_path / V1, seed=1))
    source = ProxySource(f"{serving.api_url}/s3proxy/latest/model.json")
    assert source.current_version() == V1

    real_get = source._get
    published = []

    def get_then_publish(url: str) -> tuple[bytes, str]:
        result = real_get(url)
        if url.endswith("/latest/model.json") and not published:  # a new latest lands mid-load
            publish(s3, reg, serving.bucket, V2, write_model(tmp_path / V2, seed=2))
            published.append(V2)
        return result

    source._get = get_then_publish  # type: ignore[method-assign]
    loaded = source.load()
    assert loaded is not None and loaded.version == V1 and published == [V2]
    x = sample_inputs(5).astype("float64")
    assert np.allclose(loaded.model.predict(x), load_numpy(tmp_path / V1).predict(x))
    # the proxy (its own process) resolves latest through a cache of about a second
    deadline = time.monotonic() + 10
    while source.current_version() != V2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert source.current_version() == V2


@pytest.mark.slow
def test_infer_handler_via_proxy_and_tensorflow_js_agree(serving: Any, tmp_path: Path) -> None:
    s3, reg = serving.clients()
    folder = write_model(tmp_path / V1, seed=3)
    publish(s3, reg, serving.bucket, V1, folder)
    rows = [{"temp": 60 + i, "rh": 30 + i, "wind": 0.1 * i, "clo": 0.5} for i in range(5)]
    # infer in its own worker
    reply = requests.post(f"{serving.api_url}/infer", json=rows, headers=keyed(serving), timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["version"] == V1
    done = subprocess.run(
        ["node", str(ROOT / "tests/js/tfjs_predict.mjs"), f"{serving.api_url}/s3proxy/latest/model.json"],
        input=json.dumps([[r[k] for k in ("temp", "rh", "wind", "clo")] for r in rows]),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert np.abs(np.array(body["rawResult"]) - np.array(json.loads(done.stdout))).max() <= 1e-5


@pytest.mark.parametrize("folder", ["unpinned", V2], ids=["bare shard name", "pinned to another version"])
def test_publish_refuses_a_model_not_pinned_to_its_version(stack: Any, tmp_path: Path, folder: str) -> None:
    model_dir = write_model(tmp_path / folder, seed=1)
    reg = registry.Registry(stack.physical["ModelTable"])
    with pytest.raises(ValueError, match=f"weight path .* is not pinned to {V1}"):
        publish(aws.s3(), reg, stack.physical["ModelBucket"], V1, model_dir)
    assert aws.s3().list_objects_v2(Bucket=stack.physical["ModelBucket"]).get("KeyCount") == 0
    with pytest.raises(NotFound):
        reg.get_run(V1)
    assert reg.latest_version() is None
