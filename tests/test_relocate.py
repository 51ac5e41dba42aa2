"""Relocating a recorded session onto another server (protocol/relocate.py)."""

import numpy as np
from construct import Container

from ggml_rpc_spec.protocol import RPC_TENSOR_DTYPE, Command, Graph, profile_for
from ggml_rpc_spec.protocol.framing import Reply, Request
from ggml_rpc_spec.protocol.relocate import Relocator


def learnt(relocator: Relocator, old: tuple[int, int], new: tuple[int, int], size: int) -> None:
    """One buffer: (handle, base) on the recorded server and on the new one."""
    alloc = Request(Command.ALLOC_BUFFER, Container(device=0, size=size))
    relocator.learn(alloc, Reply(Command.ALLOC_BUFFER, Container(remote_ptr=old[0], remote_size=size)),
                    Reply(Command.ALLOC_BUFFER, Container(remote_ptr=new[0], remote_size=size)))
    base = Request(Command.BUFFER_GET_BASE, Container(remote_ptr=old[0]))
    relocator.learn(base, Reply(Command.BUFFER_GET_BASE, Container(base_ptr=old[1])),
                    Reply(Command.BUFFER_GET_BASE, Container(base_ptr=new[1])))


def test_a_graph_is_moved_buffer_by_buffer_once_when_new_handles_equal_old_ones():
    """The reference server hands out the same handles in every process: replayed on a server
    that allocated one buffer before, recorded buffer A's new handle is recorded buffer B's
    old one.  Each tensor moves by its own buffer's shift, once."""
    profile = profile_for("7.0.0")
    relocator = Relocator(profile)
    learnt(relocator, (0x100, 0x7000_0000), (0x200, 0x9000_0000), 4096)  # A: new handle = B's old
    learnt(relocator, (0x200, 0x7100_0000), (0x300, 0x9500_0000), 4096)  # B
    tensors = np.zeros(3, RPC_TENSOR_DTYPE[profile.tensor])
    tensors["id"] = [1, 2, 3]
    tensors["buffer"] = [0x100, 0x200, 0x100]
    tensors["data"] = [0x7000_0010, 0x7100_0020, 0x7000_0030]
    graph = Graph(np.array([3], np.uint64), tensors)
    moved = relocator.request(Request(Command.GRAPH_COMPUTE, Container(device=0), graph=graph)).graph
    assert moved.tensors["buffer"].tolist() == [0x200, 0x300, 0x200]
    assert moved.tensors["data"].tolist() == [0x9000_0010, 0x9500_0020, 0x9000_0030]
    assert graph.tensors["buffer"].tolist() == [0x100, 0x200, 0x100]  # the recorded graph is left as it was
