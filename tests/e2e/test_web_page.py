"""The web page in headless Chromium against a local cloud holding three real training runs.

The local cloud runs without drivers and without the traffic schedule, so nothing trains or
writes behind the test's back: the runs are made by the real trainer, in this process, on
synthetic samples written to the data table. tests/js/page_test.mjs drives the page and
reports what it saw; this module checks the report against the API and the tables.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lambdas.core import comfort, live
from lambdas.core.registry import Registry
from lambdas.core.schema import FEATURE_NAMES, LABELS
from localcloud import infra
from localcloud.cloud import LocalCloud
from scripts import build_web
from tests.support import live as live_support
from tests.support.clouds import keyed

ROOT = infra.ROOT
WEB = ROOT / "web"
PAGE_TEST = ROOT / "tests" / "js" / "page_test.mjs"
CHROMIUM = Path("/usr/bin/chromium")
CREATED = 1_790_000_000_000
FIRST, SECOND = 600, 300  # samples before the first run, added before the second
INPUTS = [[75.0, 45, 0.15, 0.7], [68.2, 30, 0.4, 0.5], [84.6, 65, 0.08, 1.1]]
# Live counts as the score function would leave them (the quiet cloud runs no stream reader):
# the first model scores 20 samples when promoted, the second 20 per bucket from its promotion on.
BUCKET_S = 10
FIRST_LIVE = (18, 2)
SECOND_LIVE = [(19, 1), (17, 3), (14, 6), (16, 4), (18, 2)]  # (correct, wrong) per bucket


# --- what the page is made of (fast) -----------------------------------------------------------


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[str, dict[str, str]] = {}
        self.labels: set[str] = set()
        self.scripts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "input" and a.get("type") == "range":
            self.inputs[a["id"]] = a
        elif tag == "label" and "for" in a:
            self.labels.add(a["for"])
        elif tag == "script" and "src" in a:
            self.scripts.append(a["src"])


def _page() -> _Inputs:
    parser = _Inputs()
    parser.feed((WEB / "index.html").read_text())
    return parser


def test_web_page_sliders_follow_the_data_ranges_in_model_order() -> None:
    page = _page()
    assert list(page.inputs) == list(FEATURE_NAMES)
    for name, (low, high) in comfort.INPUT_RANGES.items():
        spec = page.inputs[name]
        assert (float(spec["min"]), float(spec["max"])) == (low, high), name
        assert float(spec["step"]) == 10.0 ** -comfort.DECIMALS[name], name
        assert low <= float(spec["value"]) <= high, name
    assert page.labels >= set(FEATURE_NAMES)  # every slider has a label


def test_web_page_loads_tfjs_locally_and_knows_the_model_order() -> None:
    page = _page()
    assert page.scripts == ["config.js", "vendor/tf.min.js", "app.js"]  # relative: no CDN
    app = (WEB / "app.js").read_text()
    assert "const FEATURES = [" + ", ".join(f'"{n}"' for n in FEATURE_NAMES) + "];" in app
    assert "const LABELS = [" + ", ".join(f'"{n}"' for n in LABELS) + "];" in app
    code = "".join((WEB / name).read_text() for name in ("app.js", "api.js", "chart.js", "livechart.js"))
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", code)


def test_build_web_assembles_the_page_tfjs_and_the_api_url(tmp_path: Path) -> None:
    out = tmp_path / "site"
    assert build_web.main(["--out", str(out), "--api", "https://api.example.com/prod/"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [
            "index.html",
            "app.js",
            "api.js",
            "chart.js",
            "livechart.js",
            "style.css",
            "config.js",
            "vendor/tf.min.js",
        ]
    )
    assert (out / "vendor" / "tf.min.js").read_bytes() == build_web.TFJS.read_bytes()
    assert 'window.AUTORETRAIN_API = "https://api.example.com/prod";' in (out / "config.js").read_text()
    # Rebuilding replaces the folder; same-origin when no API is named.
    assert build_web.main(["--out", str(out)]) == 0
    assert 'window.AUTORETRAIN_API = "";' in (out / "config.js").read_text()


@pytest.mark.parametrize("url", ["ftp://example.com", "example.com/x", "https://x.example/?a=1", "https://"])
def test_build_web_refuses_a_bad_api_url(tmp_path: Path, url: str, capsys: pytest.CaptureFixture) -> None:
    assert build_web.main(["--out", str(tmp_path / "site"), "--api", url]) == 1
    assert "--api must be an http(s) URL" in capsys.readouterr().err
    assert not (tmp_path / "site").exists()


def test_build_web_refuses_to_replace_a_folder_it_did_not_build(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    assert build_web.main(["--out", str(tmp_path)]) == 1
    assert (tmp_path / "notes.txt").read_text() == "keep me"


# --- the page in a browser ------------------------------------------------------------------


def _quiet_cloud(state: Path) -> LocalCloud:
    """A local cloud where nothing happens unless the test does it: no drivers, no traffic."""
    return LocalCloud(
        state,
        drivers=(),
        schedule_overrides={"traffic": {"enabled": False}},
        function_log=state / "functions.log",
        say=lambda line: None,
    )


def _drive(cloud: LocalCloud, spec: dict[str, Any], folder: Path) -> subprocess.Popen[str]:
    """The page as a user with the default client's key opens it: ``?key=`` in its address."""
    (folder / "spec.json").write_text(json.dumps(spec))
    page = f"{cloud.api_url}/?{urllib.parse.urlencode({'key': cloud.api_key})}"
    return subprocess.Popen(
        ["node", str(PAGE_TEST), page, str(folder / "spec.json")],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _report(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


# Runs before the module's shared cloud starts: one local cloud per process at a time.
@pytest.mark.slow
@pytest.mark.e2e
def test_web_page_without_a_model_says_so_and_still_takes_feedback(tmp_path: Path) -> None:
    with _quiet_cloud(tmp_path / "state") as cloud:
        api = cloud.api_url
        with pytest.raises(urllib.error.HTTPError) as infer:
            _post_json(f"{api}/infer", [{"temp": 75, "rh": 45, "wind": 0.15, "clo": 0.7}], keyed(cloud))
        assert infer.value.code == 503
        proc = _drive(cloud, {"inputs": [], "feel": "ok", "screenshots": {}}, tmp_path)
        stdout, stderr = proc.communicate(timeout=90)
        assert proc.returncode == 0, stderr
        report = _report(stdout)
        assert report["pageErrors"] == []
        assert report["version"] == ""
        assert report["status"].startswith("No model has been published yet.")
        assert report["predictions"] == []
        assert report["chart"] == {"points": [], "label": None, "tableRows": 0}
        assert report["live"]["points"] == [] and report["live"]["markers"] == []
        assert report["live"]["text"] == "No model is serving yet."
        assert report["feedback"]["kind"] == "ok", report["feedback"]["text"]
        item = cloud.client("dynamodb").get_item(
            TableName=cloud.stack.table_name("DataTable"), Key={"id": {"S": report["feedback"]["id"]}}
        )["Item"]
        assert item["label"] == {"S": "ok"}


@dataclass
class World:
    cloud: LocalCloud
    registry: Registry
    data_table: str
    published: list[str]  # oldest first
    rejected: str
    promoted_at: list[str]  # when each published run became latest (its history entry)


def _write(ddb: Any, table: str, samples: list[dict[str, Any]], start: int) -> None:
    from tests.integration.test_trainer_publish import write_samples

    # write_samples numbers ids from 0; a prefix per batch keeps them unique.
    write_samples(ddb, table, samples, prefix=f"web{start}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from tests.unit.test_trainer_imds import FakeImds
    from trainer import data
    from trainer.config import Settings
    from trainer.run import run

    cloud = _quiet_cloud(tmp_path_factory.mktemp("cloud"))
    with cloud, FakeImds(instance_id="i-0web0page0000001") as imds:
        env = {
            k: str(cloud.stack.resolve_intrinsics(v))
            for k, v in cloud.stack.config["provider"]["environment"].items()
        }
        ddb, s3 = cloud.client("dynamodb"), cloud.client("s3")
        base = {**env, "IMDS_ENDPOINT": imds.endpoint, "SPOT_POLL_SECONDS": "0.5", "EPOCHS": "40"}

        samples = comfort.generate(FIRST + SECOND, 20261124, 0.05, now_ms=CREATED)
        _write(ddb, env["DATA_TABLE"], samples[:FIRST], 1)
        first = run(Settings.from_env(base), ddb=ddb, s3=s3)
        _write(ddb, env["DATA_TABLE"], samples[FIRST:], 2)
        # Promoted whatever the small difference in accuracy: the chart needs two published runs.
        second = run(Settings.from_env({**base, "GATE_TOLERANCE": "1"}), ddb=ddb, s3=s3)

        # A candidate trained on shuffled labels (the holdout's kept) fails the gate.
        shuffled = env["DATA_TABLE"] + "-shuffled"
        ddb.create_table(
            TableName=shuffled,
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        copied = ddb.scan(TableName=env["DATA_TABLE"])["Items"]
        trainable = [i for i, item in enumerate(copied) if not data.in_holdout(item["id"]["S"], 10)]
        labels = [copied[i]["label"] for i in trainable]
        np.random.default_rng(5).shuffle(labels)
        for i, label in zip(trainable, labels, strict=True):
            copied[i]["label"] = label
        for start in range(0, len(copied), 25):
            chunk = copied[start : start + 25]
            ddb.batch_write_item(RequestItems={shuffled: [{"PutRequest": {"Item": it}} for it in chunk]})
        third = run(Settings.from_env({**base, "DATA_TABLE": shuffled, "EPOCHS": "15"}), ddb=ddb, s3=s3)

        assert [first.status, second.status, third.status] == ["published", "published", "rejected"]
        reg = Registry(env["MODEL_TABLE"], ddb)
        history, _ = reg.list_history()
        assert [(h["action"], h["version"]) for h in history] == [
            ("auto", first.version),
            ("auto", second.version),
        ]
        promoted_at = [str(h["at"]) for h in history]
        first_ms, second_ms = (_ms(at) for at in promoted_at)
        scored = live_support.outcomes(first.version, first_ms, *FIRST_LIVE)
        for k, (correct, wrong) in enumerate(SECOND_LIVE):
            scored += live_support.outcomes(second.version, second_ms + k * BUCKET_S * 1000, correct, wrong)
        live_support.record(ddb, env["MODEL_TABLE"], scored, BUCKET_S)
        yield World(
            cloud, reg, env["DATA_TABLE"], [first.version, second.version], third.version, promoted_at
        )


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _iso(when: datetime) -> str:
    """As the page shows times: JavaScript's toISOString, whole seconds without ".000"."""
    text = when.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z").replace(".000Z", "Z")


def _post_json(url: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return answer.status, json.loads(answer.read())


def _wait_for_proxy_latest(api: str, version: str) -> None:
    """Until the proxy's latest pointer (cached for a second) names ``version``."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    deadline = time.monotonic() + 20
    while True:
        try:
            opener.open(f"{api}/s3proxy/latest/model.json", timeout=10)
        except urllib.error.HTTPError as err:
            if err.code == 302 and f"/{version}/model.json" in err.headers["Location"]:
                return
        assert time.monotonic() < deadline, "the proxy never pointed latest at the new version"
        time.sleep(0.2)


@dataclass
class Browsed:
    report: dict[str, Any]
    ready: dict[str, Any]
    infer_before_switch: dict[str, Any]
    screenshots: list[Path]


@pytest.fixture(scope="module")
def browsed(world: World, tmp_path_factory: pytest.TempPathFactory) -> Browsed:
    assert CHROMIUM.exists(), "Debian's chromium is required (make install installs it)"
    out = tmp_path_factory.mktemp("page")
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shots = [out / "web-page.png", out / "web-page-narrow.png"]
    spec = {
        "inputs": INPUTS,
        "feel": "warm",
        "screenshots": {"wide": [str(shots[0])], "narrow": [str(shots[1])]},
        "pauseForSwitch": True,
    }
    api = world.cloud.api_url
    proc = _drive(world.cloud, spec, out)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line, f"the page test ended early:\n{proc.stderr.read() if proc.stderr else ''}"
        ready = json.loads(line)
        assert ready["event"] == "ready"
        # /infer for the same inputs while the page's model is still latest.
        inputs = [dict(zip(FEATURE_NAMES, row, strict=True)) for row in INPUTS]
        status, infer = _post_json(f"{api}/infer", inputs, keyed(world.cloud))
        assert status == 200
        # Roll latest back to the first published model; the page must follow.
        world.registry.promote(world.published[0], reason="page test rollback", actor="test")
        _wait_for_proxy_latest(api, world.published[0])
        stdout, stderr = proc.communicate("go\n", timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    report = _report(stdout)
    for shot in shots:
        shutil.copy(shot, artifacts / shot.name)
    return Browsed(report, ready, infer, shots)


@pytest.mark.slow
@pytest.mark.e2e
def test_web_page_loads_the_latest_model_through_the_proxy(world: World, browsed: Browsed) -> None:
    report = browsed.report
    latest = world.published[1]
    assert report["pageErrors"] == []
    assert report["version"] == latest
    assert report["backend"] == "cpu"
    assert f"Model {latest} loaded" in report["status"]
    api = world.cloud.api_url
    assert f"{api}/vendor/tf.min.js" in report["requests"]
    assert f"{api}/s3proxy/latest/model.json" in report["requests"]
    # The weights come from the version's own, immutable folder, as model.json pins them.
    assert f"{api}/s3proxy/{latest}/group1-shard1of1.bin" in report["requests"]
    redirects = [r for r in report["responses"] if r["url"].startswith(f"{api}/s3proxy/")]
    assert redirects and all(r["status"] == 302 for r in redirects)
    assert any(r["url"].startswith(world.cloud.aws_url) and r["status"] == 200 for r in report["responses"])


@pytest.mark.slow
@pytest.mark.e2e
def test_web_page_prediction_equals_infer_for_the_same_inputs(world: World, browsed: Browsed) -> None:
    predictions = browsed.report["predictions"]
    infer = browsed.infer_before_switch
    assert infer["version"] == world.published[1]
    assert [p["inputs"] for p in predictions] == INPUTS
    worst = 0.0
    for shown, expected in zip(predictions, infer["predictions"], strict=True):
        assert shown["version"] == infer["version"]
        assert shown["label"] == expected["label"] == shown["text"]
        for label in LABELS:
            worst = max(worst, abs(shown["probabilities"][label] - expected["probabilities"][label]))
        assert len(shown["bars"]) == len(LABELS)
    print(f"max |browser - /infer| over {len(INPUTS)} inputs: {worst:.2g}")
    assert worst <= 1e-4
    keyboard = browsed.report["keyboard"]
    assert keyboard["after"] == pytest.approx(keyboard["before"] + 0.2)
    assert keyboard["prediction"]["inputs"][0] == pytest.approx(keyboard["after"])


@pytest.mark.slow
@pytest.mark.e2e
def test_web_page_feedback_adds_a_sample_to_the_data_table(world: World, browsed: Browsed) -> None:
    feedback = browsed.report["feedback"]
    assert feedback["kind"] == "ok", feedback["text"]
    assert 'recorded "warm"' in feedback["text"]
    item = world.cloud.client("dynamodb").get_item(
        TableName=world.data_table, Key={"id": {"S": feedback["id"]}}, ConsistentRead=True
    )["Item"]
    temp, rh, wind, clo = INPUTS[0]
    assert {name: float(item[name]["N"]) for name in FEATURE_NAMES} == {
        "temp": temp,
        "rh": rh,
        "wind": wind,
        "clo": clo,
    }
    assert item["label"] == {"S": "warm"}
    assert item["source"] == {"S": "api"}
    assert item["client"] == {"S": "default"}  # the key the page was given: the default client's
    assert item["client_id"]["S"].startswith("web-")


@pytest.mark.slow
@pytest.mark.e2e
def test_web_page_shows_the_api_error_and_writes_nothing(world: World, browsed: Browsed) -> None:
    rejected = browsed.report["rejected"]
    assert rejected["kind"] == "error"
    assert rejected["id"] is None
    assert rejected["text"] == (
        "Not recorded. HTTP 400: sample 0: field 'rh' is 120 %, outside the accepted range 0 to 100"
        ' (field "rh")'
    )
    items = world.cloud.client("dynamodb").scan(TableName=world.data_table)["Items"]
    assert len(items) == FIRST + SECOND + 1  # the trainer's samples and the one good feedback
    assert not [i for i in items if i["label"]["S"] == "cold" and i.get("client_id")]


@pytest.mark.slow
@pytest.mark.e2e
def test_web_page_shows_metrics_lineage_and_one_chart_point_per_version(
    world: World, browsed: Browsed
) -> None:
    report = browsed.report
    runs, _ = world.registry.list_runs()
    latest_run = world.registry.get_run(world.published[1])
    metrics = report["metrics"]
    assert metrics["version"] == world.published[1]
    assert metrics["status"] == "published (latest)"
    accuracy = latest_run["metrics"]["holdout"]["accuracy"]
    assert metrics["accuracy"].startswith(f"{float(accuracy) * 100:.1f} %")
    assert metrics["samples"].startswith(f"{FIRST + SECOND} samples")
    assert metrics["instance"] == "i-0web0page0000001"
    assert metrics["gate"].startswith("promote")
    assert metrics["watermark"] == _iso(datetime.fromtimestamp(int(latest_run["watermark"]) / 1000, UTC))
    assert metrics["trained_at"] == _iso(datetime.fromisoformat(latest_run["ended_at"]))
    assert report["perClassRows"] == len(LABELS)

    points = report["chart"]["points"]
    oldest_first = [run["version"] for run in reversed(runs)]
    assert [p["version"] for p in points] == oldest_first == [*world.published, world.rejected]
    assert [p["status"] for p in points] == ["published", "published", "rejected"]
    assert [p["latest"] for p in points] == [False, True, False]
    assert [p["marked"] for p in points] == [
        {"ring": False, "cross": False},
        {"ring": True, "cross": False},
        {"ring": False, "cross": True},
    ]
    assert [p["samples"] for p in points] == [FIRST, FIRST + SECOND, FIRST + SECOND]
    assert report["chart"]["tableRows"] == len(runs)


def _serving(world: World) -> list[tuple[str, int, int, str]]:
    """What GET /models?live=serving should give the chart, oldest first: per time bucket its
    start, samples, correct ones, and the version that scored most of them (a later version on a
    tie, as lambdas/models.py picks)."""
    merged: dict[int, dict[str, tuple[int, int]]] = {}
    first_ms, second_ms = (_ms(at) for at in world.promoted_at)
    scored = [(world.published[0], first_ms, FIRST_LIVE)]
    scored += [(world.published[1], second_ms + k * BUCKET_S * 1000, cw) for k, cw in enumerate(SECOND_LIVE)]
    for version, at_ms, (correct, wrong) in scored:
        merged.setdefault(live.bucket_start_ms(at_ms, BUCKET_S), {})[version] = (correct + wrong, correct)
    out = []
    for start, versions in sorted(merged.items()):
        top = max(versions, key=lambda v: (versions[v][0], v))
        seen, correct = (sum(n[i] for n in versions.values()) for i in (0, 1))
        out.append((live.iso(start), seen, correct, top))
    return out


@pytest.mark.slow
@pytest.mark.e2e
def test_web_page_charts_live_accuracy_of_the_serving_model_across_retrains(
    world: World, browsed: Browsed
) -> None:
    shown = browsed.report["live"]
    assert shown["version"] == world.published[1]
    # One point per time bucket, oldest first, whichever version served it: the first model's
    # bucket and then the second's, on one line.
    expected = _serving(world)
    assert [p["start"] for p in shown["points"]] == [start for start, *_ in expected]
    assert [(p["accuracy"], p["seen"]) for p in shown["points"]] == [
        (pytest.approx(correct / seen), seen) for _, seen, correct, _ in expected
    ]
    assert all(p["ciLow"] < p["accuracy"] < p["ciHigh"] for p in shown["points"])
    assert shown["band"] is True
    xs = [p["x"] for p in shown["points"]]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    # The holdout of the version serving each span: a step at the retrain.
    spans = [top for i, (*_, top) in enumerate(expected) if i == 0 or expected[i - 1][3] != top]
    holdout = {v: world.registry.get_run(v)["metrics"]["holdout"]["accuracy"] for v in world.published}
    assert [(h["version"], h["accuracy"]) for h in shown["holdouts"]] == [
        (v, pytest.approx(holdout[v])) for v in spans
    ]
    # The retrains that made each published run latest, on the same time axis.
    assert [(m["action"], m["version"], m["at"]) for m in shown["markers"]] == [
        ("auto", world.published[0], world.promoted_at[0]),
        ("auto", world.published[1], world.promoted_at[1]),
    ]
    first, second = (m["x"] for m in shown["markers"])
    assert 0 < first <= second < xs[-1] < shown["width"]
    # The run the gate rejected is marked where it started; published runs are not marked twice.
    rejected = world.registry.get_run(world.rejected)
    assert [(r["status"], r["version"], r["at"]) for r in shown["runs"]] == [
        ("rejected", world.rejected, rejected["started_at"])
    ]
    assert second <= shown["runs"][0]["x"] < shown["width"]
    # After the rollback the chart keeps the same line (the serving model's history), now naming
    # the version serving, and marks the rollback.
    after = browsed.report["afterSwitch"]["live"]
    assert after["version"] == world.published[0]
    assert [(p["start"], p["seen"]) for p in after["points"]] == [
        (start, seen) for start, seen, *_ in expected
    ]
    assert [(m["action"], m["version"]) for m in after["markers"]] == [
        ("auto", world.published[0]),
        ("auto", world.published[1]),
        ("rollback", world.published[0]),
    ]


@pytest.mark.slow
@pytest.mark.e2e
def test_web_page_follows_latest_when_it_moves(world: World, browsed: Browsed) -> None:
    after = browsed.report["afterSwitch"]
    assert after["version"] == world.published[0]
    assert after["prediction"]["version"] == world.published[0]
    assert [p["latest"] for p in after["chart"]["points"]] == [True, False, False]
    api = world.cloud.api_url
    assert f"{api}/s3proxy/{world.published[0]}/group1-shard1of1.bin" in browsed.report["requests"]


@pytest.mark.slow
@pytest.mark.e2e
def test_web_page_is_readable_on_a_narrow_screen_and_saves_screenshots(browsed: Browsed) -> None:
    narrow = browsed.report["narrow"]
    assert narrow["scrollWidth"] <= narrow["innerWidth"]
    for shot in browsed.screenshots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (ROOT / "artifacts" / shot.name).read_bytes() == shot.read_bytes()
