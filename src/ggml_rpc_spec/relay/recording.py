"""What a relay records of a connection, and how it becomes a trace file.

The proxy records the bytes of both directions as they pass; the bridge records each of its
two sides.  Both turn a recording into a trace (protocol.trace) the same way, here.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from ggml_rpc_spec.protocol.exchanges import decode_connection
from ggml_rpc_spec.protocol.trace import CLIENT, SERVER, Trace, frame_records

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

    def add(self, direction: str, data) -> None:
        """Record `data` (copied: callers reuse their buffers) as sent in `direction` now."""
        self.chunks.append((direction, time.monotonic() - self.t0, bytes(data)))


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
    scaled: float = size
    for unit in ("B", "KB", "MB", "GB"):
        if scaled < 1000 or unit == "GB":
            return f"{scaled:.0f} {unit}" if unit == "B" else f"{scaled:.1f} {unit}"
        scaled /= 1000
    return str(scaled)


