"""TensorFlow.js export to ``s3://$MODEL_BUCKET/<prefix><version>/`` and loading a published model back.

A published model.json names its weight shards as ``../<version>/<shard>``. TensorFlow.js
resolves them against the directory of the URL it loaded model.json from, so a client that
loaded ``/s3proxy/latest/model.json`` fetches ``/s3proxy/<version>/<shard>``: an immutable
file of the same version, never the shard of a model published in between.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tf_keras as keras

from lambdas.core.schema import FEATURES, LABELS

MODEL_JSON = "model.json"
METADATA_JSON = "metadata.json"


def _tfjs() -> Any:
    # Imported on use: tensorflowjs pulls in jax and decision forests, seconds of start-up.
    import tensorflowjs

    return tensorflowjs


def save_tfjs(model: keras.Model, directory: Path, version: str) -> list[Path]:
    """Write the TF.js Layers files into ``directory`` with self-pinning weight paths.

    Returns the files in upload order: shards first, model.json last.
    """
    directory.mkdir(parents=True, exist_ok=True)
    _tfjs().converters.save_keras_model(model, str(directory))
    model_json = directory / MODEL_JSON
    document = json.loads(model_json.read_text())
    shards: list[Path] = []
    for group in document["weightsManifest"]:
        pinned = []
        for name in group["paths"]:
            shard = Path(name).name
            shards.append(directory / shard)
            pinned.append(f"../{version}/{shard}")
        group["paths"] = pinned
    model_json.write_text(json.dumps(document, separators=(",", ":")))
    return [*shards, model_json]


def metadata(version: str, **fields: Any) -> dict[str, Any]:
    """What a client needs to feed the model and what produced it."""
    return {
        "version": version,
        "format": "tfjs-layers",
        "inputs": [
            {"name": f.name, "unit": f.unit, "description": f.description, "min": f.minimum, "max": f.maximum}
            for f in FEATURES
        ],
        "input_shape": [None, len(FEATURES)],
        "labels": list(LABELS),
        "output": "softmax probabilities in labels order",
        **fields,
    }


def content_type(name: str) -> str:
    return "application/json" if name.endswith(".json") else "application/octet-stream"


def publish(
    s3: Any, bucket: str, prefix: str, version: str, files: list[Path], meta: dict[str, Any]
) -> list[str]:
    """Upload the weight shards and metadata, then model.json last: a model.json that can be
    read always has its weights already in place. Returns the keys written, in order."""
    base = f"{prefix}{version}/"
    model_json = [f for f in files if f.name == MODEL_JSON]
    others = [f for f in files if f.name != MODEL_JSON]
    keys: list[str] = []
    for path in others:
        s3.put_object(
            Bucket=bucket, Key=base + path.name, Body=path.read_bytes(), ContentType=content_type(path.name)
        )
        keys.append(base + path.name)
    s3.put_object(
        Bucket=bucket,
        Key=base + METADATA_JSON,
        Body=json.dumps(meta, indent=2, default=str).encode(),
        ContentType="application/json",
    )
    keys.append(base + METADATA_JSON)
    for path in model_json:
        s3.put_object(
            Bucket=bucket, Key=base + path.name, Body=path.read_bytes(), ContentType="application/json"
        )
        keys.append(base + path.name)
    return keys


def load_published(s3: Any, bucket: str, prefix: str, version: str) -> keras.Model:
    """Rebuild a published model in tf_keras from its model.json and shards in S3."""
    base = f"{prefix}{version}/"
    with tempfile.TemporaryDirectory(prefix="baseline-") as tmp:
        folder = Path(tmp) / version
        folder.mkdir()
        body = s3.get_object(Bucket=bucket, Key=base + MODEL_JSON)["Body"].read()
        (folder / MODEL_JSON).write_bytes(body)
        for group in json.loads(body)["weightsManifest"]:
            for name in group["paths"]:
                shard = Path(name).name
                data = s3.get_object(Bucket=bucket, Key=base + shard)["Body"].read()
                (folder / shard).write_bytes(data)
        # The pinned "../<version>/<shard>" paths resolve inside the temporary folder too.
        return _tfjs().converters.load_keras_model(str(folder / MODEL_JSON))
