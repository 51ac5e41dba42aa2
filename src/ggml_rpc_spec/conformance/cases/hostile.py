"""Hostile requests: one named case per published vulnerability and protocol abuse.

Each case puts one offending request on a fresh, handshaken connection (see probe.py); a
conforming server closes that connection and keeps serving new ones.  `destructive` marks
cases that are known to kill (abort, corrupt) a vulnerable upstream server; the suite runs
them only when asked.  `rule` names the protocol.rules entry the case breaks, so its id
cites the SPEC section.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from construct import Container

from ggml_rpc_spec.client.linkpeer import Exchange, linked
from ggml_rpc_spec.protocol import Command, build_request, make_tensor
from ggml_rpc_spec.protocol.columns import GRAPH_CACHE_LIMIT, Graphs
from ggml_rpc_spec.protocol.ops import spec_for
from ggml_rpc_spec.protocol.rules import BY_KEY, Rule

from ..core import first_version, missing_from, skip
from ..probe import GRAPH_UID

C = Command
UIDS = first_version("graphs", Graphs.UID)  # the first version whose servers cache graphs by uid


@dataclass(frozen=True)
class HostileCase:
    key: str
    rule: str | None  # key in protocol.rules (None for survival cases, which break no rule)
    title: str
    advisory: str
    send: Callable
    destructive: bool = False
    needs: tuple[Command, ...] = ()
    handshake: bool = True  # False: the case starts on a raw connection, before HELLO
    section: str = ""  # for survival cases; rule cases take their rule's section
    needs_cache: bool = False  # only meaningful against a server known to have a hash cache
    harmless_from: tuple[int, int, int] | None = None  # destructive only for versions before this one
    ops: tuple[str, ...] = ()  # graph ops the case needs in the version's op table
    since: str | None = None  # the first protocol version the case applies to

    @property
    def level(self) -> str:
        rule = self.spec_rule
        return rule.level if rule is not None else "MUST"

    @property
    def spec_rule(self) -> Rule | None:
        return BY_KEY[self.rule] if self.rule else None

    @property
    def case_id(self) -> str:
        rule = self.spec_rule
        section = rule.section if rule is not None else self.section
        return f"§{section} {self.title} [{self.advisory}]"

    def missing_from(self, profile) -> str:
        """Why the case cannot run on `profile`'s version ("" when it can)."""
        return missing_from(profile, needs=self.needs, ops=self.ops, since=self.since)


def _set(p, tensor, data: bytes, offset: int = 0) -> None:
    body = {"tensor": tensor, "offset": offset}
    if p.profile.set_tensor == "cache_flag":
        body["cache_flag"] = 0
    p.send(C.SET_TENSOR, body, data=data)


def _get(p, tensor, offset: int, size: int) -> None:
    p.send(C.GET_TENSOR, {"tensor": tensor, "offset": offset, "size": size})


def _node(p, **fields):
    """A graph node: ADD of two F32 [16] tensors at the start of the probe's buffer."""
    a = p.tensor(0, id=0xA1, name="a")
    b = p.tensor(64, id=0xB2, name="b")
    out = p.tensor(128, id=0xC3, name="out", op=p.profile.ggml.op_value("ADD"), src=[0xA1, 0xB2] + [0] * 8)
    out.update(fields)
    return [a, b, out]


def _graph(p, tensors, nodes=None) -> None:
    nodes = nodes if nodes is not None else [tensors[-1].id]
    p.send(C.GRAPH_COMPUTE, p.graph_body(), graph=p.graph(tensors, nodes))


def _noop_graph(p, uid: int = GRAPH_UID) -> None:
    """A graph whose single node computes nothing (op NONE), so any server can run it."""
    p.send(C.GRAPH_COMPUTE, p.graph_body(uid=uid), graph=p.graph([p.tensor(0, id=0x77)], [0x77]))


def _recompute_missing(p, uids, recompute: int, *, device: int = 0) -> None:
    """Graphs computed under `uids` on device 0, then GRAPH_RECOMPUTE of uid `recompute` on
    `device`."""
    for uid in uids:
        _noop_graph(p, uid)
    p.send(C.GRAPH_RECOMPUTE, p.graph_body(device, recompute))


def _recompute_on_another_device(p) -> None:
    if p.rpc.device_count() < 2:
        skip("the target has one device: its uids have no other device to be told apart from")
    _recompute_missing(p, [GRAPH_UID], GRAPH_UID, device=1)


def _2d(p, command: Command, tensor, *, offset: int = 0, size: int, n_copies: int, stride: int,
        data: bytes | None = None) -> None:
    """A 2-D transfer of `tensor`; SET_TENSOR_2D carries `data` (by default the zero bytes its
    head announces)."""
    body = {"tensor": tensor, "offset": offset, "size": size, "n_copies": n_copies, "stride": stride}
    if command is C.SET_TENSOR_2D and data is None:
        data = bytes(size * n_copies)
    p.send(command, body, data=data)


def _linked(p, exchanges=()) -> None:
    """Device 0 of the probe's connection linked to the suite (the target is rank 1), the
    suite doing `exchanges` on the link."""
    if linked(p.rpc, p.attach, exchanges, timeout=p.timeout) is None:
        skip("the target declined to link with the suite (COMM_INIT answered ok=0)")


def _allreduce(p, tensor) -> None:
    p.send(C.COMM_ALLREDUCE, {"device": 0, "tensor": tensor})


def _allreduce_after_free(p) -> None:
    _linked(p)
    p.call(C.COMM_FREE, {"device": 0})
    _allreduce(p, p.tensor(0))


def _allreduce_f16(p) -> None:
    """An F16 [16] tensor, the suite ready to exchange its 32 raw bytes as a server summing any
    type would (so such a server answers instead of waiting for the suite)."""
    _linked(p, [Exchange(bytes(32), 32)])
    _allreduce(p, p.tensor(0, type=1, nb=[2, 32, 32, 32]))


def _peer_stops_halfway(p) -> None:
    """The suite (rank 0, first to send) sends 32 of the 64 bytes of an F32 [16] partial and
    closes the link."""
    _linked(p, [Exchange(bytes(32), 0)])
    _allreduce(p, p.tensor(0))


def _unknown_command(p) -> None:
    p.send_raw(bytes([max(p.profile.commands) + 1]) + struct.pack("<Q", 0))


def _wrong_size(p) -> None:
    p.send_raw(struct.pack("<BQ", C.BUFFER_GET_BASE, 9) + bytes(9))


def _graph_then_free_then_recompute(p) -> None:
    _noop_graph(p)
    p.call(C.FREE_BUFFER, {"remote_ptr": p.buffer.handle})  # consumes the ack where there is one
    p.send(C.GRAPH_RECOMPUTE, p.graph_body())


def _bigger_graph_after_small(p) -> None:
    _noop_graph(p)
    tensors = [p.tensor(0, id=0x100 + i, name=f"n{i}") for i in range(200)]
    p.send(C.GRAPH_COMPUTE, p.graph_body(), graph=p.graph(tensors, [t.id for t in tensors]))


def _rows(p, op: str, index_value: int) -> None:
    """GET_ROWS / SET_ROWS whose I32 row index points far outside the source rows."""
    src = p.tensor(0, id=0xA1, n=8, name="rows", ne=[4, 2, 1, 1], nb=[4, 16, 32, 32])
    index = p.tensor(64, id=0xB2, n=1, type=26, name="idx")  # I32
    _set(p, index, struct.pack("<i", index_value))
    if op == "GET_ROWS":
        out = p.tensor(128, id=0xC3, n=4, name="out", op=p.profile.ggml.op_value("GET_ROWS"),
                       ne=[4, 1, 1, 1], src=[0xA1, 0xB2] + [0] * 8)
    else:
        out = p.tensor(0, id=0xC3, n=8, name="dst", op=p.profile.ggml.op_value("SET_ROWS"), ne=[4, 2, 1, 1],
                       nb=[4, 16, 32, 32], src=[0xD4, 0xB2] + [0] * 8)
        src = p.tensor(256, id=0xD4, n=4, name="src", ne=[4, 1, 1, 1])
    _graph(p, [src, index, out])


def _other_hello(p) -> None:
    """A HELLO shaped for the other version family (empty vs 24 bytes of conn_caps)."""
    size = 0 if p.profile.hello == "caps" else 24
    p.send_raw(struct.pack("<BQ", C.HELLO, size) + bytes(size))


def _graph_counts_too_big(p) -> None:
    head = struct.pack("<I", 0) if p.profile.devices == "multi" else b""
    payload = head + struct.pack("<I", 1000) + bytes(8)
    p.send_raw(struct.pack("<BQ", C.GRAPH_COMPUTE, len(payload)) + payload)


def _graph_trailing(p) -> None:
    raw = build_request(p.profile, C.GRAPH_COMPUTE, p.graph_body(), graph=p.graph([p.tensor(0, id=0x77)], [0x77]))
    raw = raw[:1] + struct.pack("<Q", len(raw) - 9 + 8) + raw[9:] + b"TRAILING"
    p.send_raw(raw)


def _duplicate_ids(p) -> None:
    tensors = _node(p)
    tensors[1].id = tensors[0].id
    _graph(p, tensors)


def _cycle(p) -> None:
    tensors = _node(p)
    tensors[0].update({"op": p.profile.ggml.op_value("ADD"), "src": [0xC3, 0xB2] + [0] * 8,
                       "flags": p.profile.ggml.compute_flag})
    _graph(p, tensors)


def _hash_hit(p, *, buffer: int | None = None, offset: int = 0, n: int | None = None) -> None:
    """SET_TENSOR_HASH of data the server's cache holds (stored by a SET_TENSOR above the
    threshold first), aimed at a tensor without a buffer, past the buffer's end, or (`n`)
    at a tensor of n elements in a buffer big enough for the data."""
    from ggml_rpc_spec.protocol.hashing import fnv1a64
    from ggml_rpc_spec.protocol.messages import HASH_THRESHOLD

    data = bytes(range(256)) * ((HASH_THRESHOLD // 256) + 1)
    big = p.rpc.alloc_buffer(len(data))
    tensor = p.tensor(0, buffer=big.handle, data=big.base, n=len(data) // 4)
    p.rpc.set_tensor(tensor, data, cache=True)
    p.rpc.sync()
    if n is not None:
        target = p.tensor(0, buffer=big.handle, data=big.base, n=n)
    else:
        target = p.tensor(0) if buffer is None else p.tensor(0, buffer=buffer, data=0)
    p.send(C.SET_TENSOR_HASH, {"tensor": target, "offset": offset, "hash": fnv1a64(data)})


def _rope(p, **params) -> None:
    """A ROPE node over a 4x4 F32 source at position 3, with `params` as its op_params."""
    positions = p.tensor(64, id=0xB2, n=1, type=26, name="pos")  # I32 [1]
    _set(p, positions, struct.pack("<i", 3))
    x = p.tensor(0, id=0xA1, n=16, name="x", ne=[4, 4, 1, 1], nb=[4, 16, 64, 64])
    rope = p.tensor(128, id=0xC3, n=16, name="rope", ne=[4, 4, 1, 1], nb=[4, 16, 64, 64],
                    op=p.profile.ggml.op_value("ROPE"), src=[0xA1, 0xB2] + [0] * 8,
                    op_params=spec_for("ROPE").pack(**params))
    _graph(p, [x, positions, rope])


def _rope_mode_one(p) -> None:
    _rope(p, n_dims=4, mode=1)


def _acc_past_the_end(p) -> None:
    """ACC of a 4x4 window whose row stride (nb1) walks far past the destination."""
    tensors = _node(p, op=p.profile.ggml.op_value("ACC"), op_params=spec_for("ACC").pack(nb1=4_000_000, nb2=64, nb3=64))
    tensors[1].update({"ne": [4, 4, 1, 1], "nb": [4, 16, 64, 64]})
    _graph(p, tensors)


def _dense(p, offset: int, ne: list[int], *, id: int, name: str, type: int = 0, **fields) -> Container:
    """A contiguous tensor of 4-byte elements (F32, or I32 with type=26) [ne] at buffer.base + offset."""
    ne = list(ne) + [1] * (4 - len(ne))
    nb = [4, 4 * ne[0], 4 * ne[0] * ne[1], 4 * ne[0] * ne[1] * ne[2]]
    return p.tensor(offset, id=id, name=name, type=type, ne=ne, nb=nb, **fields)


def _op_with_ids(p, op: str, sources: list[list[int]], ids: list[int], out: list[int], **fields) -> None:
    """A graph node `op` over F32 sources of shapes `sources` then an I32 tensor holding `ids`
    (set before the graph runs), with result shape `out`; tensors lie 256 bytes apart."""
    tensors = [_dense(p, 256 * i, ne, id=0xA0 + i, name=f"src{i}") for i, ne in enumerate(sources)]
    index = _dense(p, 256 * len(sources), [len(ids)], id=0xB0, name="ids", type=26)
    _set(p, index, struct.pack(f"<{len(ids)}i", *ids))
    src = [t.id for t in tensors] + [index.id]
    node = _dense(p, 256 * (len(sources) + 1), out, id=0xC0, name="out", op=p.profile.ggml.op_value(op),
                  src=src + [0] * (10 - len(src)), **fields)
    _graph(p, [*tensors, index, node])


def _gated_delta_net_past_the_result(p) -> None:
    """GATED_DELTA_NET (S_v = 2, one head, token and sequence) whose snapshot count K = 4096
    places states far past a result sized for one."""
    tensors = [_dense(p, 256 * i, ne, id=0xA0 + i, name=name) for i, (name, ne) in enumerate(
        [("q", [2]), ("k", [2]), ("v", [2]), ("g", [1]), ("beta", [1]), ("state", [2, 2])])]
    node = _dense(p, 256 * len(tensors), [2, 3], id=0xC0, name="out", op=p.profile.ggml.op_value("GATED_DELTA_NET"),
                  src=[t.id for t in tensors] + [0] * 4, op_params=spec_for("GATED_DELTA_NET").pack(K=4096))
    _graph(p, [*tensors, node])


def _f16(p, offset: int, n: int = 16, **fields) -> Container:
    """An F16 [n] tensor at buffer.base + offset."""
    return p.tensor(offset, n, type=1, nb=[2, 2 * n, 2 * n, 2 * n], **fields)


def _scale_f16(p) -> None:
    """SCALE of an F16 tensor into an F16 result: ggml's CPU has no F16 SCALE."""
    a = _f16(p, 0, id=0xA1, name="a")
    out = _f16(p, 64, id=0xC3, name="out", op=p.profile.ggml.op_value("SCALE"), src=[0xA1] + [0] * 9,
               op_params=spec_for("SCALE").pack(s=2.0))
    _graph(p, [a, out])


def _rope_odd_dims(p) -> None:
    """ROPE turning n_dims = 3 of 4 elements (ggml's CPU asserts an even n_dims)."""
    _rope(p, n_dims=3, mode=0)


def _mamba1_snapshots(p) -> None:
    """SSM_SCAN with Mamba-1's A [d_state, n_head] and K = 2 snapshots, the result sized for them
    (ggml's CPU asserts K = 1 for Mamba-1)."""
    d_state = 2
    sources = [[d_state, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1], [d_state, 1], [d_state, 1, 1, 1], [d_state, 1, 1, 1]]
    _op_with_ids(p, "SSM_SCAN", sources, [0], [1 + 2 * d_state], op_params=spec_for("SSM_SCAN").pack(K=2))


def _im2col_f16_into_f32(p) -> None:
    """IM2COL of an F16 image into an F32 result (ggml's CPU asserts an F32 image there)."""
    kernel = _dense(p, 0, [1, 1, 1, 1], id=0xA0, name="kernel")
    image = _f16(p, 256, 4, id=0xA1, name="image", ne=[4, 1, 1, 1])
    out = _dense(p, 512, [1, 4, 1, 1], id=0xC0, name="out", op=p.profile.ggml.op_value("IM2COL"),
                 src=[0xA0, 0xA1] + [0] * 8, op_params=spec_for("IM2COL").pack(s0=1, d0=1, is_2d=0))
    _graph(p, [kernel, image, out])


def _flash_attn_prec_f16(p) -> None:
    """FLASH_ATTN_EXT asking for precision 20 (GGML_PREC_F16), which ggml's CPU aborts on."""
    q = _dense(p, 0, [4, 1, 1, 1], id=0xA0, name="q")
    k = _f16(p, 256, 4, id=0xA1, name="k", ne=[4, 1, 1, 1])
    v = _f16(p, 512, 4, id=0xA2, name="v", ne=[4, 1, 1, 1])
    out = _dense(p, 768, [4, 1, 1, 1], id=0xC0, name="out", op=p.profile.ggml.op_value("FLASH_ATTN_EXT"),
                 src=[0xA0, 0xA1, 0xA2] + [0] * 7, op_params=spec_for("FLASH_ATTN_EXT").pack(scale=0.5, prec=20))
    _graph(p, [q, k, v, out])


def _alloc_size_bad_source(p) -> None:
    """GET_ALLOC_SIZE whose src[0] has a type past GGML_TYPE_COUNT."""
    srcs = [p.tensor(0, id=0xA1, type=p.profile.ggml.type_count)] + [make_tensor(p.profile.tensor)] * 9
    p.send(C.GET_ALLOC_SIZE, {**p.device_body(), "tensor": p.tensor(64, id=0xC3, op=p.profile.ggml.op_value("ADD"),
                                                                    src=[0xA1] + [0] * 9), "srcs": srcs})


CASES: tuple[HostileCase, ...] = (
    # protocol abuse
    HostileCase("protocol.hello-not-first", "hello.first", "first command other than HELLO", "protocol",
                lambda p: p.send_raw(struct.pack("<BQ", C.DEVICE_COUNT if C.DEVICE_COUNT in p.profile.commands
                                                  else C.GET_ALIGNMENT, 0)), handshake=False),
    HostileCase("protocol.second-hello", "hello.once", "second HELLO", "protocol",
                lambda p: p.send(C.HELLO, {"conn_caps": bytes(24)} if p.profile.hello == "caps" else None)),
    HostileCase("protocol.unknown-command", "frame.command", "unknown command byte", "protocol", _unknown_command),
    HostileCase("protocol.wrong-size", "frame.fixed-size", "fixed request with a wrong size", "protocol", _wrong_size),
    HostileCase("protocol.bad-device", "device.index", "device index past DEVICE_COUNT", "protocol",
                lambda p: p.send(C.GET_ALIGNMENT, {"device": 1000}), needs=(C.DEVICE_COUNT,)),
    # buffer tracking (2024-05)
    HostileCase("buffer-tracking.get-base", "buffer.handle", "BUFFER_GET_BASE of a handle never handed out",
                "buffer tracking (2024-05)", lambda p: p.send(C.BUFFER_GET_BASE, {"remote_ptr": p.buffer.handle ^ 0x40})),
    HostileCase("buffer-tracking.free", "buffer.handle", "FREE_BUFFER of a handle never handed out",
                "buffer tracking (2024-05)", lambda p: p.send(C.FREE_BUFFER, {"remote_ptr": p.buffer.handle ^ 0x40})),
    HostileCase("buffer-tracking.clear", "buffer.handle", "BUFFER_CLEAR of a handle never handed out",
                "buffer tracking (2024-05)",
                lambda p: p.send(C.BUFFER_CLEAR, {"remote_ptr": p.buffer.handle ^ 0x40, "value": 0})),
    HostileCase("buffer-tracking.tensor", "get_tensor.buffer", "GET_TENSOR through a buffer never handed out",
                "buffer tracking (2024-05)", lambda p: _get(p, p.tensor(0, buffer=p.buffer.handle ^ 0x40), 0, 16)),
    # type validation
    HostileCase("CVE-2024-42477.set", "tensor.type", "SET_TENSOR with a type past GGML_TYPE_COUNT", "CVE-2024-42477",
                lambda p: _set(p, p.tensor(0, type=p.profile.ggml.type_count), bytes(16))),
    HostileCase("CVE-2024-42477.graph", "graph.types", "graph tensor with a type past GGML_TYPE_COUNT",
                "CVE-2024-42477", lambda p: _graph(p, _node(p, type=200))),
    HostileCase("division-by-zero.type4", "tensor.type", "GET_TENSOR with removed type 4 (block size 0)",
                "division by zero (2026-03)", lambda p: _get(p, p.tensor(0, type=4), 0, 16)),
    HostileCase("division-by-zero.type5", "tensor.type", "INIT_TENSOR with removed type 5 (block size 0)",
                "division by zero (2026-03)", lambda p: p.send(C.INIT_TENSOR, {"tensor": p.tensor(0, type=5)})),
    # region checks
    HostileCase("CVE-2024-42478.read-past-end", "get_tensor.region", "GET_TENSOR reading past the buffer",
                "CVE-2024-42478", lambda p: _get(p, p.tensor(0), p.buffer.size - 8, 64)),
    HostileCase("CVE-2024-42478.read-huge", "get_tensor.region", "GET_TENSOR with a size past 2^63",
                "CVE-2024-42478", lambda p: _get(p, p.tensor(0), 0, 2**63 + 5)),
    HostileCase("CVE-2024-42479.write-past-end", "set_tensor.region", "SET_TENSOR writing past the buffer",
                "CVE-2024-42479", lambda p: _set(p, p.tensor(0), bytes(128), offset=p.buffer.size - 64)),
    HostileCase("CVE-2024-42479.write-wrapping", "set_tensor.region", "SET_TENSOR whose offset wraps around",
                "CVE-2024-42479", lambda p: _set(p, p.tensor(0), bytes(16), offset=2**64 - 16)),
    HostileCase("cpy-tensor-rce", "copy_tensor.fits", "COPY_TENSOR whose source overflows the destination buffer",
                "ggml PR 1103", lambda p: p.send(C.COPY_TENSOR, {
                    "src": p.tensor(0, n=p.buffer.size // 4), "dst": p.tensor(64, n=1)})),
    HostileCase("memset-bounds", "memset_tensor.region", "MEMSET_TENSOR past the tensor", "MEMSET_TENSOR bounds (5.0.0)",
                lambda p: p.send(C.MEMSET_TENSOR, {"tensor": p.tensor(0), "offset": 60, "size": 8, "value": 1}),
                needs=(C.MEMSET_TENSOR,)),
    # null buffers (2025-07)
    HostileCase("null-buffer.set", "set_tensor.buffer", "SET_TENSOR on a tensor with buffer 0", "null buffer (2025-07)",
                lambda p: _set(p, p.tensor(0, buffer=0, data=0), bytes(16))),
    HostileCase("null-buffer.get", "get_tensor.buffer", "GET_TENSOR on a tensor with buffer 0", "null buffer (2025-07)",
                lambda p: _get(p, p.tensor(0, buffer=0, data=0), 0, 16)),
    HostileCase("null-buffer.copy", "copy_tensor.buffers", "COPY_TENSOR into a tensor with buffer 0",
                "null buffer (2025-07)",
                lambda p: p.send(C.COPY_TENSOR, {"src": p.tensor(0), "dst": p.tensor(0, buffer=0, data=0)})),
    # graphs
    HostileCase("input-validation.src", "graph.ids-known", "graph node whose src is missing", "input validation (2025-04)",
                lambda p: _graph(p, _node(p, src=[0xA1, 0xDEAD] + [0] * 8))),
    HostileCase("input-validation.view-src", "graph.ids-known", "graph node whose view_src is missing",
                "input validation (2025-04)", lambda p: _graph(p, _node(p, view_src=0xBEEF))),
    HostileCase("CVE-2026-34159", "graph.null-buffer-data", "graph node with buffer 0 and a chosen data address",
                "CVE-2026-34159 (GHSA-j8rj-fmpv-wcxw)", lambda p: _graph(p, _node(p, buffer=0, data=0x4141_4141_0000))),
    HostileCase("GHSA-2phh-px2f-2qmx", "recompute.after-free", "GRAPH_RECOMPUTE after freeing the graph's buffer",
                "GHSA-2phh-px2f-2qmx", _graph_then_free_then_recompute, destructive=True, harmless_from=(7, 0, 0),
                needs=(C.GRAPH_RECOMPUTE,)),  # 7.0.0 discards the graph on FREE_BUFFER and closes
    HostileCase("#25299", "graph.node-nonzero", "graph with node id 0 and no tensors", "llama.cpp #25299",
                lambda p: p.send(C.GRAPH_COMPUTE, p.graph_body(), graph=p.graph([], [0])), destructive=True),
    HostileCase("#25289", "graph.no-custom", "graph node with op CUSTOM", "llama.cpp #25289",
                lambda p: _graph(p, _node(p, op=p.profile.ggml.op_value("CUSTOM"), op_params=[0x4141] * 16)),
                destructive=True),
    HostileCase("#26825", "exec.rows-in-range", "GET_ROWS with a row index out of range", "llama.cpp #26825",
                lambda p: _rows(p, "GET_ROWS", 1_000_000), destructive=True),
    HostileCase("#26912", "exec.rows-in-range", "SET_ROWS with a row index out of range", "llama.cpp #26912",
                lambda p: _rows(p, "SET_ROWS", -1_000_000), destructive=True),
    HostileCase("#25765", "exec.state-ids", "SSM_SCAN starting a sequence from state 1000000 of 1",
                "llama.cpp #25765", lambda p: _op_with_ids(
                    p, "SSM_SCAN", [[4, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1], [1, 1], [4, 1, 1, 1], [4, 1, 1, 1]],
                    [1_000_000], [5], op_params=spec_for("SSM_SCAN").pack(K=1)), destructive=True),
    HostileCase("#25704", "exec.op-params", "GATED_DELTA_NET with a snapshot count past its result",
                "llama.cpp #25704", _gated_delta_net_past_the_result, destructive=True, ops=("GATED_DELTA_NET",),
                since=spec_for("GATED_DELTA_NET").param("K").since),
    HostileCase("conv-geometry.transpose-stride", "exec.op-params", "CONV_TRANSPOSE_2D with a stride of 100000 "
                "into a result sized for stride 1", "CONV_TRANSPOSE_2D stride (OOB write)", lambda p: _graph(p, [
                    _dense(p, 0, [1, 1, 1, 1], id=0xA0, name="kernel"), _dense(p, 256, [2, 2, 1, 1], id=0xA1, name="x"),
                    _dense(p, 512, [2, 2, 1, 1], id=0xC0, name="out", op=p.profile.ggml.op_value("CONV_TRANSPOSE_2D"),
                           src=[0xA0, 0xA1] + [0] * 8, op_params=spec_for("CONV_TRANSPOSE_2D").pack(stride=100_000))]),
                destructive=True),
    HostileCase("moe-ids.add-id", "exec.expert-ids", "ADD_ID choosing expert 1000000 of 2",
                "mixture-of-experts ids", lambda p: _op_with_ids(p, "ADD_ID", [[4, 2], [4, 2]], [1_000_000, 0],
                                                                [4, 2]), destructive=True, ops=("ADD_ID",)),
    HostileCase("moe-ids.mul-mat-id", "exec.expert-ids", "MUL_MAT_ID choosing expert -1000000 of 2",
                "mixture-of-experts ids", lambda p: _op_with_ids(p, "MUL_MAT_ID", [[4, 2, 2], [4, 1, 1]],
                                                                [-1_000_000], [2, 1, 1]), destructive=True),
    HostileCase("get-rows-back.rows", "exec.rows-in-range", "GET_ROWS_BACK scattering into row 1000000 of 2",
                "llama.cpp #26825", lambda p: _op_with_ids(p, "GET_ROWS_BACK", [[4, 1]], [1_000_000], [4, 2]),
                destructive=True),
    HostileCase("#25764", "exec.view-params", "ACC with strides past the destination", "llama.cpp #25764",
                _acc_past_the_end, destructive=True),
    HostileCase("upstream-asserts.past-end", "tensor.bounds", "GET_TENSOR of a tensor running past its buffer",
                "upstream asserts", lambda p: _get(p, p.tensor(p.buffer.size - 16, n=64), 0, 4), destructive=True),
    HostileCase("upstream-asserts.set-past-tensor", "set_tensor.in-tensor",
                "SET_TENSOR inside the buffer but past the tensor's nbytes", "upstream asserts",
                lambda p: _set(p, p.tensor(0, n=4), bytes(64)), destructive=True),
    HostileCase("upstream-asserts.get-past-tensor", "get_tensor.in-tensor",
                "GET_TENSOR inside the buffer but past the tensor's nbytes", "upstream asserts",
                lambda p: _get(p, p.tensor(0, n=4), 8, 64), destructive=True),
    HostileCase("CVE-2026-137567", "tensor.bounds", "COPY_TENSOR into an empty tensor whose data lies below the "
                "buffer's base", "CVE-2026-137567", lambda p: p.send(C.COPY_TENSOR, {
                    "src": p.tensor(0, n=64), "dst": p.tensor(0, ne=[0, 1, 1, 1], data=p.buffer.base - 4096)}),
                destructive=True),
    HostileCase("upstream-asserts.overflow", "tensor.bounds", "INIT_TENSOR whose ne/nb overflow nbytes",
                "upstream asserts", lambda p: p.send(C.INIT_TENSOR, {"tensor": p.tensor(
                    0, ne=[2**32 - 1] * 4, nb=[2**32 - 1] * 4)}), destructive=True),
    HostileCase("upstream-asserts.elements", "tensor.elements", "INIT_TENSOR of an empty tensor whose other "
                "dimensions multiply past INT64_MAX", "upstream asserts", lambda p: p.send(C.INIT_TENSOR, {
                    "tensor": p.tensor(0, ne=[2**31, 0, 0, 2**32 - 1])}), destructive=True),
    HostileCase("compute-failure.unknown-op", "graph.ops-known", "graph node with an op past GGML_OP_COUNT",
                "compute failure", lambda p: _graph(p, _node(p, op=len(p.profile.ggml.ops) + 3)), destructive=True),
    HostileCase("#25288", "tensor.blocks", "SET_TENSOR of a Q4_0 tensor with ne[0] = 33", "llama.cpp #25288",
                lambda p: _set(p, p.tensor(0, type=2, ne=[33, 1, 1, 1], nb=[18, 18, 18, 18]), bytes(18)),
                destructive=True),
)

# What ggml's CPU asserts on (SPEC §8.5): a server refuses the graph instead of aborting.
CASES += (
    HostileCase("ops.scale-f16", "exec.unsupported", "SCALE of an F16 tensor", "compute failure", _scale_f16,
                destructive=True),
    HostileCase("ops.rope-odd-dims", "exec.op-params", "ROPE rotating an odd n_dims", "compute failure",
                _rope_odd_dims, destructive=True),
    HostileCase("ops.mamba1-snapshots", "exec.op-params", "SSM_SCAN keeping K = 2 snapshots of Mamba-1 states",
                "compute failure", _mamba1_snapshots, destructive=True, since=spec_for("SSM_SCAN").param("K").since),
    HostileCase("ops.im2col-f16-image", "exec.unsupported", "IM2COL of an F16 image into an F32 result",
                "compute failure", _im2col_f16_into_f32, destructive=True),
    HostileCase("ops.flash-attn-prec", "exec.op-params", "FLASH_ATTN_EXT asking for precision 20 (F16)",
                "compute failure", _flash_attn_prec_f16, destructive=True),
    HostileCase("alloc-size.bad-source", "tensor.type", "GET_ALLOC_SIZE whose source has a type past "
                "GGML_TYPE_COUNT", "CVE-2024-42477", _alloc_size_bad_source, needs=(C.DEVICE_COUNT,)),
)

# Rules without a published advisory: one case each, so every rule has a negative case.
CASES += (
    HostileCase("frame.min-size", "frame.min-size", "SET_TENSOR shorter than its fixed part", "protocol",
                lambda p: p.send_raw(struct.pack("<BQ", C.SET_TENSOR, 100) + bytes(100))),
    HostileCase("hello.size", "hello.size", "HELLO shaped for the other version family", "protocol", _other_hello,
                handshake=False),
    HostileCase("set_tensor_hash.buffer", "set_tensor_hash.buffer", "SET_TENSOR_HASH hit on a tensor with buffer 0",
                "null buffer (2025-07)", lambda p: _hash_hit(p, buffer=0), needs_cache=True),
    HostileCase("set_tensor_hash.region", "set_tensor_hash.region", "SET_TENSOR_HASH hit that does not fit",
                "CVE-2024-42479", lambda p: _hash_hit(p, offset=p.buffer.size - 64), needs_cache=True),
    HostileCase("set_tensor_hash.in-tensor", "set_tensor_hash.in-tensor", "SET_TENSOR_HASH hit past the tensor's "
                "nbytes", "upstream asserts", lambda p: _hash_hit(p, n=4), needs_cache=True, destructive=True),
    HostileCase("memset_tensor.buffer", "memset_tensor.buffer", "MEMSET_TENSOR on a tensor with buffer 0",
                "null buffer (2025-07)", lambda p: p.send(C.MEMSET_TENSOR, {"tensor": p.tensor(0, buffer=0, data=0),
                                                                            "offset": 0, "size": 4, "value": 1}),
                needs=(C.MEMSET_TENSOR,)),
    HostileCase("graph.counts", "graph.counts", "GRAPH_COMPUTE announcing more nodes than it carries", "protocol",
                _graph_counts_too_big),
    HostileCase("graph.trailing", "graph.trailing", "GRAPH_COMPUTE with bytes after its tensors", "protocol",
                _graph_trailing),
    HostileCase("graph.ids-unique", "graph.ids-unique", "graph listing two tensors with one id", "protocol",
                _duplicate_ids),
    HostileCase("graph.acyclic", "graph.acyclic", "graph whose sources form a cycle", "protocol", _cycle),
    HostileCase("graph.blocks", "graph.blocks", "graph tensor of Q4_0 with ne[0] = 33", "llama.cpp #25288",
                lambda p: _graph(p, _node(p, type=2, ne=[33, 1, 1, 1], nb=[18, 18, 18, 18])), destructive=True),
    HostileCase("graph.buffers", "graph.buffers", "graph tensor naming a buffer never handed out", "buffer tracking",
                lambda p: _graph(p, _node(p, buffer=p.buffer.handle ^ 0x40))),
    HostileCase("graph.elements", "graph.elements", "graph source whose dimensions multiply past INT64_MAX",
                "upstream asserts", lambda p: _graph(p, _node(p)[:1] + [
                    p.tensor(64, id=0xB2, name="b", ne=[2**31, 0, 0, 2**32 - 1]), _node(p)[2]]), destructive=True),
    HostileCase("graph.bounds", "graph.bounds", "graph node whose data runs past its buffer", "upstream asserts",
                lambda p: _graph(p, _node(p, data=p.buffer.base + p.buffer.size - 8)), destructive=True),
    HostileCase("exec.unsupported", "exec.unsupported", "ROPE in the removed mode 1", "compute failure",
                _rope_mode_one, destructive=True),
    HostileCase("exec.no-memory", "exec.unsupported", "ADD reading a source that has no buffer (buffer 0, data 0)",
                "compute failure", lambda p: _graph(p, [p.tensor(0, id=0xA1, name="a"),
                                                        p.tensor(0, id=0xB2, name="b", buffer=0, data=0),
                                                        *_node(p)[2:]]), destructive=True),
    HostileCase("recompute.stored", "recompute.stored", "GRAPH_RECOMPUTE before any GRAPH_COMPUTE", "protocol",
                lambda p: p.send(C.GRAPH_RECOMPUTE, p.graph_body()), needs=(C.GRAPH_RECOMPUTE,)),
    HostileCase("frame.data-size", "frame.data-size", "SET_TENSOR_2D whose data is one byte short of size times "
                "n_copies", "protocol", lambda p: _2d(p, C.SET_TENSOR_2D, p.tensor(0), size=16, n_copies=2,
                                                      stride=16, data=bytes(31)), needs=(C.SET_TENSOR_2D,)),
)

# §7.7 2-D transfers: the copies' count, overlap and bounds.
CASES += (
    HostileCase("2d.no-copies", "tensor_2d.copies", "SET_TENSOR_2D of no copy", "protocol",
                lambda p: _2d(p, C.SET_TENSOR_2D, p.tensor(0), size=16, n_copies=0, stride=16),
                needs=(C.SET_TENSOR_2D,)),
    HostileCase("2d.empty-copies", "tensor_2d.copies", "GET_TENSOR_2D of copies of 0 bytes", "protocol",
                lambda p: _2d(p, C.GET_TENSOR_2D, p.tensor(0), size=0, n_copies=4, stride=16),
                needs=(C.GET_TENSOR_2D,)),
    HostileCase("2d.wrapping-count", "tensor_2d.copies", "SET_TENSOR_2D of 2^32 copies of 2^32 bytes (0 in 64 "
                "bits) and no data", "protocol", lambda p: _2d(p, C.SET_TENSOR_2D, p.tensor(0), size=2**32,
                                                               n_copies=2**32, stride=2**32, data=b""),
                needs=(C.SET_TENSOR_2D,)),
    HostileCase("2d.overflowing-count", "tensor_2d.copies", "GET_TENSOR_2D whose size times n_copies overflows 64 "
                "bits", "protocol", lambda p: _2d(p, C.GET_TENSOR_2D, p.tensor(0), size=2**33, n_copies=2**32,
                                                  stride=2**33), needs=(C.GET_TENSOR_2D,)),
    HostileCase("2d.set-overlap", "tensor_2d.overlap", "SET_TENSOR_2D of copies of 16 bytes 8 bytes apart",
                "2-D bounds (8.0.0)", lambda p: _2d(p, C.SET_TENSOR_2D, p.tensor(0), size=16, n_copies=3, stride=8),
                needs=(C.SET_TENSOR_2D,)),
    HostileCase("2d.stride-zero", "tensor_2d.overlap", "GET_TENSOR_2D of 2^50 copies at stride 0",
                "upstream aborts (bad_alloc)", lambda p: _2d(p, C.GET_TENSOR_2D, p.tensor(0), size=64,
                                                             n_copies=2**50, stride=0),
                needs=(C.GET_TENSOR_2D,), destructive=True),
    HostileCase("2d.null-buffer.set", "tensor_2d.buffer", "SET_TENSOR_2D on a tensor with buffer 0",
                "null buffer (2025-07)", lambda p: _2d(p, C.SET_TENSOR_2D, p.tensor(0, buffer=0, data=0), size=4,
                                                       n_copies=2, stride=8), needs=(C.SET_TENSOR_2D,)),
    HostileCase("2d.null-buffer.get", "tensor_2d.buffer", "GET_TENSOR_2D on a tensor with buffer 0",
                "null buffer (2025-07)", lambda p: _2d(p, C.GET_TENSOR_2D, p.tensor(0, buffer=0, data=0), size=4,
                                                       n_copies=2, stride=8), needs=(C.GET_TENSOR_2D,)),
    HostileCase("2d.past-buffer", "tensor_2d.region", "GET_TENSOR_2D whose second copy lies past the buffer",
                "2-D bounds (8.0.0)", lambda p: _2d(p, C.GET_TENSOR_2D, p.tensor(0, n=p.buffer.size // 4),
                                                    size=16, n_copies=2, stride=p.buffer.size),
                needs=(C.GET_TENSOR_2D,)),
    HostileCase("2d.wrapping-stride", "tensor_2d.region", "SET_TENSOR_2D whose stride of 2^63 wraps the last copy "
                "round 64 bits", "2-D bounds (8.0.0)", lambda p: _2d(p, C.SET_TENSOR_2D, p.tensor(
                    0, n=p.buffer.size // 4), size=16, n_copies=3, stride=2**63), needs=(C.SET_TENSOR_2D,)),
    HostileCase("2d.set-past-tensor", "tensor_2d.in-tensor", "SET_TENSOR_2D inside the buffer but past the "
                "tensor's nbytes", "2-D bounds (8.0.0)", lambda p: _2d(p, C.SET_TENSOR_2D, p.tensor(0, n=4), size=4,
                                                                       n_copies=4, stride=8),
                needs=(C.SET_TENSOR_2D,)),
    HostileCase("2d.get-past-tensor", "tensor_2d.in-tensor", "GET_TENSOR_2D inside the buffer but past the "
                "tensor's nbytes", "2-D bounds (8.0.0)", lambda p: _2d(p, C.GET_TENSOR_2D, p.tensor(0, n=4), size=4,
                                                                       n_copies=4, stride=8),
                needs=(C.GET_TENSOR_2D,)),
)

# §8.3 graphs cached by uid: GRAPH_RECOMPUTE names a graph the device's cache holds.
CASES += (
    HostileCase("recompute.unknown-uid", "recompute.stored", "GRAPH_RECOMPUTE of a uid never computed", "protocol",
                lambda p: _recompute_missing(p, [GRAPH_UID], GRAPH_UID + 1), since=UIDS),
    HostileCase("recompute.uid-zero", "recompute.stored", "GRAPH_RECOMPUTE of a graph computed with uid 0 (never "
                "kept)", "protocol", lambda p: _recompute_missing(p, [0], 0), since=UIDS),
    HostileCase("recompute.evicted", "recompute.stored", f"GRAPH_RECOMPUTE of the first of {GRAPH_CACHE_LIMIT + 1} "
                f"graphs (the {GRAPH_CACHE_LIMIT + 1}th cleared the cache)", "protocol",
                lambda p: _recompute_missing(p, range(1, GRAPH_CACHE_LIMIT + 2), 1), since=UIDS),
    HostileCase("recompute.other-device", "recompute.stored", "GRAPH_RECOMPUTE on device 1 of a uid cached on "
                "device 0", "protocol", _recompute_on_another_device, since=UIDS),
)

# §10.2 COMM_ALLREDUCE: only over a link, only contiguous F32, only while the peer keeps to it.
CASES += (
    HostileCase("comm.unlinked", "comm.linked", "COMM_ALLREDUCE before any COMM_INIT", "protocol",
                lambda p: _allreduce(p, p.tensor(0)), needs=(C.COMM_ALLREDUCE,)),
    HostileCase("comm.freed", "comm.linked", "COMM_ALLREDUCE after COMM_FREE of the device's link", "protocol",
                _allreduce_after_free, needs=(C.COMM_ALLREDUCE,)),
    HostileCase("comm.f16", "comm.f32", "COMM_ALLREDUCE of an F16 tensor", "upstream sums any type as raw bytes",
                _allreduce_f16, needs=(C.COMM_ALLREDUCE,)),
    HostileCase("comm.peer-stops", "comm.peer-agrees", "COMM_ALLREDUCE whose peer closes the link halfway through "
                "its partial", "protocol", _peer_stops_halfway, needs=(C.COMM_ALLREDUCE,)),
)

# Cases a conforming server must *serve*, not close: fixed crashes that were triggered by
# valid requests.
SURVIVAL_CASES: tuple[HostileCase, ...] = (
    HostileCase("graph-context-overflow", None, "a second, larger graph on the same connection is served",
                "graph context overflow (2024-09)", _bigger_graph_after_small, section="8.1"),
)
