"""EC2 instance metadata (IMDSv2): the instance id, and the spot interruption notice.

The endpoint is configurable so the local cloud (and the tests) can serve it on loopback.
Off EC2 the endpoint is unreachable: the instance id falls back to ``local-<hostname>`` and
no spot notice is ever seen.
"""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from lambdas.core import log

TOKEN_TTL_SECONDS = 21600


@dataclass
class Imds:
    endpoint: str = "http://169.254.169.254"
    timeout: float = 1.0
    _token: str | None = field(default=None, repr=False)

    def token(self) -> str | None:
        """A session token, or None when no metadata service answers."""
        if self._token is None:
            request = urllib.request.Request(
                f"{self.endpoint}/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    self._token = reply.read().decode().strip()
            except (OSError, ValueError):
                return None
        return self._token

    def get(self, path: str) -> str | None:
        """The text at ``/latest/meta-data/<path>``; None on 404 or when unreachable."""
        token = self.token()
        if token is None:
            return None
        request = urllib.request.Request(
            f"{self.endpoint}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                return reply.read().decode().strip()
        except urllib.error.HTTPError as err:
            if err.code == 401:  # token expired: fetch a new one next time
                self._token = None
            return None
        except (OSError, ValueError):
            return None

    def instance_id(self) -> str:
        return self.get("instance-id") or f"local-{socket.gethostname()}"

    def spot_action(self) -> str | None:
        """The interruption notice (JSON text) once AWS has scheduled one; None before."""
        return self.get("spot/instance-action")


class SpotWatcher:
    """Polls for a spot interruption notice in a background thread while training runs."""

    def __init__(self, imds: Imds, interval: float) -> None:
        self.imds = imds
        self.interval = interval
        self.notice: str | None = None
        self._noticed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spot-watcher", daemon=True)

    @property
    def noticed(self) -> bool:
        return self._noticed.is_set()

    def _run(self) -> None:
        while not self._stop.is_set():
            notice = self.imds.spot_action()
            if notice:
                self.notice = notice
                self._noticed.set()
                log.warning("spot_interruption_notice", notice=notice)
                return
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.imds.timeout * 3 + 1)

    def __enter__(self) -> SpotWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
