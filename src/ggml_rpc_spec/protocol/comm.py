"""The server-to-server link of protocol 8.0.0 (COMM_INIT / COMM_ALLREDUCE / COMM_FREE), as bytes.

Two servers that a client made ranks 0 and 1 of a pair sum partial tensors over a TCP link
of their own, with no client in between.  The link has its own wire format, which carries
no frame headers at all:

    handshake   rank 1 -> rank 0: 24 bytes of conn_caps; rank 0 -> rank 1: 24 bytes
                (all zero over plain TCP, as in HELLO)
    all-reduce  rank 0 sends its partial, then receives rank 1's; rank 1 receives, then
                sends.  A partial is the tensor's elements in memory order: F32, or BF16 when
                the tensor has at least 32768 elements (halving the bytes)

Each side knows every length from the tensor its own client named in COMM_ALLREDUCE: the
two clients' requests must agree, nothing on the link says so.  A recorded link (a trace of
kind "link", SPEC §13) is therefore split into all-reduces only with the element counts
taken from a rank's client connection; without them its payload stays bytes.  Everything
here is pure computation; the reference server's link (server/link.py) and the trace tools
use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .commands import CONN_CAPS_SIZE, Command
from .tensor import decode_name

HANDSHAKE_SIZE = CONN_CAPS_SIZE  # bytes each way, rank 1 first
PORT_OFFSET = 1000  # the upstream client names rank 0's RPC port + 1000 as the link's port
BF16_MIN_ELEMENTS = 32768  # from this many elements on, partials travel as BF16
WORLD = 2  # the only pair size there is
HOST_SIZE = 64


def handshake() -> bytes:
    """A rank's handshake: its conn_caps, all zero over plain TCP (no transport upgrade)."""
    return bytes(HANDSHAKE_SIZE)


def handshake_first(rank: int) -> bool:
    """Whether `rank` sends its handshake before receiving the other's (rank 1, the one
    that connected, speaks first)."""
    return rank == 1


def partial_first(rank: int) -> bool:
    """Whether `rank` sends its partial before receiving the other's in an all-reduce (rank
    0 first: the two turns alternate, so partials of any size never deadlock)."""
    return rank == 0


def wire_bf16(n_elements: int) -> bool:
    """Whether an F32 partial of `n_elements` travels as BF16."""
    return n_elements >= BF16_MIN_ELEMENTS


def wire_size(n_elements: int) -> int:
    """Bytes of one partial on the link, each way."""
    return n_elements * (2 if wire_bf16(n_elements) else 4)


def fp32_to_bf16(values: np.ndarray) -> np.ndarray:
    """ggml's F32 -> BF16 conversion (uint16 bits): round to nearest even; a NaN keeps its
    sign and top mantissa bits and is made quiet."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return np.where(nan, (bits >> 16) | np.uint32(64), rounded).astype(np.uint16)


def bf16_to_fp32(bits: np.ndarray) -> np.ndarray:
    """BF16 bits as float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def encode_partial(values: np.ndarray) -> np.ndarray:
    """A partial (float32 elements in memory order) as the bytes that go on the link."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    return (fp32_to_bf16(flat) if wire_bf16(flat.size) else flat).view(np.uint8)


def decode_partial(raw, n_elements: int) -> np.ndarray:
    """The peer's partial of `n_elements` from its link bytes, as float32."""
    data = np.frombuffer(raw, dtype=np.uint8)
    if data.size != wire_size(n_elements):
        raise ValueError(f"a partial of {n_elements} elements is {wire_size(n_elements)} bytes, got {data.size}")
    if wire_bf16(n_elements):
        return bf16_to_fp32(data.view(np.uint16))
    return data.view(np.float32)


def reduce(own: np.ndarray, peer: np.ndarray) -> np.ndarray:
    """The all-reduce's result on this rank: its own full-precision partial plus the peer's
    as received (the two ranks differ in the last bits when the link carried BF16)."""
    return np.add(own.reshape(-1), peer, dtype=np.float32)


def host_of(raw: bytes) -> str:
    """COMM_INIT's host field: up to the first NUL (or all 64 bytes)."""
    return bytes(raw).split(b"\0", 1)[0].decode("ascii", errors="replace")


def encode_host(host: str) -> bytes:
    raw = host.encode("ascii")
    if len(raw) >= HOST_SIZE:
        raise ValueError(f"host {host!r} is longer than {HOST_SIZE - 1} bytes")
    return raw.ljust(HOST_SIZE, b"\0")



# -- a recorded link, decoded ------------------------------------------------------------------

RANK1, RANK0 = 0, 1  # a link trace's directions (trace.CLIENT, trace.SERVER): rank 1 connected
SHOWN_VALUES = 4  # values of each partial a decoded all-reduce keeps for display


def rank_direction(rank: int) -> int:
    """The direction of a link trace in which `rank` sends."""
    return RANK0 if rank == 0 else RANK1


@dataclass
class AllReduce:
    """One all-reduce as the link carried it: each rank's partial, as sent."""

    index: int  # 1-based, in link order
    elements: int
    partials: dict[int, bytes]  # RANK0 / RANK1 -> the bytes that rank sent
    starts: dict[int, int]  # RANK0 / RANK1 -> offset of the partial in that rank's stream

    @property
    def bf16(self) -> bool:
        return wire_bf16(self.elements)

    @property
    def wire_size(self) -> int:
        return wire_size(self.elements)

    def values(self, rank_direction: int, count: int = SHOWN_VALUES) -> list[float]:
        """The first `count` values a rank sent, as float32 (BF16 widened exactly)."""
        return decode_partial(self.partials[rank_direction], self.elements)[:count].tolist()


@dataclass
class DecodedLink:
    """Both directions of a server-to-server link: the handshake, the all-reduces the given
    element counts split the payload into, what is left unsplit and what was wrong."""

    handshake: dict[int, bytes] = field(default_factory=dict)  # RANK0 / RANK1 -> its conn_caps (maybe cut)
    exchanges: list[AllReduce] = field(default_factory=list)
    unsplit: dict[int, int] = field(default_factory=dict)  # RANK0 / RANK1 -> bytes past the last all-reduce
    problems: list[str] = field(default_factory=list)


def looks_like_link(connector: bytes, acceptor: bytes) -> bool:
    """Whether a TCP connection has a link's shape: the side that connected opens with a
    handshake of 24 zero bytes (a client opens with HELLO, whose first byte is 14) and the
    other side answers 24 bytes of its own."""
    return (len(connector) >= HANDSHAKE_SIZE and len(acceptor) >= HANDSHAKE_SIZE
            and connector[:HANDSHAKE_SIZE] == handshake())


def decode_link(rank1: bytes, rank0: bytes, elements: list[int] | None) -> DecodedLink:
    """Split a link's two streams (what rank 1, the connector, and rank 0 sent) into the
    handshake and one all-reduce per entry of `elements`.  Without `elements` the payload
    cannot be split: nothing on the link says where a partial ends."""
    streams = {RANK1: rank1, RANK0: rank0}
    link = DecodedLink()
    for rank, data in streams.items():
        link.handshake[rank] = data[:HANDSHAKE_SIZE]
        if len(data) < HANDSHAKE_SIZE:
            link.problems.append(f"{_rank(rank)}'s handshake is cut short: {len(data)} of {HANDSHAKE_SIZE} bytes")
        elif data[:HANDSHAKE_SIZE] != handshake():
            link.problems.append(f"{_rank(rank)}'s conn_caps are not all zero: not a plain TCP link (SPEC §10.1)")
    at = HANDSHAKE_SIZE
    if elements is None:
        link.problems.append("the trace names no all-reduce sizes (header field `elements`): the link carries no "
                             "frame headers, so its payload cannot be split into all-reduces")
    else:
        for index, count in enumerate(elements, 1):
            size = wire_size(count)
            if any(len(data) < at + size for data in streams.values()):
                link.problems.append(
                    f"all-reduce #{index} of {count} elements needs {size} bytes each way; rank 0 has "
                    f"{max(len(rank0) - at, 0)} left, rank 1 {max(len(rank1) - at, 0)}: the recording ends inside "
                    "it, or the sizes are not this link's")
                break
            link.exchanges.append(AllReduce(index, count, {r: d[at:at + size] for r, d in streams.items()},
                                            dict.fromkeys(streams, at)))
            at += size
    for rank, data in streams.items():
        link.unsplit[rank] = max(len(data) - at, 0)
    if elements is not None and len(link.exchanges) == len(elements):
        link.problems += [f"{_rank(rank)} sent {extra} bytes more than the {len(elements)} all-reduces account for"
                          for rank, extra in link.unsplit.items() if extra]
    return link


def _rank(direction: int) -> str:
    return "rank 1" if direction == RANK1 else "rank 0"


@dataclass
class LinkPlan:
    """A link as one client connection set it up and used it: its COMM_INIT (which rank,
    where rank 0 listens) and, in order, the element count and tensor name of every
    COMM_ALLREDUCE on that device until COMM_FREE or the connection's end.  This is what
    a link trace needs to be split into all-reduces."""

    rank: int
    device: int
    port: int
    host: str
    request: int  # index of the COMM_INIT among the connection's requests (0-based)
    elements: list[int] = field(default_factory=list)
    tensors: list[str] = field(default_factory=list)


def link_plans(session) -> list[LinkPlan]:
    """Every link a decoded client connection (protocol.exchanges.DecodedSession) set up,
    i.e. every COMM_INIT answered ok=1, with the all-reduces it then asked for."""
    plans, open_links = [], {}
    for index, exchange in enumerate(session.exchanges):
        request, body = exchange.request, exchange.request.body
        if request.command is Command.COMM_INIT and exchange.reply is not None and exchange.reply.body.ok:
            if body.device not in open_links:  # a COMM_INIT on a linked device keeps the link it has
                open_links[body.device] = LinkPlan(body.rank, body.device, body.port, host_of(body.host), index)
                plans.append(open_links[body.device])
        elif request.command is Command.COMM_ALLREDUCE and body.device in open_links:
            plan = open_links[body.device]
            plan.elements.append(int(np.prod(body.tensor.ne, dtype=np.int64)))
            plan.tensors.append(decode_name(body.tensor.name))
        elif request.command is Command.COMM_FREE:
            open_links.pop(body.device, None)
    return plans
