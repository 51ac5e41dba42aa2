"""Shared fixtures: real upstream peers (built into the user cache) and tiny models."""

from __future__ import annotations

import os
import shutil

import pytest

from ggml_rpc_spec.protocol import profile_for
from ggml_rpc_spec.upstream_peers.models import write_tiny_llama, write_tiny_mamba
from ggml_rpc_spec.upstream_peers import find_built, peer_for
from ggml_rpc_spec.upstream_peers.server import UpstreamServer

REQUIRE_PEERS = os.environ.get("GGML_RPC_REQUIRE_PEERS") == "1"
CI_RELEASES = ("0.3.20", "0.3.36", "0.11739")  # protocol 3.6.1, 7.0.0 and 8.0.0
V36, V70 = profile_for("3.6.1"), profile_for("7.0.0")  # the design target and the newest version


def require_peer(release: str):
    """The peer, or skip (fail when GGML_RPC_REQUIRE_PEERS=1, as in CI) if it is not built."""
    peer = peer_for(release)
    if find_built(peer) is None:
        message = (f"upstream peer {release} (protocol {peer.protocol}) is not built; "
                   f"run: ggml-rpc-peers build {release}")
        if REQUIRE_PEERS:
            pytest.fail(message)
        pytest.skip(message)
    return peer


def require_tool(name: str) -> str:
    """The path of an installed program, or skip (fail when GGML_RPC_REQUIRE_PEERS=1)."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (Debian: apt-get install {name})"
        if REQUIRE_PEERS:
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def upstream_server():
    """upstream_server(release) -> a running real server (restarted if a test killed it)."""
    servers: dict[str, UpstreamServer] = {}

    def get(release: str, **options) -> UpstreamServer:
        key = release + repr(sorted(options.items()))
        peer = require_peer(release)
        if key not in servers:
            servers[key] = UpstreamServer(peer, **options).start()
        elif not servers[key].alive():
            servers[key].restart()
        return servers[key]

    yield get
    for server in servers.values():
        server.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Paths of tiny GGUFs: llama "2" (2 layers) and "30" (30 layers, graphs of ~1400 tensors),
    "moe" (llama with 4 experts, 2 used per token) and "mamba" (a recurrent state-space model)."""
    folder = tmp_path_factory.mktemp("models")
    return {"2": write_tiny_llama(folder / "tiny2.gguf", n_layer=2),
            "30": write_tiny_llama(folder / "tiny30.gguf", n_layer=30),
            "moe": write_tiny_llama(folder / "tiny-moe.gguf", n_layer=2, n_expert=4, n_expert_used=2),
            "mamba": write_tiny_mamba(folder / "tiny-mamba.gguf", n_layer=2)}


@pytest.fixture
def reference_server():
    """reference_server(proto="3.6", **options) -> a started in-process ReferenceServer on
    127.0.0.1 and a free port; every server started is shut down after the test."""
    from ggml_rpc_spec.server.service import ReferenceServer

    started = []

    def start(proto="7.0.0", **options) -> ReferenceServer:
        """`proto`: a version, or a tuple of profiles (one per HELLO shape)."""
        options.setdefault("memory", 256 << 20)
        profile = proto if isinstance(proto, tuple) else profile_for(proto)
        server = ReferenceServer(profile=profile, host="127.0.0.1", port=0, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
