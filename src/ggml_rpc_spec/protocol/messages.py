"""A command's request and reply in one protocol version, resolved from its row.

`message_spec(profile, command)` picks, from the command's row (commands.py), the layouts the
profile's columns name and instantiates them with the profile's rpc_tensor.  Payloads are
fixed-size (exactly the struct) or a fixed-size head followed by a tail: "data" (bytes to
the end of the frame, or exactly what the head announces) or "graph" (GRAPH_COMPUTE's node
and tensor arrays, see graph.py).  Replies are fixed-size structs, "data" (exactly the size
the request announced) or absent (one-way commands).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache

from construct import Construct

from .columns import Devices, Graphs, Hello
from .commands import CONN_CAPS_SIZE, ROW, By, Command, CommandRow, Layouts, Tail
from .tensor import RPC_TENSOR
from .versions import Profile

HASH_THRESHOLD = 10 * 1024 * 1024  # clients try SET_TENSOR_HASH above this many bytes


@dataclass(frozen=True)
class MessageSpec:
    """The shapes of one command's request and reply in one protocol version."""

    row: CommandRow
    request: Construct  # the fixed-size part of the request payload
    reply: Construct | None  # None: the command has no reply at all

    @property
    def command(self) -> Command:
        return self.row.command

    @property
    def request_tail(self) -> Tail:
        return self.row.request_tail

    @property
    def reply_tail(self) -> Tail:
        return self.row.reply_tail if self.reply is not None else None

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

    def data_size(self, body: Mapping) -> int | None:
        """The data bytes `body` announces (a data reply's length, a data tail's exact
        length), or None when the frame's size alone says."""
        return self.row.data_size(body) if self.row.data_size is not None else None


@lru_cache(maxsize=None)
def _layout(layouts: Layouts, key: object, tail_name: str) -> Construct | None:
    """One layout of a row, built once per rpc_tensor variant (so every profile sharing it
    shares the very same Struct, which the per-schema caches key on)."""
    layout = layouts.table[key] if isinstance(layouts, By) else layouts
    if callable(layout) and not isinstance(layout, Construct):
        return layout(RPC_TENSOR[tail_name])
    return layout


def _pick(layouts: Layouts, profile: Profile) -> Construct | None:
    key = layouts.key(profile) if isinstance(layouts, By) else None
    return _layout(layouts, key, profile.tensor)


@lru_cache(maxsize=None)
def message_spec(profile: Profile, command: Command) -> MessageSpec:
    """The request/reply shapes of `command` in `profile` (KeyError if it lacks the command)."""
    if command not in profile.commands:
        raise KeyError(f"{command.name} does not exist in protocol {profile.name}")
    row = ROW[command]
    return MessageSpec(row=row, request=_pick(row.request, profile), reply=_pick(row.reply, profile))


def specs(profile: Profile) -> dict[Command, MessageSpec]:
    """Every command of a profile, in wire order."""
    return {command: message_spec(profile, command) for command in profile.commands}


def device_fields(profile: Profile, device: int) -> dict:
    """The device index of a request body, in the profiles whose requests carry one."""
    return {"device": device} if profile.devices is Devices.MULTI else {}


def graph_fields(profile: Profile, device: int, uid: int = 0) -> dict:
    """The fixed fields of GRAPH_COMPUTE / GRAPH_RECOMPUTE: the device and, where graphs are
    cached by uid, the graph's uid."""
    fields = device_fields(profile, device)
    if profile.graphs is Graphs.UID:
        fields["uid"] = uid
    return fields


def hello_request(profile: Profile) -> dict | None:
    """A client's HELLO body: zero conn_caps where the request carries them (plain TCP)."""
    return {"conn_caps": bytes(CONN_CAPS_SIZE)} if profile.hello is Hello.CAPS else None


def hello_reply(profile: Profile) -> dict:
    """A server's HELLO reply: its version and, where the reply has them, all-zero conn_caps
    (a server without RDMA never offers a transport upgrade, whatever the client sent)."""
    major, minor, patch = profile.version
    reply: dict = {"major": major, "minor": minor, "patch": patch}
    if profile.hello is Hello.CAPS:
        reply.update(padding=0, conn_caps=bytes(CONN_CAPS_SIZE))
    return reply


def local_reply(command: Command) -> dict:
    """The reply of a successful `command` that has nothing to report (an ack, the graph
    status), for a peer that answers where its counterpart's version does not."""
    body = ROW[command].local_reply
    if body is None:
        raise KeyError(f"{command.name} has no reply without content")
    return dict(body)
