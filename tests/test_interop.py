"""Interop with the REAL upstream peers, both ways.

CI runs protocol 3.6.1 and 7.0.0.  Every built peer of real-peers.md (2.0.0, 3.6.1, 4.0.x,
5.0.0, 7.0.0) is covered with:

    GGML_RPC_INTEROP=all pytest tests/test_interop.py

(build them first: ggml-rpc-peers build 0.3.16 0.3.20 0.3.25 0.3.35 0.3.36).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from client_steps import X, labelled, session_steps
from conftest import CI_RELEASES, require_peer
from ggml_rpc_spec.protocol import PROFILES, Command, profile_for
from ggml_rpc_spec.protocol.ggml import TYPES, nbytes
from ggml_rpc_spec.protocol.hashing import fnv1a64
from ggml_rpc_spec.protocol.tensor import contiguous_strides
from ggml_rpc_spec.client.rpc import RPCClient
from ggml_rpc_spec.upstream_peers.catalog import PEERS
from ggml_rpc_spec.upstream_peers.client import run_client
from ggml_rpc_spec.upstream_peers.server import UpstreamServer

pytestmark = pytest.mark.upstream

# every peer of a protocol version this project speaks (a peer may come before its profile)
RELEASES = ([p.release for p in PEERS if p.protocol in {profile.name for profile in PROFILES}]
            if os.environ.get("GGML_RPC_INTEROP") == "all" else list(CI_RELEASES))


def valid_types(profile):
    return [TYPES[v] for v in sorted(TYPES) if profile.ggml.tensor_type(v) is not None]


@pytest.mark.parametrize("release", RELEASES)
def test_our_client_against_the_real_server(release, upstream_server):
    server = upstream_server(release)
    profile = profile_for(require_peer(release).protocol)
    rng = np.random.default_rng(7)
    with RPCClient(server.endpoint) as rpc:
        assert rpc.profile == profile
        assert rpc.device_count() == 1 and rpc.alignment() == 32 and rpc.max_size() == 2**64 - 1
        free, total = rpc.device_memory()
        assert 0 < free <= total
        buf = rpc.alloc_buffer(1 << 20)
        assert buf.size == 1 << 20 and buf.base % 32 == 0
        zero = rpc.alloc_buffer(0)  # SPEC §6.1/§6.2, as our server answers it (test_reference_server)
        assert zero.handle != 0 and zero.size == 0 and zero.base == 0

        offset = 0
        for kind in valid_types(profile):  # every type: raw bytes round trip, sizes agree with ggml's
            ne = [kind.block_size * 2, 3, 1, 1]
            tensor = rpc.tensor_for(buf, offset, shape=ne, type=kind.name, name=kind.name)
            size = nbytes(kind, ne, contiguous_strides(kind.type_size, kind.block_size, ne))
            data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            rpc.set_tensor(tensor, data)
            assert bytes(rpc.get_tensor(tensor)) == data, kind.name
            assert rpc.get_alloc_size(tensor) == size, kind.name  # ggml_nbytes on the server
            offset += -(-size // 32) * 32

        values = np.arange(256, dtype=np.float32)
        a = rpc.tensor_for(buf, 65536, values, name="a")
        b = rpc.tensor_for(buf, 131072, values, name="b")
        rpc.set_tensor(a, values)
        rpc.set_tensor(a, np.full(4, -1, np.float32), offset=40)  # partial write at an offset
        expected = values.copy()
        expected[10:14] = -1
        assert np.array_equal(rpc.read_array(a), expected)
        assert bytes(rpc.get_tensor(a, 400, 12)) == expected.tobytes()[400:412]
        assert rpc.copy_tensor(a, b) and np.array_equal(rpc.read_array(b), expected)
        rpc.init_tensor(a)
        rpc.buffer_clear(buf, 0xA5)
        assert bytes(rpc.get_tensor(b, 0, 8)) == b"\xa5" * 8
        if Command.MEMSET_TENSOR in profile.commands:
            rpc.memset_tensor(b, 0x3C, 8, 8)
            assert bytes(rpc.get_tensor(b, 0, 24)) == b"\xa5" * 8 + b"\x3c" * 8 + b"\xa5" * 8
        assert rpc.set_tensor_hash(a, fnv1a64(b"nothing"), 0) is False
        rpc.free_buffer(buf)
        assert rpc.alloc_buffer(1 << 62) is None  # refused, connection alive
        assert rpc.alignment() == 32


@pytest.mark.parametrize("release", RELEASES)
def test_our_client_uses_the_real_servers_hash_cache(release, tmp_path):
    peer = require_peer(release)
    data = np.random.default_rng(3).integers(0, 256, (10 << 20) + 64, dtype=np.uint8)
    with UpstreamServer(peer, cache_dir=str(tmp_path)) as server:
        with RPCClient(server.endpoint) as rpc:
            buf = rpc.alloc_buffer(len(data))
            tensor = rpc.tensor_for(buf, 0, shape=(len(data),), type="I8")
            assert rpc.upload(tensor, data) is False  # miss, then sent in full
            rpc.sync()
        assert (tmp_path / f"{fnv1a64(data):016x}").read_bytes() == data.tobytes()
        with RPCClient(server.endpoint) as rpc:
            buf = rpc.alloc_buffer(len(data))
            tensor = rpc.tensor_for(buf, 0, shape=(len(data),), type="I8")
            assert rpc.upload(tensor, data) is True  # served from the real server's cache
            assert bytes(rpc.get_tensor(tensor)) == data.tobytes()


@pytest.mark.parametrize("release", RELEASES)
def test_real_client_against_our_server(release, reference_server, upstream_server):
    """The real upstream client (libggml-rpc) drives our server; every answer matches what
    the same steps get from the real server, except addresses and memory sizes."""
    peer = require_peer(release)
    profile = profile_for(peer.protocol)
    ours = reference_server(profile.name, memory=1 << 30)
    steps = session_steps(profile, graph=False)
    got = run_client(peer, ours.endpoint, steps)
    real = run_client(peer, upstream_server(release).endpoint, steps)
    for step, mine, theirs in zip(steps, got, real, strict=True):
        if step["op"] == "memory":
            assert mine == [1 << 30, 1 << 30] and 0 < theirs[0] <= theirs[1]
        elif step["op"] in ("alloc", "tensor"):
            assert mine.keys() == theirs.keys() and mine.get("size") == theirs.get("size")
            assert mine.get("nbytes") == theirs.get("nbytes")
        else:
            assert mine == theirs, step
    results = labelled(steps, got)
    assert results["get x"] == X.tobytes().hex() and results["get row1"] == X[8:16].tobytes().hex()
    assert results["get y after copy"] == X.tobytes().hex() and results["alloc_size q"] == 108
