"""The columns of the version table: each way two protocol versions can differ on the wire.

A profile (versions.py) holds one value of each column; a command's messages (commands.py)
name the columns their variants depend on.  Code asks a profile for a column's value and
compares it with these members, never with a version number or a bare string.
"""

from __future__ import annotations

from enum import StrEnum


class Hello(StrEnum):
    """HELLO's shape: the request and reply sizes tell the two families apart."""

    BARE = "bare"  # empty request; reply major, minor, patch
    CAPS = "caps"  # 24-byte conn_caps request; reply major, minor, patch, padding, conn_caps


class Devices(StrEnum):
    """Whether requests that concern a device name it."""

    SINGLE = "single"  # no device fields: the server has one device
    MULTI = "multi"  # a u32 device index in ALLOC_BUFFER, GET_ALIGNMENT, ..., GRAPH_COMPUTE


class TensorTail(StrEnum):
    """rpc_tensor's last four bytes."""

    PADDING = "padding"  # zeros
    USE_COUNT = "use_count"  # graph nodes consuming the tensor (GRAPH_COMPUTE only)


class SetTensor(StrEnum):
    """SET_TENSOR's fixed part."""

    PLAIN = "plain"  # tensor, offset
    CACHE_FLAG = "cache_flag"  # tensor, cache_flag u8, offset: the flag asks the server to cache the data


class GraphReply(StrEnum):
    """Whether GRAPH_COMPUTE answers."""

    STATUS = "status"  # a ggml_status byte
    NONE = "none"  # one-way


class Acks(StrEnum):
    """Whether FREE_BUFFER, BUFFER_CLEAR, INIT_TENSOR and MEMSET_TENSOR answer."""

    EMPTY = "empty"  # an empty reply
    NONE = "none"  # one-way


class HostData(StrEnum):
    """What a graph tensor held outside the server's buffers (buffer 0) carries in `data`."""

    ZERO = "zero"  # nothing: 0
    ADDRESS = "address"  # the client's own address of it, meaningless to the server (2.0.0 clients)


class Graphs(StrEnum):
    """How a server keeps graphs for GRAPH_RECOMPUTE."""

    LAST = "last"  # the last graph computed on each device; GRAPH_RECOMPUTE names the device
    UID = "uid"  # a cache per device keyed by the graph uid GRAPH_COMPUTE carries; RECOMPUTE names it


GRAPH_CACHE_LIMIT = 1024  # Graphs.UID: graphs per device; the next one clears the cache (client and server alike)


COLUMNS: dict[str, type[StrEnum]] = {
    "hello": Hello,
    "devices": Devices,
    "tensor": TensorTail,
    "set_tensor": SetTensor,
    "graph_reply": GraphReply,
    "acks": Acks,
    "host_data": HostData,
    "graphs": Graphs,
}
