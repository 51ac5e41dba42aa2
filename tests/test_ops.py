"""The graph executor, op by op: against a NumPy oracle (our server), and differentially
against the REAL upstream server (ggml's CPU backend) with the same graph and inputs."""

from __future__ import annotations

import numpy as np
import pytest

from ggml_rpc_spec.conformance.cases.op_cases import CASES
from conftest import CI_RELEASES, require_peer
from ggml_rpc_spec.protocol import RPC_TENSOR_DTYPE, Graph, profile_for
from ggml_rpc_spec.client.rpc import RPCClient, ServerClosed
from ggml_rpc_spec.executor.binder import Binder
from ggml_rpc_spec.client.graphs import GraphBuilder, params

IDS = [f"{c.op}-{c.key}" for c in CASES]


def run_case(case, endpoint, profile, seed=0):
    """Build the case on a fresh connection and buffer; (results, expected)."""
    with RPCClient(endpoint, proto=profile) as rpc:
        return case.run(rpc, seed=seed)


def assert_closed_and_still_serving(rpc, server):
    """The server closed this connection (its next call fails) and serves new ones."""
    with pytest.raises(ServerClosed):
        rpc.device_count()
    with RPCClient(server.endpoint, proto=server.profile) as fresh:
        assert fresh.device_count() >= 1


@pytest.mark.parametrize("proto", ["3.6.1", "7.0.0"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_op_against_oracle(reference_server, proto, case):
    """The exact float oracle is the semantics; ggml's activation rounding (the default numerics)
    is judged against the real server below."""
    server = reference_server(proto, numerics="float")
    results, expected = run_case(case, server.endpoint, server.profile)
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol)


@pytest.mark.upstream
@pytest.mark.parametrize("release", CI_RELEASES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_op_matches_upstream(release, case, reference_server, upstream_server):
    profile = profile_for(require_peer(release).protocol)
    ours = reference_server(profile.name, numerics="ggml")
    theirs = upstream_server(release)
    mine, expected = run_case(case, ours.endpoint, profile)
    real, _ = run_case(case, theirs.endpoint, profile)
    for got, reference, want in zip(mine, real, expected, strict=True):
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(reference, want, rtol=case.rtol, atol=case.atol * scale,
                                   err_msg="the real server disagrees with the oracle")
        np.testing.assert_allclose(got, reference, rtol=case.rtol, atol=case.atol * scale,
                                   err_msg="our server disagrees with the real one")


@pytest.mark.parametrize("proto", ["3.6.1", "7.0.0"])
def test_a_resent_graph_runs_on_new_inputs_and_is_checked_again_after_free(reference_server, proto):
    """The server reuses the plan of a graph sent again byte for byte (clients before 7.0
    resend the decode graph every token); the reuse must see new inputs, and must end when
    a buffer the graph uses is freed."""
    server = reference_server(proto)
    with RPCClient(server.endpoint, proto=server.profile) as rpc:
        buf = rpc.alloc_buffer(1 << 16)
        g = GraphBuilder(rpc.profile, buf)
        a, b = g.input(np.arange(8, dtype=np.float32)), g.input(np.full(8, 2, np.float32))
        nodes = [g.add(a, b)]
        nodes.append(g.mul(nodes[-1], b))
        nodes.append(g.scale(nodes[-1], 0.5))
        graph, out = g.graph(nodes), nodes[-1]
        g.upload(rpc)
        for step in range(3):
            rpc.set_tensor(a, np.arange(8, dtype=np.float32) * step)
            rpc.graph_compute(graph)
            np.testing.assert_array_equal(g.read(rpc, out).ravel(), (np.arange(8) * step + 2) * 2 * 0.5)
        rpc.free_buffer(buf)
        rpc.graph_compute(graph)  # the same bytes now name a freed buffer
        assert_closed_and_still_serving(rpc, server)


@pytest.mark.parametrize("proto", ["3.6.1", "7.0.0"])
def test_a_changed_graph_computes_what_it_now_says(reference_server, proto):
    """Consecutive graphs on a device share steps where nodes are unchanged; a node whose
    parameters or sources changed must run as it is now sent."""
    server = reference_server(proto)
    with RPCClient(server.endpoint, proto=server.profile) as rpc:
        buf = rpc.alloc_buffer(1 << 16)
        g = GraphBuilder(rpc.profile, buf)
        a, b = g.input(np.arange(8, dtype=np.float32)), g.input(np.full(8, 2, np.float32))
        added = g.add(a, b, name="sum")
        half = g.scale(added, 0.5, name="scaled")
        g.upload(rpc)
        rpc.graph_compute(g.graph([added, half]))
        np.testing.assert_array_equal(g.read(rpc, half).ravel(), (np.arange(8) + 2) * 0.5)
        # the same node in every field but its factor (same place, same name)
        rescaled = g.new("F32", [8], op="SCALE", srcs=[added], op_params=params("SCALE", s=3.0), data=half.data,
                         name="scaled")
        rpc.graph_compute(g.graph([added, rescaled]))
        np.testing.assert_array_equal(g.read(rpc, rescaled).ravel(), (np.arange(8) + 2) * 3.0)
        # the same node in every field but its sources
        resourced = g.new("F32", [8], op="ADD", srcs=[b, b], data=added.data, name="sum")
        rpc.graph_compute(g.graph([resourced]))
        np.testing.assert_array_equal(g.read(rpc, resourced).ravel(), np.full(8, 4.0))


@pytest.mark.parametrize("proto", ["3.6.1", "7.0.0"])
def test_acc_into_a_gapped_destination_is_refused(reference_server, proto):
    """ACC/SET place their window by byte strides inside a packed copy of src0; a
    destination with gaps between rows (valid for the graph rules) would put the window
    past that copy, so the server refuses it as ggml does (contiguous tensors only)."""
    server = reference_server(proto)
    with RPCClient(server.endpoint, proto=server.profile) as rpc:
        g = GraphBuilder(rpc.profile, rpc.alloc_buffer(1 << 16))
        a = g.new("F32", [4, 2], nb=[4, 32, 64, 64])  # rows 32 bytes apart, 16 used
        b = g.input(np.ones((2, 4), np.float32))
        node = g.new("F32", [4, 2], op="ACC", srcs=[a, b], op_params=params("ACC", nb1=16, nb2=64, nb3=64), nb=[4, 32, 64, 64])
        g.upload(rpc)
        rpc.graph_compute(g.graph([node]))
        assert_closed_and_still_serving(rpc, server)


@pytest.mark.parametrize("op", ["DIAG_MASK_INF", "DIAG_MASK_ZERO"])
def test_diag_mask_with_a_zero_element_stride_is_refused(reference_server, op):
    """ggml's CPU asserts nb0 == 4 on both tensors of DIAG_MASK even when ne0 is 1, where
    contiguity does not look at nb0: the real 3.6.1 server aborted on this 1-element node
    (in place, result nb all 0), so a guard in front of it must refuse it."""
    server = reference_server("3.6.1")
    with RPCClient(server.endpoint, proto=server.profile) as rpc:
        g = GraphBuilder(rpc.profile, rpc.alloc_buffer(1 << 16))
        a = g.new("F32", [1])
        node = g.new("F32", [1], op=op, srcs=[a], data=a.data, nb=[0, 0, 0, 0])
        g.upload(rpc)
        rpc.graph_compute(g.graph([node]))
        assert_closed_and_still_serving(rpc, server)


@pytest.mark.parametrize("op,types", [("ADD", ("F16", "F16", "F32")), ("MUL", ("F32", "F16", "F32")),
                                      ("SUB", ("Q8_0", "F32", "F32")), ("NORM", ("F16", None, "F32")),
                                      ("RMS_NORM", ("F32", None, "F16"))])
def test_types_ggml_does_not_compute_are_refused(reference_server, op, types):
    """ggml's CPU aborts on these (binary-ops.cpp's type table; the norms compute F32 only,
    and would write floats into an F16 result): a guard in front of it must refuse them, so
    the reference server refuses them too."""
    server = reference_server("7.0.0")
    with RPCClient(server.endpoint, proto=server.profile) as rpc:
        g = GraphBuilder(rpc.profile, rpc.alloc_buffer(1 << 16))
        srcs = [g.new(kind, [32]) for kind in types[:2] if kind is not None]
        node = g.new(types[2], [32], op=op, srcs=srcs, op_params=params(op, eps=1e-5) if "NORM" in op else ())
        g.upload(rpc)
        rpc.graph_compute(g.graph([node]))
        assert_closed_and_still_serving(rpc, server)


@pytest.mark.parametrize("types", [("F16", "F32", "F32"), ("BF16", "F32", "BF16"), ("Q8_0", "F32", "F32")])
def test_types_ggml_computes_are_computed(reference_server, types):
    server = reference_server("7.0.0")
    with RPCClient(server.endpoint, proto=server.profile) as rpc:
        g = GraphBuilder(rpc.profile, rpc.alloc_buffer(1 << 16))
        a, b = g.new(types[0], [32]), g.new(types[1], [32])
        node = g.new(types[2], [32], op="ADD", srcs=[a, b])
        g.upload(rpc)
        rpc.graph_compute(g.graph([node]))
        assert rpc.device_count() >= 1  # still served


@pytest.mark.parametrize("proto", ["3.6.1", "7.0.0"])
def test_batched_elementwise_nodes_follow_strided_layouts_and_leave_the_rest(reference_server, proto):
    """ADD/SUB/MUL/DIV/SCALE nodes are built a whole op at a time: packed operands as 1-D
    slices (op case ADD chain-in-place, which the real servers judge), other layouts as
    strided views, the rest by the per-node kernel.  ggml's binary kernels refuse transposed
    rows, so here NumPy judges how our server computes them; SCALE of a strided view is
    refused, as ggml asserts a contiguous source."""
    server = reference_server(proto)
    with RPCClient(server.endpoint, proto=server.profile) as rpc:
        g = GraphBuilder(rpc.profile, rpc.alloc_buffer(1 << 16))
        x = np.arange(24, dtype=np.float32).reshape(4, 6) - 7
        y = np.linspace(-2, 2, 24, dtype=np.float32).reshape(4, 6)
        a, b = g.input(x), g.input(y)
        packed = g.sub(a, b)  # 1-D slices
        at, bt = g.transpose(a), g.transpose(b)  # ne (4, 6): not packed
        strided = g.add(at, bt)
        biased = g.scale(packed, 2.0, 1.0)  # a bias: the per-node kernel
        scaled = g.scale(packed, 3.0)  # no bias: the batch
        outputs = [packed, strided, biased, scaled]
        got = g.run(rpc, outputs, nodes=[packed, at, bt, strided, biased, scaled])
        want = [x - y, (x + y).T, (x - y) * 2 + 1, (x - y) * 3]
        for value, expected in zip(got, want, strict=True):
            np.testing.assert_allclose(value.reshape(expected.shape), expected, rtol=1e-6)
    with RPCClient(server.endpoint, proto=server.profile) as rpc:
        g = GraphBuilder(rpc.profile, rpc.alloc_buffer(1 << 16))
        scaled_view = g.scale(g.transpose(g.input(x)), 3.0)
        with pytest.raises(ServerClosed):
            g.run(rpc, [scaled_view], nodes=[scaled_view])


def test_packed_means_blocks_back_to_back_from_an_aligned_address():
    """Which rows a 1-D slice may stand for: nb exactly the strides of a fresh tensor of
    that shape (quantized rows counted in blocks), data aligned to the block."""
    profile = profile_for("7.0.0")
    rows = [  # (type, ne, nb, data)
        (0, [4, 2, 1, 1], [4, 16, 32, 32], 0x1000),  # F32, packed
        (0, [4, 2, 1, 1], [8, 32, 64, 64], 0x1000),  # every other element
        (0, [2, 4, 1, 1], [16, 4, 32, 32], 0x1000),  # transposed
        (0, [4, 2, 1, 1], [4, 16, 32, 32], 0x1002),  # misaligned
        (2, [64, 2, 1, 1], [18, 36, 72, 72], 0x1000),  # Q4_0: 2 blocks of 18 bytes per row
        (2, [64, 2, 1, 1], [18, 40, 80, 80], 0x1000),  # Q4_0 rows with a gap
    ]
    tensors = np.zeros(len(rows), dtype=RPC_TENSOR_DTYPE[profile.tensor])
    tensors["id"] = np.arange(1, len(rows) + 1)
    for i, (kind, ne, nb, data) in enumerate(rows):
        tensors[i]["type"], tensors[i]["ne"], tensors[i]["nb"], tensors[i]["data"] = kind, ne, nb, data
    binder = Binder(Graph(np.array([1], dtype="<u8"), tensors), {}, profile.ggml)
    assert binder.packed.tolist() == [True, False, False, False, True, False]


@pytest.mark.parametrize("proto", ["3.6.1", "8.0.0"])
def test_every_op_draws_nodes_the_reference_server_computes(reference_server, proto):
    """The catalogue's Draws (differential fuzzing) give valid nodes: the reference server, which
    refuses what ggml's CPU asserts on, computes 8 drawn nodes of every op its ggml has."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from ggml_rpc_spec.conformance.cases.op_draw import build, draw_node, drawable

    server = reference_server(proto, memory=1 << 30)
    refused = {}
    for op in drawable(server.profile):
        @settings(max_examples=8, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def compute(data):
            drawn = draw_node(data.draw, op, server.profile)
            with RPCClient(server.endpoint, proto=server.profile) as rpc:
                g = GraphBuilder(rpc.profile, rpc.alloc_buffer(1 << 22))
                node = build(g, drawn)
                g.run(rpc, [node], nodes=g.ops())

        try:
            compute()
        except ServerClosed as exc:
            refused[op] = str(exc)
    assert not refused, refused


def _row_path_f16(scores: np.ndarray, values: np.ndarray):
    """ggml's row path for one query row, written key by key as its C loop reads: M, S in
    float32, the weighted values summed in an F16 accumulator."""
    f16 = np.float16
    top, total, acc = np.float32(-np.inf), np.float32(0), np.zeros(values.shape[-1], f16)
    for s, v in zip(scores, values, strict=True):
        if s == -np.inf:
            continue
        ms, vs = np.float32(1), np.float32(1)
        if s > top:
            ms = np.float32(np.exp(np.float32(top - s)))
            acc = (acc.astype(np.float32) * ms).astype(f16)
            top = s
        else:
            vs = np.float32(np.exp(np.float32(s - top)))
        acc = (acc.astype(np.float32) + v * vs).astype(f16)
        total = np.float32(total * ms + vs)
    return acc.astype(np.float32), total, top


def test_flash_attention_f16_sums_follow_ggml_key_by_key():
    """online_f16 computes the factors of every key at once; its accumulator and sum must still
    be what ggml's key-by-key loop gives, bit for bit, masked keys and NaN scores included."""
    from ggml_rpc_spec.executor.ops.attention import online_f16

    rng = np.random.default_rng(5)
    scores = (rng.standard_normal((3, 4, 37)) * 6).astype(np.float32)
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[0, 0] = -np.inf  # a row with every key masked
    scores[1, 1, 3] = np.nan
    values = (rng.standard_normal((3, 4, 37, 8)) * 300).astype(np.float16).astype(np.float32)
    acc, total, top = online_f16(scores, values)
    for i, j in np.ndindex(3, 4):
        want = _row_path_f16(scores[i, j], values[i, j])
        np.testing.assert_array_equal(acc[i, j], want[0])
        np.testing.assert_array_equal(total[i, j], want[1])
        np.testing.assert_array_equal(top[i, j], want[2])
