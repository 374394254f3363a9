"""The local AWS endpoint: moto's server behind the gate, in a process of its own.

``python -m localcloud.awsserver --port 0`` binds, prints ``listening on http://HOST:PORT``
and serves until SIGTERM or SIGINT. Its own process means its own interpreter and GIL: the
functions, the drivers and the API front no longer queue behind moto's request handling.
``AwsServer`` starts and stops it from the local cloud. DynamoDB Scan is served by
``fastscan`` (a page costs the page, not the table; same answers as moto) unless
``--moto-scan`` asks for moto's own, for comparisons; TransactWriteItems by ``fasttransact`` (a
transaction costs its items, not copies of its tables; same answers as moto).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from localcloud import persistence
from localcloud.infra import LOCAL_ACCOUNT, ROOT

# How often a changed state is snapshotted (the journal covers the time in between).
SNAPSHOT_EVERY_S = 30.0
# Connections waiting to be accepted; the default of 5 (socketserver) resets clients in a burst.
LISTEN_BACKLOG = 1024
READY = "listening on "


def make_app(
    *,
    account: str,
    region: str,
    record: Path | None,
    store: persistence.Store | None = None,
    moto_scan: bool = False,
) -> Any:
    from moto.server import DomainDispatcherApplication, create_backend_app

    from localcloud import fastscan, fasttransact
    from localcloud.gate import Gate, replay

    if not moto_scan:
        fastscan.install()  # before the journal is replayed: its puts and deletes are seen
    fasttransact.install()  # a transaction costs its items, not copies of its tables
    moto_app = DomainDispatcherApplication(create_backend_app)
    if store is not None:
        store.restore(lambda entry: replay(moto_app, entry))
    return Gate(moto_app, account=account, region=region, record=record, store=store)


def serve(
    host: str,
    port: int,
    *,
    account: str,
    region: str,
    record: Path | None,
    state_dir: Path | None = None,
    snapshot_every_s: float = SNAPSHOT_EVERY_S,
    moto_scan: bool = False,
) -> None:
    from moto.server import MotoRequestHandler
    from werkzeug.serving import ThreadedWSGIServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    class Server(ThreadedWSGIServer):
        request_queue_size = LISTEN_BACKLOG
        daemon_threads = True

    store = persistence.Store(state_dir) if state_dir is not None else None
    app = make_app(account=account, region=region, record=record, store=store, moto_scan=moto_scan)
    if store is not None:
        print(
            f"state: {'restored' if store.restored_snapshot else 'new'} in {state_dir}"
            f" ({store.restored_entries} journaled changes replayed)",
            file=sys.stderr,
            flush=True,
        )
    server = Server(host, port, app, handler=MotoRequestHandler)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    def snapshots() -> None:
        # The journal makes every answered change durable; a snapshot now and then keeps it
        # short, so a restart replays seconds of changes, not hours.
        assert store is not None
        while not stopping.wait(snapshot_every_s):
            if store.dirty:
                store.snapshot()

    def orphaned() -> None:
        # The local cloud that started this process died (killed, crashed): stop too, leaving
        # a last snapshot, rather than keep serving, and holding the port, for nobody.
        parent = os.getppid()
        while not stopping.wait(0.5):
            if os.getppid() != parent:
                on_signal(signal.SIGTERM, None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    threading.Thread(target=orphaned, name="orphaned", daemon=True).start()
    if store is not None:
        threading.Thread(target=snapshots, name="snapshots", daemon=True).start()
    print(f"{READY}http://{host}:{server.server_address[1]}", flush=True)
    server.serve_forever(poll_interval=0.05)
    server.server_close()
    if store is not None:
        store.snapshot()
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcloud.awsserver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--account", default=LOCAL_ACCOUNT)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--record", type=Path, default=None, help="append IAM decisions here (JSON lines)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="keep the state here (snapshot and journal); none: memory only",
    )
    parser.add_argument(
        "--moto-scan",
        action="store_true",
        help="serve DynamoDB Scan with moto's own code (a page costs the whole table): for comparisons",
    )
    args = parser.parse_args(argv)
    serve(
        args.host,
        args.port,
        account=args.account,
        region=args.region,
        record=args.record,
        state_dir=args.state_dir,
        moto_scan=args.moto_scan,
    )
    # Everything is written (the last snapshot, the journal closed): leave without tearing down
    # moto's modules and threads one by one, which took most of a second of every stop.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class AwsServer:
    """The parent's handle: ``start()`` waits until the endpoint answers; ``url``; ``stop()``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "us-east-1",
        record: Path | None = None,
        log_path: Path | None = None,
        state_dir: Path | None = None,
        moto_scan: bool = False,
    ) -> None:
        self._args = ["--host", host, "--port", str(port), "--region", region]
        if record is not None:
            self._args += ["--record", str(record)]
        if state_dir is not None:
            self._args += ["--state-dir", str(state_dir)]
        if moto_scan:
            self._args.append("--moto-scan")
        self._log_path = log_path
        self._process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> AwsServer:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self._log_path or os.devnull, "a") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "localcloud.awsserver", *self._args],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=str(ROOT),
                env=env,
            )
        assert self._process.stdout is not None
        # The server prints its address once it listens: connections queue from then on.
        line = self._process.stdout.readline()
        if not line.startswith(READY):
            self.stop()
            raise RuntimeError(f"the local AWS endpoint did not start: {line.strip() or 'no output'}")
        self.url = line[len(READY) :].strip()
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for _ in self._process.stdout:
            pass

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def kill(self) -> None:
        """Kill -9, as a crash would (tests of durability)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()  # a clean stop writes a last snapshot
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


if __name__ == "__main__":
    raise SystemExit(main())
