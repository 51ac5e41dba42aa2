"""A transparent TCP proxy that records both directions of every connection.

Bytes are forwarded exactly as they arrive (no parsing on the forwarding path, so a
malformed session is relayed as faithfully as a good one); every chunk is also handed to
the connection's recorder with its direction and time.  One thread per direction keeps
connections independent: a stalled client never delays another.
"""

from __future__ import annotations

import socket
import threading
import time

from ggml_rpc_spec.netio import ThreadedTCPService

from .recording import CLIENT_TO_SERVER, SERVER_TO_CLIENT, RecordedConnection


class RecordingProxy(ThreadedTCPService):
    """Listen on `listen`, forward to `upstream`, record into `connections`.

    `on_close(connection)` runs when a connection has ended in both directions (the trace
    writer hooks in there).
    """

    kind = "proxy"

    def __init__(self, upstream: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0), on_close=None,
                 max_connections: int = 256):
        self.upstream = upstream
        self.on_close = on_close
        self.connections: list[RecordedConnection] = []
        self._record_lock = threading.Lock()
        super().__init__(listen, max_connections=max_connections)

    def handle(self, client: socket.socket, name: str) -> None:
        with self._record_lock:
            record = RecordedConnection(len(self.connections) + 1, name)
            self.connections.append(record)
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            record.closed.set()
            return
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pumps = [threading.Thread(target=self._pump, args=(client, server, CLIENT_TO_SERVER, record), daemon=True),
                 threading.Thread(target=self._pump, args=(server, client, SERVER_TO_CLIENT, record), daemon=True)]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
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
                with self._record_lock:
                    record.chunks.append((direction, time.monotonic() - record.t0, data))
                sink.sendall(data)
        except OSError:
            pass
        for sock, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                pass

