"""rpc_tensor: the 296-byte serialized ggml_tensor that most commands carry.

Two variants exist on the wire.  Up to 5.0.0 the struct ends in `padding[4]` (zeros from
real clients); from 5.1.0 those four bytes are `use_count`, the number of graph nodes that
consume the tensor.  Everything else is identical.  `id` is the client's own address of the
tensor (used only to link graph nodes), `buffer` and `data` are server-side values the
server handed out (ALLOC_BUFFER's remote_ptr and BUFFER_GET_BASE's base plus an offset).
"""

from __future__ import annotations

from construct import Array, Bytes, Container, Int32sl, Int32ul, Int64ul, Struct

from .derive import numpy_dtype
from .ggml import MAX_DIMS, MAX_NAME, MAX_OP_PARAMS, MAX_SRC

_COMMON = (
    "id" / Int64ul * "the client's address of the tensor; links graph tensors; 0 = no tensor",
    "type" / Int32ul * "ggml_type (§4.2)",
    "buffer" / Int64ul * "remote_ptr of the server buffer holding the data, or 0",
    "ne" / Array(MAX_DIMS, Int32ul) * "elements per dimension",
    "nb" / Array(MAX_DIMS, Int32ul) * "stride per dimension, in bytes",
    "op" / Int32ul * "ggml_op of the peer's ggml release (§4.5)",
    "op_params" / Array(MAX_OP_PARAMS // 4, Int32sl) * "op parameters (int32 or float32 bit patterns)",
    "flags" / Int32sl * "ggml tensor flags (input, output, param, loss)",
    "src" / Array(MAX_SRC, Int64ul) * "ids of the source tensors, 0 = unused",
    "view_src" / Int64ul * "id of the tensor this one is a view of, or 0",
    "view_offs" / Int64ul * "byte offset of the view into view_src",
    "data" / Int64ul * "server address of the first byte: base_ptr + offset, or 0",
    "name" / Bytes(MAX_NAME) * "NUL-terminated name, NUL-padded",
)

# Struct variants, keyed by the name of the last field.
RPC_TENSOR = {
    "padding": Struct(*_COMMON, "padding" / Bytes(4) * "zero; keeps the size a multiple of 8"),
    "use_count": Struct(*_COMMON, "use_count" / Int32sl * "graph nodes consuming this tensor (GRAPH_COMPUTE only)"),
}
RPC_TENSOR_DTYPE = {variant: numpy_dtype(schema) for variant, schema in RPC_TENSOR.items()}
RPC_TENSOR_SIZE = RPC_TENSOR["padding"].sizeof()



def encode_name(name: str | bytes) -> bytes:
    """A tensor name as the 64 NUL-padded bytes on the wire (truncated like snprintf)."""
    raw = name.encode() if isinstance(name, str) else bytes(name)
    return raw[: MAX_NAME - 1].ljust(MAX_NAME, b"\0")


def decode_name(raw: bytes) -> str:
    """The C string in a name field: up to the first NUL, undecodable bytes escaped."""
    return bytes(raw).split(b"\0", 1)[0].decode("utf-8", errors="backslashreplace")


def make_tensor(variant: str = "padding", **fields) -> Container:
    """An rpc_tensor Container with every field zero unless given; `name` may be a str."""
    tensor = Container(
        id=0,
        type=0,
        buffer=0,
        ne=[1] * MAX_DIMS,
        nb=[0] * MAX_DIMS,
        op=0,
        op_params=[0] * (MAX_OP_PARAMS // 4),
        flags=0,
        src=[0] * MAX_SRC,
        view_src=0,
        view_offs=0,
        data=0,
        name=bytes(MAX_NAME),
    )
    tensor[variant] = bytes(4) if variant == "padding" else 0
    for key, value in fields.items():
        if key not in tensor:
            raise TypeError(f"rpc_tensor has no field {key!r}")
        tensor[key] = encode_name(value) if key == "name" else value
    return tensor


def contiguous_strides(type_size: int, block_size: int, ne) -> list[int]:
    """nb[] of a contiguous tensor, as ggml_new_tensor lays it out."""
    nb = [type_size, type_size * (ne[0] // block_size)]
    for i in range(2, MAX_DIMS):
        nb.append(nb[i - 1] * ne[i - 1])
    return nb
