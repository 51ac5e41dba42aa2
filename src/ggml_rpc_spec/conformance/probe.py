"""A probe: one fresh connection to the server under test, ready for one case.

It negotiates HELLO (or speaks a forced version), allocates a buffer, and offers raw sends
so a case can put exactly the bytes it wants on the wire.  `outcome()` then tells whether
the server closed the connection, answered, or went silent; every send and receive is
kept in `transcript` for the failure report.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import numpy as np
from construct import Container

from ggml_rpc_spec.protocol import Command, Graph, build_request, make_tensor
from ggml_rpc_spec.protocol.graph import tensors_from_containers
from ggml_rpc_spec.protocol.messages import device_fields, graph_fields
from ggml_rpc_spec.protocol.versions import Profile
from ggml_rpc_spec.client.rpc import RemoteBuffer, RPCClient

CLOSED, ANSWERED, SILENT = "closed", "answered", "silent"
GRAPH_UID = 1  # the uid of a probe's graphs where graphs are cached by uid (0 would not be cached)


@dataclass
class Transcript:
    """What went over one connection: ("sent" | "received", seconds since it opened, bytes)."""

    events: list[tuple[str, float, bytes]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def add(self, direction: str, data: bytes) -> None:
        self.events.append((direction, time.monotonic() - self.started, bytes(data)))

    def hexdump(self, limit: int = 512) -> str:
        lines = []
        for direction, _, data in self.events:
            arrow = "->" if direction == "sent" else "<-"
            shown = data[:limit]
            lines.append(f"{arrow} {len(data)} bytes")
            for at in range(0, len(shown), 32):
                lines.append(f"   {at:06x}  {shown[at:at + 32].hex(' ')}")
            if len(data) > limit:
                lines.append(f"   ... {len(data) - limit} more bytes")
        return "\n".join(lines)


class Probe:
    def __init__(self, endpoint: str, profile: Profile | None = None, *, timeout: float = 10.0,
                 buffer_size: int = 4096, handshake: bool = True) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.transcript = Transcript()
        self._attached: list = []
        self._rpc: RPCClient | None = None
        self._profile = profile
        self.buffer: RemoteBuffer | None = None
        if handshake:
            self._rpc = RPCClient(endpoint, proto=profile, timeout=timeout, tap=self.transcript.add)
            self._profile = self._rpc.profile
            self.sock = self._rpc.connection()
            self.buffer = self._rpc.alloc_buffer(buffer_size) if buffer_size else None
        else:
            from ggml_rpc_spec.client.rpc import parse_endpoint

            self.sock = socket.create_connection(parse_endpoint(endpoint), timeout=timeout)

    @property
    def rpc(self) -> RPCClient:
        """The client of a probe that made the handshake."""
        if self._rpc is None:
            raise ValueError("a probe made without the handshake has no client")
        return self._rpc

    @property
    def profile(self) -> Profile:
        """The version the probe speaks: the handshake's, else the one it was given."""
        if self._profile is None:
            raise ValueError("a probe made without the handshake and without a profile speaks no version")
        return self._profile

    def own_buffer(self) -> RemoteBuffer:
        """The buffer the probe allocated at the handshake."""
        if self.buffer is None:
            raise ValueError("this probe holds no buffer (buffer_size 0, or ALLOC_BUFFER answered remote_ptr 0)")
        return self.buffer

    # -- building blocks -------------------------------------------------------------------------

    def tensor(self, offset: int = 0, n: int = 16, *, type: int = 0, name: str = "probe", **fields) -> Container:
        """An F32 [n] tensor at buffer.base + offset (fields override anything)."""
        buffer = self.own_buffer()
        values = dict(id=0x1000 + offset + n, type=type, buffer=buffer.handle, ne=[n, 1, 1, 1],
                      nb=[4, 4 * n, 4 * n, 4 * n], data=buffer.base + offset, name=name)
        values.update(fields)
        if values.get("op") and "flags" not in fields:
            values["flags"] = self.profile.ggml.compute_flag  # a node to run, as ggml_build_forward_expand marks it
        return make_tensor(self.profile.tensor, **values)

    def graph(self, tensors: list[Container], nodes: list[int]) -> Graph:
        return Graph(np.array(nodes, dtype="<u8"), tensors_from_containers(self.profile, tensors))

    def device_body(self, device: int = 0) -> dict:
        return device_fields(self.profile, device)

    def graph_body(self, device: int = 0, uid: int = GRAPH_UID) -> dict:
        """GRAPH_COMPUTE's and GRAPH_RECOMPUTE's fixed fields: the device and, where graphs
        are cached by uid, `uid` (by default one uid for all of a probe's graphs, so that a
        recompute names the last graph computed, as in the versions without uids)."""
        return graph_fields(self.profile, device, uid)

    # -- raw traffic -------------------------------------------------------------------------------

    def send(self, command: Command, body=None, *, data=None, graph: Graph | None = None) -> None:
        self.send_raw(build_request(self.profile, command, body, data=data, graph=graph))

    def send_raw(self, data: bytes) -> None:
        self.transcript.add("sent", data)
        try:
            self.sock.sendall(data)
        except OSError:
            pass  # the server may already have closed; outcome() tells

    def call(self, command: Command, body=None, **kw):
        """A well-formed request through the client (setup steps of a case)."""
        return self.rpc.call(command, body, **kw)

    def outcome(self, wait: float | None = None) -> tuple[str, bytes]:
        """CLOSED if the server closed the connection without answering; ANSWERED (with the
        bytes) if anything came back; SILENT if nothing happened within the timeout.

        A cheap sentinel request (GET_ALIGNMENT) follows, so a server that silently
        accepted a one-way request answers the sentinel instead of leaving us waiting.
        """
        if self._profile is not None and Command.GET_ALIGNMENT in self._profile.commands:
            self.send(Command.GET_ALIGNMENT, self.device_body())
        self.sock.settimeout(wait if wait is not None else self.timeout)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return SILENT, b""
        except OSError:
            chunk = b""
        if not chunk:
            return CLOSED, b""
        self.transcript.add("received", chunk)
        return ANSWERED, chunk

    def attach(self, item):
        """Close `item` (a link peer, say) with this probe; `item` back."""
        self._attached.append(item)
        return item

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        for item in self._attached:
            item.close()
        self._attached.clear()
