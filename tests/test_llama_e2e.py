"""A real llama.cpp client runs a (tiny) real model fully offloaded to our server: a llama,
a mixture of experts and a recurrent (Mamba) model.

Teacher-forced: the same text goes through llama.cpp on its own CPU and through our server,
and the logits of every position are compared (upstream_peers/logits.py states the bar).
"""

from __future__ import annotations

import pytest

from conftest import CI_RELEASES, require_peer
from ggml_rpc_spec.protocol import profile_for
from ggml_rpc_spec.upstream_peers.llama_run import run_llama
from ggml_rpc_spec.upstream_peers.logits import NUMERICS_TEXT, TEXT, TOLERANCE, assert_within_bounds, compare

pytestmark = pytest.mark.upstream


@pytest.fixture(scope="module")
def local_runs(tiny_models):
    """The local-CPU reference per model, client release and batch size (computed once)."""
    cache = {}

    def get(model: str, release: str, n_batch: int) -> dict:
        key = (model, release, n_batch)
        if key not in cache:
            cache[key] = run_llama(require_peer(release), tiny_models[model], text=TEXT, n_batch=n_batch, generate=8)
        return cache[key]

    return get


# (model, numerics).  The mixture of experts runs with ggml's activation rounding: its router
# picks the top 2 of 4 experts, and where two are nearly tied plain float32 math picks the
# other one (as another backend may), which moves that position's logits by whole units.
RUNS = [("2", "float"), ("2", "ggml"), ("moe", "ggml"), ("mamba", "float")]


@pytest.mark.parametrize("model,numerics", RUNS, ids=[f"{m}-{n}" for m, n in RUNS])
@pytest.mark.parametrize("n_batch", [512, 1], ids=["batched-prompt", "one-token-decode"])
@pytest.mark.parametrize("release", CI_RELEASES)
def test_real_llama_client_on_our_server(release, n_batch, model, numerics, reference_server, tiny_models,
                                         local_runs):
    peer = require_peer(release)
    server = reference_server(profile_for(peer.protocol).name, memory=1 << 30, numerics=numerics)
    remote = run_llama(peer, tiny_models[model], rpc=server.endpoint, text=TEXT, n_batch=n_batch, generate=8)
    result = assert_within_bounds(local_runs(model, release, n_batch), remote, numerics)
    assert result["confident"] >= result["positions"] // 3, result  # the comparison has teeth
    assert len(remote["generated"]) == 8


def test_one_server_serves_old_and_new_clients_at_once(reference_server, tiny_models, local_runs):
    """`--proto 3.6.1,7.0.0`: a bare HELLO is answered as 3.6.1 and a caps HELLO as 7.0.0 on
    the same port, so llama.cpp builds of both families share one server, concurrently."""
    from concurrent.futures import ThreadPoolExecutor

    releases = ("0.3.20", "0.3.36")  # one of each HELLO family (8.0.0's has 7.0.0's shape: a port of its own)
    peers = [require_peer(release) for release in releases]
    server = reference_server((profile_for("3.6.1"), profile_for("7.0.0")), memory=1 << 30)
    with ThreadPoolExecutor(len(peers)) as pool:
        runs = list(pool.map(lambda peer: run_llama(peer, tiny_models["2"], rpc=server.endpoint, text=TEXT,
                                                    n_batch=512, generate=8), peers))
    for release, remote in zip(releases, runs, strict=True):
        assert_within_bounds(local_runs("2", release, 512), remote, "float")


@pytest.mark.parametrize("release", CI_RELEASES)
def test_a_model_split_across_two_servers(release, reference_server, tiny_models, local_runs):
    """llama.cpp's --rpc with two endpoints splits the layers between them; a client then
    names one server's buffers to the other (3.6.1 everywhere, 7.0.0 in GET_ALLOC_SIZE
    sources), which a server must serve as upstream does (SPEC §4.1, rule tensor.foreign)."""
    from collections import Counter

    from ggml_rpc_spec.server.session import Session

    graphs = Counter()

    class Counting(Session):
        def graph_compute(self, request):
            graphs[id(self.state)] += 1
            return super().graph_compute(request)

    peer = require_peer(release)
    servers = [reference_server(profile_for(peer.protocol).name, memory=1 << 30) for _ in range(2)]
    for server in servers:
        server.session_class = Counting
    remote = run_llama(peer, tiny_models["2"], rpc=",".join(s.endpoint for s in servers), text=TEXT, n_batch=512,
                       generate=8)
    assert all(graphs[id(s.state)] > 0 for s in servers), "both servers computed part of the model"
    assert_within_bounds(local_runs("2", release, 512), remote, "float")


def test_the_default_numerics_are_the_closest(tmp_path):
    """SPEC §8.4: the server's default numerics are the mode closest to what the real 7.0.0
    client's own CPU computes, on the model where the modes differ most (a mixture of experts
    with Q8_0 weights, seed 7 as `python -m bench.numerics` measures it): within the bar of
    upstream_peers/logits.py there, and plain float32 is not."""
    from gguf.constants import GGMLQuantizationType as Q

    from ggml_rpc_spec.executor.numerics import DEFAULT_NUMERICS
    from ggml_rpc_spec.server.service import ReferenceServer
    from ggml_rpc_spec.upstream_peers.models import write_tiny_llama

    peer = require_peer("0.3.36")
    model = write_tiny_llama(tmp_path / "moe-q8_0.gguf", n_layer=2, n_expert=4, n_expert_used=2, seed=7,
                             weight_types=(Q.Q8_0,))
    local = run_llama(peer, model, text=NUMERICS_TEXT)
    results = {}
    for numerics in ("ggml", "float"):
        with ReferenceServer(profile=profile_for(peer.protocol), memory=1 << 30, numerics=numerics) as server:
            results[numerics] = compare(local, run_llama(peer, model, rpc=server.endpoint, text=NUMERICS_TEXT))
    assert DEFAULT_NUMERICS == "ggml"
    ggml, plain = results["ggml"], results["float"]
    assert ggml["confident_agree"] and ggml["max_error"] <= TOLERANCE["ggml"] * ggml["scale"], results
    assert plain["max_error"] > TOLERANCE["float"] * plain["scale"] and plain["agreement"] < ggml["agreement"], results
