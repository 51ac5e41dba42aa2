"""Packet captures <-> trace files: read a tcpdump/Wireshark capture of a real deployment.

    ggml-rpc-trace import CAPTURE.pcap[ng] [--port 50052] --out DIR
    ggml-rpc-trace export TRACE --pcap OUT.pcap

Import reassembles every TCP connection to the server port from the captured segments
(in sequence order, whatever order they were captured in; a retransmitted byte counts once)
and writes each connection as a trace file (SPEC §13), which `show` and `replay` then use
as they are.  What a capture can lack is reported per connection, never papered over:
- a connection whose start was not captured: both streams are cut to its first HELLO;
- bytes never captured (snaplen truncation, lost segments): zeros stand in for them, and
  the frames they fall in are listed as incomplete;
- a connection without a complete HELLO: no trace.
Export writes a trace back as a capture (IPv4/TCP over Ethernet, with the handshake), so any
trace can be opened in Wireshark with the dissector (tools/generate_dissector.py).

The capture formats are read and written by dpkt (pcap and pcapng).
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

from ggml_rpc_spec.protocol.exchanges import decode_connection
from ggml_rpc_spec.protocol.trace import CLIENT, SERVER, Trace, frame_records

HELLO = 14
MAX_STREAM = 1 << 36  # a sequence-number jump beyond this is a different connection (or garbage)


@dataclass
class Stream:
    """One direction of a TCP connection: captured segments placed by sequence number."""

    isn: int | None = None  # the first sequence number of the payload (SYN + 1), once known
    segments: dict[int, tuple[float, bytes]] = field(default_factory=dict)  # offset -> (time, bytes)
    missing: int = 0  # bytes the capture announced but did not keep (snaplen)

    def add(self, seq: int, when: float, payload: bytes, wire_length: int) -> None:
        if self.isn is None:
            self.isn = seq  # the capture started mid-connection: the first seen byte is offset 0
        offset = (seq - self.isn) % (1 << 32)
        if offset > MAX_STREAM:
            return
        if wire_length > len(payload):  # cut by the snaplen: the rest is a hole
            self.missing += wire_length - len(payload)
        known = self.segments.get(offset)
        if known is None or len(known[1]) < len(payload):
            self.segments[offset] = (when, payload)

    def assemble(self) -> tuple[bytes, list[tuple[int, int]], list[tuple[int, float]]]:
        """(the bytes in sequence order with zeros in the holes, the holes as (start, end),
        (offset, capture time) where each segment's new bytes begin)."""
        data = bytearray()
        holes: list[tuple[int, int]] = []
        times: list[tuple[int, float]] = []
        for offset in sorted(self.segments):
            when, payload = self.segments[offset]
            end = offset + len(payload)
            if end <= len(data):
                continue  # a retransmission of bytes already placed
            if offset > len(data):
                holes.append((len(data), offset))
                data += bytes(offset - len(data))
            times.append((len(data), when))
            data += payload[len(data) - offset:]
        return bytes(data), holes, times


@dataclass
class Connection:
    client: tuple[str, int]
    server: tuple[str, int]
    started: float
    up: Stream = field(default_factory=Stream)  # client -> server
    down: Stream = field(default_factory=Stream)
    saw_syn: bool = False


@dataclass
class Imported:
    """One connection of a capture, as a trace (or None) and what was wrong with it."""

    connection: Connection
    trace: Trace | None
    notes: list[str]


def read_capture(path: Path, port: int) -> list[Connection]:
    """Every TCP connection to `port` in a pcap or pcapng file, its segments placed."""
    connections: dict[tuple, Connection] = {}
    with open(path, "rb") as handle:
        try:
            reader = dpkt.pcapng.Reader(handle)
        except (ValueError, dpkt.UnpackError):
            handle.seek(0)
            try:
                reader = dpkt.pcap.Reader(handle)
            except (ValueError, dpkt.UnpackError) as exc:
                raise ValueError(f"{path} is neither a pcap nor a pcapng capture ({exc})") from None
        decode = _link_decoder(reader.datalink())
        for when, frame in reader:
            packet = decode(frame)
            if packet is None:
                continue
            ip, tcp, wire_payload = packet
            src, dst = (_address(ip.src), tcp.sport), (_address(ip.dst), tcp.dport)
            if port not in (tcp.sport, tcp.dport):
                continue
            upward = tcp.dport == port
            client, server = (src, dst) if upward else (dst, src)
            key = (client, server)
            if tcp.flags & dpkt.tcp.TH_SYN and not tcp.flags & dpkt.tcp.TH_ACK and key in connections:
                connections[(*key, when)] = connections.pop(key)  # the port pair is reused by a new connection
            conn = connections.get(key)
            if conn is None:
                conn = connections[key] = Connection(client, server, when)
            stream = conn.up if upward else conn.down
            if tcp.flags & dpkt.tcp.TH_SYN:
                stream.isn = (tcp.seq + 1) % (1 << 32)
                conn.saw_syn = True
                continue
            if tcp.data or wire_payload:
                stream.add(tcp.seq, when, bytes(tcp.data), wire_payload)
    return sorted(connections.values(), key=lambda c: c.started)


def _address(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


def _link_decoder(datalink: int):
    """frame bytes -> (ip, tcp, payload length on the wire) or None, for the capture's link type."""
    def ip_of(frame: bytes):
        if datalink == dpkt.pcap.DLT_EN10MB:
            return dpkt.ethernet.Ethernet(frame).data
        if datalink == dpkt.pcap.DLT_LINUX_SLL:
            return dpkt.sll.SLL(frame).data
        if datalink in (dpkt.pcap.DLT_NULL, dpkt.pcap.DLT_LOOP):
            return dpkt.loopback.Loopback(frame).data
        if datalink in (dpkt.pcap.DLT_RAW, 101, 228, 229):  # raw IP (12/101), IPv4 (228), IPv6 (229)
            return (dpkt.ip6.IP6 if frame and frame[0] >> 4 == 6 else dpkt.ip.IP)(frame)
        raise ValueError(f"capture link type {datalink} is not supported (Ethernet, Linux cooked, loopback, raw IP)")

    def decode(frame: bytes):
        try:
            ip = ip_of(frame)
        except (dpkt.UnpackError, dpkt.NeedData, IndexError):
            return None
        if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
            return None
        tcp = ip.data
        if not isinstance(tcp, dpkt.tcp.TCP):
            return None
        header = ip.hl * 4 if isinstance(ip, dpkt.ip.IP) else 40
        wire = (ip.len - header if isinstance(ip, dpkt.ip.IP) else ip.plen) - tcp.off * 4
        return ip, tcp, max(wire, 0)

    return decode


def to_trace(conn: Connection, capture: str) -> Imported:
    """A reassembled connection as a trace, with notes on what the capture lacked."""
    up, up_holes, up_times = conn.up.assemble()
    down, down_holes, down_times = conn.down.assemble()
    notes = []
    if not conn.saw_syn:
        start = _first_hello(up)
        if start is None:
            return Imported(conn, None, ["the capture starts after the connection's HELLO: nothing to frame"])
        hello_time = _time_at(up_times, start)
        cut = next((at for at, when in down_times if when >= hello_time), len(down))
        notes.append(f"the capture starts mid-connection: {start} client and {cut} server bytes before the "
                     "first HELLO were skipped")
        up, up_holes, up_times = _cut(up, up_holes, up_times, start)
        down, down_holes, down_times = _cut(down, down_holes, down_times, cut)
    session = decode_connection(up, down)
    if session.profile is None:
        return Imported(conn, None, notes + [f"no complete HELLO to learn the version from ({session.error})"])
    for holes, side, frames in ((up_holes, "client", _frames(session, "request")),
                                (down_holes, "server", _frames(session, "reply"))):
        for start, end in holes:
            hit = [f"#{i} {command}" for i, command, lo, hi in frames if lo < end and start < hi]
            notes.append(f"{end - start} {side} bytes at {start} were not captured (snaplen or lost segments); "
                         f"incomplete frames: {', '.join(hit) or 'none (after the last frame)'}")
    if session.error is not None:
        notes.append(f"framing stopped: {session.error}")
    t0 = min([when for _, when in up_times[:1] + down_times[:1]] or [conn.started])
    chunks = _chunks(up, up_times, CLIENT, t0) + _chunks(down, down_times, SERVER, t0)
    chunks.sort(key=lambda chunk: chunk[1])
    header = {"protocol": session.profile.name, "recorder": "ggml-rpc-trace import", "capture": capture,
              "peer": "%s:%d" % conn.server, "client": "%s:%d" % conn.client,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(conn.started))}
    if notes:
        header["note"] = "; ".join(notes)
    return Imported(conn, Trace(header, frame_records(chunks, session)), notes)


def _first_hello(stream: bytes) -> int | None:
    """Where the first HELLO request starts (command 14 with a size of 0 or 24)."""
    at = stream.find(bytes([HELLO]))
    while 0 <= at and at + 9 <= len(stream):
        (size,) = struct.unpack_from("<Q", stream, at + 1)
        if size in (0, 24):
            return at
        at = stream.find(bytes([HELLO]), at + 1)
    return None


def _cut(data: bytes, holes, times, start: int):
    """A stream without its first `start` bytes (holes and segment times shifted)."""
    ends = [at for at, _ in times[1:]] + [len(data)]
    kept = [(max(at, start) - start, when) for (at, when), end in zip(times, ends, strict=True) if end > start]
    return data[start:], [(max(a, start) - start, b - start) for a, b in holes if b > start], kept


def _time_at(times, offset: int) -> float:
    when = times[0][1] if times else 0.0
    for at, stamp in times:
        if at > offset:
            break
        when = stamp
    return when


def _frames(session, side: str):
    """(index, command, start, end) of each framed request or reply in its stream."""
    out, at = [], 0
    for i, exchange in enumerate(session.exchanges, 1):
        event = getattr(exchange, side)
        if event is not None:
            out.append((i, exchange.request.command.name, at, at + event.frame_size))
            at += event.frame_size
    return out


def _chunks(data: bytes, times, direction: int, t0: float) -> list[tuple[int, float, bytes]]:
    bounds = [at for at, _ in times] + [len(data)]
    return [(direction, when - t0, data[at:end]) for (at, when), end in zip(times, bounds[1:], strict=True)
            if end > at]


def import_capture(path: Path, port: int, out: Path, *, log=print) -> list[Imported]:
    """Write one trace per connection of the capture into `out`; what went into each."""
    from ggml_rpc_spec.protocol.trace import encode_trace

    out.mkdir(parents=True, exist_ok=True)
    results = []
    for number, conn in enumerate(read_capture(path, port), 1):
        imported = to_trace(conn, path.name)
        results.append(imported)
        name = f"{path.stem}-{number:04d}.ggmlrpc"
        where = "%s:%d -> %s:%d" % (*conn.client, *conn.server)
        if imported.trace is None:
            log(f"{where}: no trace: {'; '.join(imported.notes)}")
            continue
        (out / name).write_bytes(encode_trace(imported.trace))
        log(f"{where}: protocol {imported.trace.header['protocol']}, {len(imported.trace.records)} frames "
            f"-> {out / name}" + "".join(f"\n  note: {n}" for n in imported.notes))
    return results


# -- export ---------------------------------------------------------------------------------------------


def export_capture(trace: Trace, out: Path) -> int:
    """Write `trace` as a pcap of one TCP connection; returns the number of packets."""
    client = _endpoint(trace.header.get("client"), ("127.0.0.1", 40000))
    server = _endpoint(trace.header.get("peer"), ("127.0.0.1", 50052))
    seq = {CLIENT: 1000, SERVER: 5000}
    ends = {CLIENT: (client, server), SERVER: (server, client)}
    start = _epoch(trace.header.get("date"))
    packets = []

    def emit(direction: int, when_us: int, flags: int, payload: bytes = b"") -> None:
        (src, sport), (dst, dport) = ends[direction]
        other = SERVER if direction == CLIENT else CLIENT
        tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq[direction], ack=seq[other], flags=flags, win=65535,
                           data=payload)
        ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_TCP, ttl=64,
                        data=tcp)
        ip.len = 20 + len(bytes(tcp))
        frame = dpkt.ethernet.Ethernet(src=b"\x02\0\0\0\0\x01", dst=b"\x02\0\0\0\0\x02",
                                       type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
        packets.append((start + when_us / 1e6, bytes(frame)))
        seq[direction] = (seq[direction] + len(payload) + (1 if flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0)
                          ) % (1 << 32)

    first = trace.records[0].time_us if trace.records else 0
    emit(CLIENT, first, dpkt.tcp.TH_SYN)
    emit(SERVER, first, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)
    emit(CLIENT, first, dpkt.tcp.TH_ACK)
    for record in trace.records:
        data = bytes(record.data)
        for at in range(0, len(data), 65000):  # an IPv4 packet holds at most 65535 bytes
            emit(record.direction, record.time_us, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, data[at:at + 65000])
    last = trace.records[-1].time_us if trace.records else first
    emit(CLIENT, last, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
    emit(SERVER, last, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
    with open(out, "wb") as handle:
        writer = dpkt.pcap.Writer(handle, snaplen=262144, linktype=dpkt.pcap.DLT_EN10MB)
        for when, frame in packets:
            writer.writepkt(frame, ts=when)
    return len(packets)


def _endpoint(text, default: tuple[str, int]) -> tuple[str, int]:
    try:
        host, port = str(text).rsplit(":", 1)
        socket.inet_aton(host)
        return host, int(port)
    except (ValueError, OSError, TypeError):
        return default


def _epoch(date) -> float:
    try:
        return float(time.mktime(time.strptime(str(date), "%Y-%m-%dT%H:%M:%SZ"))) - time.timezone
    except ValueError:
        return time.time()
