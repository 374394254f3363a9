from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from trainer.imds import Imds, SpotWatcher

NOTICE = json.dumps({"action": "terminate", "time": "2026-11-23T09:30:00Z"})


class FakeImds:
    """IMDSv2 on 127.0.0.1: tokens by PUT, metadata only with a valid token.

    ``notice_after`` is how many spot/instance-action requests answer 404 before the notice
    appears (None: never).
    """

    TOKEN = "fake-token"

    def __init__(self, instance_id: str = "i-0123456789abcdef0", notice_after: int | None = None) -> None:
        self.instance_id = instance_id
        self.notice_after = notice_after
        self.spot_requests = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                if self.path == "/latest/api/token" and self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"
                ):
                    self._send(200, FakeImds.TOKEN)
                else:
                    self._send(400)

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") != FakeImds.TOKEN:
                    self._send(401)
                elif self.path == "/latest/meta-data/instance-id":
                    self._send(200, fake.instance_id)
                elif self.path == "/latest/meta-data/spot/instance-action":
                    fake.spot_requests += 1
                    if fake.notice_after is not None and fake.spot_requests > fake.notice_after:
                        self._send(200, NOTICE)
                    else:
                        self._send(404)
                else:
                    self._send(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeImds:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_imds() -> Iterator[FakeImds]:
    with FakeImds(notice_after=1) as fake:
        yield fake


def test_imds_reads_instance_id_with_a_session_token(fake_imds: FakeImds) -> None:
    assert Imds(fake_imds.endpoint).instance_id() == "i-0123456789abcdef0"


def test_imds_spot_action_is_none_until_a_notice_exists(fake_imds: FakeImds) -> None:
    imds = Imds(fake_imds.endpoint)
    assert imds.spot_action() is None
    assert json.loads(imds.spot_action() or "{}")["action"] == "terminate"


def test_imds_unreachable_falls_back_to_local_instance_id() -> None:
    imds = Imds("http://127.0.0.1:9", timeout=0.5)
    assert imds.token() is None
    assert imds.instance_id().startswith("local-")
    assert imds.spot_action() is None


def test_imds_spot_watcher_sees_the_notice(fake_imds: FakeImds) -> None:
    with SpotWatcher(Imds(fake_imds.endpoint), interval=0.05) as watcher:
        deadline = time.monotonic() + 10
        while not watcher.noticed and time.monotonic() < deadline:
            time.sleep(0.02)
    assert watcher.noticed
    assert watcher.notice == NOTICE
    assert fake_imds.spot_requests == 2


def test_imds_spot_watcher_stays_quiet_without_notice() -> None:
    with FakeImds(notice_after=None) as fake, SpotWatcher(Imds(fake.endpoint), interval=0.05) as watcher:
        deadline = time.monotonic() + 10
        while fake.spot_requests < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert fake.spot_requests >= 3
    assert not watcher.noticed
    assert watcher.notice is None
