"""The graph executor, op by op: against a NumPy oracle (our server), and differentially
against the REAL upstream server (ggml's CPU backend) with the same graph and inputs."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.op_cases import CASES
from conftest import CI_RELEASES, require_peer
from protocol import profile_for
from reference_impl.client import RPCClient, ServerClosed
from reference_impl.graphs import GraphBuilder

IDS = [f"{c.op}-{c.key}" for c in CASES]


def run_case(case, endpoint, profile, seed=0):
    """Build the case on a fresh connection and buffer; (results, expected)."""
    with RPCClient(endpoint, proto=profile) as rpc:
        return case.run(rpc, seed=seed)


@pytest.mark.parametrize("proto", ["3.6.1", "7.0.0"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_op_against_oracle(reference_server, proto, case):
    server = reference_server(proto)
    results, expected = run_case(case, server.endpoint, server.profile)
    for got, want in zip(results, expected):
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
    for got, reference, want in zip(mine, real, expected):
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
        for tensor, raw in g.uploads:
            rpc.set_tensor(tensor, raw)
        for step in range(3):
            rpc.set_tensor(a, np.arange(8, dtype=np.float32) * step)
            rpc.graph_compute(graph)
            np.testing.assert_array_equal(g.read(rpc, out).ravel(), (np.arange(8) * step + 2) * 2 * 0.5)
        rpc.free_buffer(buf)
        rpc.graph_compute(graph)  # the same bytes now name a freed buffer
        with pytest.raises(ServerClosed):
            rpc.device_count()
    with RPCClient(server.endpoint, proto=server.profile) as rpc:
        assert rpc.device_count() >= 1


@pytest.mark.parametrize("proto", ["3.6.1", "7.0.0"])
def test_a_changed_graph_computes_what_it_now_says(reference_server, proto):
    """Consecutive graphs on a device share steps where nodes are unchanged; a node whose
    parameters or sources changed must run as it is now sent."""
    server = reference_server(proto)
    with RPCClient(server.endpoint, proto=server.profile) as rpc:
        buf = rpc.alloc_buffer(1 << 16)
        g = GraphBuilder(rpc.profile, buf)
        a, b = g.input(np.arange(8, dtype=np.float32)), g.input(np.full(8, 2, np.float32))
        added = g.add(a, b)
        first = [added, g.scale(added, 0.5)]
        for tensor, raw in g.uploads:
            rpc.set_tensor(tensor, raw)
        rpc.graph_compute(g.graph(first))
        np.testing.assert_array_equal(g.read(rpc, first[-1]).ravel(), (np.arange(8) + 2) * 0.5)
        rescaled = g.scale(added, 3.0)  # same shape, new factor and placement
        rpc.graph_compute(g.graph([added, rescaled]))
        np.testing.assert_array_equal(g.read(rpc, rescaled).ravel(), (np.arange(8) + 2) * 3.0)
        resourced = g.mul(b, b)  # the same op over other sources
        rpc.graph_compute(g.graph([added, g.scale(added, 0.5), resourced]))
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
        node = g.new("F32", [4, 2], op="ACC", srcs=[a, b], op_params=[16, 64, 64, 0, 0], nb=[4, 32, 64, 64])
        for tensor, raw in g.uploads:
            rpc.set_tensor(tensor, raw)
        rpc.graph_compute(g.graph([node]))
        with pytest.raises(ServerClosed):
            rpc.device_count()
    with RPCClient(server.endpoint, proto=server.profile) as rpc:
        assert rpc.device_count() >= 1
