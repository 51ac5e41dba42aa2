"""The schemas against the REAL upstream peers: bytes produced by a real 3.6.1 and 7.0.0
server and client parse to the values we expect."""

from __future__ import annotations

import socket
from collections import Counter

import numpy as np
import pytest

from client_steps import X, Y, labelled, session_steps
from conftest import CI_RELEASES, require_peer
from ggml_rpc_spec.protocol import Command, decode_name, make_tensor, profile_for
from ggml_rpc_spec.protocol.graph import decode_graph, encode_graph
from ggml_rpc_spec.protocol.exchanges import decode_connection
from ggml_rpc_spec.relay.proxy import RecordingProxy
from ggml_rpc_spec.upstream_peers.client import run_client
from ggml_rpc_spec.upstream_peers.llama_run import run_llama
from wire import Wire

pytestmark = pytest.mark.upstream


@pytest.mark.parametrize("release", CI_RELEASES)
def test_real_server_replies_parse(release, upstream_server):
    server = upstream_server(release)
    profile = profile_for(require_peer(release).protocol)
    with socket.create_connection(server.address, timeout=30) as sock:
        wire = Wire(sock, profile)
        hello = wire.call(Command.HELLO, {"conn_caps": bytes(24)} if profile.hello == "caps" else None)
        assert (hello.body.major, hello.body.minor, hello.body.patch) == profile.version
        if profile.hello == "caps":
            assert hello.body.conn_caps == bytes(24) and hello.body.padding == 0
        assert wire.call(Command.DEVICE_COUNT).body.device_count == 1
        assert wire.call(Command.GET_ALIGNMENT, {"device": 0}).body.alignment == 32
        assert wire.call(Command.GET_MAX_SIZE, {"device": 0}).body.max_size == 2**64 - 1
        memory = wire.call(Command.GET_DEVICE_MEMORY, {"device": 0}).body
        assert 0 < memory.free_mem <= memory.total_mem
        alloc = wire.call(Command.ALLOC_BUFFER, {"device": 0, "size": 4096}).body
        assert alloc.remote_ptr != 0 and alloc.remote_size == 4096
        base = wire.call(Command.BUFFER_GET_BASE, {"remote_ptr": alloc.remote_ptr}).body.base_ptr
        assert base != 0 and base % 32 == 0

        def f32(name: str, offset: int, n: int = 16):
            return make_tensor(profile.tensor, id=0x1000 + offset, type=0, buffer=alloc.remote_ptr, ne=[n, 1, 1, 1],
                               nb=[4, 4 * n, 4 * n, 4 * n], data=base + offset, name=name)

        payload = np.arange(16, dtype=np.float32).tobytes()
        set_body = {"tensor": f32("a", 0), "offset": 0}
        if profile.set_tensor == "cache_flag":
            set_body["cache_flag"] = 0
        assert wire.call(Command.SET_TENSOR, set_body, data=payload) is None
        got = wire.call(Command.GET_TENSOR, {"tensor": f32("a", 0), "offset": 0, "size": 64})
        assert bytes(got.data) == payload
        part = wire.call(Command.GET_TENSOR, {"tensor": f32("a", 0), "offset": 8, "size": 8})
        assert bytes(part.data) == payload[8:16]
        srcs = [make_tensor(profile.tensor) for _ in range(10)]
        size = wire.call(Command.GET_ALLOC_SIZE, {"device": 0, "tensor": f32("a", 0), "srcs": srcs}).body
        assert size.alloc_size == 64
        assert wire.call(Command.COPY_TENSOR, {"src": f32("a", 0), "dst": f32("b", 128)}).body.result == 1
        assert bytes(wire.call(Command.GET_TENSOR, {"tensor": f32("b", 128), "offset": 0, "size": 64}).data) == payload
        hashed = wire.call(Command.SET_TENSOR_HASH, {"tensor": f32("a", 0), "offset": 0, "hash": 0x1234})
        assert hashed.body.result == 0  # no cache directory: never a hit
        ack = wire.call(Command.INIT_TENSOR, {"tensor": f32("a", 0)})
        clear = wire.call(Command.BUFFER_CLEAR, {"remote_ptr": alloc.remote_ptr, "value": 7})
        if Command.MEMSET_TENSOR in profile.commands:
            wire.call(Command.MEMSET_TENSOR, {"tensor": f32("a", 0), "offset": 4, "size": 4, "value": 9})
        got = wire.call(Command.GET_TENSOR, {"tensor": f32("a", 0), "offset": 0, "size": 12})
        expected = bytes([7] * 4 + [9] * 4 + [7] * 4) if Command.MEMSET_TENSOR in profile.commands else bytes([7] * 12)
        assert bytes(got.data) == expected
        free = wire.call(Command.FREE_BUFFER, {"remote_ptr": alloc.remote_ptr})
        if profile.acks == "empty":
            assert ack.body == {} and clear.body == {} and free.body == {}
        else:
            assert ack is None and clear is None and free is None
        # the reply stream is still aligned: a one-way command left nothing behind
        assert wire.call(Command.GET_ALIGNMENT, {"device": 0}).body.alignment == 32


@pytest.mark.parametrize("release", CI_RELEASES)
def test_real_client_requests_parse(release, upstream_server):
    peer = require_peer(release)
    profile = profile_for(peer.protocol)
    server = upstream_server(release)
    steps = session_steps(profile)
    with RecordingProxy(server.address) as proxy:
        results = labelled(steps, run_client(peer, proxy.endpoint, steps))
    for connection in proxy.connections:
        assert connection.closed.wait(10)
    decoded = [decode_connection(c.stream("c2s"), c.stream("s2c")) for c in proxy.connections]
    for session in decoded:
        assert session.error is None and session.profile == profile
    main = max(decoded, key=lambda s: len(s.exchanges))
    [alloc] = [e for e in main.exchanges if e.request.command is Command.ALLOC_BUFFER]
    handle = alloc.reply.body.remote_ptr
    base = results["alloc"]["base"]
    assert alloc.request.body.size == 16384 and alloc.reply.body.remote_size == 16384

    sets = main.requests(Command.SET_TENSOR)
    assert [bytes(r.data) for r in sets] == [bytes.fromhex(s["hex"]) for s in steps if s["op"] == "set"]
    x = sets[0].body.tensor
    assert (x.type, x.buffer, x.data, list(x.ne), list(x.nb), decode_name(x.name)) == (
        0, handle, base, [8, 4, 1, 1], [4, 32, 128, 128], "x")
    assert [r.body.offset for r in sets] == [0, 32, 0, 0]
    if profile.set_tensor == "cache_flag":
        assert {r.body.cache_flag for r in sets} == {0}
    q = sets[3].body.tensor
    assert (q.type, list(q.ne), list(q.nb)) == (2, [96, 2, 1, 1], [18, 54, 108, 108])

    [graph_request] = main.requests(Command.GRAPH_COMPUTE)
    graph = graph_request.graph
    assert graph_request.body.device == 0 and graph.n_nodes == 1 and graph.n_tensors == 3
    node = graph.tensors[graph.tensors["id"] == graph.nodes[0]][0]
    assert profile.ggml.op_name(int(node["op"])) == "ADD" and int(node["data"]) == base + 512
    assert set(node["src"][:2].tolist()) == {int(t) for t in graph.tensors["id"][:2]}
    if profile.tensor == "use_count":
        assert int(graph.tensors["use_count"][graph.tensors["id"] == graph.nodes[0]][0]) == 0
    assert results["get sum"] == (X + Y).tobytes().hex()

    [view_get] = [r for r in main.requests(Command.GET_TENSOR) if decode_name(r.body.tensor.name) == "row1"]
    assert view_get.body.tensor.data == base + 32 and list(view_get.body.tensor.nb)[:2] == [4, 32]
    [copy] = [e for e in main.exchanges if e.request.command is Command.COPY_TENSOR]
    assert copy.request.body.dst.data == base + 256 and copy.reply.body.result == 1
    assert main.requests(Command.BUFFER_CLEAR)[-1].body == {"remote_ptr": handle, "value": 7}
    assert main.requests(Command.FREE_BUFFER)[0].body.remote_ptr == handle
    alloc_sizes = [e for s in decoded for e in s.exchanges if e.request.command is Command.GET_ALLOC_SIZE]
    assert alloc_sizes[0].reply.body.alloc_size == results["alloc_size q"] == 108


@pytest.mark.parametrize("release", CI_RELEASES)
def test_real_llama_session_decodes(release, upstream_server, tiny_models):
    """A real llama.cpp model offloaded to the real server: every byte of every connection
    decodes, and its graphs hold the ops and types llama models use."""
    peer = require_peer(release)
    profile = profile_for(peer.protocol)
    server = upstream_server(release)
    with RecordingProxy(server.address) as proxy:
        run_llama(peer, tiny_models["30"], rpc=proxy.endpoint, text="The quick brown fox", generate=2)
    for connection in proxy.connections:
        assert connection.closed.wait(10)
    sessions = [decode_connection(c.stream("c2s"), c.stream("s2c")) for c in proxy.connections]
    assert all(s.error is None for s in sessions), [str(s.error) for s in sessions if s.error]
    commands = Counter(e.request.command for s in sessions for e in s.exchanges)
    assert commands[Command.GRAPH_COMPUTE] >= 1 and commands[Command.GRAPH_RECOMPUTE] >= 1
    graphs = [r.graph for s in sessions for r in s.requests(Command.GRAPH_COMPUTE)]
    biggest = max(graphs, key=lambda g: g.n_tensors)
    assert biggest.n_tensors >= 1400
    ops = {profile.ggml.op_name(int(op)) for op in biggest.tensors["op"]}
    assert {"NONE", "ADD", "MUL", "RMS_NORM", "MUL_MAT", "GET_ROWS", "SET_ROWS", "SOFT_MAX", "ROPE", "GLU", "VIEW",
            "PERMUTE", "RESHAPE"} <= ops
    types = {profile.ggml.tensor_type(int(t)).name for t in biggest.tensors["type"]}
    assert {"F32", "F16", "Q8_0", "Q4_1", "I32"} <= types
    # the fast decoder reads the same payload straight from the frame, without copying
    raw = bytearray(b"".join(bytes(p) for p in encode_graph(profile, biggest)))
    again = decode_graph(profile, raw)
    assert again == biggest and np.shares_memory(again.tensors, np.frombuffer(raw, np.uint8))
