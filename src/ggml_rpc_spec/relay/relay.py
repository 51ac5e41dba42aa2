"""The relay every server-in-front-of-a-server shares: the version bridge, the guard, both.

    ggml-rpc-proxy --bridge --listen 127.0.0.1:50053 --upstream 10.0.0.5:50052 [--client-proto 3.6.1,7.0.0]
    ggml-rpc-guard --listen 0.0.0.0:50052 --upstream 127.0.0.1:50062

Each client connection gets a connection to the upstream server, whose version is learned
from its HELLO.  Requests are parsed in the client's profile (the server's own when not
bridging), checked by the guard when there is one, translated by protocol.translation and
sent on in the server's profile; replies come back the same way.  Bulk data is cut-through:
a SET_TENSOR's bytes and a GET_TENSOR reply's are passed on piece by piece as they arrive,
after their head was checked, never stored whole.  A request waits for its server reply
before the next request is read (upstream clients keep at most one reply outstanding).  With
`record` both sides of every connection are written as trace files (`NNNN-client.ggmlrpc` in
the client's version, `NNNN-server.ggmlrpc` in the server's).
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

from construct import Container

from ggml_rpc_spec.client.rpc import RPCClient, ServerClosed
from ggml_rpc_spec.netio import (DEFAULT_POLL, FramePace, FrameStalled, Networks, Splicer, ThreadedTCPService,
                                 receive_into, receive_paced, send_all, splice_paced)
from ggml_rpc_spec.protocol import CLOSED, NEED_DATA, Command, ReplyParser, RequestParser
from ggml_rpc_spec.protocol.errors import ProtocolError, RemoteProtocolError
from ggml_rpc_spec.protocol.framing import Data, Request, encode_reply, encode_request, hello_shapes
from ggml_rpc_spec.protocol.trace import encode_trace
from ggml_rpc_spec.protocol.translation import BridgeConnection, Translation, Untranslatable
from ggml_rpc_spec.protocol.versions import Profile
from ggml_rpc_spec.server.link import Link, LinkError, LinkPolicy

from .guard import Declined, GuardSession, GuardSettings, GuardStats
from .recording import CLIENT_TO_SERVER as UP, SERVER_TO_CLIENT as DOWN, RecordedConnection, decode_record, to_trace

log = logging.getLogger("ggml_rpc.relay")


class Relay(ThreadedTCPService):
    """Listen on `listen`, relay each connection to `upstream`.

    client_profiles -- the versions clients speak, one per HELLO shape (bridging); None: the
                       server's own (a guard or a plain relay)
    guard           -- check every request before forwarding it (None: no checks)
    links           -- where a declined rank 1 may release a waiting rank 0 (see BridgeConnection)
    splice          -- pass data tails that need no change on inside the kernel (os.splice, Linux);
                       False: through Python, as the recorder always does
    """

    kind = "relay"

    def __init__(self, upstream: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0), *,
                 client_profiles: tuple[Profile, ...] | None = None, guard: GuardSettings | None = None,
                 record: Path | None = None, links: LinkPolicy | None = None, max_payload: int = 1 << 40,
                 max_connections: int = 64, allow: Networks | None = None, pace: FramePace | None = None,
                 timeout: float = 300.0, splice: bool = True) -> None:
        self.upstream = upstream
        self.splice = splice
        self.client_profiles = client_profiles
        if client_profiles:
            hello_shapes(client_profiles)  # one per HELLO shape
        self.guard = guard
        self.stats = GuardStats()
        self.record = record
        self.links = links or LinkPolicy.for_endpoint(listen[0], timeout=10.0)
        self.max_payload = max_payload
        self.pace = pace or FramePace()
        self.timeout = timeout  # seconds the upstream server may take to answer
        self._translations: dict = {}
        self._server: tuple[Profile, tuple[int, int, int]] | None = None  # learned from the first upstream HELLO
        super().__init__(listen, max_connections=max_connections, allow=allow)

    def translation(self, client: Profile, server: Profile) -> Translation:
        key = (client.version, server.version)
        if key not in self._translations:
            self._translations[key] = Translation(client, server)
        return self._translations[key]

    def handle(self, sock: socket.socket, name: str) -> None:
        self.stats.count("connections")
        taps = (RecordedConnection(0, name), RecordedConnection(0, name)) if self.record is not None else None
        try:
            upstream = self._connect_upstream(None if taps is None else taps[1])
        except (OSError, ProtocolError, ServerClosed) as exc:
            log.warning("[%s] cannot reach the upstream server %s:%d: %s", name, *self.upstream, exc)
            return
        conversation = None
        try:
            conversation = _Conversation(self, sock, upstream, name, taps)
            conversation.run()
        except Untranslatable as exc:
            log.warning("[%s] closing: no counterpart in the server's version: %s", name, exc)
        except RemoteProtocolError as exc:
            if exc.key and self.guard is not None:
                self.stats.count("refused", exc.key)
                log.warning("[%s] closing: refused by rule %s: %s", name, exc.key, exc)
            else:
                log.warning("[%s] closing: %s", name, exc)
        except ProtocolError as exc:
            log.warning("[%s] closing: %s", name, exc)
        except FrameStalled as exc:
            log.warning("[%s] closing: %s", name, exc)
        except OSError as exc:
            log.info("[%s] connection lost: %s", name, exc)
        except Exception:  # a bug costs one connection, never the relay
            log.exception("[%s] internal error, closing the connection", name)
        finally:
            if conversation is not None and conversation.splicer is not None:
                conversation.splicer.close()
            upstream.close()
            if taps is not None:
                self._write_traces(name, taps, upstream)

    def _connect_upstream(self, tap: RecordedConnection | None) -> RPCClient:
        """A connection to the upstream server that sent exactly one HELLO (so the server-side
        trace holds one session): the server's version is learned once, on a connection of its
        own, and learned again if the server stops answering as it did."""
        for attempt in range(2):
            if self._server is None or attempt:
                with RPCClient(self.upstream, timeout=self.timeout) as probe:
                    self._server = (probe.profile, probe.server_version)
            if tap is not None:
                tap.chunks.clear()  # a HELLO the server refused is no part of the session
            profile, version = self._server
            try:
                upstream = RPCClient(self.upstream, proto=profile, timeout=self.timeout,
                                     tap=None if tap is None else _server_tap(tap))
            except ServerClosed:
                continue
            if upstream.server_version == version:
                return upstream
            upstream.close()
        raise ServerClosed(f"{self.upstream[0]}:{self.upstream[1]} answers each connection with another version")

    def release_link(self, name: str, host: str, port: int) -> None:
        """Connect to a rank 0 that waits for a declined rank 1 and hang up after the
        handshake, in the background, where the link allow-list admits the host."""
        def release() -> None:
            try:
                link = Link.open(self.links, 1, host, port)
            except LinkError as exc:
                log.warning("[%s] could not release rank 0 at %s:%d: %s", name, host, port, exc)
                return
            link.close()
            log.info("[%s] released rank 0 at %s:%d (this rank declined the link)", name, host, port)

        threading.Thread(target=release, name=f"relay-release-{port}", daemon=True).start()

    def _write_traces(self, name: str, taps, upstream: RPCClient) -> None:
        if self.record is None:
            raise ValueError("only a relay that records (record=DIR) writes traces")
        number = int(name.split(" ", 1)[0].lstrip("#"))
        for side, tap in (("client", taps[0]), ("server", taps[1])):
            if tap.chunks:
                profile = upstream.profile if side == "server" else None  # the client's: from its HELLO
                trace = to_trace(tap, "%s:%d" % self.upstream, decode_record(tap, profile))
                trace.header.update(recorder=f"ggml-rpc-{self.kind}", side=side)
                (self.record / f"{number:04d}-{side}.ggmlrpc").write_bytes(encode_trace(trace))


class _Conversation:
    """One client connection through the relay."""

    def __init__(self, relay: Relay, sock: socket.socket, upstream: RPCClient, name: str, taps) -> None:
        self.relay, self.sock, self.upstream, self.name, self.taps = relay, sock, upstream, name, taps
        server = upstream.profile
        profiles = relay.client_profiles or (server,)
        self.requests = RequestParser(profiles[0], profiles=profiles, max_payload=relay.max_payload, stream_data=True)
        self.replies = ReplyParser(server, stream_data=True)
        self.activity = relay.activity(sock)
        self.bridge: BridgeConnection | None = None
        # data tails passed on untouched go through the kernel; a recorder must see them
        self.splicer = Splicer() if taps is None and relay.splice and Splicer.available() else None
        self.guard: GuardSession | None = None
        if relay.guard is not None:
            self.guard = GuardSession(server, upstream.device_count(), relay.guard, relay.stats)

    def run(self) -> None:
        pending: list = []  # the requests sent for the current client request, whose replies are due
        current = None
        while True:
            event = self.requests.next_event()
            if event is NEED_DATA:
                left = self.requests.stream_pending()
                if left and self.splicer is not None and self._bridge().data_untouched(left):
                    passed = splice_paced(self.sock, self.upstream.connection(), self.requests, self.activity,
                                          self.relay.pace, self.splicer)
                    if passed:
                        self._bridge().data_passed(passed)
                    continue
                seen = None if self.taps is None else (lambda view: self.taps[0].add(UP, view))
                receive_paced(self.sock, self.requests, self.activity, self.relay.pace, DEFAULT_POLL, seen)
                continue
            if event is CLOSED:
                return
            if isinstance(event, Data):
                self._to_server(self._bridge().data(event))
                if event.end:
                    self._replies(current, pending)
                continue
            current, pending = event, self._request(event)
            if event.data_size:
                continue  # its data streams through first
            self._replies(current, pending)

    def _bridge(self) -> BridgeConnection:
        """The bridge, made at the client's HELLO (the request parser lets nothing precede it)."""
        if self.bridge is None:
            raise RemoteProtocolError("the client sent something before its HELLO", section="3.1")
        return self.bridge

    def _server_socket(self) -> socket.socket:
        if self.upstream.sock is None:
            raise ServerClosed("the connection to the upstream server is closed")
        return self.upstream.sock

    def _request(self, event) -> list:
        if self.bridge is None:  # the HELLO: it tells the client's version
            self.bridge = BridgeConnection(self.relay.translation(self.requests.profile, self.upstream.profile))
            log.info("[%s] client %s <-> server %s%s", self.name, self.requests.profile.name,
                     self.upstream.profile.name, " (guarded)" if self.guard else "")
        if self.guard is not None and event.command is not Command.HELLO:
            try:
                self.guard.check(event)
            except Declined as declined:
                log.warning("[%s] COMM_INIT declined: %s", self.name, declined.reason)
                self._to_client(encode_reply(self.requests.profile, Command.COMM_INIT, declined.reply))
                return []
        messages = self.bridge.request(event)
        for message in messages:
            self._to_server(message.parts)
            if message.reply is not None:
                self.replies.expect(message.reply, size=message.size)
        while self.bridge.releases:
            self.relay.release_link(self.name, *self.bridge.releases.pop())
        return [m for m in messages if m.reply is not None]

    def _replies(self, request, pending: list) -> None:
        """Read the server's replies to what was sent for `request`, pass them to the client
        (streamed data as it arrives), and teach the guard what they say."""
        bridge = self._bridge()
        last = None
        for _ in pending:
            reply = self._next_reply()
            bridge.server_reply(reply)
            last = reply
            if reply.data_size:
                self._to_client(bridge.to_client())
                while True:
                    if self.splicer is not None and bridge.reply_data_untouched():
                        while left := self.replies.stream_pending():
                            passed = self.splicer.move(self.upstream.connection(), self.sock, left, None)
                            if not passed:
                                self.replies.receive_eof()
                                break
                            self.replies.stream_passed(passed)
                    piece = self._next_reply()
                    self._to_client(bridge.reply_data(piece))
                    if piece.end:
                        break
        self._to_client(bridge.to_client())
        if self.guard is not None and request is not None:
            own = last if last is not None and last.command is request.command else None
            for command, body in self.guard.learn(request, own):
                self._ask(command, body)

    def _ask(self, command: Command, body: dict) -> None:
        """A request of the guard's own (a buffer's base), answered to the guard alone."""
        if self.guard is None:
            raise ValueError("only a guard asks requests of its own")
        self._to_server(encode_request(self.upstream.profile, command, body))
        self.replies.expect(command)
        self.guard.learn(Request(command, Container(body)), self._next_reply())

    def _next_reply(self):
        while True:
            event = self.replies.next_event()
            if event is CLOSED:
                raise ServerClosed("the upstream server closed the connection")
            if event is not NEED_DATA:
                return event
            view = self.replies.get_buffer()
            received = receive_into(self._server_socket(), view)
            if received:
                if self.taps is not None:
                    self.taps[1].add(DOWN, view[:received])
                self.replies.buffer_updated(received)
            else:
                self.replies.receive_eof()

    def _to_server(self, parts: list) -> None:
        if parts:
            send_all(self._server_socket(), parts)
            if self.taps is not None:
                self.taps[1].add(UP, b"".join(bytes(p) for p in parts))

    def _to_client(self, parts: list) -> None:
        if parts:
            send_all(self.sock, parts)
            if self.taps is not None:
                self.taps[0].add(DOWN, b"".join(bytes(p) for p in parts))


def _server_tap(tap: RecordedConnection):
    """The upstream RPCClient's tap (its HELLO) feeding the server-side trace."""
    return lambda direction, data: tap.add(UP if direction == "sent" else DOWN, data)
