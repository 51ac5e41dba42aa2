"""The version bridge: llama.cpp clients of one protocol version use a server of another.

    ggml-rpc-proxy --bridge --listen 127.0.0.1:50053 --upstream 10.0.0.5:50052 [--client-proto 3.6.1,7.0.0]

Each client connection gets a connection to the upstream server, whose version is learned
from its HELLO; the client's version is the one of `--client-proto` that has its HELLO's
shape (one per shape; default the newest of each: 3.6.1 and 7.0.0).  Requests are parsed in
the client's profile, translated by protocol.bridge and sent on in the server's; replies
come back the same way.  A request waits for its server reply before the next request is
read (upstream clients keep at most one reply outstanding).  With `--record DIR` both sides
of every connection are written as trace files (`NNNN-client.ggmlrpc` in the client's
version, `NNNN-server.ggmlrpc` in the server's).
"""

from __future__ import annotations

import logging
import socket
import threading

from ggml_rpc_spec.protocol import CLOSED, NEED_DATA, ReplyParser, RequestParser
from ggml_rpc_spec.protocol.translation import BridgeConnection, Translation, Untranslatable
from ggml_rpc_spec.protocol.errors import ProtocolError
from ggml_rpc_spec.protocol.framing import hello_shapes
from ggml_rpc_spec.protocol.trace import encode_trace

from ggml_rpc_spec.client.rpc import RPCClient, ServerClosed
from ggml_rpc_spec.netio import ThreadedTCPService, receive_into, send_all
from ggml_rpc_spec.server.link import Link, LinkError, LinkPolicy
from .recording import CLIENT_TO_SERVER as UP, SERVER_TO_CLIENT as DOWN, RecordedConnection, decode_record, to_trace

log = logging.getLogger("ggml_rpc.bridge")


class BridgeServer(ThreadedTCPService):
    kind = "bridge"

    def __init__(self, upstream: tuple[str, int], client_profiles, listen: tuple[str, int] = ("127.0.0.1", 0), *,
                 record=None, max_payload: int = 1 << 40, max_connections: int = 64,
                 links: LinkPolicy | None = None) -> None:
        self.upstream = upstream
        self.links = links or LinkPolicy.for_endpoint(listen[0], timeout=10.0)  # where a release may connect
        self.client_profiles = tuple(client_profiles)
        hello_shapes(self.client_profiles)  # one per HELLO shape
        self.record = record  # a folder for trace files, or None
        self.max_payload = max_payload
        self._translations: dict = {}
        self._server = None  # (profile, version) learned from the first upstream HELLO
        super().__init__(listen, max_connections=max_connections)

    def translation(self, client, server) -> Translation:
        key = (client.version, server.version)
        if key not in self._translations:
            self._translations[key] = Translation(client, server)
        return self._translations[key]

    def handle(self, sock: socket.socket, name: str) -> None:
        taps = (RecordedConnection(0, name), RecordedConnection(0, name)) if self.record is not None else None
        try:
            upstream = self._connect_upstream(None if taps is None else taps[1])
        except (OSError, ProtocolError, ServerClosed) as exc:
            log.warning("[%s] cannot reach the upstream server %s:%d: %s", name, *self.upstream, exc)
            return
        try:
            self._relay(sock, upstream, name, taps)
        except Untranslatable as exc:
            log.warning("[%s] closing: no counterpart in the server's version: %s", name, exc)
        except ProtocolError as exc:
            log.warning("[%s] closing: %s", name, exc)
        except OSError as exc:
            log.info("[%s] connection lost: %s", name, exc)
        except Exception:  # a bug costs one connection, never the bridge
            log.exception("[%s] internal error, closing the connection", name)
        finally:
            upstream.close()
            if taps is not None:
                self._write_traces(name, taps, upstream)

    def _connect_upstream(self, tap: RecordedConnection | None) -> RPCClient:
        """A connection to the upstream server that sent exactly one HELLO (so the server-side
        trace holds one session): the server's version is learned once, on a connection of its
        own, and learned again if the server stops answering as it did."""
        for attempt in range(2):
            if self._server is None or attempt:
                with RPCClient(self.upstream) as probe:
                    self._server = (probe.profile, probe.server_version)
            if tap is not None:
                tap.chunks.clear()  # a HELLO the server refused is no part of the session
            profile, version = self._server
            try:
                upstream = RPCClient(self.upstream, proto=profile, tap=None if tap is None else _server_tap(tap))
            except ServerClosed:
                continue
            if upstream.server_version == version:
                return upstream
            upstream.close()
        raise ServerClosed(f"{self.upstream[0]}:{self.upstream[1]} answers each connection with another version")

    def _relay(self, sock: socket.socket, upstream: RPCClient, name: str, taps) -> None:
        server = upstream.profile
        requests = RequestParser(self.client_profiles[0], profiles=self.client_profiles,
                                 max_payload=self.max_payload)
        replies = ReplyParser(server)
        bridge: BridgeConnection | None = None
        while True:
            event = requests.next_event()
            if event is NEED_DATA:
                _receive(sock, requests, taps and taps[0], UP)
                continue
            if event is CLOSED:
                return
            if bridge is None:  # the HELLO: it tells the client's version
                bridge = BridgeConnection(self.translation(requests.profile, server))
                log.info("[%s] client %s <-> server %s", name, requests.profile.name, server.name)
            for message in bridge.request(event):
                send_all(upstream.sock, message.parts)
                if taps is not None:
                    taps[1].add(UP, b"".join(bytes(p) for p in message.parts))
                if message.reply is not None:
                    replies.expect(message.reply, size=message.size)
                    bridge.server_reply(_next_reply(upstream.sock, replies, taps))
            while bridge.releases:
                self._release_link(name, *bridge.releases.pop())
            due = bridge.to_client()
            if due:
                send_all(sock, due)
                if taps is not None:
                    taps[0].add(DOWN, b"".join(bytes(p) for p in due))

    def _release_link(self, name: str, host: str, port: int) -> None:
        """Connect to a rank 0 that waits for this (declined) rank and hang up after the
        handshake, in the background, where the link allow-list admits the host."""
        def release() -> None:
            try:
                link = Link.open(self.links, 1, host, port)
            except LinkError as exc:
                log.warning("[%s] could not release rank 0 at %s:%d: %s", name, host, port, exc)
                return
            link.close()
            log.info("[%s] released rank 0 at %s:%d (this rank declined the link)", name, host, port)

        threading.Thread(target=release, name=f"bridge-release-{port}", daemon=True).start()

    def _write_traces(self, name: str, taps, upstream: RPCClient) -> None:
        number = int(name.split(" ", 1)[0].lstrip("#"))
        for side, tap in (("client", taps[0]), ("server", taps[1])):
            if tap.chunks:
                profile = upstream.profile if side == "server" else None  # the client's: from its HELLO
                trace = to_trace(tap, "%s:%d" % self.upstream, decode_record(tap, profile))
                trace.header.update(recorder="ggml-rpc-proxy --bridge", side=side)
                (self.record / f"{number:04d}-{side}.ggmlrpc").write_bytes(encode_trace(trace))


def _server_tap(tap: RecordedConnection):
    """The upstream RPCClient's tap (its HELLO) feeding the server-side trace."""
    return lambda direction, data: tap.add(UP if direction == "sent" else DOWN, data)


def _next_reply(sock: socket.socket, replies: ReplyParser, taps):
    while True:
        event = replies.next_event()
        if event is not NEED_DATA and event is not CLOSED:
            return event
        _receive(sock, replies, taps and taps[1], DOWN)


def _receive(sock: socket.socket, parser, tap: RecordedConnection | None, direction) -> None:
    """One recv straight into the parser's buffer (recorded on `tap`); EOF when the peer closed."""
    view = parser.get_buffer()
    received = receive_into(sock, view)
    if received:
        if tap is not None:
            tap.add(direction, view[:received])
        parser.buffer_updated(received)
    else:
        parser.receive_eof()
