"""Build ggml compute graphs from Python, the way ggml's own constructors shape them.

    g = GraphBuilder(rpc.profile, buf)
    x = g.input(np.random.rand(4, 8).astype(np.float32), name="x")   # numpy shape (ne1, ne0)
    w = g.input(weights, name="w")
    y = g.rms_norm(g.mul_mat(w, x), eps=1e-5)
    result, = g.run(rpc, [y])                                          # float32 arrays

Each helper computes the result's type, ne and nb as the matching ggml_* constructor
does, places new tensors in the given buffer (aligned), and records the node; `run`
uploads the inputs, sends GRAPH_COMPUTE and reads the outputs back.  Tests use it to send
the same graph to different servers; the conformance suite uses it for its op cases.
"""

from __future__ import annotations

import numpy as np
from construct import Container

from ggml_rpc_spec.protocol import Graph, make_tensor
from ggml_rpc_spec.protocol.ggml import ELEMENT_DTYPES, MAX_OP_PARAMS, MAX_SRC, TYPE_BY_NAME, TYPE_OF_DTYPE, nbytes
from ggml_rpc_spec.protocol.graph import tensors_from_containers
from ggml_rpc_spec.protocol.ops import spec_for
from ggml_rpc_spec.protocol.tensor import contiguous_strides
from ggml_rpc_spec.protocol.versions import Profile

ROPE_NORMAL, ROPE_NEOX = 0, 2


def params(op: str, sub: str | None = None, /, **values) -> list[int]:
    """The op_params words of `op` (and sub-op `sub`) from named values, as the op catalogue
    lays them out."""
    return spec_for(op).pack(sub, **values)


class GraphBuilder:
    def __init__(self, profile: Profile, buffer, *, alignment: int = 32) -> None:
        self.profile = profile
        self.buffer = buffer
        self.alignment = alignment
        self.used = 0
        self.tensors: list[Container] = []
        self.uploads: list[tuple[Container, bytes]] = []
        self._next_id = 0x1000

    # -- tensors -----------------------------------------------------------------------------

    def _place(self, size: int) -> int:
        start = -(-self.used // self.alignment) * self.alignment
        if start + size > self.buffer.size:
            raise ValueError(f"buffer of {self.buffer.size} bytes is full ({start + size} needed)")
        self.used = start + size
        return self.buffer.base + start

    def new(self, type: str, ne, *, op: str = "NONE", srcs=(), op_params=(), name: str = "",
            nb=None, data: int | None = None, view_src: Container | None = None, view_offs: int = 0) -> Container:
        """A tensor; with no `data` it gets fresh space in the buffer."""
        kind = TYPE_BY_NAME[type]
        ne = list(ne) + [1] * (4 - len(ne))
        nb = list(nb) if nb is not None else contiguous_strides(kind.type_size, kind.block_size, ne)
        if data is None:
            data = self._place(nbytes(kind, ne, nb))
        self._next_id += 0x10
        ids = [s.id if s is not None else 0 for s in srcs] + [0] * (MAX_SRC - len(srcs))
        op_params = list(op_params) + [0] * (MAX_OP_PARAMS // 4 - len(op_params))
        tensor = make_tensor(self.profile.tensor, id=self._next_id, type=kind.value, buffer=self.buffer.handle,
                             ne=ne, nb=nb, op=self.profile.ggml.op_value(op), op_params=op_params,
                             src=ids, view_src=view_src.id if view_src is not None else 0, view_offs=view_offs,
                             data=data, name=name or f"{op.lower()}_{len(self.tensors)}",
                             flags=self.profile.ggml.compute_flag if op != "NONE" else 0)  # as ggml_build_forward_expand
        self.tensors.append(tensor)
        return tensor

    def input(self, array: np.ndarray, *, type: str | None = None, name: str = "") -> Container:
        """A leaf holding `array` (NumPy shape (..., ne1, ne0)); uploaded by run()."""
        array = np.ascontiguousarray(array)
        type = type or TYPE_OF_DTYPE[array.dtype]
        tensor = self.new(type, tuple(reversed(array.shape)) or (1,), name=name or f"input_{len(self.tensors)}")
        self.uploads.append((tensor, array.tobytes()))
        return tensor

    def input_raw(self, type: str, ne, raw: bytes, *, name: str = "") -> Container:
        """A leaf of any type (quantized included) from its raw bytes."""
        tensor = self.new(type, ne, name=name)
        self.uploads.append((tensor, bytes(raw)))
        return tensor

    def type_of(self, tensor: Container) -> str:
        kind = self.profile.ggml.tensor_type(tensor.type)
        if kind is None:
            raise ValueError(f"tensor type {tensor.type} does not exist in protocol {self.profile.name}")
        return kind.name

    # -- views -------------------------------------------------------------------------------

    def view(self, a: Container, ne, nb, offset: int = 0, *, name: str = "") -> Container:
        """ggml_view_4d: nb lists nb1..nb3 (nb0 is the element size)."""
        ne = list(ne) + [1] * (4 - len(ne))
        nb = [a.nb[0]] + list(nb) + [0] * (3 - len(nb))
        for i in range(len(nb)):
            if nb[i] == 0:
                nb[i] = nb[i - 1] * ne[i - 1]
        return self.new(self.type_of(a), ne, op="VIEW", srcs=[a], nb=nb, data=a.data + offset, view_src=a,
                        view_offs=offset, op_params=params("VIEW", offset_lo=offset & 0xFFFFFFFF,
                                                           offset_hi=offset >> 32), name=name)

    def permute(self, a: Container, *axes: int, name: str = "") -> Container:
        """ggml_permute: source dimension i becomes dimension axes[i]."""
        ne, nb = [0] * 4, [0] * 4
        for i, axis in enumerate(axes):
            ne[axis], nb[axis] = a.ne[i], a.nb[i]
        return self.new(self.type_of(a), ne, op="PERMUTE", srcs=[a], nb=nb, data=a.data, view_src=a,
                        op_params=params("PERMUTE", **{f"axis{i}": axis for i, axis in enumerate(axes)}),
                        name=name)

    def transpose(self, a: Container, *, name: str = "") -> Container:
        """ggml_transpose: dimensions 0 and 1 swapped (an op of its own, not a PERMUTE)."""
        ne, nb = [a.ne[1], a.ne[0], a.ne[2], a.ne[3]], [a.nb[1], a.nb[0], a.nb[2], a.nb[3]]
        return self.new(self.type_of(a), ne, op="TRANSPOSE", srcs=[a], nb=nb, data=a.data, view_src=a, name=name)

    def reshape(self, a: Container, ne, *, name: str = "") -> Container:
        return self.new(self.type_of(a), ne, op="RESHAPE", srcs=[a], data=a.data, view_src=a, name=name)

    # -- ops ---------------------------------------------------------------------------------

    def unary_like(self, op: str, a: Container, op_params=(), *, srcs=None, name: str = "") -> Container:
        return self.new(self.type_of(a), a.ne, op=op, srcs=srcs or [a], op_params=op_params, name=name)

    def binary(self, op: str, a: Container, b: Container, *, name: str = "") -> Container:
        return self.unary_like(op, a, srcs=[a, b], name=name)

    def add(self, a, b, **kw):
        return self.binary("ADD", a, b, **kw)

    def sub(self, a, b, **kw):
        return self.binary("SUB", a, b, **kw)

    def mul(self, a, b, **kw):
        return self.binary("MUL", a, b, **kw)

    def div(self, a, b, **kw):
        return self.binary("DIV", a, b, **kw)

    def scale(self, a, s: float, bias: float = 0.0, **kw):
        return self.unary_like("SCALE", a, params("SCALE", s=s, b=bias), **kw)

    def sqr(self, a, **kw):
        return self.unary_like("SQR", a, **kw)

    def sqrt(self, a, **kw):
        return self.unary_like("SQRT", a, **kw)

    def unary(self, a, kind: str, **kw):
        return self.unary_like("UNARY", a, params("UNARY", kind, op=self.profile.ggml.unary_ops.index(kind)), **kw)

    def glu(self, a, kind: str, b=None, *, swapped: bool = False, name: str = "", **extra):
        index = self.profile.ggml.glu_ops.index(kind)
        ne = list(a.ne) if b is not None else [a.ne[0] // 2] + list(a.ne[1:])
        return self.new(self.type_of(a), ne, op="GLU", srcs=[a, b] if b is not None else [a],
                        op_params=params("GLU", kind, op=index, swapped=swapped, **extra), name=name)

    def norm(self, a, eps: float, **kw):
        return self.unary_like("NORM", a, params("NORM", eps=eps), **kw)

    def rms_norm(self, a, eps: float, **kw):
        return self.unary_like("RMS_NORM", a, params("RMS_NORM", eps=eps), **kw)

    def sum_rows(self, a, *, name: str = ""):
        return self.new(self.type_of(a), [1] + list(a.ne[1:]), op="SUM_ROWS", srcs=[a], name=name)

    def mean(self, a, *, name: str = ""):
        return self.new(self.type_of(a), [1] + list(a.ne[1:]), op="MEAN", srcs=[a], name=name)

    def argmax(self, a, *, name: str = ""):
        return self.new("I32", [a.ne[1]], op="ARGMAX", srcs=[a], name=name)

    def cont(self, a, *, name: str = ""):
        return self.new(self.type_of(a), a.ne, op="CONT", srcs=[a], name=name)

    def cpy(self, a, b, *, name: str = ""):
        """ggml_cpy: a converted into b's memory (the result is a view of b)."""
        return self.new(self.type_of(b), b.ne, op="CPY", srcs=[a, b], nb=b.nb, data=b.data, view_src=b, name=name)

    def dup(self, a, *, name: str = ""):
        return self.new(self.type_of(a), a.ne, op="DUP", srcs=[a], name=name)

    def mul_mat(self, a, b, *, name: str = ""):
        return self.new("F32", [a.ne[1], b.ne[1], b.ne[2], b.ne[3]], op="MUL_MAT", srcs=[a, b], name=name)

    def get_rows(self, a, rows, *, name: str = ""):
        kind = "I32" if self.type_of(a) == "I32" else "F32"
        return self.new(kind, [a.ne[0], rows.ne[0], rows.ne[1], rows.ne[2]], op="GET_ROWS", srcs=[a, rows], name=name)

    def set_rows(self, dst, src, rows, *, name: str = ""):
        return self.new(self.type_of(dst), dst.ne, op="SET_ROWS", srcs=[src, rows, dst], nb=dst.nb, data=dst.data,
                        view_src=dst, name=name)

    def soft_max(self, a, mask=None, *, scale: float = 1.0, max_bias: float = 0.0, sinks=None, name: str = ""):
        srcs = [a, mask, sinks] if sinks is not None else [a, mask] if mask is not None else [a]
        return self.new(self.type_of(a), a.ne, op="SOFT_MAX", srcs=srcs,
                        op_params=params("SOFT_MAX", scale=scale, max_bias=max_bias), name=name)

    def rope(self, a, positions, n_dims: int, mode: int = ROPE_NORMAL, *, n_ctx_orig: int = 0,
             freq_base: float = 10000.0, freq_scale: float = 1.0, ext_factor: float = 0.0, attn_factor: float = 1.0,
             beta_fast: float = 32.0, beta_slow: float = 1.0, freq_factors=None, name: str = ""):
        srcs = [a, positions] + ([freq_factors] if freq_factors is not None else [])
        return self.new(self.type_of(a), a.ne, op="ROPE", srcs=srcs, name=name, op_params=params(
            "ROPE", n_dims=n_dims, mode=mode, n_ctx_orig=n_ctx_orig, freq_base=freq_base, freq_scale=freq_scale,
            ext_factor=ext_factor, attn_factor=attn_factor, beta_fast=beta_fast, beta_slow=beta_slow))

    def flash_attn_ext(self, q, k, v, mask=None, *, scale: float, max_bias: float = 0.0, softcap: float = 0.0,
                       name: str = ""):
        return self.new("F32", [v.ne[0], q.ne[2], q.ne[1], q.ne[3]], op="FLASH_ATTN_EXT", srcs=[q, k, v, mask],
                        op_params=params("FLASH_ATTN_EXT", scale=scale, max_bias=max_bias, logit_softcap=softcap),
                        name=name)

    def acc(self, a, b, nb1: int, nb2: int, nb3: int, offset: int, *, name: str = ""):
        return self.unary_like("ACC", a, params("ACC", nb1=nb1, nb2=nb2, nb3=nb3, offset=offset), srcs=[a, b],
                               name=name)

    # -- running -----------------------------------------------------------------------------

    def ops(self) -> list[Container]:
        """Every tensor built so far that computes something (not a leaf or a view), in
        the order built: the nodes of a graph that computes all of them."""
        quiet = {self.profile.ggml.op_value(name) for name in ("NONE", "VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE")}
        return [t for t in self.tensors if t.op not in quiet]

    def graph(self, nodes) -> Graph:
        """Every tensor built so far, with `nodes` (in order) as the graph's nodes."""
        return Graph(np.array([n.id for n in nodes], dtype="<u8"), tensors_from_containers(self.profile, self.tensors))

    def upload(self, client) -> None:
        """Send every input's values to the server."""
        for tensor, raw in self.uploads:
            client.set_tensor(tensor, raw)

    def run(self, client, outputs, *, nodes=None, device: int = 0) -> list[np.ndarray]:
        """Upload the inputs, compute, and read `outputs` back (as arrays of their type)."""
        self.upload(client)
        client.graph_compute(self.graph(nodes if nodes is not None else outputs), device)
        return [self.read(client, t) for t in outputs]

    def read(self, client, tensor) -> np.ndarray:
        """A tensor's elements (strided reads honour views), NumPy shape (ne3, ne2, ne1, ne0)."""
        kind = self.type_of(tensor)
        size = nbytes(TYPE_BY_NAME[kind], tensor.ne, tensor.nb)
        raw = bytes(client.get_tensor(tensor, 0, size))
        if kind not in ELEMENT_DTYPES:
            return np.frombuffer(raw, dtype=np.uint8)
        shape = tuple(reversed(tensor.ne))
        strides = tuple(reversed(tensor.nb))
        return np.ndarray(shape, dtype=ELEMENT_DTYPES[kind], buffer=raw, strides=strides).copy()
