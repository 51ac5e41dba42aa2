"""Packet captures <-> trace files: read a tcpdump/Wireshark capture of a real deployment.

    ggml-rpc-trace import CAPTURE.pcap[ng] [--port P[,Q...]] --out DIR
    ggml-rpc-trace export TRACE... --pcap OUT.pcap

Import reassembles every TCP connection of the capture from its segments (in sequence
order, whatever order they were captured in; a retransmitted byte counts once) and writes
each connection to an RPC server as a trace file (SPEC §13), which `show` and `replay` then
use as they are.  The servers are on the given ports, or wherever a captured connection
opens with HELLO.  A tensor-parallel session's server-to-server link (protocol 8.0.0, SPEC
§10) becomes a link trace: the link is the connection to a port a client's COMM_INIT named
(or one of a link's shape), and its all-reduce sizes come from the COMM_ALLREDUCE requests
of the client connection that set it up, in the same capture.  What a capture can lack is
reported per connection, never papered over:
- a connection whose start was not captured: both streams are cut to its first HELLO (a
  link, which has no frames to find again, gives no trace);
- bytes never captured (snaplen truncation, lost segments): zeros stand in for them, and
  the frames they fall in are listed as incomplete;
- a connection without a complete HELLO: no trace.
Export writes traces back as a capture (IPv4/TCP over Ethernet, with each connection's
handshake), so any trace can be opened in Wireshark with the dissector
(tools/generate_dissector.py).

The capture formats are read and written by dpkt (pcap and pcapng).
"""

from __future__ import annotations

import socket
import struct
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

from ggml_rpc_spec.protocol.comm import HANDSHAKE_SIZE, LinkPlan, link_plans, looks_like_link
from ggml_rpc_spec.protocol.exchanges import decode_connection
from ggml_rpc_spec.protocol.trace import CLIENT, LINK, SERVER, Trace, frame_records, link_records

HELLO = 14
_HELLO_HEAD = 9  # a HELLO request's command byte and size
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

    def head(self, size: int) -> bytes:
        """The stream's first `size` bytes, as far as the capture holds them without a hole
        (without assembling the whole stream: a peek at how a connection opens)."""
        data = bytearray()
        while len(data) < size and (segment := self.segments.get(len(data))) is not None and segment[1]:
            data += segment[1]
        return bytes(data[:size])

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


Endpoint = tuple[str, int]


@dataclass
class Connection:
    """A TCP connection of the capture: each end's stream, and which end connected (its SYN's
    sender) once known."""

    ends: tuple[Endpoint, Endpoint]
    started: float
    streams: dict[Endpoint, Stream] = field(default_factory=dict)
    client: Endpoint | None = None  # the end that connected; None while the SYN is unknown
    saw_syn: bool = False
    finished: set[Endpoint] = field(default_factory=set)  # ends whose FIN (or either's RST) was captured

    @property
    def closed(self) -> bool:
        return set(self.ends) <= self.finished

    @property
    def server(self) -> Endpoint:
        return self.ends[1] if self.client == self.ends[0] else self.ends[0]

    @property
    def client_end(self) -> Endpoint:
        """The end that connected, for a connection already oriented."""
        if self.client is None:
            raise ValueError(f"which end of {self.ends} connected is not known (no SYN, no known server port)")
        return self.client

    @property
    def up(self) -> Stream:  # client -> server
        return self.streams.setdefault(self.client_end, Stream())

    @property
    def down(self) -> Stream:
        return self.streams.setdefault(self.server, Stream())

    def orient(self, server_ports: set[int]) -> bool:
        """Decide which end is the client when the SYN was not captured: the end that is not
        on a known server port.  Whether the connection is oriented."""
        if self.client is None:
            servers = [end for end in self.ends if end[1] in server_ports]
            if len(servers) == 1:
                self.client = self.ends[1] if servers[0] == self.ends[0] else self.ends[0]
        return self.client is not None


@dataclass
class Imported:
    """One connection of a capture, as a trace (or None) and what was wrong with it."""

    connection: Connection
    trace: Trace | None
    notes: list[str]


def read_capture(path: Path) -> list[Connection]:
    """Every TCP connection in a pcap or pcapng file, its segments placed, in the order they
    started; which end connected is known where the capture holds the SYN."""
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
            low, high = sorted((src, dst))
            key = (low, high)
            opening = tcp.flags & dpkt.tcp.TH_SYN and not tcp.flags & dpkt.tcp.TH_ACK
            if opening and key in connections:
                connections[(*key, when)] = connections.pop(key)  # the port pair is reused by a new connection
            conn = connections.get(key)
            if conn is None:
                conn = connections[key] = Connection(key, when)
            stream = conn.streams.setdefault(src, Stream())
            if tcp.flags & dpkt.tcp.TH_FIN:
                conn.finished.add(src)
            if tcp.flags & dpkt.tcp.TH_RST:
                conn.finished.update(key)
            if tcp.flags & dpkt.tcp.TH_SYN:
                stream.isn = (tcp.seq + 1) % (1 << 32)
                conn.saw_syn = True
                conn.client = src if opening else dst
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


@dataclass
class LinkUse:
    """A link a client connection of the capture set up (its COMM_INIT answered ok=1): the
    plan (rank, port, all-reduce sizes), when the COMM_INIT was sent, and by whom."""

    plan: LinkPlan
    time: float  # capture time of the COMM_INIT request
    protocol: str
    server: str  # the RPC server's address, as "host:port"


def to_trace(conn: Connection, capture: str) -> tuple[Imported, list[LinkUse]]:
    """A reassembled client connection as a trace, with notes on what the capture lacked,
    and the links it set up."""
    up, up_holes, up_times = conn.up.assemble()
    down, down_holes, down_times = conn.down.assemble()
    notes = []
    if not conn.saw_syn:
        start = _first_hello(up)
        if start is None:
            return Imported(conn, None, ["the capture starts after the connection's HELLO: nothing to frame"]), []
        hello_time = _time_at(up_times, start)
        cut = next((at for at, when in down_times if when >= hello_time), len(down))
        notes.append(f"the capture starts mid-connection: {start} client and {cut} server bytes before the "
                     "first HELLO were skipped")
        up, up_holes, up_times = _cut(up, up_holes, up_times, start)
        down, down_holes, down_times = _cut(down, down_holes, down_times, cut)
    session = decode_connection(up, down)
    if session.profile is None:
        return Imported(conn, None, notes + [f"no complete HELLO to learn the version from ({session.error})"]), []
    requests = _frames(session, "request")
    for holes, side, frames in ((up_holes, "client", requests), (down_holes, "server", _frames(session, "reply"))):
        for start, end in holes:
            hit = [f"#{i} {command}" for i, command, lo, hi in frames if lo < end and start < hi]
            notes.append(f"{end - start} {side} bytes at {start} were not captured (snaplen or lost segments); "
                         f"incomplete frames: {', '.join(hit) or 'none (after the last frame)'}")
    if session.error is not None:
        notes.append(f"framing stopped: {session.error}")
    chunks, t0 = _both_chunks(conn, up, up_times, down, down_times)
    header = {"protocol": session.profile.name, **_header(conn, capture, notes, t0)}
    uses = [LinkUse(plan, _time_at(up_times, requests[plan.request][2]), session.profile.name, "%s:%d" % conn.server)
            for plan in link_plans(session)]
    return Imported(conn, Trace(header, frame_records(chunks, session)), notes), uses


def to_link_trace(conn: Connection, capture: str, rank0: LinkUse | None, rank1: LinkUse | None) -> Imported:
    """A reassembled server-to-server link as a link trace, split into all-reduces by the
    sizes the COMM_ALLREDUCE requests of rank 0's client connection named (rank 1's where
    rank 0's is not in the capture), with notes on what the capture lacked."""
    up, up_holes, up_times = conn.up.assemble()  # rank 1, which connected
    down, down_holes, down_times = conn.down.assemble()
    if not up and not down:
        return Imported(conn, None, ["no bytes: a refused or abandoned try (rank 1 tries again until rank 0 "
                                     "listens)"])
    if not conn.saw_syn:
        return Imported(conn, None, ["the capture starts mid-link: nothing on a link says where a partial begins, "
                                     "so bytes without the handshake before them cannot be placed"])
    notes = [f"{end - start} bytes of rank {rank} at {start} were not captured (snaplen or lost segments)"
             for holes, rank in ((up_holes, 1), (down_holes, 0)) for start, end in holes]
    use = rank0 or rank1
    elements = None
    if use is None:
        notes.append(f"no client connection of the capture set up a link on port {conn.server[1]} (COMM_INIT): "
                     "the all-reduce sizes are unknown, the payload cannot be split")
    else:
        elements = use.plan.elements
        if rank0 is not None and rank1 is not None and rank0.plan.elements != rank1.plan.elements:
            notes.append(f"the ranks' clients asked for different all-reduces ({len(rank0.plan.elements)} on rank 0, "
                         f"{len(rank1.plan.elements)} on rank 1, not all of the same sizes): split by rank 0's")
    chunks, t0 = _both_chunks(conn, up, up_times, down, down_times)
    header = {"kind": LINK, "protocol": use.protocol if use else None, **_header(conn, capture, notes, t0)}
    if use is not None and elements is not None:
        header.update(elements=elements, tensors=use.plan.tensors)
    for rank, which in ((0, rank0), (1, rank1)):
        if which is not None:
            header[f"rank{rank}_server"] = which.server
    records = link_records(chunks, elements)
    return Imported(conn, Trace(header, records), notes)


def _header(conn: Connection, capture: str, notes: list[str], t0: float) -> dict:
    """The header fields every imported trace has: who, where, what was wrong, and when its
    first byte was captured (to the microsecond: the traces of one capture exported together
    keep their order)."""
    date = datetime.fromtimestamp(t0, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = {"recorder": "ggml-rpc-trace import", "capture": capture, "peer": "%s:%d" % conn.server,
              "client": "%s:%d" % conn.client_end, "date": date}
    if notes:
        header["note"] = "; ".join(notes)
    return header


def _both_chunks(conn: Connection, up: bytes, up_times, down: bytes, down_times
                 ) -> tuple[list[tuple[int, float, bytes]], float]:
    """Both directions' bytes as (direction, seconds since the connection's first byte, bytes)
    chunks in arrival order, and the capture time of that first byte."""
    t0 = min([when for _, when in up_times[:1] + down_times[:1]] or [conn.started])
    chunks = _chunks(up, up_times, CLIENT, t0) + _chunks(down, down_times, SERVER, t0)
    chunks.sort(key=lambda chunk: chunk[1])
    return chunks, t0


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


def holds_closed_link(path: Path) -> bool:
    """Whether a capture being written holds a server-to-server link and every connection in
    it has closed: a tensor-parallel session is complete (its link closes last, once the
    client connections have ended)."""
    connections = read_capture(path) if path.exists() and path.stat().st_size else []
    links = [conn for conn in connections
             if conn.client and looks_like_link(conn.up.head(HANDSHAKE_SIZE), conn.down.head(HANDSHAKE_SIZE))]
    return bool(links) and all(conn.closed for conn in connections)


def rpc_ports(connections: list[Connection]) -> set[int]:
    """The RPC servers' ports in a capture: where a connection whose SYN was captured
    starts with a HELLO request."""
    return {conn.server[1] for conn in connections
            if conn.saw_syn and _first_hello(conn.up.head(_HELLO_HEAD)) == 0}


def imported_traces(path: Path, ports: list[int] | None) -> list[Imported]:
    """A trace for every connection to an RPC server of the capture (the servers on `ports`,
    or found by their HELLOs) and a link trace for every server-to-server link: a connection
    to a port a COMM_INIT of the capture named, or of a link's shape (24 zero bytes from the
    side that connected, 24 back).  In the order the connections started."""
    connections = read_capture(path)
    servers = set(ports) if ports else rpc_ports(connections)
    clients = [conn for conn in connections if conn.orient(servers) and conn.server[1] in servers]
    results, uses = [], []
    for conn in clients:
        imported, links = to_trace(conn, path.name)
        results.append(imported)
        uses += links
    link_ports = {use.plan.port for use in uses}
    for conn in connections:
        if conn in clients or not conn.orient(link_ports):
            continue
        if conn.server[1] in link_ports or looks_like_link(conn.up.head(HANDSHAKE_SIZE), conn.down.head(HANDSHAKE_SIZE)):
            results.append(to_link_trace(conn, path.name, *(_link_use(uses, conn, rank) for rank in (0, 1))))
    return sorted(results, key=lambda imported: imported.connection.started)


def import_capture(path: Path, ports: list[int] | None, out: Path, *, log=print) -> list[Imported]:
    """Write the traces of imported_traces() into `out`; what went into each."""
    from ggml_rpc_spec.protocol.trace import encode_trace

    out.mkdir(parents=True, exist_ok=True)
    results = imported_traces(path, ports)
    for number, imported in enumerate(results, 1):
        conn = imported.connection
        where = "%s:%d -> %s:%d" % (*conn.client_end, *conn.server)
        if imported.trace is None:
            log(f"{where}: no trace: {'; '.join(imported.notes)}")
            continue
        link = imported.trace.kind == LINK
        name = f"{path.stem}-{'link-' if link else ''}{number:04d}.ggmlrpc"
        (out / name).write_bytes(encode_trace(imported.trace))
        what = (f"server-to-server link, {len(imported.trace.header.get('elements', []))} all-reduces" if link
                else f"protocol {imported.trace.header['protocol']}")
        log(f"{where}: {what}, {len(imported.trace.records)} frames -> {out / name}"
            + "".join(f"\n  note: {n}" for n in imported.notes))
    return results


def _link_use(uses: list[LinkUse], link: Connection, rank: int) -> LinkUse | None:
    """The COMM_INIT of `rank` that made `link`: of those naming its port, the one sent
    closest to when the link opened (sessions one after another may reuse the port)."""
    named = [use for use in uses if use.plan.rank == rank and use.plan.port == link.server[1]]
    return min(named, key=lambda use: abs(use.time - link.started), default=None)


# -- export ---------------------------------------------------------------------------------------------


def export_capture(traces: list[Trace], out: Path) -> int:
    """Write `traces` as a pcap, one TCP connection each (a tensor-parallel session's client
    connections and link side by side); returns the number of packets."""
    # a trace whose header names no client address gets a port of its own (the traces of a
    # session recorded by the proxy would otherwise all be one reused connection)
    packets = [packet for number, trace in enumerate(traces) for packet in _packets(trace, 40000 + number)]
    packets.sort(key=lambda packet: packet[0])  # stable: each connection's own order within equal times
    with open(out, "wb") as handle:
        writer = dpkt.pcap.Writer(handle, snaplen=262144, linktype=dpkt.pcap.DLT_EN10MB)
        for when, frame in packets:
            writer.writepkt(frame, ts=when)
    return len(packets)


def _packets(trace: Trace, client_port: int) -> list[tuple[float, bytes]]:
    """One trace as the (time, Ethernet frame) packets of a TCP connection (from
    `client_port` unless the header names the client's address)."""
    client = _endpoint(trace.header.get("client"), ("127.0.0.1", client_port))
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
    return packets


def _endpoint(text, default: tuple[str, int]) -> tuple[str, int]:
    try:
        host, port = str(text).rsplit(":", 1)
        socket.inet_aton(host)
        return host, int(port)
    except (ValueError, OSError, TypeError):
        return default


def _epoch(date) -> float:
    """A header's date (ISO 8601 in UTC, to the second or finer) as seconds since the epoch."""
    try:
        return datetime.fromisoformat(str(date).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()
