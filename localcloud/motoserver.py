"""moto's server, in this process, on loopback, stoppable without leaving a thread or socket.

moto's own ``ThreadedMotoServer`` serves from daemon threads and never closes its listening
socket on ``stop()``; boto3 keeps connections alive, so a request thread can outlive the
server blocked on a read. This wrapper runs the same WSGI application (moto's public
``DomainDispatcherApplication``) on a werkzeug server that remembers its open connections,
shuts them down on ``stop()`` and joins every request thread.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Any

import requests
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import ThreadedWSGIServer


class _TrackingServer(ThreadedWSGIServer):
    daemon_threads = False  # joined by server_close(), after their sockets are shut down
    block_on_close = True

    def __init__(self, host: str, port: int, app: Any) -> None:
        super().__init__(host, port, app, handler=MotoRequestHandler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Unblock request threads waiting on idle keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                conn.shutdown(socket.SHUT_RDWR)


class MotoServer:
    """``start()`` binds (port 0 picks a free one), ``url`` is where boto3 should point."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._server: _TrackingServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the moto server is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> MotoServer:
        if self._server is not None:
            return self
        # werkzeug logs every request at INFO on its own stderr handler unless told otherwise.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        app = DomainDispatcherApplication(create_backend_app)
        self._server = _TrackingServer(self._host, self._port, app)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="localcloud-moto"
        )
        self._thread.start()
        return self

    def reset(self) -> None:
        """Forget every resource. moto's state is per process, so a second cloud started in
        the same process (tests) would otherwise see the first one's data."""
        requests.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()  # stop accepting; returns once serve_forever has exited
        server.drop_connections()
        server.server_close()  # closes the listening socket and joins the request threads
        if thread is not None:
            thread.join()
        self._server = None
        self._thread = None
