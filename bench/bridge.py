"""python -m bench.bridge: which llama.cpp clients run on which servers through the bridge.

    python -m bench.bridge [--model tiny|moe|mamba|smollm2] [--peers 0.3.16,0.3.20,...]

For every pair of built peers (client release x server release) the real server of one
runs behind `ggml-rpc-proxy --bridge` and the real llama.cpp of the other runs the model
through it; the result is compared with that llama.cpp's own CPU (the server computes with
ggml too, so tokens must be the same and logits within 0.1% of the largest).  Prints a
Markdown matrix: `=` same greedy tokens (and the largest logit difference), or why not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from ggml_rpc_spec.protocol import PROFILES, profile_for
from ggml_rpc_spec.relay.relay import Relay
from ggml_rpc_spec.client.rpc import parse_endpoint
from ggml_rpc_spec.upstream_peers import PEERS, find_built, peer_for
from ggml_rpc_spec.upstream_peers.llama_run import run_llama
from ggml_rpc_spec.upstream_peers.server import UpstreamServer

TEXT = "The quick brown fox jumps over the lazy dog. In the end, the dog and the fox are friends."


def model_path(name: str, folder: Path) -> Path:
    from ggml_rpc_spec.upstream_peers.models import smollm2, write_tiny_llama, write_tiny_mamba

    if name == "smollm2":
        return smollm2()
    writers = {"tiny": lambda p: write_tiny_llama(p), "moe": lambda p: write_tiny_llama(p, n_expert=4, n_expert_used=2),
               "mamba": lambda p: write_tiny_mamba(p)}
    return writers[name](folder / f"{name}.gguf")


def one_pair(client, server, model: Path, local: dict) -> str:
    """The cell of the matrix for one client release on one server release."""
    with UpstreamServer(server) as upstream:
        bridge = Relay(parse_endpoint(upstream.endpoint), client_profiles=(profile_for(client.protocol),)).start()
        try:
            remote = run_llama(client, model, rpc=bridge.endpoint, text=TEXT, generate=8, timeout=600)
        except RuntimeError as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()]
            return "fails: " + (lines[-1][:80] if lines else "llama.cpp died")
        finally:
            bridge.shutdown()
    if not np.array_equal(remote["generated"], local["generated"]):
        return "other tokens"
    error = float(np.abs(remote["logits"] - local["logits"]).max() / np.abs(local["logits"]).max())
    return f"= ({error:.0e})" if error <= 1e-3 else f"logits off by {error:.1%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=("tiny", "moe", "mamba", "smollm2"))
    parser.add_argument("--peers", default=None,
                        help="comma-separated releases (default: every built peer of a protocol the bridge speaks)")
    args = parser.parse_args(argv)
    spoken = {profile.name for profile in PROFILES}
    peers = ([peer_for(p) for p in args.peers.split(",")] if args.peers
             else [p for p in PEERS if find_built(p) and p.protocol in spoken])
    missing = [p.release for p in peers if find_built(p) is None]
    if missing:
        print(f"error: not built: {', '.join(missing)} (ggml-rpc-peers build ...)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        model = model_path(args.model, Path(folder))
        locals_ = {p.release: run_llama(p, model, text=TEXT, generate=8, timeout=600) for p in peers}
        rows = []
        for client in peers:
            cells = []
            for server in peers:
                cell = one_pair(client, server, model, locals_[client.release])
                print(f"  {client.release} ({client.protocol}) client -> {server.release} ({server.protocol}) server: "
                      f"{cell}", file=sys.stderr, flush=True)
                cells.append(cell)
            rows.append(cells)
    print(f"model: {args.model}; rows: client, columns: server (through ggml-rpc-proxy --bridge)\n")
    print("| client \\ server | " + " | ".join(f"{p.protocol} ({p.release})" for p in peers) + " |")
    print("|---|" + "---|" * len(peers))
    for client, cells in zip(peers, rows, strict=True):
        print(f"| {client.protocol} ({client.release}) | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
