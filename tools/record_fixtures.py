"""Re-record src/ggml_rpc_spec/fixtures/: real upstream client <-> real upstream server sessions, as traces.

    python tools/record_fixtures.py                  # all fixtures (builds the peers if needed)
    python tools/record_fixtures.py 0.3.16 0.3.35   # only those peers' fixtures

For each peer (llama-cpp-python 0.3.16, 0.3.20, 0.3.34, 0.3.35 and 0.3.36, llama-cpp-py-sync
0.11739, speaking 2.0.0, 3.6.1, 4.0.2, 5.0.0, 7.0.0 and 8.0.0) it starts the real server behind
the recording proxy and records:
  - llama-<version>/: llama.cpp running a tiny llama model (written with `gguf`, random
    weights, 2 layers) fully offloaded, a short prompt and 4 generated tokens;
  - <group>-<version>/: short per-command sessions of the real client (libggml-rpc through
    ggml's API): queries, buffers, tensors, graph.
From 8.0.0 on it also records a tensor-parallel session (SPEC §10), which no proxy can sit in:
  - llama-tensor-<version>/: the same model split by tensors across two real servers (flash
    attention on, as the split needs), captured with tcpdump on the loopback interface and
    imported (ggml-rpc-trace import): conn-NNN for each client connection, link-001 for the
    servers' link, its all-reduce sizes taken from the COMM_ALLREDUCE requests.
One trace file per connection.  Everything is deterministic except addresses and times.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from client_steps import session_steps  # noqa: E402
from ggml_rpc_spec.protocol import profile_for  # noqa: E402
from ggml_rpc_spec.protocol.comm import PORT_OFFSET  # noqa: E402
from ggml_rpc_spec.protocol.trace import LINK, encode_trace  # noqa: E402
from ggml_rpc_spec.relay.proxy import RecordingProxy  # noqa: E402
from ggml_rpc_spec.relay.recording import to_trace  # noqa: E402
from ggml_rpc_spec.traces.capture import holds_closed_link, imported_traces  # noqa: E402
from ggml_rpc_spec.traces.tcpdump import Tcpdump  # noqa: E402
from ggml_rpc_spec.upstream_peers.models import write_tiny_llama  # noqa: E402
from ggml_rpc_spec.upstream_peers import ensure_built, peer_for  # noqa: E402
from ggml_rpc_spec.upstream_peers.client import run_client  # noqa: E402
from ggml_rpc_spec.upstream_peers.llama_run import run_llama  # noqa: E402
from ggml_rpc_spec.upstream_peers.server import UpstreamServer, comm_safe_port  # noqa: E402

FIXTURES = ROOT / "src" / "ggml_rpc_spec" / "fixtures"
RELEASES = ("0.3.16", "0.3.20", "0.3.34", "0.3.35", "0.3.36", "0.11739")
PROMPT = "The quick brown fox"


def command_groups(profile) -> dict[str, list[dict]]:
    """The real client's session, cut into small per-command sessions."""
    steps = session_steps(profile)
    by_op = lambda *ops: [s for s in steps if s["op"] in ops]  # noqa: E731
    setup = [s for s in steps if s["op"] in ("alloc", "clear")][:2] + by_op("tensor")
    return {
        "queries": by_op("device_count", "memory", "buffer_type"),
        "buffers": [{"op": "alloc", "name": "buf", "size": 16384}, {"op": "clear", "buffer": "buf", "value": 9},
                    {"op": "tensor", "name": "x", "buffer": "buf", "type": "F32", "ne": [8, 4], "offset": 0},
                    {"op": "get", "tensor": "x", "offset": 0, "size": 16}, {"op": "free", "buffer": "buf"}],
        "tensors": setup + [s for s in steps if s["op"] in ("set", "get", "alloc_size", "view", "copy", "memset")
                            and s.get("tensor") != "sum"],
        "graph": setup + [s for s in steps if s["op"] == "set"]
                 + [s for s in steps if s["op"] in ("add", "compute") or s.get("tensor") == "sum"],
    }


def fresh_folder(name: str, peer) -> Path:
    folder = FIXTURES / f"{name}-{profile_for(peer.protocol).name}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def record(release: str, name: str, drive, note: str) -> None:
    peer = peer_for(release)
    folder = fresh_folder(name, peer)
    with UpstreamServer(peer) as server, RecordingProxy(server.address) as proxy:
        drive(proxy.endpoint)
    for connection in proxy.connections:
        connection.closed.wait(10)
        trace = to_trace(connection, f"real upstream server (llama-cpp-python {peer.release})")
        trace.header.update(client=f"real upstream client (llama-cpp-python {peer.release})", note=note)
        (folder / f"conn-{connection.number:03d}.ggmlrpc").write_bytes(encode_trace(trace))
    print(f"{folder.relative_to(ROOT)}: {len(proxy.connections)} connection(s)")


def record_tensor_split(release: str, model: Path, tmp: Path) -> None:
    """Two real servers, ranks 0 and 1 of llama.cpp's tensor split, captured with tcpdump
    (the link's port too: rank 0's port + 1000) until every connection has closed, then
    imported: each client connection and the link as traces."""
    peer = peer_for(release)
    folder = fresh_folder("llama-tensor", peer)
    pcap = tmp / "tensor-split.pcap"
    with UpstreamServer(peer, port=comm_safe_port()) as rank0, UpstreamServer(peer) as rank1:
        ports = [rank0.port, rank1.port]
        with Tcpdump(pcap, ports + [rank0.port + PORT_OFFSET]) as capture:
            run_llama(peer, model, rpc=f"{rank0.endpoint},{rank1.endpoint}", split_mode="tensor", flash_attn_type=1,
                      text=PROMPT, generate=4)
            if not capture.stop(until=lambda: holds_closed_link(pcap)):
                raise SystemExit(f"{pcap}: the capture never held the whole session (every connection closed)")
    numbers = {"conn": 0, "link": 0}
    for imported in imported_traces(pcap, ports):
        if imported.trace is None:
            continue  # a refused try of rank 1 to reach rank 0 before it listened
        if imported.notes:
            raise SystemExit(f"{pcap}: the capture lacks part of a connection: {'; '.join(imported.notes)}")
        kind = "link" if imported.trace.kind == LINK else "conn"
        numbers[kind] += 1
        imported.trace.header.update(
            capture="tcpdump on lo", note="llama.cpp, tiny 2-layer llama model split by tensors across two real "
            f"upstream servers (llama-cpp-py-sync {peer.release}, flash attention on), prompt and 4 greedy tokens")
        if kind == "conn":
            imported.trace.header["client"] = f"real upstream client (llama-cpp-py-sync {peer.release})"
        (folder / f"{kind}-{numbers[kind]:03d}.ggmlrpc").write_bytes(encode_trace(imported.trace))
    print(f"{folder.relative_to(ROOT)}: {numbers['conn']} client connection(s), {numbers['link']} link(s)")


def main(argv: list[str]) -> int:
    releases = argv or list(RELEASES)
    unknown = sorted(set(releases) - set(RELEASES))
    if unknown:
        print(f"error: no peer {', '.join(unknown)}; choose from {', '.join(RELEASES)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_llama(Path(tmp) / "tiny.gguf", n_layer=2)
        for release in releases:
            peer = peer_for(release)
            ensure_built(peer)
            profile = profile_for(peer.protocol)
            record(release, "llama", lambda endpoint: run_llama(peer, model, rpc=endpoint, text=PROMPT, generate=4),
                   "llama.cpp, tiny 2-layer llama model, prompt and 4 greedy tokens")
            for group, steps in command_groups(profile).items():
                record(release, group, lambda endpoint, steps=steps: run_client(peer, endpoint, steps),
                       f"real client, {group} session")
            if profile.version >= (8, 0, 0):
                record_tensor_split(release, model, Path(tmp))
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    print(f"fixtures/: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
