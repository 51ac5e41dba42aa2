"""Hand-packed wire bytes, written with `struct` straight from upstream's C structs.

These never use protocol/'s schemas, so a test comparing the two checks the schemas
against an independent statement of the layout.
"""

from __future__ import annotations

import struct

TENSOR_HEAD = "<Q I Q 4I 4I I 16i i 10Q Q Q Q 64s"  # rpc_tensor without its last 4 bytes


def tensor(*, id=0, type=0, buffer=0, ne=(1, 1, 1, 1), nb=(0, 0, 0, 0), op=0, op_params=(0,) * 16, flags=0,
           src=(0,) * 10, view_src=0, view_offs=0, data=0, name=b"", tail=b"\0\0\0\0") -> bytes:
    """rpc_tensor: `tail` is padding[4] (<= 5.0.0) or use_count as 4 bytes (>= 5.1.0)."""
    return struct.pack(TENSOR_HEAD, id, type, buffer, *ne, *nb, op, *op_params, flags, *src, view_src,
                       view_offs, data, name.ljust(64, b"\0")) + tail


def use_count(n: int) -> bytes:
    return struct.pack("<i", n)


def request(cmd: int, payload: bytes) -> bytes:
    return struct.pack("<BQ", cmd, len(payload)) + payload


def reply(payload: bytes) -> bytes:
    return struct.pack("<Q", len(payload)) + payload


def graph_payload(device: int | None, nodes, tensors: list[bytes], uid: int | None = None) -> bytes:
    """GRAPH_COMPUTE: [device u32] [uid u64 (8.0.0)] n_nodes u32, nodes u64[], n_tensors u32, tensors."""
    head = b"" if device is None else struct.pack("<I", device)
    if uid is not None:
        head += struct.pack("<Q", uid)
    return (head + struct.pack("<I", len(nodes)) + struct.pack(f"<{len(nodes)}Q", *nodes)
            + struct.pack("<I", len(tensors)) + b"".join(tensors))
