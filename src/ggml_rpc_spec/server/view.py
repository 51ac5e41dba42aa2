"""protocol.rules.ServerView's lookups over one connection's own tables, shared by the
reference server's Session and the guard's GuardSession, which keep the same three tables:
their buffers by handle, their stored graphs per device, their devices with a link."""

from __future__ import annotations

from collections.abc import Collection

from ggml_rpc_spec.executor.device import Buffer
from ggml_rpc_spec.protocol.rules import BufferInfo

from .graphs import GraphStore


class ConnectionTables:
    buffers: dict[int, Buffer]
    graphs: GraphStore
    links: Collection[int]

    def buffer(self, handle: int) -> BufferInfo | None:
        found = self.buffers.get(handle)
        return found.info if found is not None else None

    def has_stored_graph(self, device: int, uid: int | None) -> bool:
        return self.graphs.get(device, uid) is not None

    def has_link(self, device: int) -> bool:
        return device in self.links
