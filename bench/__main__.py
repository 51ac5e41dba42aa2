"""python -m bench: the reference server against the real upstream server, same client, same run.

    python -m bench [--peer 0.3.36] [--skip-llama] [--skip-backend-ops] [--backend-ops-sample N] [--repeat 5]

Starts our server (in a process of its own) and the real upstream server speaking the same
protocol version, measures both with the same client and prints each figure with the ratio
ours / upstream and the target it is held to:

  small-call round trip (GET_ALIGNMENT)            ratio of times     target <= 1.5
    (also with polling off in our client and server, see `--poll-us`)
  SET_TENSOR / GET_TENSOR of 64 MiB                ratio of GB/s      target >= 0.9
  GRAPH_COMPUTE of a 2000-node graph               ratio of times     target <= 5
    (resent unchanged, as clients do per token, and never seen before)
  SmolLM2-135M decode with the real llama.cpp      ratio of tokens/s  target >= 0.25
  upstream's test-backend-ops, every op and case  ratio of times     target <= 10
    (--backend-ops-sample N: N cases per op instead of the full sweep, for a quick estimate)
  our client vs the upstream client, bulk upstream ratio of GB/s      (informational)
  the version bridge's overhead (a client of the other HELLO family through
    ggml-rpc-proxy --bridge vs straight to the upstream server): round trip and bulk
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

import numpy as np

from ggml_rpc_spec.protocol import Graph, profile_for
from ggml_rpc_spec.protocol.versions import HELLO_PROBES
from ggml_rpc_spec.client.rpc import RPCClient
from ggml_rpc_spec.client.graphs import GraphBuilder
from ggml_rpc_spec.upstream_peers import ensure_built, peer_for
from ggml_rpc_spec.upstream_peers.client import run_client
from ggml_rpc_spec.upstream_peers.llama_run import run_llama
from ggml_rpc_spec.upstream_peers.server import UpstreamServer

BULK = 64 << 20
NODES = 2000


def backend_ops_sweep(peer, endpoint: str, sample: int) -> float:
    """Seconds for upstream's op test program to run every op (or `sample` cases of each)
    against `endpoint`; a case that does not pass is reported, since its time means little."""
    from ggml_rpc_spec.upstream_peers.backend_ops import Judge, sample as spread

    judge = Judge(peer, endpoint, log=lambda *a, **k: None)
    started = time.perf_counter()
    for op, cases in judge.catalogue().items():
        result = judge.run_op(op, only=spread(cases, sample) if sample and cases else None)
        if not result.ok:
            print(f"  note: {op} does not pass every case against {endpoint}", file=sys.stderr)
    return time.perf_counter() - started


def start(module: str, *args: str, pattern: str = r"endpoint\s*:\s*(\S+)", stderr: bool = False
          ) -> tuple[subprocess.Popen, str]:
    """Run `python -m module args` and wait for the endpoint line it prints (on stdout, or
    on stderr with `stderr`)."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], text=True,
                            stdout=subprocess.DEVNULL if stderr else subprocess.PIPE,
                            stderr=subprocess.PIPE if stderr else subprocess.DEVNULL)
    for line in proc.stderr if stderr else proc.stdout:
        match = re.search(pattern, line)
        if match:
            return proc, match.group(1)
    raise RuntimeError(f"{module} did not start")


class Sampler:
    """One server's side of a measurement: set up once on a connection of its own, then
    asked for one sample at a time, so that samples of the two servers can alternate."""

    def __init__(self, endpoint: str, profile, **client) -> None:
        self.rpc = RPCClient(endpoint, proto=profile, **client)

    def close(self) -> None:
        self.rpc.close()


class SmallCalls(Sampler):
    """Microseconds per GET_ALIGNMENT round trip, over a batch of 2000."""

    def __init__(self, endpoint: str, profile, **client) -> None:
        super().__init__(endpoint, profile, **client)
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
        super().__init__(endpoint, profile)
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
        super().__init__(endpoint, profile)
        g = GraphBuilder(self.rpc.profile, self.rpc.alloc_buffer(4 << 20))
        x = g.input(np.ones(64, np.float32))
        y = g.input(np.full(64, 0.5, np.float32))
        node, nodes = x, []
        for i in range(NODES):
            node = [g.add, g.mul, lambda a, b: g.scale(a, 0.999)][i % 3](node, y)
            nodes.append(node)
        self.graph, self.variants = g.graph(nodes), 0
        g.upload(self.rpc)
        self.timed(self.graph)
        if not np.isfinite(g.read(self.rpc, nodes[-1])).all():
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


def compare(kind: type[Sampler], ours: str, theirs: str, profile, repeat: int, better=min, **client) -> list[tuple]:
    """(ours, upstream) per figure the sampler reports, best of `repeat` alternating samples."""
    sides = [kind(ours, profile, **client), kind(theirs, profile, **client)]
    try:
        samples: list[list[tuple]] = [[], []]
        for _ in range(repeat):
            for side, sampler in zip(samples, sides):
                side.append(sampler.sample())
    finally:
        for sampler in sides:
            sampler.close()
    return [(better(s[i] for s in samples[0]), better(s[i] for s in samples[1])) for i in range(len(samples[0][0]))]


def one_after_the_other(kind: type[Sampler], sides: list[tuple[str, object]], repeat: int, better=min) -> list[tuple]:
    """As compare, for endpoints that cannot be connected at once (the upstream server serves
    one connection at a time, and a bridge holds one to it): each side's samples in turn."""
    samples = []
    for endpoint, profile in sides:
        sampler = kind(endpoint, profile)
        try:
            samples.append([sampler.sample() for _ in range(repeat)])
        finally:
            sampler.close()
    return [tuple(better(s[i] for s in side) for side in samples) for i in range(len(samples[0][0]))]


def upstream_client_bulk(peer, endpoint: str, repeat: int) -> tuple[float, float]:
    steps = [{"op": "alloc", "name": "b", "size": BULK},
             {"op": "tensor", "name": "t", "buffer": "b", "type": "I8", "ne": [BULK], "offset": 0}]
    steps += [{"op": "fill", "tensor": "t", "value": 7, "size": BULK}, {"op": "read", "tensor": "t", "size": BULK}] * repeat
    times: list[float] = []
    run_client(peer, endpoint, steps, times=times)
    fills = [BULK / t / 1e9 for step, t in zip(steps, times) if step["op"] == "fill"]
    reads = [BULK / t / 1e9 for step, t in zip(steps, times) if step["op"] == "read"]
    return max(fills), max(reads)


AT_MOST, AT_LEAST = "<=", ">="


def line(name: str, ours: float, theirs: float, unit: str, target: tuple[str, float] | None = None) -> str:
    """One row: both figures, ours / theirs, and whether the ratio meets `target` (op, bound)."""
    ratio = ours / theirs
    if target is None:
        return f"{name:44s} {ours:10.3f} {theirs:10.3f} {unit:9s} {ratio:7.2f}"
    op, bound = target
    met = ratio <= bound if op == AT_MOST else ratio >= bound
    return f"{name:44s} {ours:10.3f} {theirs:10.3f} {unit:9s} {ratio:7.2f}   {op} {bound:<5g} {'met' if met else 'MISSED'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", default="0.3.36", help="upstream release (protocol) to compare with")
    parser.add_argument("--repeat", type=int, default=5, help="samples per measurement, best kept (graphs: four times as many)")
    parser.add_argument("--skip-llama", action="store_true", help="skip the SmolLM2 decode measurement")
    parser.add_argument("--skip-backend-ops", action="store_true",
                        help="skip the test-backend-ops sweep (the longest measurement: tens of minutes)")
    parser.add_argument("--backend-ops-sample", type=int, default=0, metavar="N",
                        help="time N cases per op instead of every case")
    args = parser.parse_args(argv)
    peer = peer_for(args.peer)
    ensure_built(peer)
    profile = profile_for(peer.protocol)
    ours_proc, ours = start("ggml_rpc_spec.server.service", "--port", "0", "--proto", profile.name, "--mem", "8G")
    still_proc, still = start("ggml_rpc_spec.server.service", "--port", "0", "--proto", profile.name, "--mem", "1G",
                              "--poll-us", "0")
    floor_proc, floor = start("bench.floor", "--proto", profile.name)
    rows = []
    try:
        with UpstreamServer(peer) as upstream:
            theirs = upstream.endpoint
            print(f"protocol {profile.name}: reference server {ours} vs upstream {peer.release} at {theirs}")
            [(a, b)] = compare(SmallCalls, ours, theirs, profile, args.repeat)
            rows.append(line("small-call round trip (GET_ALIGNMENT)", a, b, "us", (AT_MOST, 1.5)))
            [(a, b)] = compare(SmallCalls, still, theirs, profile, args.repeat, poll=0)
            rows.append(line("  the same, polling off (--poll-us 0, poll=0)", a, b, "us"))
            [(a, b)] = compare(SmallCalls, floor, theirs, profile, args.repeat, poll=0)
            rows.append(line("  floor: bare Python loop (bench/floor.py)", a, b, "us"))
            (set_a, set_b), (get_a, get_b) = compare(Bulk, ours, theirs, profile, args.repeat, better=max)
            rows.append(line("SET_TENSOR 64 MiB", set_a, set_b, "GB/s", (AT_LEAST, 0.9)))
            rows.append(line("GET_TENSOR 64 MiB", get_a, get_b, "GB/s", (AT_LEAST, 0.9)))
            # a graph sample takes milliseconds and this VM's speed drifts for seconds at a time:
            # four times as many samples, so that both servers are seen in a quiet stretch
            for label, (a, b) in zip(("graph resent", "new graph"), compare(BigGraph, ours, theirs, profile,
                                                                             4 * args.repeat)):
                rows.append(line(f"GRAPH_COMPUTE {NODES} nodes, {label}", a, b, "ms", (AT_MOST, 5)))
            # the bridge: a client of the other HELLO family through ggml-rpc-proxy --bridge
            other = next(p for p in HELLO_PROBES if p.hello != profile.hello)
            bridge_proc, bridge = start("ggml_rpc_spec.relay.proxy", "--bridge", "--listen", "127.0.0.1:0", "--upstream",
                                        theirs, "--client-proto", other.name, stderr=True,
                                        pattern=r"--bridge: (\S+)")
            try:
                sides = [(bridge, other), (theirs, profile)]
                [(a, b)] = one_after_the_other(SmallCalls, sides, args.repeat)
                rows.append(line(f"bridge {other.name} -> {profile.name}: small-call round trip", a, b, "us"))
                (set_a, set_b2), (get_a, get_b2) = one_after_the_other(Bulk, sides, args.repeat, better=max)
                rows.append(line(f"bridge {other.name} -> {profile.name}: SET_TENSOR 64 MiB", set_a, set_b2, "GB/s"))
                rows.append(line(f"bridge {other.name} -> {profile.name}: GET_TENSOR 64 MiB", get_a, get_b2, "GB/s"))
            finally:
                bridge_proc.terminate()
                bridge_proc.wait(timeout=30)
            up_set, up_get = upstream_client_bulk(peer, theirs, args.repeat)
            rows.append(line("our client SET_TENSOR vs upstream client", set_b, up_set, "GB/s"))
            rows.append(line("our client GET_TENSOR vs upstream client", get_b, up_get, "GB/s"))
            if not args.skip_llama:
                from ggml_rpc_spec.upstream_peers.models import smollm2

                from bench.smollm2 import PARAGRAPH

                model = smollm2()
                speeds = []
                for endpoint in (ours, theirs):
                    result = run_llama(peer, model, rpc=endpoint, text=PARAGRAPH, n_ctx=512, generate=32)
                    speeds.append(32 / float(result["seconds"]))
                rows.append(line("SmolLM2-135M decode (real llama.cpp client)", speeds[0], speeds[1], "tokens/s",
                                 (AT_LEAST, 0.25)))
            if not args.skip_backend_ops:
                label = (f"test-backend-ops, {args.backend_ops_sample} cases per op" if args.backend_ops_sample
                         else "test-backend-ops, every op and case")
                times = [backend_ops_sweep(peer, endpoint, args.backend_ops_sample) for endpoint in (ours, theirs)]
                rows.append(line(label, times[0], times[1], "s", (AT_MOST, 10)))
    finally:
        for proc in (ours_proc, still_proc, floor_proc):
            proc.terminate()
            proc.wait(timeout=30)
    print(f"{'measurement':44s} {'ours':>10s} {'upstream':>10s} {'unit':9s} {'ratio':>7s}   target")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
