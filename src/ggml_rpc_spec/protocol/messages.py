"""Request and reply schemas of every command, with their per-version variants.

A command's message may come in variants (e.g. ALLOC_BUFFER with or without a device
index).  Each variant table below is keyed by the values of one Profile column, named next
to it; `message_spec(profile, command)` picks the variant that the profile's row names.

Payloads are either fixed-size (exactly the struct) or a fixed-size head followed by a
tail: "data" (SET_TENSOR's bytes up to the end of the frame) or "graph" (GRAPH_COMPUTE's
node and tensor arrays, see graph.py).  Replies are fixed-size structs, "data" (GET_TENSOR:
exactly the requested size) or absent (one-way commands).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

from construct import Array, Bytes, Construct, Int8ul, Int32ul, Int64ul, Struct

from .commands import Command
from .ggml import MAX_SRC
from .tensor import RPC_TENSOR
from .versions import Profile

CONN_CAPS_SIZE = 24
HASH_THRESHOLD = 10 * 1024 * 1024  # clients try SET_TENSOR_HASH above this many bytes

EMPTY = Struct()

_SIZE = "size" / Int64ul * "requested size in bytes"
_HANDLE = "remote_ptr" / Int64ul * "buffer handle from ALLOC_BUFFER"
_OFFSET = "offset" / Int64ul * "byte offset from tensor.data"
_CAPS = "conn_caps" / Bytes(CONN_CAPS_SIZE) * "transport capabilities; all zero over plain TCP"

Tail = str | None  # None, "data" or "graph"


@dataclass(frozen=True)
class MessageSpec:
    """The shapes of one command's request and reply in one protocol version."""

    command: Command
    request: Construct  # the fixed-size part of the request payload
    request_tail: Tail
    reply: Construct | None  # None: the command has no reply at all
    reply_tail: Tail

    @property
    def has_reply(self) -> bool:
        return self.reply is not None

    @cached_property
    def request_size(self) -> int:
        """Size of the fixed part; the whole payload when there is no tail."""
        return self.request.sizeof()

    @cached_property
    def reply_size(self) -> int | None:
        """Size of a fixed reply; None when the command has no reply or a data reply."""
        if self.reply is None or self.reply_tail is not None:
            return None
        return self.reply.sizeof()


def _request_variants(tensor: Construct) -> dict[Command, tuple[str | None, dict]]:
    """Request head schemas: command -> (profile column or None, {column value: Struct})."""
    device = "device" / Int32ul * "device index, below DEVICE_COUNT"

    def one(schema: Construct) -> tuple[None, dict]:
        return None, {None: schema}

    def by_devices(without: Construct, with_device: Construct) -> tuple[str, dict]:
        return "devices", {"single": without, "multi": with_device}

    return {
        Command.ALLOC_BUFFER: by_devices(Struct(_SIZE), Struct(device, _SIZE)),
        Command.GET_ALIGNMENT: by_devices(EMPTY, Struct(device)),
        Command.GET_MAX_SIZE: by_devices(EMPTY, Struct(device)),
        Command.BUFFER_GET_BASE: one(Struct(_HANDLE)),
        Command.FREE_BUFFER: one(Struct(_HANDLE)),
        Command.BUFFER_CLEAR: one(Struct(_HANDLE, "value" / Int8ul * "byte written to every byte of the buffer")),
        Command.SET_TENSOR: (
            "set_tensor",
            {
                "plain": Struct("tensor" / tensor, _OFFSET),
                "cache_flag": Struct(
                    "tensor" / tensor,
                    "cache_flag" / Int8ul * "1: also store the data in the hash cache (§9)",
                    _OFFSET,
                ),
            },
        ),
        Command.SET_TENSOR_HASH: one(
            Struct("tensor" / tensor, _OFFSET, "hash" / Int64ul * "FNV-1a 64 of the data (§9)")
        ),
        Command.GET_TENSOR: one(Struct("tensor" / tensor, _OFFSET, "size" / Int64ul * "bytes to read")),
        Command.COPY_TENSOR: one(Struct("src" / tensor * "copied from", "dst" / tensor * "copied to")),
        Command.GRAPH_COMPUTE: by_devices(EMPTY, Struct(device)),
        Command.GET_DEVICE_MEMORY: by_devices(EMPTY, Struct(device)),
        Command.INIT_TENSOR: one(Struct("tensor" / tensor)),
        Command.GET_ALLOC_SIZE: by_devices(
            Struct("tensor" / tensor),
            Struct(device, "tensor" / tensor, "srcs" / Array(MAX_SRC, tensor) * "the tensor's sources; id 0 = none"),
        ),
        Command.HELLO: ("hello", {"bare": EMPTY, "caps": Struct(_CAPS)}),
        Command.DEVICE_COUNT: one(EMPTY),
        Command.GRAPH_RECOMPUTE: one(Struct(device)),
        Command.MEMSET_TENSOR: one(
            Struct("tensor" / tensor, _OFFSET, "size" / Int64ul * "bytes to set",
                   "value" / Int8ul * "byte value written")
        ),
    }


_ACK = ("acks", {"empty": EMPTY, "none": None})
_VERSION = ("major" / Int8ul, "minor" / Int8ul, "patch" / Int8ul * "tracks the ggml op enum since 3.6.1")

# Reply schemas: command -> (profile column or None, {column value: Struct, or None for no reply}).
_REPLY_VARIANTS: dict[Command, tuple[str | None, dict]] = {
    Command.ALLOC_BUFFER: (None, {None: Struct(
        "remote_ptr" / Int64ul * "buffer handle; 0 = allocation failed",
        "remote_size" / Int64ul * "usable size in bytes")}),
    Command.GET_ALIGNMENT: (None, {None: Struct("alignment" / Int64ul * "buffer alignment in bytes")}),
    Command.GET_MAX_SIZE: (None, {None: Struct("max_size" / Int64ul * "largest single buffer in bytes")}),
    Command.BUFFER_GET_BASE: (None, {None: Struct("base_ptr" / Int64ul * "server address of the buffer's first byte")}),
    Command.FREE_BUFFER: _ACK,
    Command.BUFFER_CLEAR: _ACK,
    Command.SET_TENSOR: (None, {None: None}),
    Command.SET_TENSOR_HASH: (None, {None: Struct("result" / Int8ul * "1: found in the cache and written")}),
    Command.GET_TENSOR: (None, {None: EMPTY}),  # followed by the "data" tail
    Command.COPY_TENSOR: (None, {None: Struct("result" / Int8ul * "1: copied")}),
    Command.GRAPH_COMPUTE: ("graph_reply", {"status": Struct("result" / Int8ul * "ggml_status, 0 = success"), "none": None}),
    Command.GET_DEVICE_MEMORY: (None, {None: Struct("free_mem" / Int64ul * "bytes free", "total_mem" / Int64ul * "bytes in all")}),
    Command.INIT_TENSOR: _ACK,
    Command.GET_ALLOC_SIZE: (None, {None: Struct("alloc_size" / Int64ul * "bytes to reserve for the tensor")}),
    Command.HELLO: (
        "hello",
        {
            "bare": Struct(*_VERSION),
            "caps": Struct(*_VERSION, "padding" / Int8ul * "zero", _CAPS),
        },
    ),
    Command.DEVICE_COUNT: (None, {None: Struct("device_count" / Int32ul * "number of devices")}),
    Command.GRAPH_RECOMPUTE: (None, {None: None}),
    Command.MEMSET_TENSOR: _ACK,
}

_REQUEST_TAIL = {Command.SET_TENSOR: "data", Command.GRAPH_COMPUTE: "graph"}
_REPLY_TAIL = {Command.GET_TENSOR: "data"}

_REQUESTS_BY_TENSOR = {variant: _request_variants(schema) for variant, schema in RPC_TENSOR.items()}


def _pick(table: tuple[str | None, dict], profile: Profile):
    column, variants = table
    return variants[getattr(profile, column) if column else None]


def device_fields(profile: Profile, device: int) -> dict:
    """The device index of a request body, in the profiles whose requests carry one."""
    return {"device": device} if profile.devices == "multi" else {}


@lru_cache(maxsize=None)
def message_spec(profile: Profile, command: Command) -> MessageSpec:
    """The request/reply shapes of `command` in `profile` (KeyError if it lacks the command)."""
    if command not in profile.commands:
        raise KeyError(f"{command.name} does not exist in protocol {profile.name}")
    reply = _pick(_REPLY_VARIANTS[command], profile)
    return MessageSpec(
        command=command,
        request=_pick(_REQUESTS_BY_TENSOR[profile.tensor][command], profile),
        request_tail=_REQUEST_TAIL.get(command),
        reply=reply,
        reply_tail=_REPLY_TAIL.get(command) if reply is not None else None,
    )


def specs(profile: Profile) -> dict[Command, MessageSpec]:
    """Every command of a profile, in wire order."""
    return {command: message_spec(profile, command) for command in profile.commands}


def variant_column(command: Command) -> tuple[str | None, str | None]:
    """The profile columns that choose the request and reply variants of a command."""
    return _REQUESTS_BY_TENSOR["padding"][command][0], _REPLY_VARIANTS[command][0]
