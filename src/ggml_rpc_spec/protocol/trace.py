"""The trace file format: one connection's bytes, both directions, in order (SPEC §13).

    magic    "GGMLRPCT"                 8 bytes
    version  u16                        format version (1)
    hlen     u32                        length of the header
    header   JSON, UTF-8                format, kind, protocol, recorder, peer, date, note
    body     zlib stream of records:
        direction u8   0 = client to server, 1 = server to client
        time_us   u64  microseconds since the connection opened
        length    u32  bytes in this record
        bytes

A trace is of one of two kinds (header field `kind`): a client's connection to a server
("connection", also every trace without the field), or a server-to-server link of protocol
8.0.0 ("link", SPEC §10), whose direction 0 is rank 1 (the side that connected) and 1 is
rank 0, and whose header may name each all-reduce's element count (`elements`), without
which its payload cannot be split.  A record is one protocol frame when the stream could
be framed (requests from the client, replies from the server; a link's handshake and
partials) and otherwise whatever arrived.  Everything is little-endian.
Decoding checks every length against the bytes present and reports the offset of the
first damage; it never trusts a length to allocate.
"""

from __future__ import annotations

import json
import struct
from bisect import bisect_right
import zlib
from dataclasses import dataclass, field

from construct import Bytes, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from .comm import HANDSHAKE_SIZE, decode_link, wire_size
from .errors import ProtocolError

MAGIC = b"GGMLRPCT"
FORMAT_VERSION = 1
CLIENT, SERVER = 0, 1
CONNECTION, LINK = "connection", "link"  # the kinds of trace
KINDS = (CONNECTION, LINK)
MAX_HEADER = 1 << 20
MAX_RECORD = 2**32 - 1  # a longer frame is split into consecutive records of one direction

# The layouts (SPEC §13 is generated from these); struct twins do the reading.
PREAMBLE = Struct(
    "magic" / Bytes(8) * 'ASCII "GGMLRPCT"',
    "version" / Int16ul * "trace format version (1)",
    "header_length" / Int32ul * "bytes of the JSON header that follows",
)
RECORD_HEAD = Struct(
    "direction" / Int8ul * "0: client to server, 1: server to client",
    "time_us" / Int64ul * "microseconds since the connection opened",
    "length" / Int32ul * "bytes of this record that follow",
)
_PREAMBLE = struct.Struct("<8sHI")
_RECORD = struct.Struct("<BQI")
assert _PREAMBLE.size == PREAMBLE.sizeof() and _RECORD.size == RECORD_HEAD.sizeof()


class TraceError(ProtocolError):
    """A trace file is damaged or is not a trace; `offset` says where."""


@dataclass
class Record:
    direction: int  # CLIENT or SERVER
    time_us: int
    data: bytes


@dataclass
class Trace:
    header: dict
    records: list[Record] = field(default_factory=list)

    @property
    def protocol(self) -> str | None:
        return self.header.get("protocol")

    @property
    def kind(self) -> str:
        return self.header.get("kind", CONNECTION)

    def stream(self, direction: int) -> bytes:
        return b"".join(r.data for r in self.records if r.direction == direction)

    def decoded(self):
        """The connection decoded (protocol.session.DecodedSession), in the protocol the
        header names when this library knows it, else in the one its HELLO reveals."""
        from .exchanges import decode_connection
        from .versions import profile_for

        profile = None
        if self.protocol is not None:
            try:
                profile = profile_for(self.protocol, lenient_patch=True)
            except ProtocolError:
                profile = None
        return decode_connection(self.stream(CLIENT), self.stream(SERVER), profile)

    def link(self):
        """A link trace decoded (protocol.comm.DecodedLink): the handshake, and the
        all-reduces when the header names their element counts."""
        return decode_link(self.stream(CLIENT), self.stream(SERVER), self.header.get("elements"))


class StreamClock:
    """When the bytes of a connection's two streams arrived, from (direction, time, length)
    pieces in arrival order: the time of the piece holding a given offset."""

    def __init__(self, pieces) -> None:
        self._starts: dict[int, tuple[list[int], list]] = {CLIENT: ([], []), SERVER: ([], [])}
        filled = {CLIENT: 0, SERVER: 0}
        for direction, time, length in pieces:
            offsets, times = self._starts[direction]
            offsets.append(filled[direction])
            times.append(time)
            filled[direction] += length

    def time_of(self, direction: int, offset: int):
        offsets, times = self._starts[direction]
        return times[max(0, bisect_right(offsets, offset) - 1)] if times else 0


def encode_trace(trace: Trace) -> bytes:
    header = json.dumps({"format": FORMAT_VERSION, **trace.header}, sort_keys=True).encode()
    body = zlib.compressobj(6)
    parts = []
    for record in trace.records:
        data = memoryview(record.data)
        for at in range(0, max(len(data), 1), MAX_RECORD):  # frames over 4 GiB span several records
            piece = data[at:at + MAX_RECORD]
            parts.append(body.compress(_RECORD.pack(record.direction, record.time_us, len(piece))))
            parts.append(body.compress(piece))
    parts.append(body.flush())
    return _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header)) + header + b"".join(parts)


def decode_trace(raw: bytes, *, max_size: int = 1 << 34) -> Trace:
    """A Trace from file bytes; TraceError (with the offset) for anything malformed."""
    if len(raw) < _PREAMBLE.size:
        raise TraceError(f"file is {len(raw)} bytes, too short for a trace preamble", offset=0)
    magic, version, header_length = _PREAMBLE.unpack_from(raw)
    if magic != MAGIC:
        raise TraceError(f"not a GGML RPC trace (magic {magic!r}, expected {MAGIC!r})", offset=0)
    if version != FORMAT_VERSION:
        raise TraceError(f"trace format version {version} is not supported (this tool reads {FORMAT_VERSION})",
                         offset=8)
    if header_length > MAX_HEADER or _PREAMBLE.size + header_length > len(raw):
        raise TraceError(f"header length {header_length} runs past the end of the file", offset=10)
    start = _PREAMBLE.size
    try:
        header = json.loads(raw[start:start + header_length])
    except (ValueError, UnicodeDecodeError) as exc:
        raise TraceError(f"header is not JSON: {exc}", offset=start) from None
    if not isinstance(header, dict):
        raise TraceError("header is not a JSON object", offset=start)
    if not isinstance(header.get("protocol", ""), (str, type(None))):
        raise TraceError(f"header field protocol must be a version string, not {header['protocol']!r}",
                         offset=start)
    if header.get("kind", CONNECTION) not in KINDS:
        raise TraceError(f"header field kind is {header['kind']!r}: this tool reads {' and '.join(KINDS)} traces",
                         offset=start)
    elements = header.get("elements", [])
    if not isinstance(elements, list) or not all(type(n) is int and n >= 0 for n in elements):
        raise TraceError("header field elements must be a list of element counts (integers from 0)", offset=start)
    body_start = start + header_length
    inflater = zlib.decompressobj()
    try:
        body = inflater.decompress(raw[body_start:], max_size)
    except zlib.error as exc:
        raise TraceError(f"record stream is damaged ({exc})", offset=body_start) from None
    if inflater.unconsumed_tail:
        raise TraceError(f"record stream exceeds {max_size} bytes", offset=body_start)
    if not inflater.eof:
        raise TraceError("record stream is truncated (the file ends inside it)", offset=len(raw))
    records: list[Record] = []
    at = 0
    while at < len(body):
        if at + _RECORD.size > len(body):
            raise TraceError(f"record {len(records)} is cut short in its 13-byte head", offset=at)
        direction, time_us, length = _RECORD.unpack_from(body, at)
        if direction not in (CLIENT, SERVER):
            raise TraceError(f"record {len(records)} has direction {direction} (0 or 1)", offset=at)
        if at + _RECORD.size + length > len(body):
            raise TraceError(f"record {len(records)} announces {length} bytes, {len(body) - at - _RECORD.size} "
                             "remain", offset=at)
        records.append(Record(direction, time_us, body[at + _RECORD.size:at + _RECORD.size + length]))
        at += _RECORD.size + length
    header.pop("format", None)
    return Trace(header, records)


def frame_records(chunks: list[tuple[int, float, bytes]], session=None) -> list[Record]:
    """Records from what a connection carried, (direction, seconds, bytes) chunks in arrival
    order: each direction is split into protocol frames, stamped with the time its first
    byte arrived; what cannot be framed stays one trailing record per direction.  `session`:
    the connection already decoded (protocol.session.decode_connection), if the caller has it."""
    from .exchanges import decode_connection

    streams, clock = _streams(chunks)
    if session is None:
        session = decode_connection(bytes(streams[CLIENT]), bytes(streams[SERVER]))
    sizes = []
    for exchange in session.exchanges:
        sizes += [(direction, event.frame_size) for direction, event in ((CLIENT, exchange.request),
                                                                         (SERVER, exchange.reply)) if event is not None]
    return _cut(streams, clock, sizes)


def link_records(chunks: list[tuple[int, float, bytes]], elements: list[int] | None) -> list[Record]:
    """Records of a server-to-server link from what it carried, (direction, seconds, bytes)
    chunks in arrival order (direction 0: rank 1): each side's handshake, then each partial
    of the all-reduces whose element counts `elements` gives; the rest one trailing record
    per direction."""
    streams, clock = _streams(chunks)
    sizes = []
    for size in [HANDSHAKE_SIZE] + [wire_size(n) for n in elements or ()]:
        sizes += [(CLIENT, size), (SERVER, size)]
    return _cut(streams, clock, sizes)


def _streams(chunks) -> tuple[dict[int, bytearray], StreamClock]:
    """Each direction's bytes in order, and when they arrived."""
    streams = {CLIENT: bytearray(), SERVER: bytearray()}
    for direction, _, data in chunks:
        streams[direction] += data
    return streams, StreamClock((direction, int(seconds * 1e6), len(data)) for direction, seconds, data in chunks)


def _cut(streams: dict[int, bytearray], clock: StreamClock, sizes: list[tuple[int, int]]) -> list[Record]:
    """Records of (direction, size) pieces cut in order from each direction's stream, as far
    as its bytes go, each stamped with the time its first byte arrived; what follows the
    last piece of a direction is one more record.  Sorted by time, stable: the given order
    within equal times."""
    framed = []
    at = {CLIENT: 0, SERVER: 0}
    cut_short = set()  # directions whose bytes ended inside a piece: the rest of them is one record
    for direction, size in sizes:
        if direction in cut_short or at[direction] + size > len(streams[direction]):
            cut_short.add(direction)
            continue
        framed.append((direction, at[direction], size))
        at[direction] += size
    for direction in (CLIENT, SERVER):
        if at[direction] < len(streams[direction]):
            framed.append((direction, at[direction], len(streams[direction]) - at[direction]))
    views = {d: memoryview(stream) for d, stream in streams.items()}
    records = [Record(d, clock.time_of(d, start), bytes(views[d][start:start + size])) for d, start, size in framed]
    records.sort(key=lambda r: r.time_us)
    return records
