"""Sans-IO framing: incremental parsers for requests (server side) and replies (client side),
and the builders of both.  No sockets here; the I/O shells feed bytes in and send bytes out.

    request: | cmd u8 | size u64 | payload (size bytes) |
    reply:   | size u64 | payload (size bytes) |          (only for commands with a reply)

Both parsers accept bytes in pieces of any size (one at a time included) through
`receive_data`, or zero-copy through the BufferedProtocol pair `get_buffer()` /
`buffer_updated(n)`: the shell `recv_into`s the view it is given.  In the header states that
view is a small scratch buffer; for a bulk tail (SET_TENSOR data, GET_TENSOR reply data,
graph arrays) it is the tail's destination, so large payloads land where they belong.

Work happens in `next_event()`, one event at a time: a shell must handle each event before
asking for the next, because a request's validation (the SET_TENSOR sink) may depend on the
effect of the requests before it.  Every length is checked before anything is allocated,
and unknown-size tails grow only as bytes actually arrive.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from construct import Construct, ConstructError, Container

from .commands import Command
from .derive import FlatCodec
from .errors import LocalProtocolError, PeerClosed, RemoteProtocolError
from .graph import Graph, decode_graph, encode_graph
from .messages import MessageSpec, message_spec
from .versions import Profile

_U64 = struct.Struct("<Q")
_REQUEST_HEADER = struct.Struct("<BQ")

DEFAULT_MAX_PAYLOAD = 1 << 30  # bytes; SET_TENSOR and GRAPH_COMPUTE payloads above this are refused


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


class _Closed:
    def __repr__(self) -> str:
        return "CLOSED"


NEED_DATA = _NeedData()
CLOSED = _Closed()  # the peer closed the connection cleanly, at a frame boundary


@dataclass(eq=True)
class Request:
    """A complete request.  `body` holds the fixed part's fields; `data` is SET_TENSOR's
    bytes, `graph` GRAPH_COMPUTE's arrays.  With a parser that streams data tails, `data` is
    None and `data_size` bytes follow as Data events."""

    command: Command
    body: Container
    data: memoryview | bytes | None = None
    graph: Graph | None = None
    frame_size: int = field(default=0, compare=False)  # bytes on the wire, header included
    data_size: int | None = field(default=None, compare=False)  # streamed: the data bytes that follow


@dataclass(eq=True)
class Reply:
    """A complete reply.  `data` is GET_TENSOR's bytes (streamed: None, and `data_size`
    bytes follow as Data events)."""

    command: Command
    body: Container
    data: memoryview | bytes | None = None
    frame_size: int = field(default=0, compare=False)  # bytes on the wire, header included
    data_size: int | None = field(default=None, compare=False)


@dataclass
class Data:
    """A piece of a streamed data tail, in order.  `data` is valid only until the parser is
    fed again (it may be the parser's own reusable buffer): send it on at once.  `end` marks
    the tail's last piece."""

    data: memoryview
    end: bool


# SET_TENSOR sink: (command, parsed head, data size) -> destination view of exactly that
# size, or None to collect the data in a buffer of the parser's own.  It may raise a
# ProtocolError to refuse the request before a single data byte is accepted.
BulkSink = Callable[[Command, Container, int], "memoryview | None"]


@lru_cache(maxsize=None)
def _codec(schema: Construct) -> FlatCodec:
    """The struct-module twin of a fixed schema (same bytes, no per-field interpretation)."""
    return FlatCodec(schema)


def build_fixed(schema: Construct, body, *, command: str, what: str) -> bytes:
    body = Container() if body is None else body
    try:
        return _codec(schema).build(body)
    except ValueError:  # the fast codec's errors name no rule; ask construct itself
        pass
    missing = [sub.name for sub in schema.subcons if sub.name not in body]
    if missing:
        raise LocalProtocolError(f"cannot build the {what}: missing field(s) {', '.join(missing)}",
                                 command=command) from None
    try:
        schema.build(body)
    except KeyError as exc:  # construct lets a missing field of a nested struct through
        raise LocalProtocolError(f"cannot build the {what}: missing field {exc.args[0]}",
                                 command=command) from None
    except ConstructError as exc:
        parts = [part for part in (getattr(exc, "path", None) or "").split(" -> ") if part != "(building)"]
        field = ".".join(p for i, p in enumerate(parts) if i == 0 or p != parts[i - 1]) or None
        detail = str(exc).splitlines()[-1]
        raise LocalProtocolError(f"cannot build the {what}: {detail}", command=command, field=field,
                                 value=_lookup(body, field)) from None
    raise LocalProtocolError(f"cannot build the {what}", command=command)


def _lookup(body, dotted: str | None):
    value = body
    for part in (dotted or "").split(".") if dotted else ():
        try:
            value = value[part]
        except (KeyError, TypeError, IndexError):
            return None
    return value


class _Bulk:
    """Destination of a tail of known size: the caller's view, or a buffer of our own that
    grows (fourfold: fewer copies of a large graph) only as bytes arrive, so a length prefix
    alone allocates little."""

    INITIAL = 64 * 1024

    def __init__(self, size: int, into=None) -> None:
        self.size = size
        self.filled = 0
        if into is not None:
            view = memoryview(into).cast("B")
            if len(view) != size or view.readonly:
                raise LocalProtocolError(f"destination must be a writable view of {size} bytes, got {len(view)}")
            self._store = view
        else:
            self._store = memoryview(bytearray(min(size, self.INITIAL)))

    @property
    def done(self) -> bool:
        return self.filled == self.size

    def writable(self) -> memoryview:
        if self.filled == len(self._store) and self.filled < self.size:
            grown = bytearray(min(self.size, max(4 * len(self._store), self.INITIAL)))
            grown[: self.filled] = self._store[: self.filled]
            self._store = memoryview(grown)
        return self._store[self.filled : self.size]

    def advance(self, n: int) -> None:
        self.filled += n

    def result(self) -> memoryview:
        return self._store[: self.size]


class _Stream:
    """A data tail passed on in pieces instead of stored: one reusable buffer of at most
    CHUNK bytes receives it, and each receive becomes a Data event."""

    CHUNK = 1 << 20

    def __init__(self, size: int) -> None:
        self.size = size
        self.left = size
        self._buffer: memoryview | None = None

    def writable(self) -> memoryview:
        if self._buffer is None:
            self._buffer = memoryview(bytearray(min(self.size, self.CHUNK)))
        return self._buffer[: min(self.left, len(self._buffer))]

    def piece(self, view: memoryview, copy: bool) -> Data:
        self.left -= len(view)
        return Data(memoryview(bytes(view)) if copy else view, self.left == 0)


class _FrameParser:
    """Shared machinery: a scratch buffer for headers, a bulk target for tails (or a stream
    that passes them on in pieces), one pending event at a time, and a sticky error once the
    stream of bytes is broken."""

    SCRATCH = 64 * 1024

    _state: Callable[[memoryview], None]  # consumes the current `_need` bytes; set by _reset()

    def __init__(self, profile: Profile, *, stream_data: bool = False) -> None:
        self.profile = profile
        self.stream_data = stream_data  # data tails as Data events, never stored whole
        self._stream: _Stream | None = None
        self._copying = False  # receive_data() reuses nothing: pieces it makes are copies
        self._scratch = memoryview(bytearray(self.SCRATCH))
        self._start = 0
        self._end = 0
        self._consumed = 0  # stream offset of _scratch[_start], for error messages
        self._bulk: _Bulk | None = None
        self._pending: deque[Request | Reply | Data] = deque()
        self._error: Exception | None = None
        self._need = 0
        self._frame_start = 0
        self._eof = False

    # -- feeding bytes -------------------------------------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next received bytes should be written (then call buffer_updated)."""
        if self._stream is not None and self._start == self._end:
            return self._stream.writable()
        if self._bulk is not None and not self._bulk.done and self._start == self._end:
            return self._bulk.writable()
        if self._end == len(self._scratch):
            self._make_room()
        return self._scratch[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` bytes were written into the view from get_buffer()."""
        if self._stream is not None and self._start == self._end:
            if nbytes:
                self._stream_piece(self._stream.writable()[:nbytes])
        elif self._bulk is not None and not self._bulk.done and self._start == self._end:
            self._bulk.advance(nbytes)
        else:
            self._end += nbytes

    def stream_pending(self) -> int:
        """Bytes of the current streamed data tail still to come that the shell may pass on
        without showing them to the parser (stream_passed): 0 unless a tail is streaming and
        every byte received so far has been given out as events."""
        if self._stream is None or self._start != self._end:
            return 0
        return self._stream.left

    def stream_passed(self, nbytes: int) -> None:
        """`nbytes` of the streamed tail went from peer to peer outside the parser (a kernel
        splice); the tail's last byte ends it with an empty Data event, as a receive would."""
        stream = self._stream
        if stream is None or not 0 < nbytes <= self.stream_pending():
            raise ValueError(f"{nbytes} bytes passed on, but {self.stream_pending()} of the data tail may be")
        stream.left -= nbytes
        if not stream.left:
            self._stream_piece(memoryview(b""))

    def receive_data(self, data) -> None:
        """Feed bytes of any length (b"" is not end-of-stream; the shell reports EOF)."""
        data = memoryview(data).cast("B")
        self._copying = True
        try:
            while data:
                view = self.get_buffer()
                n = min(len(view), len(data))
                view[:n] = data[:n]
                self.buffer_updated(n)
                data = data[n:]
        finally:
            self._copying = False

    def receive_eof(self) -> None:
        """The peer closed its side; next_event() reports CLOSED or the truncation."""
        self._eof = True

    def _make_room(self) -> None:
        unread = self._end - self._start
        size = len(self._scratch) if unread < len(self._scratch) // 2 else 2 * len(self._scratch)
        fresh = memoryview(bytearray(size))
        fresh[:unread] = self._scratch[self._start : self._end]
        self._scratch, self._start, self._end = fresh, 0, unread

    # -- producing events ----------------------------------------------------------------

    def next_event(self):
        """The next complete event, or NEED_DATA.  Raises the stream's ProtocolError."""
        if self._error is not None:
            raise self._error
        if not self._pending:
            try:
                self._advance()
                if not self._pending and self._eof:
                    self._check_clean_close()
                    return CLOSED
            except RemoteProtocolError as exc:
                self._error = exc
                raise
        return self._pending.popleft() if self._pending else NEED_DATA

    @property
    def frame_bytes(self) -> int:
        """Bytes of the unfinished frame received so far (0 at a frame boundary)."""
        return self._partial_frame()

    @property
    def frame_offset(self) -> int:
        """Where in the stream the current (or next) frame begins."""
        return self._frame_start

    def _partial_frame(self) -> int:
        """Bytes of an unfinished frame received so far (0 at a frame boundary)."""
        partial = self._bulk.filled if self._bulk is not None else 0
        if self._stream is not None:
            partial = self._stream.size - self._stream.left
        return self._consumed - self._frame_start + partial + (self._end - self._start)

    def _advance(self) -> None:
        while not self._pending:
            if self._stream is not None:
                if self._start == self._end:
                    return
                n = min(self._stream.left, self._end - self._start)
                self._start += n
                self._stream_piece(self._scratch[self._start - n : self._start])
                continue
            if self._bulk is not None:
                if not self._fill_bulk():
                    return
                bulk, self._bulk = self._bulk, None
                self._consumed += bulk.size
                self._pending.append(self._tail_done(bulk.result()))
                self._reset()
                continue
            if self._end - self._start < self._need:
                return
            need, start = self._need, self._start
            self._start = start + need
            self._consumed += need
            self._state(self._scratch[start : start + need])

    def _fill_bulk(self) -> bool:
        bulk = self._bulk
        if bulk is None:
            raise RuntimeError("_fill_bulk without a bulk tail in progress")
        while not bulk.done and self._start < self._end:
            view = bulk.writable()
            n = min(len(view), self._end - self._start)
            view[:n] = self._scratch[self._start : self._start + n]
            bulk.advance(n)
            self._start += n
        return bulk.done

    def _start_bulk(self, size: int, into=None) -> None:
        self._bulk = _Bulk(size, into)

    def _start_stream(self, size: int) -> None:
        """Pass a data tail of `size` bytes on as Data events (none when it is empty)."""
        if size:
            self._stream = _Stream(size)
        else:
            self._reset()

    def _stream_piece(self, view: memoryview) -> None:
        stream = self._stream
        if stream is None:
            raise RuntimeError("_stream_piece without a streamed tail in progress")
        self._pending.append(stream.piece(view, self._copying))
        if not stream.left:
            self._stream = None
            self._consumed += stream.size
            self._reset()

    # subclasses: _reset() readies the next frame (setting _state and _need); _tail_done(view)
    # -> event; _check_clean_close() raises if the stream ended where it must not.

    def _reset(self) -> None:
        raise NotImplementedError

    def _tail_done(self, view: memoryview) -> Request | Reply:
        raise NotImplementedError

    def _check_clean_close(self) -> None:
        raise NotImplementedError


def hello_shapes(profiles) -> dict[int, Profile]:
    """HELLO request size -> the profile that answers it; one profile per HELLO family."""
    found: dict[int, Profile] = {}
    for profile in profiles:
        size = message_spec(profile, Command.HELLO).request_size
        if size in found and found[size] != profile:
            raise ValueError(f"protocols {found[size].name} and {profile.name} share a HELLO of {size} bytes: "
                             "a server can tell only the HELLO shapes apart")
        found[size] = profile
    return found


class RequestParser(_FrameParser):
    """Server side: bytes from a client -> Request events.

    Enforces the framing and handshake rules: HELLO first and only once, known command
    bytes (checked before the size is read), exact sizes for fixed requests, and
    `max_payload` for SET_TENSOR / GRAPH_COMPUTE.  `bulk_sink` (see BulkSink) lets the server
    validate a SET_TENSOR head and receive the data straight into the tensor's memory.

    HELLO carries no client version, only its shape (bare or with conn_caps), so a server may
    serve one profile per shape: `profiles` lists them (at most one per HELLO family) and the
    HELLO's size picks the connection's profile, which `profile` then holds.
    """

    def __init__(self, profile: Profile, *, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 bulk_sink: BulkSink | None = None, hello_done: bool = False,
                 profiles: tuple[Profile, ...] = (), stream_data: bool = False) -> None:
        super().__init__(profile, stream_data=stream_data)
        self.max_payload = max_payload
        self.bulk_sink = bulk_sink
        self.hello_done = hello_done
        self._by_hello = hello_shapes(profiles or (profile,))
        self._use(profile)
        self._reset()

    def _use(self, profile: Profile) -> None:
        self.profile = profile
        self._specs = {int(c): message_spec(profile, c) for c in profile.commands}  # by command byte

    def _reset(self) -> None:
        self._state = self._on_cmd
        self._need = 1
        self._command: Command | None = None
        self._spec: MessageSpec | None = None
        self._size = 0
        self._body: Container | None = None
        self._frame_start = self._consumed

    def _check_clean_close(self) -> None:
        partial = self._partial_frame()
        if partial:
            raise self._fail(f"connection closed in the middle of a request, {partial} bytes into it",
                             section="2.5")

    def _current_spec(self) -> MessageSpec:
        """The spec of the request being parsed (set by its command byte)."""
        if self._spec is None:
            raise RuntimeError("RequestParser: no command byte parsed for this frame")
        return self._spec

    def _fail(self, rule: str, *, field: str | None = None, value: object = None, section: str) -> RemoteProtocolError:
        name = self._command.name if self._command is not None else None
        return RemoteProtocolError(rule, command=name, field=field, value=value, section=section,
                                   offset=self._frame_start)

    def _on_cmd(self, chunk: memoryview) -> None:
        byte = chunk[0]
        spec = self._specs.get(byte)
        if spec is None:
            raise self._fail(f"unknown command byte for protocol {self.profile.name} "
                             f"(valid: {', '.join(str(int(c)) for c in self.profile.commands)})",
                             field="cmd", value=byte, section="2.2")
        command = self._command = spec.command
        if not self.hello_done and command is not Command.HELLO:
            raise self._fail("the first command of a connection must be HELLO (14)", field="cmd",
                             value=byte, section="3.1")
        if self.hello_done and command is Command.HELLO:
            raise self._fail("HELLO may be sent only once per connection", field="cmd", value=byte,
                             section="3.1")
        self._spec = spec
        self._state, self._need = self._on_size, 8

    def _on_size(self, chunk: memoryview) -> None:
        (size,) = _U64.unpack(chunk)
        if self._command is Command.HELLO and size in self._by_hello:  # the HELLO's shape picks the profile
            self._use(self._by_hello[size])
            self._spec = self._specs[Command.HELLO]
        spec = self._current_spec()
        head = spec.request_size
        if spec.request_tail is None:
            if size != head:
                raise self._fail(f"payload size must be exactly {head} bytes", field="size", value=size,
                                 section="2.4")
        elif size < head:
            raise self._fail(f"payload size must be at least {head} bytes", field="size", value=size,
                             section="2.4")
        elif size > self.max_payload:
            raise self._fail(f"payload size exceeds this peer's limit of {self.max_payload} bytes",
                             field="size", value=size, section="2.4")
        self._size = size
        self._state, self._need = self._on_head, head

    def _on_head(self, chunk: memoryview) -> None:
        spec = self._current_spec()
        self._body = _codec(spec.request).parse(chunk)
        if spec.command is Command.HELLO:
            self.hello_done = True
        tail = self._size - spec.request_size
        if spec.request_tail is None:
            self._pending.append(Request(spec.command, self._body, frame_size=9 + self._size))
            self._reset()
        elif spec.request_tail == "data":
            announced = spec.data_size(self._body)
            if announced is not None and announced != tail:
                raise self._fail(f"the head announces {announced} data bytes, the frame carries {tail}",
                                 field="size", value=self._size, section="2.4")
            if self.stream_data:
                self._pending.append(Request(spec.command, self._body, frame_size=9 + self._size, data_size=tail))
                self._start_stream(tail)
                return
            into = self.bulk_sink(spec.command, self._body, tail) if self.bulk_sink else None
            self._start_bulk(tail, into)
        else:
            self._start_bulk(tail)

    def _tail_done(self, view: memoryview) -> Request:
        spec = self._current_spec()
        if spec.request_tail == "data":
            return Request(spec.command, self._body, data=view, frame_size=9 + self._size)
        graph = decode_graph(self.profile, view, base_offset=self._frame_start + 9 + spec.request_size)
        return Request(spec.command, self._body, graph=graph, frame_size=9 + self._size)


@dataclass
class _Expected:
    command: Command
    spec: MessageSpec
    size: int
    into: object = None


class ReplyParser(_FrameParser):
    """Client side: bytes from a server -> Reply events, for the replies `expect`ed in order.

    Bytes that arrive while no reply is expected (e.g. a reply to a one-way command), a
    size that differs from the expected reply's, or a data reply of the wrong length raise
    RemoteProtocolError.
    """

    def __init__(self, profile: Profile, *, stream_data: bool = False) -> None:
        super().__init__(profile, stream_data=stream_data)
        self._expected: deque[_Expected] = deque()
        self._reset()

    def expect(self, command: Command, *, size: int | None = None, into=None) -> None:
        """Queue the reply of a request just sent; `size` for a data reply (the request's
        MessageSpec.data_size).

        `into` (data replies only): a writable buffer of `size` bytes to receive the data.
        """
        spec = message_spec(self.profile, command)
        if not spec.has_reply:
            raise LocalProtocolError(f"has no reply in protocol {self.profile.name}", command=command.name)
        if spec.reply_tail == "data":
            if size is None:
                raise LocalProtocolError("a data reply needs the requested size", command=command.name)
        else:
            size = spec.reply_size
            if size is None:  # has_reply and no data tail: the spec has a fixed reply size
                raise LocalProtocolError(f"has no fixed reply size in protocol {self.profile.name}",
                                         command=command.name)
        self._expected.append(_Expected(command, spec, size, into))

    def _reset(self) -> None:
        self._state = self._on_size
        self._need = 8
        self._frame_start = self._consumed

    def _check_clean_close(self) -> None:
        if self._expected:
            waiting = self._expected[0]
            partial = self._partial_frame()
            got = f" after {partial} bytes of it" if partial else ""
            raise PeerClosed(f"connection closed before the complete reply{got}: the server "
                             "rejected the request or failed", command=waiting.command.name,
                             section="2.5", offset=self._frame_start)
        if self._partial_frame():
            raise PeerClosed("connection closed in the middle of unexpected reply bytes",
                             section="2.3", offset=self._frame_start)

    def _on_size(self, chunk: memoryview) -> None:
        (size,) = _U64.unpack(chunk)
        if not self._expected:
            raise RemoteProtocolError("reply bytes arrived while no reply was pending (a reply to a "
                                      "one-way command?)", field="size", value=size, section="2.3",
                                      offset=self._frame_start)
        current = self._expected[0]
        if size != current.size:
            raise RemoteProtocolError(f"reply size must be exactly {current.size} bytes",
                                      command=current.command.name, field="size", value=size,
                                      section="2.3", offset=self._frame_start)
        if current.spec.reply_tail == "data" and self.stream_data:
            self._expected.popleft()
            self._pending.append(Reply(current.command, Container(), frame_size=8 + size, data_size=size))
            self._start_stream(size)
        elif current.spec.reply_tail == "data":
            self._start_bulk(size, current.into)
        else:
            self._state, self._need = self._on_body, size

    def _on_body(self, chunk: memoryview) -> None:
        current = self._expected.popleft()
        self._pending.append(Reply(current.command, _codec(current.spec.reply).parse(chunk),
                                   frame_size=8 + len(chunk)))
        self._reset()

    def _tail_done(self, view: memoryview) -> Reply:
        current = self._expected.popleft()
        return Reply(current.command, Container(), data=view, frame_size=8 + len(view))


# -- builders --------------------------------------------------------------------------------


def _spec_for(profile: Profile, command: Command) -> MessageSpec:
    try:
        return message_spec(profile, Command(command))
    except (KeyError, ValueError):
        raise LocalProtocolError(f"command does not exist in protocol {profile.name}",
                                 command=getattr(command, "name", str(command)), section="2.2") from None


def encode_request(profile: Profile, command: Command, body=None, *, data=None,
                   graph: Graph | None = None, data_size: int | None = None) -> list:
    """A request as a list of buffers for a vectored send; bulk data is not copied.  With
    `data_size` (data tails only) the frame announces that many data bytes and ends before
    them: the caller streams them on."""
    spec = _spec_for(profile, command)
    head = build_fixed(spec.request, body, command=spec.command.name, what="request")
    tail: list = []
    if data_size is not None:
        if spec.request_tail != "data":
            raise LocalProtocolError("has no data tail to stream", command=spec.command.name)
        return [_REQUEST_HEADER.pack(spec.command, len(head) + data_size) + head]
    if spec.request_tail == "data":
        tail = [memoryview(data if data is not None else b"").cast("B")]
    elif spec.request_tail == "graph":
        if graph is None:
            raise LocalProtocolError("needs a graph", command=spec.command.name, field="graph")
        tail = encode_graph(profile, graph)
    elif data is not None or graph is not None:
        raise LocalProtocolError("takes no data after its fixed payload", command=spec.command.name)
    size = len(head) + sum(len(part) for part in tail)
    return [_REQUEST_HEADER.pack(spec.command, size) + head, *tail]


def encode_reply(profile: Profile, command: Command, body=None, *, data=None) -> list:
    """A reply as a list of buffers.  Raises LocalProtocolError for one-way commands."""
    spec = _spec_for(profile, command)
    if not spec.has_reply:
        raise LocalProtocolError(f"is one-way in protocol {profile.name}: it has no reply",
                                 command=spec.command.name, section="2.3")
    return reply_parts(spec, data if spec.reply_tail == "data" else body)


def data_reply_header(size: int) -> bytes:
    """The frame header of a data reply whose `size` bytes are streamed after it."""
    return _U64.pack(size)


def reply_parts(spec: MessageSpec, result=None) -> list:
    """encode_reply for a spec already looked up (a server's per-request path): `result` is
    the body fields, or the data of a data reply."""
    if spec.reply_tail == "data":
        payload = memoryview(result if result is not None else b"").cast("B")
        return [_U64.pack(len(payload)), payload]
    raw = build_fixed(spec.reply, result, command=spec.command.name, what="reply")
    return [_U64.pack(len(raw)) + raw]


def build_request(profile: Profile, command: Command, body=None, *, data=None, graph=None) -> bytes:
    return b"".join(bytes(part) for part in encode_request(profile, command, body, data=data, graph=graph))


def build_reply(profile: Profile, command: Command, body=None, *, data=None) -> bytes:
    return b"".join(bytes(part) for part in encode_reply(profile, command, body, data=data))
