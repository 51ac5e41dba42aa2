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
two clients' requests must agree, nothing on the link says so.  Everything here is pure
computation; the reference server's link (server/link.py) and the trace tools use it.
"""

from __future__ import annotations

import numpy as np

from .commands import CONN_CAPS_SIZE

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

