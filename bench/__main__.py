"""python -m bench: the reference server against the real upstream server, same client, same run.

    python -m bench [--peer 0.3.36] [--skip-llama] [--repeat 5]

Starts our server (in a process of its own) and the real upstream server speaking the same
protocol version, measures both with the same client and prints each figure with the ratio
ours / upstream and the target it is held to:

  small-call round trip (GET_ALIGNMENT)            ratio of times     target <= 1.5
  SET_TENSOR / GET_TENSOR of 64 MiB                ratio of GB/s      target >= 0.9
  GRAPH_COMPUTE of a 2000-node graph               ratio of times     target <= 5
  SmolLM2-135M decode with the real llama.cpp      ratio of tokens/s  target >= 0.25
  our client vs the upstream client, bulk upstream ratio of GB/s      (informational)
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time

import numpy as np

from protocol import profile_for
from reference_impl.client import RPCClient
from reference_impl.graphs import GraphBuilder
from upstream_peers import ensure_built, peer_for
from upstream_peers.client import run_client
from upstream_peers.llama_run import run_llama
from upstream_peers.server import UpstreamServer

BULK = 64 << 20
NODES = 2000


def start_reference(profile) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "reference_impl.server", "--port", "0", "--proto", profile.name,
                             "--mem", "8G"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        match = re.search(r"endpoint\s*:\s*(\S+)", line)
        if match:
            return proc, match.group(1)
    raise RuntimeError("the reference server did not start")


def best(samples: list[float]) -> float:
    return min(samples)


def small_calls(endpoint: str, profile, repeat: int) -> float:
    """Microseconds per GET_ALIGNMENT round trip (best of `repeat` batches of 2000)."""
    with RPCClient(endpoint, proto=profile) as rpc:
        for _ in range(200):
            rpc.alignment()
        batches = []
        for _ in range(repeat):
            started = time.perf_counter()
            for _ in range(2000):
                rpc.alignment()
            batches.append((time.perf_counter() - started) / 2000 * 1e6)
    return best(batches)


def bulk(endpoint: str, profile, repeat: int) -> tuple[float, float]:
    """(SET_TENSOR GB/s, GET_TENSOR GB/s) for 64 MiB tensors, received into a reused buffer."""
    data = np.random.default_rng(0).integers(0, 255, BULK, dtype=np.uint8)
    target = bytearray(BULK)
    with RPCClient(endpoint, proto=profile) as rpc:
        buf = rpc.alloc_buffer(BULK)
        tensor = rpc.tensor_for(buf, 0, shape=(BULK,), type="I8")
        sets, gets = [], []
        for _ in range(repeat):
            started = time.perf_counter()
            rpc.set_tensor(tensor, data)
            rpc.sync()
            sets.append(BULK / (time.perf_counter() - started) / 1e9)
            started = time.perf_counter()
            rpc.get_tensor(tensor, into=target)
            gets.append(BULK / (time.perf_counter() - started) / 1e9)
        assert bytes(target[:4096]) == data[:4096].tobytes()
    return max(sets), max(gets)


def big_graph(endpoint: str, profile, repeat: int) -> float:
    """Milliseconds per GRAPH_COMPUTE of a 2000-node chain of cheap ops (decode, validate, run)."""
    with RPCClient(endpoint, proto=profile) as rpc:
        buf = rpc.alloc_buffer(4 << 20)
        g = GraphBuilder(rpc.profile, buf)
        x = g.input(np.ones(64, np.float32))
        y = g.input(np.full(64, 0.5, np.float32))
        node, nodes = x, []
        for i in range(NODES):
            node = [g.add, g.mul, lambda a, b: g.scale(a, 0.999)][i % 3](node, y)
            nodes.append(node)
        graph = g.graph(nodes)
        for tensor, raw in g.uploads:
            rpc.set_tensor(tensor, raw)
        rpc.graph_compute(graph)
        rpc.sync()
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            rpc.graph_compute(graph)
            rpc.sync()
            samples.append((time.perf_counter() - started) * 1e3)
        final = g.read(rpc, nodes[-1])
        assert np.isfinite(final).all()
    return best(samples)


def upstream_client_bulk(peer, endpoint: str, repeat: int) -> tuple[float, float]:
    steps = [{"op": "alloc", "name": "b", "size": BULK},
             {"op": "tensor", "name": "t", "buffer": "b", "type": "I8", "ne": [BULK], "offset": 0}]
    steps += [{"op": "fill", "tensor": "t", "value": 7, "size": BULK}, {"op": "read", "tensor": "t", "size": BULK}] * repeat
    times: list[float] = []
    run_client(peer, endpoint, steps, times=times)
    fills = [BULK / t / 1e9 for step, t in zip(steps, times) if step["op"] == "fill"]
    reads = [BULK / t / 1e9 for step, t in zip(steps, times) if step["op"] == "read"]
    return max(fills), max(reads)


def line(name: str, ours: float, theirs: float, unit: str, ratio: float, target: str, ok: bool | None) -> str:
    verdict = "" if ok is None else ("met" if ok else "MISSED")
    return f"{name:44s} {ours:10.3f} {theirs:10.3f} {unit:9s} {ratio:7.2f}   {target:8s} {verdict}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", default="0.3.36", help="upstream release (protocol) to compare with")
    parser.add_argument("--repeat", type=int, default=5, help="samples per measurement (best is kept)")
    parser.add_argument("--skip-llama", action="store_true", help="skip the SmolLM2 decode measurement")
    args = parser.parse_args(argv)
    peer = peer_for(args.peer)
    ensure_built(peer)
    profile = profile_for(peer.protocol)
    ours_proc, ours = start_reference(profile)
    rows = []
    try:
        with UpstreamServer(peer) as upstream:
            theirs = upstream.endpoint
            print(f"protocol {profile.name}: reference server {ours} vs upstream {peer.release} at {theirs}")
            a, b = small_calls(ours, profile, args.repeat), small_calls(theirs, profile, args.repeat)
            rows.append(line("small-call round trip (GET_ALIGNMENT)", a, b, "us", a / b, "<= 1.5", a / b <= 1.5))
            (set_a, get_a), (set_b, get_b) = bulk(ours, profile, args.repeat), bulk(theirs, profile, args.repeat)
            rows.append(line("SET_TENSOR 64 MiB", set_a, set_b, "GB/s", set_a / set_b, ">= 0.9", set_a / set_b >= 0.9))
            rows.append(line("GET_TENSOR 64 MiB", get_a, get_b, "GB/s", get_a / get_b, ">= 0.9", get_a / get_b >= 0.9))
            a, b = big_graph(ours, profile, args.repeat), big_graph(theirs, profile, args.repeat)
            rows.append(line(f"GRAPH_COMPUTE of {NODES} nodes", a, b, "ms", a / b, "<= 5", a / b <= 5))
            up_set, up_get = upstream_client_bulk(peer, theirs, args.repeat)
            rows.append(line("our client SET_TENSOR vs upstream client", set_b, up_set, "GB/s", set_b / up_set, "", None))
            rows.append(line("our client GET_TENSOR vs upstream client", get_b, up_get, "GB/s", get_b / up_get, "", None))
            if not args.skip_llama:
                from upstream_peers.models import smollm2

                from bench.smollm2 import PARAGRAPH

                model = smollm2()
                speeds = []
                for endpoint in (ours, theirs):
                    result = run_llama(peer, model, rpc=endpoint, text=PARAGRAPH, n_ctx=512, generate=32)
                    speeds.append(32 / float(result["seconds"]))
                ratio = speeds[0] / speeds[1]
                rows.append(line("SmolLM2-135M decode (real llama.cpp client)", speeds[0], speeds[1], "tokens/s",
                                 ratio, ">= 0.25", ratio >= 0.25))
    finally:
        ours_proc.terminate()
        ours_proc.wait(timeout=30)
    print(f"{'measurement':44s} {'ours':>10s} {'upstream':>10s} {'unit':9s} {'ratio':>7s}   target")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
