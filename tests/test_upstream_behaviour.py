"""What the real upstream clients and servers do where SPEC.md describes them: the HELLO of
the other family, connection holding, connect failures, graphs without nodes, the ops whose
allocation the 7.0.0 client asks for, BUFFER_CLEAR of recurrent state, use_count and the
fused RMS_NORM, and the zero-size buffer's missing memset.  Each test names the SPEC
section it backs."""

from __future__ import annotations

import socket
from collections import Counter

import numpy as np
import pytest

from conftest import require_peer
from ggml_rpc_spec.client.graphs import GraphBuilder
from ggml_rpc_spec.client.rpc import RPCClient
from ggml_rpc_spec.protocol import Command, make_tensor, profile_for
from ggml_rpc_spec.protocol.exchanges import decode_connection
from ggml_rpc_spec.relay.proxy import RecordingProxy
from ggml_rpc_spec.upstream_peers.client import ClientFailed, run_client
from ggml_rpc_spec.upstream_peers.llama_run import run_llama
from wire import Wire

pytestmark = pytest.mark.upstream

# SPEC's statements on the 3.6.1 and 7.0.0 peers (8.0.0's have tests of their own: test_upstream_8.py)
RELEASES = OLD, NEW = ("0.3.20", "0.3.36")


def _failure(excinfo) -> str:
    """The client's abort message lines (its output also holds a debugger's backtrace)."""
    return "\n".join(line for line in excinfo.value.output.splitlines() if "ggml-rpc.cpp" in line)


def _sessions(proxy: RecordingProxy) -> list:
    for connection in proxy.connections:
        assert connection.closed.wait(10)
    sessions = [decode_connection(c.stream("c2s"), c.stream("s2c")) for c in proxy.connections]
    assert all(s.error is None for s in sessions), [str(s.error) for s in sessions if s.error]
    return sessions


# -- §3.3 the HELLO of the other family ----------------------------------------------------------------


@pytest.mark.parametrize("client,server", [(OLD, NEW), (NEW, OLD)], ids=["3.6.1-client", "7.0.0-client"])
def test_a_server_of_the_other_hello_family_closes_and_the_client_aborts(client, server, upstream_server):
    """SPEC §3.3: across HELLO families the server closes on the foreign HELLO size and the
    client aborts ("Remote RPC server crashed…"); neither refuses the server gracefully."""
    real = upstream_server(server)
    with pytest.raises(ClientFailed) as excinfo:
        run_client(require_peer(client), real.endpoint, [{"op": "device_count"}])
    assert "Remote RPC server crashed or returned malformed response" in _failure(excinfo)
    if not real.alive():
        real.restart()


# -- §14 connections and connect failures --------------------------------------------------------------

_SESSION = [{"op": "alloc", "name": "b", "size": 4096},
            {"op": "tensor", "name": "x", "buffer": "b", "ne": [8], "offset": 0},
            {"op": "tensor", "name": "y", "buffer": "b", "ne": [8], "offset": 64},
            {"op": "add", "name": "s", "a": "x", "b": "y", "buffer": "b", "offset": 128},
            {"op": "compute", "output": "s"},
            {"op": "free", "buffer": "b"},
            {"op": "memory"}, {"op": "memory"}]


@pytest.mark.parametrize("release", RELEASES)
def test_which_objects_hold_the_connection(release, upstream_server):
    """SPEC §2.5, §14: 3.6.1's buffers hold the socket but its backend asks for one on every
    use, so once the buffer is freed each query opens a connection of its own; 7.0.0's backend
    holds its connection (dispatcher) too."""
    with RecordingProxy(upstream_server(release).address) as proxy:
        run_client(require_peer(release), proxy.endpoint, _SESSION)
    commands = [[e.request.command.name for e in s.exchanges] for s in _sessions(proxy)]
    main = ["HELLO", "ALLOC_BUFFER", "BUFFER_GET_BASE", "GRAPH_COMPUTE", "FREE_BUFFER"]
    if release == OLD:
        assert commands[1:] == [main, ["HELLO", "GET_DEVICE_MEMORY"], ["HELLO", "GET_DEVICE_MEMORY"]], commands
    else:
        assert commands[1:] == [main + ["GET_DEVICE_MEMORY"] * 2], commands


@pytest.mark.parametrize("release", RELEASES)
def test_a_server_that_cannot_be_reached(release):
    """SPEC §14: registering a server nobody listens for, 3.6.1 drops it (no registry, the
    client goes on); 7.0.0 aborts ("Failed to connect"), the first DEVICE_COUNT probe included."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{probe.getsockname()[1]}"  # bound, not listening: refused
        if release == OLD:
            assert run_client(require_peer(release), endpoint, [{"op": "add_server"}]) == [None]
        else:
            with pytest.raises(ClientFailed) as excinfo:
                run_client(require_peer(release), endpoint, [{"op": "add_server"}])
            assert f"Failed to connect to {endpoint}" in _failure(excinfo)


@pytest.mark.parametrize("release", RELEASES)
def test_clients_never_send_a_graph_without_nodes(release, upstream_server):
    """SPEC §8.1: the 3.6.1 and 7.0.0 clients assert n_nodes > 0 before sending a graph."""
    with pytest.raises(ClientFailed) as excinfo:
        run_client(require_peer(release), upstream_server(release).endpoint, [{"op": "compute_empty"}])
    assert "GGML_ASSERT(cgraph->n_nodes > 0) failed" in _failure(excinfo)


# -- real models through the real server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(upstream_server, tiny_models):
    """recorded(release, model, flash_attn) -> the decoded connections of a real llama.cpp
    session of that model on the real server (computed once)."""
    cache = {}

    def get(release: str, model: str, flash_attn: int | None = None) -> list:
        key = (release, model, flash_attn)
        if key not in cache:
            with RecordingProxy(upstream_server(release).address) as proxy:
                run_llama(require_peer(release), tiny_models[model], rpc=proxy.endpoint, text="The quick brown fox",
                          generate=2, flash_attn_type=flash_attn)
            cache[key] = _sessions(proxy)
        return cache[key]

    return get


def _requests(sessions, command: Command) -> list:
    return [e.request for s in sessions for e in s.exchanges if e.request.command is command]


@pytest.mark.parametrize("release", RELEASES)
def test_clients_recompute_an_unchanged_graph(release, recorded):
    """SPEC §8.3, §14: both clients send GRAPH_RECOMPUTE for a graph they sent before (3.6.1
    by comparing the nodes' contents, 7.0.0 by the graph's uid); neither resends it."""
    sessions = recorded(release, "2")
    assert _requests(sessions, Command.GRAPH_RECOMPUTE)
    assert len(_requests(sessions, Command.GRAPH_COMPUTE)) == 2  # the prompt's graph and the first token's


def test_the_7_client_asks_alloc_size_for_ops_that_may_expand(recorded):
    """SPEC §5.5: the 7.0.0 client asks GET_ALLOC_SIZE for FLASH_ATTN_EXT, MUL_MAT, MUL_MAT_ID,
    ARGSORT (and, by its source, CUMSUM and TOP_K) nodes; 3.6.1 only for FLASH_ATTN_EXT and
    MUL_MAT_ID among the ops."""
    ops = {}
    for release in RELEASES:
        profile = profile_for(require_peer(release).protocol)
        ops[release] = Counter(profile.ggml.op_name(int(r.body.tensor.op))
                               for r in _requests(recorded(release, "moe", 1 if release == NEW else None),
                                                  Command.GET_ALLOC_SIZE))
    assert {"MUL_MAT", "MUL_MAT_ID", "ARGSORT", "FLASH_ATTN_EXT"} <= set(ops[NEW]) <= {
        "NONE", "MUL_MAT", "MUL_MAT_ID", "ARGSORT", "FLASH_ATTN_EXT", "CUMSUM", "TOP_K"}, ops[NEW]
    assert set(ops[OLD]) == {"NONE", "MUL_MAT_ID"}, ops[OLD]


@pytest.mark.parametrize("release", RELEASES)
def test_recurrent_state_buffers_are_cleared(release, recorded):
    """SPEC §6.4, §14: BUFFER_CLEAR(0) goes to recurrent-state buffers too: a Mamba model has
    no KV cache, and its state buffer is cleared when the context is made."""
    sessions = recorded(release, "mamba")
    allocated = {e.reply.body.remote_ptr: e.request.body.size for s in sessions for e in s.exchanges
                 if e.request.command is Command.ALLOC_BUFFER}
    clears = _requests(sessions, Command.BUFFER_CLEAR)
    assert clears and {r.body.value for r in clears} == {0}
    weights = max(allocated, key=allocated.get)
    assert {r.body.remote_ptr for r in clears} and weights not in {r.body.remote_ptr for r in clears}


def test_the_7_client_counts_the_users_of_rms_norm(recorded):
    """SPEC §4.1: the 7.0.0 client's use_count of each RMS_NORM node is the number of its users
    in its graph (1: the MUL by the norm's weight), which is what lets the server fuse them."""
    profile = profile_for(require_peer(NEW).protocol)
    counts = Counter()
    for request in _requests(recorded(NEW, "2"), Command.GRAPH_COMPUTE):
        tensors = request.graph.tensors
        norms = tensors[[profile.ggml.op_name(int(op)) == "RMS_NORM" for op in tensors["op"]]]
        counts.update(int(c) for c in norms["use_count"])
    assert counts and set(counts) == {1}, counts


# -- §4.1 use_count on the real 7.0.0 server ------------------------------------------------------------


def _norm_graph(rpc: RPCClient, use_count: int):
    """RMS_NORM of x, then MUL by w and ADD of w, both of the norm: the norm has two users, and
    `use_count` says how many it has.  The norm's memory holds 1000s before the graph runs."""
    g = GraphBuilder(rpc.profile, rpc.alloc_buffer(4096))
    x = g.input(np.linspace(-2, 2, 32, dtype=np.float32).reshape(2, 16), name="x")
    w = g.input(np.linspace(0.5, 1.5, 16, dtype=np.float32), name="w")
    normed = g.rms_norm(x, 1e-5, name="normed")
    scaled, shifted = g.mul(normed, w, name="scaled"), g.add(normed, w, name="shifted")
    normed.use_count = use_count
    g.upload(rpc)
    rpc.set_tensor(normed, np.full(32, 1000.0, np.float32))
    rpc.graph_compute(g.graph([normed, scaled, shifted]))
    return [g.read(rpc, t).reshape(2, 16) for t in (normed, scaled, shifted)]


def test_the_real_7_server_fuses_rms_norm_by_use_count(upstream_server, reference_server):
    """SPEC §4.1, §8.4 exec.use-count: the real 7.0.0 server takes use_count as the truth: with
    1 for a norm that has two users, its CPU backend fuses RMS_NORM into the MUL and never
    writes the norm, whose other user then reads the stale 1000s; with the true count (2) the
    results are right.  The reference server's are right with either."""
    profile = profile_for(require_peer(NEW).protocol)
    with RPCClient(upstream_server(NEW).endpoint, proto=profile) as rpc:
        right = _norm_graph(rpc, 2)
        fused = _norm_graph(rpc, 1)
    assert np.allclose(fused[1], right[1], rtol=1e-5)  # the fused MUL is right
    assert np.all(fused[0] == 1000.0) and np.allclose(fused[2], 1000.0 + np.linspace(0.5, 1.5, 16), rtol=1e-6)
    assert not np.allclose(right[0], 1000.0)
    with RPCClient(reference_server(profile.name).endpoint, proto=profile) as rpc:
        for got, want in zip(_norm_graph(rpc, 1), right, strict=True):
            assert np.allclose(got, want, rtol=1e-5)


# -- §7.6 MEMSET_TENSOR on a zero-size buffer ------------------------------------------------------------


def test_the_real_7_server_closes_on_memset_in_a_zero_size_buffer(upstream_server):
    """SPEC §7.6: a zero-size buffer is ggml's dummy buffer without a memset, so the real 7.0.0
    server closes on MEMSET_TENSOR of its (empty) tensor, even for 0 bytes; a buffer of one
    byte is served."""
    profile = profile_for(require_peer(NEW).protocol)
    server = upstream_server(NEW)
    for size, served in ((1, True), (0, False)):
        with socket.create_connection(server.address, timeout=30) as sock:
            wire = Wire(sock, profile)
            wire.call(Command.HELLO, {"conn_caps": bytes(24)})
            alloc = wire.call(Command.ALLOC_BUFFER, {"device": 0, "size": size}).body
            base = wire.call(Command.BUFFER_GET_BASE, {"remote_ptr": alloc.remote_ptr}).body.base_ptr
            empty = make_tensor(profile.tensor, id=0x1000, type=0, buffer=alloc.remote_ptr, ne=[0, 1, 1, 1],
                                nb=[4, 0, 0, 0], data=base, name="empty")
            wire.call(Command.MEMSET_TENSOR, {"tensor": empty, "offset": 0, "size": 0, "value": 7})
            sock.sendall(bytes([Command.GET_ALIGNMENT]) + (4).to_bytes(8, "little") + bytes(4))
            answer = b""
            while len(answer) < 16 and (piece := sock.recv(16 - len(answer))):  # TCP may split the reply
                answer += piece
            assert (len(answer) == 16) is served, (size, answer)
