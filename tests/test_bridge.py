"""The version bridge: table-driven translation between two protocol versions (sans-IO),
and the real llama.cpp clients of 3.6.1 and 7.0.0 running a model through it on the real
server of the other version."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import golden as G
from conftest import V36, V70, require_peer
from ggml_rpc_spec.protocol import Command, Graph, RequestParser, make_tensor, profile_for
from ggml_rpc_spec.protocol.translation import BridgeConnection, Translation, Untranslatable
from ggml_rpc_spec.protocol.framing import NEED_DATA, ReplyParser
from ggml_rpc_spec.protocol.graph import tensors_from_containers
from ggml_rpc_spec.protocol.tensor import RPC_TENSOR_DTYPE
from ggml_rpc_spec.protocol.trace import decode_trace
from ggml_rpc_spec.client.graphs import params
from ggml_rpc_spec.upstream_peers.llama_run import run_llama

V20 = profile_for("2.0.0")
TEXT = "The quick brown fox jumps over the lazy dog. In the end, the dog and the fox are friends."


def graph_of(profile, *tensors, nodes):
    return Graph(np.array(nodes, dtype="<u8"), tensors_from_containers(profile, tensors))


def test_op_and_sub_op_numbers_follow_their_names():
    # 3.6.1 numbers FLASH_ATTN_EXT 73, UNARY 86 (GELU = 8), GLU 95; 7.0.0: 74, 91, 100 (SPEC §4.5)
    unary = make_tensor("padding", id=2, op=86, op_params=[8] + [0] * 15, src=[1] + [0] * 9, flags=16, name="gelu")
    leaf = make_tensor("padding", id=1, name="x")
    out = Translation(V36, V70).graph(graph_of(V36, leaf, unary, nodes=[2]))
    assert out.tensors.dtype == RPC_TENSOR_DTYPE["use_count"]
    assert out.tensors["op"].tolist() == [0, 91]
    assert V70.ggml.unary_ops[out.tensors["op_params"][1, 0]] == "GELU"
    assert out.tensors["use_count"].tolist() == [1, 0]  # x is read by one node
    back = Translation(V70, V36).graph(out)
    assert back.tensors["op"].tolist() == [0, 86] and back.tensors["op_params"][1, 0] == 8


def test_an_op_without_a_counterpart_is_refused_by_name():
    node = make_tensor("use_count", id=1, op=V70.ggml.op_value("LIGHTNING_INDEXER"), flags=16, name="idx")
    with pytest.raises(Untranslatable, match="op LIGHTNING_INDEXER .* does not exist in ggml 3.6.1"):
        Translation(V70, V36).graph(graph_of(V70, node, nodes=[1]))
    with pytest.raises(Untranslatable, match="GLU op SWIGLU_CLAMP"):
        glu = make_tensor("use_count", id=1, op=V70.ggml.op_value("GLU"),
                          op_params=params("GLU", "SWIGLU_CLAMP", op=V70.ggml.glu_ops.index("SWIGLU_CLAMP")))
        Translation(V70, V36).graph(graph_of(V70, glu, nodes=[1]))


def test_the_compute_flag_exists_on_one_side_only():
    """3.6.1 computes only nodes marked COMPUTE (16); 2.0.0 computes every node it is sent."""
    add = V36.ggml.op_value("ADD")
    marked = make_tensor("padding", id=1, op=add, flags=16, name="marked")
    skipped = make_tensor("padding", id=2, op=add, flags=0, name="skipped")
    down = Translation(V36, V20).graph(graph_of(V36, marked, skipped, nodes=[1, 2]))
    assert down.nodes.tolist() == [1] and down.tensors["flags"].tolist() == [0, 0]
    up = Translation(V20, V36).graph(graph_of(V20, make_tensor("padding", id=1, op=V20.ggml.op_value("ADD")),
                                              nodes=[1]))
    assert up.tensors["flags"].tolist() == [16]


def test_a_word_only_the_newer_ggml_reads_asks_for_the_older_behaviour():
    """SSM_SCAN's snapshot count K (read from 5.0.0 on): a 3.6.1 client leaves it 0, which a
    7.0.0 server aborts on, so the bridge sends 1 (one state, what 3.6.1 computes); towards
    3.6.1, which keeps one state whatever K says, only K = 1 means the same."""
    def scan(profile, k):
        op = profile.ggml.op_value("SSM_SCAN")
        return make_tensor(profile.tensor, id=1, op=op, op_params=[k] + [0] * 15, flags=16, name="scan")

    up = Translation(V36, V70).graph(graph_of(V36, scan(V36, 0), nodes=[1]))
    assert up.tensors["op_params"][0, 0] == 1
    assert Translation(V36, V70).tensor(scan(V36, 0)).op_params[0] == 1
    assert Translation(V70, V36).graph(graph_of(V70, scan(V70, 1), nodes=[1])).tensors["op_params"][0, 0] == 1
    with pytest.raises(Untranslatable, match=r"SSM_SCAN of tensor 'scan' asks for op_params\[0\] = 3"):
        Translation(V70, V36).graph(graph_of(V70, scan(V70, 3), nodes=[1]))
    same = Translation(V70, V70).graph(graph_of(V70, scan(V70, 3), nodes=[1]))  # both read it: untouched
    assert same.tensors["op_params"][0, 0] == 3


def test_a_tensor_without_a_buffer_is_sent_without_an_address():
    """2.0.0 clients send a host tensor's own address with buffer 0; every later server
    rejects that (graph.null-buffer-data), and no server can use it."""
    host = make_tensor("padding", id=1, buffer=0, data=0x5594574A48C0, name="leaf_1")
    remote = make_tensor("padding", id=2, buffer=0x10, data=0x7F00, op=V20.ggml.op_value("ADD"), src=[1, 1] + [0] * 8)
    out = Translation(V20, V36).graph(graph_of(V20, host, remote, nodes=[2]))
    assert out.tensors["data"].tolist() == [0, 0x7F00] and out.tensors["buffer"].tolist() == [0, 0x10]
    assert Translation(V20, V36).tensor(host).data == 0


def feed(connection: BridgeConnection, profile, raw: bytes, *, hello_done: bool = False):
    parser = RequestParser(profile, hello_done=hello_done)
    parser.receive_data(raw)
    sent = []
    while (event := parser.next_event()) is not NEED_DATA:
        sent += connection.request(event)
    return sent


def test_replies_only_one_side_has_are_made_or_dropped_in_order():
    # a 3.6.1 client's FREE_BUFFER expects an empty ack; a 7.0.0 server sends none: answered here
    bridge = BridgeConnection(Translation(V36, V70))
    sent = feed(bridge, V36, G.request(14, b"") + G.request(Command.FREE_BUFFER, struct.pack("<Q", 0x10)))
    assert [m.reply for m in sent] == [None]
    assert b"".join(bytes(p) for p in bridge.to_client()) == G.reply(bytes([3, 6, 1])) + G.reply(b"")
    # a 7.0.0 client's FREE_BUFFER expects nothing; a 3.6.1 server acks: the ack is read and dropped,
    # and a later reply is relayed behind it
    bridge = BridgeConnection(Translation(V70, V36))
    sent = feed(bridge, V70, G.request(14, bytes(24)) + G.request(Command.FREE_BUFFER, struct.pack("<Q", 0x10))
                + G.request(Command.GET_ALIGNMENT, struct.pack("<I", 0)))
    assert [(m.reply, m.relay) for m in sent] == [(Command.FREE_BUFFER, False), (Command.GET_ALIGNMENT, True)]
    replies = ReplyParser(V36)
    replies.expect(Command.FREE_BUFFER)
    replies.expect(Command.GET_ALIGNMENT)
    replies.receive_data(G.reply(b"") + G.reply(struct.pack("<Q", 32)))
    for _ in range(2):
        bridge.server_reply(replies.next_event())
    hello = bytes([7, 0, 0, 0]) + bytes(24)
    assert b"".join(bytes(p) for p in bridge.to_client()) == G.reply(hello) + G.reply(struct.pack("<Q", 32))


def test_commands_the_server_lacks_are_emulated():
    bridge = BridgeConnection(Translation(V70, V36))
    tensor = G.tensor(id=1, type=24, buffer=0x10, ne=(8, 1, 1, 1), nb=(1, 8, 8, 8), data=0x1000)  # I8 [8]
    raw = G.request(14, bytes(24)) + G.request(Command.MEMSET_TENSOR, tensor + struct.pack("<QQB", 2, 4, 0xAB))
    sent = feed(bridge, V70, raw)
    parser = RequestParser(V36, hello_done=True)
    parser.receive_data(b"".join(bytes(p) for p in sent[0].parts))
    emulated = parser.next_event()
    assert emulated.command is Command.SET_TENSOR and bytes(emulated.data) == b"\xab" * 4
    assert emulated.body.offset == 2 and emulated.body.tensor.type == 24


V80 = profile_for("8.0.0")
I8 = G.tensor(id=1, type=24, buffer=0x10, ne=(64, 1, 1, 1), nb=(1, 64, 64, 64), data=0x1000, tail=G.use_count(0))


def parsed(profile, parts_list):
    """The requests the bridge sent, parsed in the server's profile."""
    parser = RequestParser(profile, hello_done=True)
    parser.receive_data(b"".join(bytes(p) for m in parts_list for p in m.parts))
    found = []
    while (event := parser.next_event()) is not NEED_DATA:
        found.append(event)
    return found


def graph_request(profile, uid=None):
    node = G.tensor(id=2, type=0, buffer=0x10, ne=(4, 1, 1, 1), nb=(4, 16, 16, 16), data=0x1000,
                    op=profile.ggml.op_value("ADD"), src=(1, 1) + (0,) * 8, flags=16, tail=G.use_count(0))
    leaf = G.tensor(id=1, type=0, buffer=0x10, ne=(4, 1, 1, 1), nb=(4, 16, 16, 16), data=0x1000, tail=G.use_count(2))
    return G.request(Command.GRAPH_COMPUTE, G.graph_payload(0, [2], [leaf, node], uid))


def test_graph_uids_of_an_8_0_0_client_towards_a_server_that_keeps_the_last_graph():
    """Recomputing the graph the server holds is a GRAPH_RECOMPUTE; another cached uid is
    sent again; a uid never computed has no counterpart."""
    bridge = BridgeConnection(Translation(V80, V70))
    hello = G.request(14, bytes(24))
    sent = feed(bridge, V80, hello + graph_request(V80, uid=5) + graph_request(V80, uid=6)
                + G.request(Command.GRAPH_RECOMPUTE, struct.pack("<IQ", 0, 6))
                + G.request(Command.GRAPH_RECOMPUTE, struct.pack("<IQ", 0, 5)))
    assert [r.command for r in parsed(V70, sent)] == [Command.GRAPH_COMPUTE, Command.GRAPH_COMPUTE,
                                                      Command.GRAPH_RECOMPUTE, Command.GRAPH_COMPUTE]
    with pytest.raises(Untranslatable, match="uid 9"):
        feed(bridge, V80, G.request(Command.GRAPH_RECOMPUTE, struct.pack("<IQ", 0, 9)), hello_done=True)


def test_graphs_of_an_older_client_get_uids_towards_an_8_0_0_server():
    bridge = BridgeConnection(Translation(V70, V80))
    sent = feed(bridge, V70, G.request(14, bytes(24)) + graph_request(V70) + G.request(
        Command.GRAPH_RECOMPUTE, struct.pack("<I", 0)) + graph_request(V70) + G.request(
        Command.GRAPH_RECOMPUTE, struct.pack("<I", 0)))
    requests = parsed(V80, sent)
    uids = [r.body.uid for r in requests]
    assert [r.command for r in requests] == [Command.GRAPH_COMPUTE, Command.GRAPH_RECOMPUTE] * 2
    assert uids[0] == uids[1] != 0 and uids[2] == uids[3] not in (0, uids[0])


def test_2d_transfers_towards_a_server_without_them_are_one_plain_transfer_per_copy():
    bridge = BridgeConnection(Translation(V80, V70))
    copies = bytes(range(12))
    sent = feed(bridge, V80, G.request(14, bytes(24)) + G.request(
        Command.SET_TENSOR_2D, I8 + struct.pack("<QQQQ", 2, 4, 3, 20) + copies) + G.request(
        Command.GET_TENSOR_2D, I8 + struct.pack("<QQQQ", 1, 5, 2, 30)))
    requests = parsed(V70, sent)
    assert [(r.command, r.body.offset) for r in requests] == [
        (Command.SET_TENSOR, 2), (Command.SET_TENSOR, 22), (Command.SET_TENSOR, 42),
        (Command.GET_TENSOR, 1), (Command.GET_TENSOR, 31)]
    assert [bytes(r.data) for r in requests[:3]] == [copies[0:4], copies[4:8], copies[8:12]]
    assert [r.body.size for r in requests[3:]] == [5, 5]
    replies = ReplyParser(V70)
    for message in sent[3:]:
        replies.expect(message.reply, size=message.size)
    replies.receive_data(G.reply(b"abcde") + G.reply(b"fghij"))
    for _ in range(2):
        bridge.server_reply(replies.next_event())
    assert b"".join(bytes(p) for p in bridge.to_client()) == G.reply(bytes([8, 0, 0, 0]) + bytes(24)) + G.reply(
        b"abcdefghij")


def test_a_link_towards_a_server_without_links_is_declined_and_rank_0_released():
    """ok=0 makes the upstream client reduce through itself; a rank 1 declining asks the
    shell to release the rank 0 that waits for it."""
    host = b"10.1.2.3".ljust(64, b"\0")
    for rank, released in ((0, []), (1, [("10.1.2.3", 22500)])):
        bridge = BridgeConnection(Translation(V80, V70))
        sent = feed(bridge, V80, G.request(14, bytes(24)) + G.request(
            Command.COMM_INIT, struct.pack("<IIII", 0, rank, 2, 22500) + (host if rank else bytes(64))))
        assert sent == [] and bridge.releases == released
        assert b"".join(bytes(p) for p in bridge.to_client())[-9:] == G.reply(b"\x00")
    with pytest.raises(Untranslatable, match="COMM_ALLREDUCE"):
        feed(bridge, V80, G.request(Command.COMM_ALLREDUCE, struct.pack("<I", 0) + I8), hello_done=True)


def test_a_replaced_server_is_learned_again_and_its_trace_holds_one_hello(reference_server):
    """The bridge learns the server's version once; when the server behind it changed (here:
    a 7.0.0 server where a 3.6.1 one was), the refused HELLO is dropped from the server-side
    recording and the version is learned again."""
    from ggml_rpc_spec.relay.relay import Relay
    from ggml_rpc_spec.relay.recording import RecordedConnection
    from ggml_rpc_spec.client.rpc import parse_endpoint
    from ggml_rpc_spec.relay.recording import decode_record

    server = reference_server("7.0.0")
    bridge = Relay(parse_endpoint(server.endpoint), client_profiles=(V36, V70))
    bridge._server = (V36, V36.version)  # what it learned from the server that was there before
    tap = RecordedConnection(0, "#1")
    upstream = bridge._connect_upstream(tap)
    try:
        assert upstream.profile is V70 and bridge._server == (V70, V70.version)
    finally:
        upstream.close()
    session = decode_record(tap, V70)
    assert session.error is None and [e.request.command for e in session.exchanges] == [Command.HELLO]


PAIRS = [("0.3.20", "0.3.36"), ("0.3.36", "0.3.20"), ("0.11739", "0.3.36"), ("0.3.36", "0.11739")]  # (client, server)


@pytest.mark.upstream
@pytest.mark.parametrize("model", ["2", "mamba"])
@pytest.mark.parametrize("client,server", PAIRS, ids=[f"{c}-client-to-{s}-server" for c, s in PAIRS])
def test_real_clients_use_a_real_server_of_another_version(client, server, model, tiny_models, upstream_server,
                                                           tmp_path):
    """A tiny llama and a tiny Mamba (whose SSM_SCAN gained an op_params word in 5.0.0)
    through the bridge give the logits llama.cpp computes on its own CPU (the server computes
    with the same ggml), and both sides are recorded, each in its own version."""
    from ggml_rpc_spec.relay.relay import Relay
    from ggml_rpc_spec.client.rpc import parse_endpoint

    client_peer, server_peer = require_peer(client), require_peer(server)
    target = upstream_server(server)
    client_profile = profile_for(client_peer.protocol)  # a caps HELLO says nothing of 7.0.0 or 8.0.0: the bridge is told
    bridge = Relay(parse_endpoint(target.endpoint), client_profiles=(V36, client_profile) if client_profile != V36
                   else (V36, V70), record=tmp_path).start()
    try:
        remote = run_llama(client_peer, tiny_models[model], rpc=bridge.endpoint, text=TEXT, generate=8)
    finally:
        bridge.shutdown()
    local = run_llama(client_peer, tiny_models[model], text=TEXT, generate=8)
    assert np.array_equal(remote["generated"], local["generated"])
    assert np.abs(remote["logits"] - local["logits"]).max() <= 1e-3 * np.abs(local["logits"]).max()
    versions = {}
    for path in tmp_path.glob("*.ggmlrpc"):
        versions.setdefault(path.stem.rsplit("-", 1)[-1], set()).add(decode_trace(path.read_bytes()).header["protocol"])
    assert versions == {"client": {client_peer.protocol}, "server": {server_peer.protocol}}
