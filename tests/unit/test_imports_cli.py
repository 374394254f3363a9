"""`python -m scripts.models import`: the streamed multipart body and the usage errors."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3.filepost

from scripts import models as cli

FIELDS = {
    "key": "imports/imp-0123456789abcdef.csv",
    "x-amz-algorithm": "AWS4-HMAC-SHA256",
    "x-amz-credential": "AKIDEXAMPLE/20261130/us-east-1/s3/aws4_request",
    "x-amz-date": "20261130T120000Z",
    "x-amz-security-token": "token/with+odd=chars",
    "policy": "eyJjb25kaXRpb25zIjogW119",
    "x-amz-signature": "0" * 64,
}
BOUNDARY = "0123456789abcdef0123456789abcdef"


class RecordingFile(io.BytesIO):
    """A file that remembers the size of every read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        self.reads.append(-1 if size is None else size)
        return super().read(size)


def requests_body(monkeypatch: pytest.MonkeyPatch, filename: str, data: bytes) -> tuple[bytes, str]:
    """What requests builds for the same form, with the same boundary."""
    monkeypatch.setattr(urllib3.filepost, "choose_boundary", lambda: BOUNDARY)
    prepared = requests.Request(
        "POST", "https://bucket.example/", data=FIELDS, files={"file": (filename, data)}
    ).prepare()
    return bytes(prepared.body), prepared.headers["Content-Type"]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("filename", "size", "chunk"),
    [("history.csv", 10_000, 1024), ("h.jsonl", 1, 7), ('odd "name".csv', 4096, 4096), ("é.csv", 5, 1 << 20)],
)
def test_import_cli_streamed_body_is_byte_for_byte_what_requests_builds(
    monkeypatch: pytest.MonkeyPatch, filename: str, size: int, chunk: int
) -> None:
    data = bytes(i % 251 for i in range(size))
    expected, content_type = requests_body(monkeypatch, filename, data)
    body = cli.MultipartFile(FIELDS, filename, io.BytesIO(data), size, boundary=BOUNDARY, chunk=chunk)
    assert body.content_type == content_type
    assert len(body) == len(expected)
    streamed = b"".join(iter(lambda: body.read(8192), b""))
    assert streamed == expected


def test_import_cli_reads_the_file_a_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"x" * 100_000
    fp = RecordingFile(data)
    body = cli.MultipartFile(FIELDS, "big.csv", fp, len(data), chunk=4096)
    sizes = []
    while piece := body.read(16384):  # urllib3's blocksize
        sizes.append(len(piece))
        assert len(body._buffer) <= 16384 + 4096  # never more than a read and a chunk held
    assert sum(sizes) == len(body)
    assert max(fp.reads) <= 4096 and -1 not in fp.reads
    # Every byte of the file in chunks of at most 4096, then one read to see the end.
    assert sum(fp.reads[:-1]) == len(data) and fp.reads[-1] == 1


def test_import_cli_body_has_the_length_requests_sends_as_content_length() -> None:
    data = b"temp,rh,wind,clo,label\n"
    body = cli.MultipartFile(FIELDS, "h.csv", io.BytesIO(data), len(data))
    prepared = requests.Request(
        "POST", "https://bucket.example/", data=body, headers={"Content-Type": body.content_type}
    ).prepare()
    assert prepared.headers["Content-Length"] == str(len(body))
    assert "Transfer-Encoding" not in prepared.headers  # S3's POST refuses a chunked body
    assert prepared.body is body  # streamed, not copied


def test_import_cli_body_refuses_a_file_that_changed_size() -> None:
    body = cli.MultipartFile(FIELDS, "h.csv", io.BytesIO(b"abc"), 10)
    with pytest.raises(OSError, match="shrank"):
        while body.read(4):
            pass
    body = cli.MultipartFile(FIELDS, "h.csv", io.BytesIO(b"abcdef"), 3)
    with pytest.raises(OSError, match="grew"):
        while body.read(4):
            pass


# usage errors: exit status 2, before any request ------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("no request expected")

    monkeypatch.setattr(requests, "post", refuse)
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.delenv("API_URL", raising=False)


def test_import_cli_without_a_format_for_an_unknown_extension_is_a_usage_error(
    tmp_path: Path, no_network: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "history.txt"
    path.write_text("temp,rh,wind,clo,label\n")
    assert cli.main(["import", str(path), "--api", "http://127.0.0.1:1"]) == 2
    assert "use --format csv|jsonl" in capsys.readouterr().err


def test_import_cli_with_a_missing_file_is_a_usage_error(
    tmp_path: Path, no_network: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["import", str(tmp_path / "nope.csv"), "--api", "http://127.0.0.1:1"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_import_cli_with_an_empty_file_is_a_usage_error(
    tmp_path: Path, no_network: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    assert cli.main(["import", str(path), "--api", "http://127.0.0.1:1"]) == 2
    assert "is empty" in capsys.readouterr().err


def test_import_cli_with_an_unknown_format_is_a_usage_error(tmp_path: Path, no_network: None) -> None:
    path = tmp_path / "h.csv"
    path.write_text("x\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["import", str(path), "--format", "xlsx"])
    assert exit_.value.code == 2  # argparse's own usage error


def test_import_cli_without_an_api_is_a_usage_error(
    tmp_path: Path, no_network: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no .localcloud/endpoints.json here
    path = tmp_path / "h.csv"
    path.write_text("x\n")
    assert cli.main(["import", str(path)]) == 2
    assert "no API" in capsys.readouterr().err


def test_import_cli_finds_the_api_as_the_other_commands_find_the_local_cloud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("API_URL", raising=False)
    endpoints = tmp_path / "endpoints.json"
    endpoints.write_text(json.dumps({"api": "http://127.0.0.1:8123", "aws": "http://127.0.0.1:5000"}))
    assert cli.api_base(None, endpoints) == "http://127.0.0.1:8123"
    monkeypatch.setenv("API_URL", "https://abc.execute-api.us-east-1.amazonaws.com/dev/")
    assert cli.api_base(None, endpoints) == "https://abc.execute-api.us-east-1.amazonaws.com/dev"
    assert cli.api_base("http://localhost:9", endpoints) == "http://localhost:9"


@pytest.mark.parametrize(("name", "fmt"), [("a.csv", "csv"), ("a.CSV", "csv"), ("a.jsonl", "jsonl")])
def test_import_cli_takes_the_format_from_the_extension(name: str, fmt: str) -> None:
    assert cli.import_format(Path(name), None) == fmt
    assert cli.import_format(Path(name), "jsonl") == "jsonl"  # --format wins


def test_import_cli_summary_lists_the_counts_and_the_first_rejected_rows() -> None:
    text = cli.summary(
        {
            "import_id": "imp-0123456789abcdef",
            "status": "done",
            "rows_read": 1002,
            "written": 990,
            "duplicates": 10,
            "rejected": 2,
            "rejections": [
                {"line": 7, "field": "temp", "reason": "temp must be a number"},
                {"line": 9, "field": None, "reason": "not a JSON object"},
            ],
        }
    )
    assert "1,002 rows read, 990 written, 10 duplicates, 2 rejected" in text
    assert "line 7: temp: temp must be a number" in text and "line 9: -: not a JSON object" in text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_import_cli_draws_one_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    statuses = iter(
        [
            {"status": "waiting_upload", "progress": None},
            {"status": "importing", "progress": 0.5, "rows_read": 1200, "written": 1100, "rejected": 3},
            {
                "status": "done",
                "progress": 1.0,
                "rows_read": 2400,
                "written": 2390,
                "duplicates": 4,
                "rejected": 6,
            },
        ]
    )

    class Reply:
        status_code = 200

        def json(self) -> dict[str, Any]:
            return next(statuses)

    monkeypatch.setattr(requests, "get", lambda url, timeout: Reply())
    monkeypatch.setattr(cli.time, "sleep", lambda s: None)
    err = Terminal()
    final = cli.follow("http://api/imports/imp-0123456789abcdef", 0.1, 0, err)
    assert final["status"] == "done"
    screen = err.getvalue()
    assert screen.count("\r") == 3 and screen.endswith("\n") and screen.count("\n") == 1
    frames = screen.split("\r")[1:]
    assert frames[0].startswith("[" + "." * 30 + "]")
    assert frames[1].startswith("[" + "#" * 15 + "." * 15 + "]  50%")
    assert "1,200 rows read" in frames[1] and "rejected 3" in frames[1]
    assert frames[2].startswith("[" + "#" * 30 + "] 100%")
