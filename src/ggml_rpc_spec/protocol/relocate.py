"""Relocate a recorded session onto another server: rewrite handles and data addresses.

A trace recorded against one server is full of values that server chose: buffer handles
(ALLOC_BUFFER's remote_ptr) and data addresses (BUFFER_GET_BASE's base plus an offset).
Another server hands out other values.  A Relocator learns the correspondence from the
replies of both servers as a replay goes, and rewrites every later request: remote_ptr
fields, every rpc_tensor's `buffer` and `data`, and the tensor arrays of graphs.  Offsets
inside a buffer are kept, so a tensor lands at the same place relative to its buffer.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np
from construct import Container

from .commands import Command
from .framing import Reply, Request
from .graph import Graph, distinct
from .rules import iter_tensors
from .messages import message_spec
from .versions import Profile


class RelocationError(ValueError):
    """A request names a handle or address that no learnt buffer explains."""


@dataclass
class _Buffer:
    old_handle: int
    new_handle: int
    size: int
    old_base: int | None = None
    new_base: int | None = None


@dataclass
class Relocator:
    profile: Profile
    by_handle: dict[int, _Buffer] = field(default_factory=dict)
    _bases: list[int] = field(default_factory=list)  # sorted old bases
    _base_buffers: list[_Buffer] = field(default_factory=list)

    # -- learning -----------------------------------------------------------------------------

    def learn(self, recorded: Request, old: Reply | None, new: Reply | None) -> None:
        """Record what a reply pair tells: a new buffer, or where its bytes start."""
        if old is None or new is None:
            return
        if recorded.command is Command.ALLOC_BUFFER and old.body.remote_ptr:
            self.by_handle[old.body.remote_ptr] = _Buffer(old.body.remote_ptr, new.body.remote_ptr,
                                                          old.body.remote_size)
        elif recorded.command is Command.BUFFER_GET_BASE:
            buf = self.by_handle.get(recorded.body.remote_ptr)
            if buf is not None and buf.old_base is None:
                buf.old_base, buf.new_base = old.body.base_ptr, new.body.base_ptr
                at = bisect_right(self._bases, buf.old_base)
                self._bases.insert(at, buf.old_base)
                self._base_buffers.insert(at, buf)

    def forget(self, recorded: Request) -> None:
        """FREE_BUFFER: the old handle may be reused by the recorded server."""
        if recorded.command is Command.FREE_BUFFER:
            buf = self.by_handle.pop(recorded.body.remote_ptr, None)
            if buf is not None and buf.old_base is not None:
                at = self._base_buffers.index(buf)
                del self._bases[at], self._base_buffers[at]

    # -- rewriting ----------------------------------------------------------------------------

    def handle(self, old: int) -> int:
        if old == 0:
            return 0
        buf = self.by_handle.get(old)
        if buf is None:
            raise RelocationError(f"buffer handle 0x{old:x} was never allocated in the recorded session")
        return buf.new_handle

    def address(self, old: int, handle: int) -> int:
        """A data address: same offset from the base of the buffer it lies in."""
        if old == 0:
            return 0
        buf = self.by_handle.get(handle) if handle else None
        if buf is None or buf.old_base is None:
            buf = self._containing(old)
        if buf.old_base is None or buf.new_base is None:  # _containing gives only buffers with both bases
            raise RelocationError(f"address 0x{old:x} lies in buffer 0x{buf.old_handle:x}, whose base is unknown")
        return buf.new_base + (old - buf.old_base)

    def _containing(self, old: int) -> _Buffer:
        at = bisect_right(self._bases, old) - 1
        if at < 0:
            raise RelocationError(f"address 0x{old:x} lies in no buffer whose base the session asked for")
        return self._base_buffers[at]

    def tensor(self, tensor: Container) -> Container:
        moved = Container(tensor)
        moved.data = self.address(tensor.data, tensor.buffer)
        moved.buffer = self.handle(tensor.buffer)
        return moved

    def graph(self, graph: Graph) -> Graph:
        tensors = graph.tensors.copy()
        # rows are chosen by the recorded handles, never by those already rewritten: a new
        # handle may equal another buffer's old one (servers hand out handles alike)
        handles = graph.tensors["buffer"]
        for old in distinct(handles):
            if not old:
                continue
            rows = handles == old
            buf = self.by_handle.get(int(old))
            if buf is None:
                raise RelocationError(f"graph names buffer 0x{int(old):x}, never allocated in the recorded session")
            if buf.old_base is not None and buf.new_base is not None:  # both learnt together
                # uint64 arithmetic wraps, so the shift works either way
                data = tensors["data"][rows]
                moved = data - np.uint64(buf.old_base) + np.uint64(buf.new_base)
                tensors["data"][rows] = np.where(data != 0, moved, np.uint64(0))
            tensors["buffer"][rows] = buf.new_handle
        return Graph(graph.nodes.copy(), tensors)

    def request(self, recorded: Request) -> Request:
        """The request to send to the new server."""
        body = Container(recorded.body)
        if "remote_ptr" in body:
            body.remote_ptr = self.handle(body.remote_ptr)
        spec = message_spec(self.profile, recorded.command)
        for path, _ in iter_tensors(spec.request, recorded.body):
            name, _, index = path.partition("[")
            if index:
                slots = list(body[name])
                slots[int(index[:-1])] = self.tensor(slots[int(index[:-1])])
                body[name] = slots
            else:
                body[name] = self.tensor(body[name])
        graph = self.graph(recorded.graph) if recorded.graph is not None else None
        return Request(recorded.command, body, data=recorded.data, graph=graph)
