"""A transparent TCP proxy that records both directions of every connection.

Bytes are forwarded exactly as they arrive (no parsing on the forwarding path, so a
malformed session is relayed as faithfully as a good one); every chunk is also handed to
the connection's recorder with its direction and time.  One thread per direction keeps
connections independent: a stalled client never delays another.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from dataclasses import dataclass, field

CLIENT_TO_SERVER = "c2s"
SERVER_TO_CLIENT = "s2c"


@dataclass
class RecordedConnection:
    """Everything one proxied connection carried: (direction, seconds since start, bytes)."""

    number: int
    peer: str
    started: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.monotonic)
    chunks: list[tuple[str, float, bytes]] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)

    def stream(self, direction: str) -> bytes:
        return b"".join(data for d, _, data in self.chunks if d == direction)


class RecordingProxy:
    """Listen on `listen`, forward to `upstream`, record into `connections`.

    `on_close(connection)` runs when a connection has ended in both directions (the trace
    writer hooks in there).
    """

    def __init__(self, upstream: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0), on_close=None):
        self.upstream = upstream
        self.on_close = on_close
        self.connections: list[RecordedConnection] = []
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._listener = socket.create_server(listen)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self._listener.getsockname()[:2]

    @property
    def endpoint(self) -> str:
        host, port = self.address
        return f"{host}:{port}"

    def start(self) -> "RecordingProxy":
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, peer = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client, peer), daemon=True).start()

    def _serve(self, client: socket.socket, peer) -> None:
        record = RecordedConnection(next(self._numbers), f"{peer[0]}:{peer[1]}")
        with self._lock:
            self.connections.append(record)
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            record.closed.set()
            return
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pumps = [threading.Thread(target=self._pump, args=(client, server, CLIENT_TO_SERVER, record), daemon=True),
                 threading.Thread(target=self._pump, args=(server, client, SERVER_TO_CLIENT, record), daemon=True)]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        client.close()
        server.close()
        record.closed.set()
        if self.on_close is not None:
            self.on_close(record)

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str, record: RecordedConnection) -> None:
        try:
            while True:
                data = source.recv(1 << 20)
                if not data:
                    break
                with self._lock:
                    record.chunks.append((direction, time.monotonic() - record.t0, data))
                sink.sendall(data)
        except OSError:
            pass
        for sock, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                pass

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._listener.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "RecordingProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
