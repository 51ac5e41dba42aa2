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
from collections import Counter
from dataclasses import dataclass, field

from ggml_rpc_spec.protocol.session import decode_connection
from ggml_rpc_spec.protocol.trace import CLIENT, SERVER, Trace, encode_trace, frame_records

from .netio import ThreadedTCPService

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

# -- recording to trace files -----------------------------------------------------------------


def decode_record(record: RecordedConnection, profile=None):
    """The recorded connection decoded (protocol.session.DecodedSession), in `profile` or
    the one its HELLO shows."""
    return decode_connection(record.stream(CLIENT_TO_SERVER), record.stream(SERVER_TO_CLIENT), profile)


def to_trace(record: RecordedConnection, upstream: str, session=None) -> Trace:
    """A recorded connection as a trace: framed records, the protocol it spoke."""
    chunks = [(CLIENT if d == CLIENT_TO_SERVER else SERVER, t, data) for d, t, data in record.chunks]
    session = session or decode_record(record)
    header = {"protocol": session.profile.name if session.profile else None, "recorder": "ggml-rpc-proxy",
              "peer": upstream, "client": record.peer.split(" ", 1)[-1],
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.started))}
    return Trace(header, frame_records(chunks, session))


def summary(record: RecordedConnection, session) -> str:
    counts = Counter(e.request.command.name for e in session.exchanges)
    top = ", ".join(f"{name} {n}" for name, n in counts.most_common(4)) + (", ..." if len(counts) > 4 else "")
    up = sum(len(data) for d, _, data in record.chunks if d == CLIENT_TO_SERVER)
    down = sum(len(data) for d, _, data in record.chunks if d == SERVER_TO_CLIENT)
    duration = record.chunks[-1][1] if record.chunks else 0.0
    version = session.profile.name if session.profile else "?"
    return (f"[{record.peer}] protocol {version}: {len(session.exchanges)} requests ({top}); "
            f"{_human(up)} up, {_human(down)} down in {duration:.2f}s")


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return str(size)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys
    from pathlib import Path

    from .client import parse_endpoint

    from ggml_rpc_spec.protocol.versions import HELLO_PROBES

    parser = argparse.ArgumentParser(prog="ggml-rpc-proxy",
                                     description="Transparent recording proxy for GGML RPC: forwards every byte "
                                                 "between clients and an upstream server and writes one trace file "
                                                 "per connection (SPEC.md §12).  With --bridge it translates "
                                                 "instead: clients of one protocol version use a server of another.")
    parser.add_argument("--listen", default="127.0.0.1:50053", metavar="HOST:PORT",
                        help="where clients connect (default 127.0.0.1:50053)")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the server to forward to")
    parser.add_argument("--record", default=None, metavar="DIR",
                        help="write one trace per connection into DIR (created if missing); with --bridge, two: "
                             "the client's side and the server's")
    parser.add_argument("--bridge", action="store_true",
                        help="translate between the clients' protocol version and the server's (learned from its "
                             "HELLO): old and new llama.cpp builds use any server")
    parser.add_argument("--client-proto", default=None, metavar="VERSION[,VERSION]",
                        help="with --bridge: the version to answer each HELLO shape with, one per shape (default: "
                             "the newest of each: " + ", ".join(p.name for p in HELLO_PROBES) + ")")
    args = parser.parse_args(argv)
    try:
        listen, upstream = parse_endpoint(args.listen), parse_endpoint(args.upstream)
    except ValueError as exc:
        parser.error(str(exc))
    folder = Path(args.record) if args.record else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    if args.bridge:
        return _run_bridge(args, listen, upstream, folder, parser)

    def closed(record: RecordedConnection) -> None:
        session = decode_record(record)
        line = summary(record, session)
        if folder is not None:
            path = folder / f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(record.started))}-{record.number:04d}.ggmlrpc"
            path.write_bytes(encode_trace(to_trace(record, args.upstream, session)))
            line += f" -> {path}"
        record.chunks.clear()  # written: a long-running proxy keeps no connection's bytes
        print(line, file=sys.stderr, flush=True)

    try:
        proxy = RecordingProxy(upstream, listen, on_close=closed)
    except OSError as exc:
        print(f"error: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return _serve(proxy, f"ggml-rpc-proxy: {proxy.endpoint} -> {args.upstream}"
                  + (f", recording into {folder}" if folder else ""))


def _serve(server, banner: str) -> int:
    """Print `banner`, serve until SIGTERM or Ctrl-C, then shut down (open connections are
    closed and their traces written on the way out)."""
    import signal
    import sys

    print(banner, file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.request_stop())
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.shutdown()
    print("ggml-rpc-proxy: stopped", file=sys.stderr)
    return 0


def _run_bridge(args, listen, upstream, folder, parser) -> int:
    import logging
    import sys

    from ggml_rpc_spec.protocol.framing import hello_shapes
    from ggml_rpc_spec.protocol.versions import HELLO_PROBES, UnsupportedVersion, profile_for

    from .bridge import BridgeServer

    try:
        profiles = (tuple(profile_for(v.strip()) for v in args.client_proto.split(","))
                    if args.client_proto else HELLO_PROBES)
        hello_shapes(profiles)
    except (UnsupportedVersion, ValueError) as exc:
        parser.error(f"--client-proto: {exc}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        bridge = BridgeServer(upstream, profiles, listen, record=folder)
    except OSError as exc:
        print(f"error: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return _serve(bridge, f"ggml-rpc-proxy --bridge: {bridge.endpoint} (clients of "
                  f"{' or '.join(p.name for p in profiles)}) -> {args.upstream}"
                  + (f", recording into {folder}" if folder else ""))


if __name__ == "__main__":
    import sys

    sys.exit(main())
