"""The commands, one row each: number, SPEC section, first version, request and reply
layouts per profile column, tails, and what a version bridge does for a server without it.

Everything a consumer needs to know about a command is in its row: the framing parser reads
the layouts and tails, a profile derives its command set from `since`, the SPEC generator
prints the rows, the server's, bridge's and guard's handler tables are checked against them
by a test.  Adding a command is adding a row here (and its handlers).

A layout that depends on a profile column is a `By(columns, {values: layout})`; a layout that
holds an rpc_tensor is a function of the rpc_tensor schema of the profile (`lambda t: ...`),
since rpc_tensor's last field is itself a column.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Literal, TypeAlias

from construct import Array, Bytes, Construct, Int8ul, Int32ul, Int64ul, Struct

from .columns import Acks, Devices, GraphReply, Graphs, Hello, SetTensor
from .ggml import MAX_SRC

Version = tuple[int, int, int]
Tail = Literal["data", "graph"] | None


class Command(IntEnum):
    """The first byte of every request.  The numbering has been stable since SET_TENSOR_HASH
    was inserted at 7 (2025-03); HELLO is pinned at 14 in every version."""

    ALLOC_BUFFER = 0
    GET_ALIGNMENT = 1
    GET_MAX_SIZE = 2
    BUFFER_GET_BASE = 3
    FREE_BUFFER = 4
    BUFFER_CLEAR = 5
    SET_TENSOR = 6
    SET_TENSOR_HASH = 7
    GET_TENSOR = 8
    COPY_TENSOR = 9
    GRAPH_COMPUTE = 10
    GET_DEVICE_MEMORY = 11
    INIT_TENSOR = 12
    GET_ALLOC_SIZE = 13
    HELLO = 14
    DEVICE_COUNT = 15
    GRAPH_RECOMPUTE = 16
    MEMSET_TENSOR = 17
    SET_TENSOR_2D = 18
    GET_TENSOR_2D = 19
    COMM_INIT = 20
    COMM_ALLREDUCE = 21
    COMM_FREE = 22


class Absent(Enum):
    """What a version bridge does when a client sends a command the server's version lacks."""

    NEVER = "every version has it"
    ANSWER = "answered by the bridge with `local_reply`"
    EMULATE = "carried out with commands the server has"
    DECLINE = "answered with the reply that tells the client the feature is unavailable"
    DROP = "one-way and without effect where the feature is absent: not forwarded"
    REFUSE = "the client's connection is closed: no counterpart exists"


Layout: TypeAlias = Construct | Callable[[Construct], Construct] | None  # None: no reply


@dataclass(frozen=True, eq=False)
class By:
    """Layouts that differ by profile columns: `table` maps the columns' values (a tuple when
    several columns decide) to a layout."""

    columns: tuple[str, ...]
    table: Mapping

    def key(self, profile) -> object:
        values = tuple(getattr(profile, column) for column in self.columns)
        return values[0] if len(values) == 1 else values


Layouts: TypeAlias = Layout | By


@dataclass(frozen=True, kw_only=True, eq=False)
class CommandRow:
    """One command.

    request, reply -- the fixed part of each message (`By` where a column decides; None: the
                      command has no reply)
    request_tail   -- what follows the fixed part: "data" (bytes to the end of the frame) or
                      "graph" (GRAPH_COMPUTE's arrays)
    reply_tail     -- "data": the reply is exactly `data_size(request body)` bytes of data
    data_size      -- the data bytes a request body announces (a data reply's length; a data
                      request tail's exact length), or None: the frame's size says
    local_reply    -- the reply of a successful request that has nothing to report (acks, the
                      graph status), for a peer that answers where the other side does not
    absent         -- what a bridge does towards a server without the command
    """

    command: Command
    section: str
    since: Version
    summary: str
    request: Layouts
    reply: Layouts
    request_tail: Tail = None
    reply_tail: Tail = None
    data_size: Callable[[Mapping], int] | None = None
    local_reply: dict | None = None
    absent: Absent = Absent.NEVER

    @property
    def name(self) -> str:
        return self.command.name


# -- fields used by several layouts -------------------------------------------------------------

CONN_CAPS_SIZE = 24
_DEVICE = "device" / Int32ul * "device index, below DEVICE_COUNT"
_SIZE = "size" / Int64ul * "requested size in bytes"
_HANDLE = "remote_ptr" / Int64ul * "buffer handle from ALLOC_BUFFER"
_OFFSET = "offset" / Int64ul * "byte offset from tensor.data"
_CAPS = "conn_caps" / Bytes(CONN_CAPS_SIZE) * "transport capabilities; all zero over plain TCP"
_UID = "uid" / Int64ul * "the graph's uid: names it in the device's graph cache; 0 = not cached"
_VERSION = ("major" / Int8ul, "minor" / Int8ul, "patch" / Int8ul * "tracks the ggml op enum since 3.6.1")
_2D = ("offset" / Int64ul * "byte offset of copy 0 from tensor.data",
       "size" / Int64ul * "bytes per copy",
       "n_copies" / Int64ul * "number of copies",
       "stride" / Int64ul * "bytes between the starts of two copies in the tensor")
EMPTY = Struct()


def _by_devices(without: Construct, with_device: Construct) -> By:
    return By(("devices",), {Devices.SINGLE: without, Devices.MULTI: with_device})


_ACK = By(("acks",), {Acks.EMPTY: EMPTY, Acks.NONE: None})
_RESULT = Struct("result" / Int8ul * "1: done")

C = Command
ROWS: tuple[CommandRow, ...] = (
    CommandRow(
        command=C.ALLOC_BUFFER, section="6.1", since=(2, 0, 0), summary="allocate a buffer on a device",
        request=_by_devices(Struct(_SIZE), Struct(_DEVICE, _SIZE)),
        reply=Struct("remote_ptr" / Int64ul * "buffer handle; 0 = allocation failed",
                     "remote_size" / Int64ul * "usable size in bytes")),
    CommandRow(
        command=C.GET_ALIGNMENT, section="5.2", since=(2, 0, 0), summary="a device's buffer alignment",
        request=_by_devices(EMPTY, Struct(_DEVICE)),
        reply=Struct("alignment" / Int64ul * "buffer alignment in bytes")),
    CommandRow(
        command=C.GET_MAX_SIZE, section="5.3", since=(2, 0, 0), summary="a device's largest buffer",
        request=_by_devices(EMPTY, Struct(_DEVICE)),
        reply=Struct("max_size" / Int64ul * "largest single buffer in bytes")),
    CommandRow(
        command=C.BUFFER_GET_BASE, section="6.2", since=(2, 0, 0), summary="a buffer's base address",
        request=Struct(_HANDLE),
        reply=Struct("base_ptr" / Int64ul * "server address of the buffer's first byte")),
    CommandRow(
        command=C.FREE_BUFFER, section="6.3", since=(2, 0, 0), summary="free a buffer",
        request=Struct(_HANDLE), reply=_ACK, local_reply={}),
    CommandRow(
        command=C.BUFFER_CLEAR, section="6.4", since=(2, 0, 0), summary="fill a buffer with one byte",
        request=Struct(_HANDLE, "value" / Int8ul * "byte written to every byte of the buffer"),
        reply=_ACK, local_reply={}),
    CommandRow(
        command=C.SET_TENSOR, section="7.1", since=(2, 0, 0), summary="write bytes into a tensor",
        request=By(("set_tensor",), {
            SetTensor.PLAIN: lambda t: Struct("tensor" / t, _OFFSET),
            SetTensor.CACHE_FLAG: lambda t: Struct(
                "tensor" / t, "cache_flag" / Int8ul * "1: also store the data in the hash cache (§9)", _OFFSET),
        }),
        reply=None, request_tail="data"),
    CommandRow(
        command=C.SET_TENSOR_HASH, section="7.3", since=(2, 0, 0),
        summary="write cached bytes named by their hash into a tensor",
        request=lambda t: Struct("tensor" / t, _OFFSET, "hash" / Int64ul * "FNV-1a 64 of the data (§9)"),
        reply=Struct("result" / Int8ul * "1: found in the cache and written")),
    CommandRow(
        command=C.GET_TENSOR, section="7.2", since=(2, 0, 0), summary="read bytes of a tensor",
        request=lambda t: Struct("tensor" / t, _OFFSET, "size" / Int64ul * "bytes to read"),
        reply=EMPTY, reply_tail="data", data_size=lambda body: body["size"]),
    CommandRow(
        command=C.COPY_TENSOR, section="7.4", since=(2, 0, 0), summary="copy a tensor into another",
        request=lambda t: Struct("src" / t * "copied from", "dst" / t * "copied to"),
        reply=Struct("result" / Int8ul * "1: copied")),
    CommandRow(
        command=C.GRAPH_COMPUTE, section="8.1", since=(2, 0, 0), summary="compute a graph",
        request=By(("devices", "graphs"), {
            (Devices.SINGLE, Graphs.LAST): EMPTY,
            (Devices.MULTI, Graphs.LAST): Struct(_DEVICE),
            (Devices.MULTI, Graphs.UID): Struct(_DEVICE, _UID),
        }),
        reply=By(("graph_reply",), {GraphReply.STATUS: Struct("result" / Int8ul * "ggml_status, 0 = success"),
                                     GraphReply.NONE: None}),
        request_tail="graph", local_reply={"result": 0}),
    CommandRow(
        command=C.GET_DEVICE_MEMORY, section="5.4", since=(2, 0, 0), summary="a device's free and total memory",
        request=_by_devices(EMPTY, Struct(_DEVICE)),
        reply=Struct("free_mem" / Int64ul * "bytes free", "total_mem" / Int64ul * "bytes in all")),
    CommandRow(
        command=C.INIT_TENSOR, section="7.5", since=(2, 0, 0), summary="prepare a tensor in its buffer",
        request=lambda t: Struct("tensor" / t), reply=_ACK, local_reply={}),
    CommandRow(
        command=C.GET_ALLOC_SIZE, section="5.5", since=(2, 0, 0), summary="bytes to reserve for a tensor",
        request=By(("devices",), {
            Devices.SINGLE: lambda t: Struct("tensor" / t),
            Devices.MULTI: lambda t: Struct(_DEVICE, "tensor" / t,
                                            "srcs" / Array(MAX_SRC, t) * "the tensor's sources; id 0 = none"),
        }),
        reply=Struct("alloc_size" / Int64ul * "bytes to reserve for the tensor")),
    CommandRow(
        command=C.HELLO, section="3.1", since=(2, 0, 0), summary="the handshake: the server's version",
        request=By(("hello",), {Hello.BARE: EMPTY, Hello.CAPS: Struct(_CAPS)}),
        reply=By(("hello",), {Hello.BARE: Struct(*_VERSION),
                              Hello.CAPS: Struct(*_VERSION, "padding" / Int8ul * "zero", _CAPS)})),
    CommandRow(
        command=C.DEVICE_COUNT, section="5.1", since=(3, 0, 0), summary="the number of devices",
        request=EMPTY, reply=Struct("device_count" / Int32ul * "number of devices"),
        local_reply={"device_count": 1}, absent=Absent.ANSWER),
    CommandRow(
        command=C.GRAPH_RECOMPUTE, section="8.3", since=(3, 5, 0), summary="compute a stored graph again",
        request=By(("graphs",), {Graphs.LAST: Struct(_DEVICE), Graphs.UID: Struct(_DEVICE, _UID)}),
        reply=None, absent=Absent.EMULATE),
    CommandRow(
        command=C.MEMSET_TENSOR, section="7.6", since=(5, 0, 0), summary="fill bytes of a tensor with one byte",
        request=lambda t: Struct("tensor" / t, _OFFSET, "size" / Int64ul * "bytes to set",
                                 "value" / Int8ul * "byte value written"),
        reply=_ACK, local_reply={}, absent=Absent.EMULATE),
    CommandRow(
        command=C.SET_TENSOR_2D, section="7.7", since=(8, 0, 0),
        summary="write n copies of bytes into a tensor at a stride",
        request=lambda t: Struct("tensor" / t, *_2D), reply=None, request_tail="data",
        data_size=lambda body: body["size"] * body["n_copies"], absent=Absent.EMULATE),
    CommandRow(
        command=C.GET_TENSOR_2D, section="7.8", since=(8, 0, 0),
        summary="read n copies of bytes of a tensor at a stride",
        request=lambda t: Struct("tensor" / t, *_2D), reply=EMPTY, reply_tail="data",
        data_size=lambda body: body["size"] * body["n_copies"], absent=Absent.EMULATE),
    CommandRow(
        command=C.COMM_INIT, section="10.1", since=(8, 0, 0),
        summary="join a device to a pair of servers that all-reduce over a link of their own",
        request=Struct(_DEVICE, "rank" / Int32ul * "this server's rank: 0 listens, 1 connects",
                       "world" / Int32ul * "number of ranks (2)",
                       "port" / Int32ul * "the link's TCP port on rank 0",
                       "host" / Bytes(64) * "rank 0's host for rank 1 to connect to; NUL-padded, zeros for rank 0"),
        reply=Struct("ok" / Int8ul * "1: the link is up; 0: no link (the client reduces through itself)"),
        local_reply={"ok": 0}, absent=Absent.DECLINE),
    CommandRow(
        command=C.COMM_ALLREDUCE, section="10.2", since=(8, 0, 0),
        summary="sum a tensor with the peer's over the link, in place",
        request=lambda t: Struct(_DEVICE, "tensor" / t * "this server's partial, replaced by the sum"),
        reply=None, absent=Absent.REFUSE),
    CommandRow(
        command=C.COMM_FREE, section="10.3", since=(8, 0, 0), summary="close a device's link",
        request=Struct(_DEVICE), reply=None, absent=Absent.DROP),
)

ROW: dict[Command, CommandRow] = {row.command: row for row in ROWS}
