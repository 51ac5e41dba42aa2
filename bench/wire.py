"""`python -m bench`'s rows of single commands, measured with the project's own client:

  small-call round trip (GET_ALIGNMENT)             ratio of times   target <= 1.5
    the same with polling off (--poll-us 0, poll=0), and a bare Python loop (bench/floor.py)
  SET_TENSOR / GET_TENSOR of 64 MiB                 ratio of GB/s    target >= 0.9
  GRAPH_COMPUTE of a 2000-node graph, resent unchanged (as clients do per token)
                                                    ratio of times   target <= 5
    and never seen before                           ratio of times   target <= 2
  through ggml-rpc-guard, vs straight to the upstream server:
    small-call round trip                           ratio of times   target <= 1.5
    SET_TENSOR / GET_TENSOR of 64 MiB               ratio of GB/s    target >= 0.9
  through ggml-rpc-proxy --bridge (a client of the other HELLO family), vs straight to the
    upstream server speaking the server's version: the same three rows and targets
  our client vs the upstream client, bulk to the upstream server (informational)

The "ours" column is our server, or the relay in front of the upstream server; "upstream"
is the upstream server straight.
"""

from __future__ import annotations

import time

import numpy as np

from ggml_rpc_spec.client.graphs import GraphBuilder
from ggml_rpc_spec.client.rpc import RPCClient
from ggml_rpc_spec.protocol import Graph
from ggml_rpc_spec.protocol.versions import HELLO_PROBES
from ggml_rpc_spec.upstream_peers.client import run_client

from bench import servers
from bench.measure import AT_LEAST, AT_MOST, Sampler, alternating, one_after_the_other, row

BULK = 64 << 20
NODES = 2000


class SmallCalls(Sampler):
    """Microseconds per GET_ALIGNMENT round trip, over a batch of 2000."""

    def __init__(self, endpoint: str, profile, **client) -> None:
        super().__init__(RPCClient(endpoint, proto=profile, **client))
        for _ in range(200):
            self.rpc.alignment()

    def sample(self) -> tuple[float]:
        started = time.perf_counter()
        for _ in range(2000):
            self.rpc.alignment()
        return ((time.perf_counter() - started) / 2000 * 1e6,)


class Bulk(Sampler):
    """(SET_TENSOR GB/s, GET_TENSOR GB/s) for a 64 MiB tensor, received into a reused buffer."""

    def __init__(self, endpoint: str, profile) -> None:
        super().__init__(RPCClient(endpoint, proto=profile))
        self.data = np.random.default_rng(0).integers(0, 255, BULK, dtype=np.uint8)
        self.target = bytearray(BULK)
        self.tensor = self.rpc.tensor_for(self.rpc.alloc_buffer(BULK), 0, shape=(BULK,), type="I8")

    def sample(self) -> tuple[float, float]:
        started = time.perf_counter()
        self.rpc.set_tensor(self.tensor, self.data)
        self.rpc.sync()
        set_rate = BULK / (time.perf_counter() - started) / 1e9
        started = time.perf_counter()
        self.rpc.get_tensor(self.tensor, into=self.target)
        get_rate = BULK / (time.perf_counter() - started) / 1e9
        if bytes(self.target[:4096]) != self.data[:4096].tobytes():
            raise AssertionError("GET_TENSOR returned other bytes than SET_TENSOR stored")
        return set_rate, get_rate


def renamed(graph: Graph, tag: int) -> Graph:
    """The same computation with every tensor renamed: new bytes, so nothing can be reused."""
    tensors = graph.tensors.copy()
    tensors["name"] = np.void(f"bench{tag}".encode().ljust(tensors.dtype["name"].itemsize, b"\0"))
    return Graph(graph.nodes, tensors)


class BigGraph(Sampler):
    """Milliseconds per GRAPH_COMPUTE of a 2000-node chain of cheap ops (decode, validate,
    run): (the same graph sent again, as clients do for every decoded token; a graph never
    seen before)."""

    def __init__(self, endpoint: str, profile) -> None:
        super().__init__(RPCClient(endpoint, proto=profile))
        rpc = self.rpc
        g = GraphBuilder(rpc.profile, rpc.alloc_buffer(4 << 20))
        x = g.input(np.ones(64, np.float32))
        y = g.input(np.full(64, 0.5, np.float32))
        node, nodes = x, []
        for i in range(NODES):
            node = [g.add, g.mul, lambda a, b: g.scale(a, 0.999)][i % 3](node, y)
            nodes.append(node)
        self.graph, self.variants = g.graph(nodes), 0
        g.upload(rpc)
        self.timed(self.graph)
        if not np.isfinite(g.read(rpc, nodes[-1])).all():
            raise AssertionError("the 2000-node graph computed non-finite values")

    def timed(self, graph: Graph) -> float:
        started = time.perf_counter()
        self.rpc.graph_compute(graph)
        self.rpc.sync()
        return (time.perf_counter() - started) * 1e3

    def sample(self) -> tuple[float, float]:
        self.variants += 1
        fresh = renamed(self.graph, self.variants)
        self.timed(self.graph)  # the device's last graph is the original again
        return self.timed(self.graph), self.timed(fresh)


def upstream_client_bulk(peer, endpoint: str, repeat: int) -> tuple[float, float]:
    """(SET GB/s, GET GB/s) of the upstream client's own transfers of a 64 MiB tensor, best of `repeat`."""
    steps = [{"op": "alloc", "name": "b", "size": BULK},
             {"op": "tensor", "name": "t", "buffer": "b", "type": "I8", "ne": [BULK], "offset": 0}]
    steps += [{"op": "fill", "tensor": "t", "value": 7, "size": BULK},
              {"op": "read", "tensor": "t", "size": BULK}] * repeat
    times: list[float] = []
    run_client(peer, endpoint, steps, times=times)
    fills = [BULK / t / 1e9 for step, t in zip(steps, times) if step["op"] == "fill"]
    reads = [BULK / t / 1e9 for step, t in zip(steps, times) if step["op"] == "read"]
    return max(fills), max(reads)


def relay_rows(label: str, relay: str, relay_profile, theirs: str, profile, repeat: int) -> list[str]:
    """A small call and 64 MiB both ways through `relay` (whose clients speak `relay_profile`)
    vs straight to the upstream server: its three rows."""
    sides = [lambda: SmallCalls(relay, relay_profile), lambda: SmallCalls(theirs, profile)]
    [(a, b)] = one_after_the_other(sides, repeat)
    rows = [row(f"{label}: small-call round trip", a, b, "us", (AT_MOST, 1.5))]
    sides = [lambda: Bulk(relay, relay_profile), lambda: Bulk(theirs, profile)]
    (set_a, set_b), (get_a, get_b) = one_after_the_other(sides, repeat, better=max)
    rows.append(row(f"{label}: SET_TENSOR 64 MiB", set_a, set_b, "GB/s", (AT_LEAST, 0.9)))
    rows.append(row(f"{label}: GET_TENSOR 64 MiB", get_a, get_b, "GB/s", (AT_LEAST, 0.9)))
    return rows


def rows(peer, profile, ours: str, theirs: str, repeat: int, log=print) -> list[str]:
    """Every row of this module: our server at `ours` against the upstream server at `theirs`."""
    out = []
    log("small calls")
    [(a, b)] = alternating([lambda: SmallCalls(ours, profile), lambda: SmallCalls(theirs, profile)], repeat)
    out.append(row("small-call round trip (GET_ALIGNMENT)", a, b, "us", (AT_MOST, 1.5)))
    quiet = [servers.reference(profile.name, "--poll-us", "0", mem="1G"),
             servers.started(servers.python("bench.floor", "--proto", profile.name), servers.SERVER_LINE)]
    for label, server in zip(("  the same, polling off (--poll-us 0, poll=0)",
                              "  floor: bare Python loop (bench/floor.py)"), quiet):
        with server as endpoint:
            [(a, b)] = alternating([lambda: SmallCalls(endpoint, profile, poll=0),
                                    lambda: SmallCalls(theirs, profile, poll=0)], repeat)
        out.append(row(label, a, b, "us"))
    log("bulk")
    (set_a, set_b), (get_a, get_b) = alternating([lambda: Bulk(ours, profile), lambda: Bulk(theirs, profile)], repeat,
                                                 better=max)
    out.append(row("SET_TENSOR 64 MiB", set_a, set_b, "GB/s", (AT_LEAST, 0.9)))
    out.append(row("GET_TENSOR 64 MiB", get_a, get_b, "GB/s", (AT_LEAST, 0.9)))
    log("graphs")
    # a graph sample takes milliseconds and this VM's speed drifts for seconds at a time:
    # four times as many samples, so that both servers are seen in a quiet stretch
    graphs = alternating([lambda: BigGraph(ours, profile), lambda: BigGraph(theirs, profile)], 4 * repeat)
    for (label, target), (a, b) in zip((("graph resent", 5), ("new graph", 2)), graphs, strict=True):
        out.append(row(f"GRAPH_COMPUTE {NODES} nodes, {label}", a, b, "ms", (AT_MOST, target)))
    log("guard")
    with servers.guard(theirs) as guard:
        out += relay_rows("guard", guard, profile, theirs, profile, repeat)
    other = next(p for p in HELLO_PROBES if p.hello != profile.hello)  # a client of the other HELLO family
    log(f"bridge {other.name} -> {profile.name}")
    with servers.bridge(theirs, other.name) as bridge:
        out += relay_rows(f"bridge {other.name} -> {profile.name}", bridge, other, theirs, profile, repeat)
    log("upstream client")
    up_set, up_get = upstream_client_bulk(peer, theirs, repeat)
    out.append(row("our client SET_TENSOR vs upstream client", set_b, up_set, "GB/s"))
    out.append(row("our client GET_TENSOR vs upstream client", get_b, up_get, "GB/s"))
    return out
