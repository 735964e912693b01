"""TCP stand-ins for distant or dead database servers, on 127.0.0.1.

* :class:`LatencyProxy` forwards bytes to a real server, each chunk held back half a
  round trip in each direction, as a cell database in another data centre would.
  ``freeze_on``: once the client sends those bytes, the connection goes silent both
  ways (a server that hangs in the middle of a scan).
  ``accepted`` counts the connections (with ``round_trip_s=0``: a counting relay).
* :class:`BlackHole` accepts connections and never says a word (a host whose server
  process is stopped but whose kernel still accepts, or a firewall that swallows).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType


class _Server:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._sockets: list[socket.socket] = [self.listener]
        self._closed = False
        #: TCP connections accepted so far (each is one connection to the upstream server).
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            self.accepted += 1
            self.serve(client)

    def serve(self, client: socket.socket) -> None:
        raise NotImplementedError

    def url(self, db: str, user: str = "root", password: str = "") -> str:
        auth = f"{user}:{password}" if password else user
        return f"mysql+pymysql://{auth}@127.0.0.1:{self.port}/{db}?charset=utf8"

    def close(self) -> None:
        self._closed = True
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> _Server:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class BlackHole(_Server):
    def serve(self, client: socket.socket) -> None:
        pass  # accepted, kept open, never answered


class LatencyProxy(_Server):
    def __init__(
        self, upstream: tuple[str, int], round_trip_s: float, freeze_on: bytes | None = None
    ) -> None:
        self.upstream = upstream
        self.delay = round_trip_s / 2
        self.freeze_on = freeze_on
        super().__init__()

    def serve(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream)
        self._sockets.append(server)
        frozen = threading.Event()
        threading.Thread(
            target=self._pump, args=(client, server, frozen, True), daemon=True
        ).start()
        threading.Thread(
            target=self._pump, args=(server, client, frozen, False), daemon=True
        ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, frozen: threading.Event, outbound: bool
    ) -> None:
        try:
            while chunk := source.recv(65536):
                if outbound and self.freeze_on is not None and self.freeze_on in chunk:
                    frozen.set()
                if frozen.is_set():
                    continue  # swallowed: the client waits for an answer that never comes
                time.sleep(self.delay)
                sink.sendall(chunk)
        except OSError:
            pass
        if not frozen.is_set():
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
