"""The real 8.0.0 peer (llama-cpp-py-sync 0.11739, llama.cpp b11739) against itself: its
server's HELLO, its low-level client's session, and llama.cpp running a tiny model through
one server and split tensor by tensor across two.

Only upstream code talks here (the project's own client is not pointed at 8.0.0): these
runs pin down what the real 8.0.0 peers do with each other.
"""

from __future__ import annotations

import socket
import struct

import pytest

from client_steps import X, Y, labelled, session_steps
from conftest import require_peer
from ggml_rpc_spec.protocol import profile_for
from ggml_rpc_spec.upstream_peers.client import run_client
from ggml_rpc_spec.upstream_peers.llama_run import run_llama
from ggml_rpc_spec.upstream_peers.logits import TEXT, assert_within_bounds
from ggml_rpc_spec.upstream_peers.server import UpstreamServer, comm_safe_port

pytestmark = pytest.mark.upstream

PEER8 = "0.11739"
HELLO_REPLY = bytes.fromhex("1c00000000000000" "08000000") + bytes(24)


def hello(address: tuple[str, int]) -> bytes:
    """The reply to HELLO (command 14) with 24 zero bytes of conn_caps, as received."""
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(bytes([14]) + struct.pack("<Q", 24) + bytes(24))
        reply = b""
        while len(reply) < len(HELLO_REPLY) and (chunk := sock.recv(64)):
            reply += chunk
    return reply


def test_real_8_server_answers_hello(upstream_server):
    """Version 8.0.0, a zero pad byte and the server's 24 bytes of conn_caps (zero over TCP),
    28 bytes in all (no link port field)."""
    assert hello(upstream_server(PEER8).address) == HELLO_REPLY


def test_real_8_server_restarts_and_closes():
    """Started through trixie's loader, on a port the kernel picks and read from /proc."""
    server = UpstreamServer(require_peer(PEER8)).start()
    try:
        server.restart()
        assert server.alive() and hello(server.address) == HELLO_REPLY
        assert "Starting RPC server v8.0.0" in server.log()
    finally:
        server.close()
    assert not server.alive()


def test_real_8_client_session_on_real_8_server(upstream_server):
    """The low-level client (ggml's backend API over libggml-rpc, driven with ctypes) runs
    the scripted session; its C API is the one of 3.x to 7.0.0.  The steps are 7.0.0's (the
    client API has the same calls in 8.0.0)."""
    steps = session_steps(profile_for("7.0.0"))
    results = labelled(steps, run_client(require_peer(PEER8), upstream_server(PEER8).endpoint, steps))
    assert results["device_count"] == 1 and results["buffer_type"]["alignment"] == 32
    assert results["get x"] == X.tobytes().hex() and results["get row1"] == X[8:16].tobytes().hex()
    assert results["get sum"] == (X + Y).tobytes().hex() and results["alloc_size q"] == 108
    assert results["get y after copy"] == X.tobytes().hex()
    assert results["get y after clear"] == "07" * 8 and results["get y after memset"] == "07" * 4 + "01" * 4 + "07" * 4


@pytest.fixture(scope="module")
def local_8(tiny_models):
    """llama.cpp 8.0.0 on its own CPU, per flash attention setting (computed once)."""
    cache = {}

    def get(flash_attn_type: int | None) -> dict:
        if flash_attn_type not in cache:
            cache[flash_attn_type] = run_llama(require_peer(PEER8), tiny_models["2"], text=TEXT, n_batch=512,
                                               generate=8, flash_attn_type=flash_attn_type)
        return cache[flash_attn_type]

    return get


@pytest.mark.parametrize("n_batch", [512, 1], ids=["batched-prompt", "one-token-decode"])
def test_real_8_client_runs_a_model_on_real_8_server(n_batch, upstream_server, tiny_models, local_8):
    peer = require_peer(PEER8)
    remote = run_llama(peer, tiny_models["2"], rpc=upstream_server(PEER8).endpoint, text=TEXT, n_batch=n_batch,
                       generate=8)
    result = assert_within_bounds(local_8(None), remote, "ggml")
    assert result["confident"] >= result["positions"] // 3, result  # the comparison has teeth
    assert list(remote["generated"]) == list(local_8(None)["generated"])


def test_real_8_client_splits_a_model_by_tensors_across_two_real_8_servers(tiny_models, local_8):
    """split_mode "tensor": every layer's weights are split between the two servers (the tiny
    llama's 4 query and 2 key/value heads divide by two), which sum their partial results
    over a server-to-server link (COMM_INIT, COMM_ALLREDUCE).  Flash attention on, here and in
    the local run it is compared with (llama.cpp needs it for a tensor split)."""
    peer = require_peer(PEER8)
    with UpstreamServer(peer, port=comm_safe_port()) as rank0, UpstreamServer(peer) as rank1:
        remote = run_llama(peer, tiny_models["2"], rpc=f"{rank0.endpoint},{rank1.endpoint}", split_mode="tensor",
                           flash_attn_type=1, text=TEXT, n_batch=512, generate=8)
        logs = rank0.log(), rank1.log()
    assert "joined pairwise comm as rank 0" in logs[0] and "joined pairwise comm as rank 1" in logs[1], logs
    result = assert_within_bounds(local_8(1), remote, "ggml")
    assert result["confident"] >= result["positions"] // 3, result
    assert list(remote["generated"]) == list(local_8(1)["generated"])
