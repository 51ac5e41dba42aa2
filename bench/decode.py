"""python -m bench.decode: a real model's decode graph, new to the server, ours vs upstream.

    python -m bench.decode [--peer 0.3.36] [--model smollm2|tiny] [--repeat 20]

The real llama.cpp client of the peer runs a prompt and decodes a few tokens through the
recording proxy; its connection is recorded.  It sends the prompt's graph and the decode
graph once each (GRAPH_COMPUTE) and then, while the graph keeps its shape, only asks for it
again (GRAPH_RECOMPUTE).  The recorded session is replayed, relocated, against the
reference server and the real upstream server of the same version; then the two graphs are
sent in turn, so that each decode graph arrives right after another graph, and each decode
GRAPH_COMPUTE is timed up to the reply of a round trip sent after it: decoding, checks,
planning and computing a decode graph of the real model.

Prints the best median of `--repeat` alternations per server, and the ratio ours /
upstream against its target (<= 2).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ggml_rpc_spec.client.rpc import RPCClient
from ggml_rpc_spec.protocol import Command, profile_for
from ggml_rpc_spec.protocol.relocate import Relocator
from ggml_rpc_spec.relay.proxy import RecordingProxy
from ggml_rpc_spec.relay.recording import to_trace
from ggml_rpc_spec.server.service import ReferenceServer
from ggml_rpc_spec.upstream_peers import ensure_built, peer_for
from ggml_rpc_spec.upstream_peers.llama_run import run_llama
from ggml_rpc_spec.upstream_peers.server import UpstreamServer

from bench.measure import AT_MOST, HEADER, row

TEXT = "The history of the old harbour town begins in the early middle ages, when"
TARGET = 2.0


def record_decode(peer, model: Path):
    """The decoded session of the real client's connection, recorded against a reference server."""
    profile = profile_for(peer.protocol)
    with ReferenceServer(profile=profile, memory=4 << 30) as server, RecordingProxy(server.address) as proxy:
        run_llama(peer, model, rpc=proxy.endpoint, text=TEXT, n_ctx=256, generate=4)
    for connection in proxy.connections:
        connection.closed.wait(30)
        session = to_trace(connection, "reference server").decoded()
        if any(exchange.request.command is Command.GRAPH_COMPUTE for exchange in session.exchanges):
            return session
    raise RuntimeError("the recorded session holds no GRAPH_COMPUTE")


# what a client sends between graphs to set a graph's inputs
INPUTS = {Command.SET_TENSOR, Command.SET_TENSOR_2D, Command.MEMSET_TENSOR, Command.BUFFER_CLEAR}


def _inputs_of(requests: list, graph) -> list:
    """The requests among `requests` that write a buffer the graph's nodes write too (its
    inputs and state), not the weights (buffers no node writes: sending them again would
    make every graph a first use of new weights)."""
    tensors = graph.tensors
    written = set(tensors["buffer"][graph.node_rows].tolist())
    return [r for r in requests
            if (r.body.remote_ptr if r.command is Command.BUFFER_CLEAR else r.body.tensor.buffer) in written]


def replayed(session, rpc: RPCClient) -> list[tuple[list, object]]:
    """Replay `session` (relocated) on `rpc`'s connection; its last two GRAPH_COMPUTE
    requests as sent there (the prompt's graph, the decode graph), each with the requests
    that set its inputs."""
    profile = session.profile
    relocator = Relocator(profile)
    graphs, writes = [], []
    for exchange in session.exchanges:
        request = exchange.request
        if request.command is Command.HELLO:
            continue
        moved = relocator.request(request)
        got = rpc.call(moved.command, moved.body, data=moved.data, graph=moved.graph)
        if request.command is Command.GRAPH_COMPUTE:
            graphs.append((_inputs_of(writes, moved.graph), moved))
        writes = [*writes, moved] if request.command in INPUTS else [] if request.graph is not None else writes
        relocator.learn(request, exchange.reply, got)
        relocator.forget(request)
    if len(graphs) < 2:
        raise RuntimeError(f"the recorded session holds {len(graphs)} GRAPH_COMPUTE, not a prompt and a decode graph")
    return graphs[-2:]


def send(rpc: RPCClient, requests) -> None:
    for request in requests:
        rpc.call(request.command, request.body, data=request.data, graph=request.graph)
    rpc.sync()


def decode_times(session, endpoint: str, repeat: int) -> list[float]:
    """Milliseconds per decode graph sent right after the prompt's graph, `repeat` times."""
    times = []
    with RPCClient(endpoint, proto=session.profile, timeout=600) as rpc:
        (prompt_inputs, prompt), (decode_inputs, decode) = replayed(session, rpc)
        for _ in range(repeat):
            send(rpc, [*prompt_inputs, prompt, *decode_inputs])
            started = time.perf_counter()
            send(rpc, [decode])
            times.append((time.perf_counter() - started) * 1e3)
    return times


def decode_graph_ms(session, ours: str, theirs: str, repeat: int) -> tuple[float, float]:
    """The best median of two rounds of `repeat` decode graphs, per server, alternating."""
    medians: dict[str, list[float]] = {ours: [], theirs: []}
    for _ in range(2):
        for endpoint in (ours, theirs):
            medians[endpoint].append(statistics.median(decode_times(session, endpoint, repeat)))
    return min(medians[ours]), min(medians[theirs])


def recorded(peer, model_name: str):
    """The real client's session decoding `model_name` (smollm2 or tiny), and its node counts."""
    from ggml_rpc_spec.upstream_peers.models import smollm2, write_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        model = smollm2() if model_name == "smollm2" else write_tiny_llama(Path(tmp) / "tiny.gguf")
        session = record_decode(peer, model)
    nodes = [len(exchange.request.graph.node_rows) for exchange in session.exchanges
             if exchange.request.command is Command.GRAPH_COMPUTE]
    return session, nodes


def rows(peer, ours: str, theirs: str, repeat: int, model_name: str = "smollm2") -> list[str]:
    """`python -m bench`'s row: the real model's decode graph, new to the server, on the
    servers at `ours` and `theirs` (both speaking the peer's protocol)."""
    session, nodes = recorded(peer, model_name)
    a, b = decode_graph_ms(session, ours, theirs, repeat)
    return [row(f"GRAPH_COMPUTE {model_name} decode graph ({nodes[-1]} nodes), new", a, b, "ms", (AT_MOST, TARGET))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", default="0.3.36", help="the llama-cpp-python release of client and server")
    parser.add_argument("--model", default="smollm2", choices=("smollm2", "tiny"))
    parser.add_argument("--repeat", type=int, default=20, help="decode graphs timed per server and round")
    args = parser.parse_args(argv)
    peer = peer_for(args.peer)
    ensure_built(peer)
    session, nodes = recorded(peer, args.model)
    print(f"{args.model}: llama-cpp-python {peer.release} (protocol {session.profile.name}) sent "
          f"{len(nodes)} graph(s); the decode graph has {nodes[-1]} nodes")
    with ReferenceServer(profile=session.profile, memory=4 << 30) as ours, UpstreamServer(peer) as upstream:
        a, b = decode_graph_ms(session, ours.endpoint, upstream.endpoint, args.repeat)
    print(HEADER)
    print(row("decode graph, new to the server", a, b, "ms", (AT_MOST, TARGET)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
