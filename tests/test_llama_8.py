"""The real 8.0.0 client (llama.cpp b11739) on the reference server speaking 8.0.0: models split
by layers on one server, and split tensor by tensor across two servers that sum their partial
results over a server-to-server link, with two reference servers and with a reference server
paired with a real 8.0.0 one, in both rank orders.

The bar is the same client's run against real 8.0.0 servers in the same split (a tensor
split rounds its all-reduces to BF16, so it differs from the client's own CPU), within the
end-to-end bounds of upstream_peers/logits.py.
"""

from __future__ import annotations

import contextlib

import pytest

from conftest import require_peer
from ggml_rpc_spec.protocol import profile_for
from ggml_rpc_spec.server.service import ReferenceServer
from ggml_rpc_spec.upstream_peers.llama_run import run_llama
from ggml_rpc_spec.upstream_peers.logits import TEXT, assert_within_bounds
from ggml_rpc_spec.upstream_peers.server import UpstreamServer, comm_safe_port

pytestmark = pytest.mark.upstream

PEER8 = "0.11739"
V80 = profile_for("8.0.0")


@contextlib.contextmanager
def server(kind: str, *, rank0: bool = False):
    """A running server of `kind` ("ours" or "real"); a rank 0 gets a port whose + 1000 is free
    (the upstream client puts the link there)."""
    port = comm_safe_port() if rank0 else 0
    if kind == "ours":
        ours = ReferenceServer(profile=V80, port=port, memory=1 << 30).start()
        try:
            yield ours
        finally:
            ours.shutdown()
    else:
        with UpstreamServer(require_peer(PEER8), port=port) as real:
            yield real


def run(model, endpoints: list[str], *, split_mode: str = "layer", n_batch: int = 512) -> dict:
    flash = 1 if split_mode == "tensor" else None  # llama.cpp needs flash attention for a tensor split
    return run_llama(require_peer(PEER8), model, rpc=",".join(endpoints), split_mode=split_mode,
                     flash_attn_type=flash, text=TEXT, n_batch=n_batch, generate=8)


@pytest.fixture(scope="module")
def on_real(tiny_models):
    """The client's run on real 8.0.0 servers, per (model, split, batch): the bar."""
    cache = {}

    def get(model: str, split_mode: str = "layer", n_batch: int = 512) -> dict:
        key = (model, split_mode, n_batch)
        if key not in cache:
            with contextlib.ExitStack() as stack:
                servers = [stack.enter_context(server("real", rank0=split_mode == "tensor"))]
                if split_mode == "tensor":
                    servers.append(stack.enter_context(server("real")))
                cache[key] = run(tiny_models[model], [s.endpoint for s in servers], split_mode=split_mode,
                                 n_batch=n_batch)
        return cache[key]

    return get


@pytest.mark.parametrize("model", ["2", "moe", "mamba"])
@pytest.mark.parametrize("n_batch", [512, 1], ids=["batched-prompt", "one-token-decode"])
def test_layer_split_on_the_reference_server(model, n_batch, tiny_models, on_real):
    with server("ours") as ours:
        remote = run(tiny_models[model], [ours.endpoint], n_batch=n_batch)
    result = assert_within_bounds(on_real(model, n_batch=n_batch), remote, "ggml")
    assert result["confident"] >= result["positions"] // 3, result  # the comparison has teeth


PAIRS = [("ours", "ours"), ("ours", "real"), ("real", "ours")]


@pytest.mark.parametrize("rank0,rank1", PAIRS, ids=[f"{a}-rank0-{b}-rank1" for a, b in PAIRS])
def test_tensor_split_over_a_server_to_server_link(rank0, rank1, tiny_models, on_real):
    """Both ranks link (COMM_INIT answers ok=1 on each) and every all-reduce of the graph
    travels between them; the logits are those of two real servers in the same split."""
    with server(rank0, rank0=True) as first, server(rank1) as second:
        remote = run(tiny_models["2"], [first.endpoint, second.endpoint], split_mode="tensor")
        logs = [s.log() for s in (first, second) if isinstance(s, UpstreamServer)]
    assert all("joined pairwise comm" in log for log in logs), logs
    result = assert_within_bounds(on_real("2", "tensor"), remote, "ggml")
    assert result["confident"] >= result["positions"] // 3, result
