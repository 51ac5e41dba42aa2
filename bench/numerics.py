"""The reference server's numerics modes against the client's own CPU, on tiny real models.

    python -m bench.numerics [--client 0.3.36] [--numerics ggml,float] [--weights q8_0,f16]
                             [--models llama,moe,mamba] [--seed 7] [--n-batch 512,1]

SPEC §8.4 says how close a server's results must come to what the client's own CPU
computes, and the reference server's `--numerics` default rests on this measurement.  For
each tiny model of `upstream_peers.models` (a llama, a Mixtral-layout mixture of experts with
4 experts of which the router picks 2, a Mamba), written with random weights of one type
(Q8_0 or F16 for every layer matrix; embeddings and output Q8_0) from a seed the test suite's
models do not use, a real llama.cpp client (default: 0.3.36, protocol 7.0.0) runs a text
teacher-forced, once on its own CPU and once fully offloaded to the reference server in each
numerics mode, and prints per run:

  - the greedy top-1 agreement over every position;
  - whether every position whose local top-2 margin exceeds 0.5 logits agrees;
  - the largest logit difference, relative to the largest logit of the local run.

Takes a few minutes on two cores.  Exit status 1 when the server's default mode is not at
least as close as every other mode on every model (by the largest relative difference).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf.constants import GGMLQuantizationType as Q

from ggml_rpc_spec.executor.numerics import DEFAULT_NUMERICS
from ggml_rpc_spec.protocol import profile_for
from ggml_rpc_spec.server.service import ReferenceServer
from ggml_rpc_spec.upstream_peers import ensure_built, peer_for
from ggml_rpc_spec.upstream_peers.llama_run import run_llama
from ggml_rpc_spec.upstream_peers.logits import NUMERICS_TEXT
from ggml_rpc_spec.upstream_peers.models import write_tiny_llama, write_tiny_mamba

TEXT = NUMERICS_TEXT
MARGIN = 0.5
WEIGHTS = {"q8_0": Q.Q8_0, "f16": Q.F16}
MODELS = {
    "llama": lambda path, kind, seed: write_tiny_llama(path, n_layer=2, seed=seed, weight_types=(kind,)),
    "moe": lambda path, kind, seed: write_tiny_llama(path, n_layer=2, n_expert=4, n_expert_used=2, seed=seed,
                                                     weight_types=(kind,)),
    "mamba": lambda path, kind, seed: write_tiny_mamba(path, n_layer=2, seed=seed, weight_types=(kind,)),
}


def compare(local: dict, remote: dict) -> dict:
    """Top-1 agreement, confident agreement and the largest logit difference relative to the
    local run's largest logit."""
    a, b = local["logits"], remote["logits"]
    top2 = np.sort(a, axis=-1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) > MARGIN
    agree = a.argmax(-1) == b.argmax(-1)
    return {"positions": len(agree), "agreement": float(agree.mean()), "confident": int(confident.sum()),
            "confident_agree": bool(agree[confident].all()),
            "relative_error": float(np.abs(a - b).max() / np.abs(a).max())}


def measure(peer, model: Path, modes: list[str], n_batch: int) -> dict[str, dict]:
    """{mode: comparison} for one model and batch size."""
    profile = profile_for(peer.protocol)
    local = run_llama(peer, model, text=TEXT, n_batch=n_batch)
    results = {}
    for mode in modes:
        with ReferenceServer(profile=profile, host="127.0.0.1", port=0, memory=1 << 30, numerics=mode) as server:
            remote = run_llama(peer, model, rpc=server.endpoint, text=TEXT, n_batch=n_batch)
        results[mode] = compare(local, remote)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", default="0.3.36", help="llama-cpp-python release of the real client")
    parser.add_argument("--numerics", default="ggml,float", help="server numerics modes to measure")
    parser.add_argument("--weights", default="q8_0,f16", help=f"weight types ({', '.join(WEIGHTS)})")
    parser.add_argument("--models", default=",".join(MODELS), help=f"tiny models ({', '.join(MODELS)})")
    parser.add_argument("--seed", type=int, default=7, help="weights' seed (the test suite's models use 0)")
    parser.add_argument("--n-batch", default="512,1", help="batch sizes: 512 a batched prompt, 1 token by token")
    args = parser.parse_args(argv)
    peer = peer_for(args.client)
    ensure_built(peer)
    modes = args.numerics.split(",")
    print(f"client llama-cpp-python {peer.release} (protocol {peer.protocol}); seed {args.seed}; "
          f"server default: {DEFAULT_NUMERICS}")
    print(f"{'model':6s} {'weights':7s} {'n_batch':>7s} {'numerics':8s} {'positions':>9s} {'top-1':>7s} "
          f"{'confident':>14s} {'max |diff| / max |logit|':>25s}")
    worse = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for weights in args.weights.split(","):
                model = MODELS[name](Path(tmp) / f"{name}-{weights}.gguf", WEIGHTS[weights], args.seed)
                for n_batch in (int(n) for n in args.n_batch.split(",")):
                    results = measure(peer, model, modes, n_batch)
                    for mode, r in results.items():
                        print(f"{name:6s} {weights:7s} {n_batch:7d} {mode:8s} {r['positions']:9d} {r['agreement']:7.3f} "
                              f"{r['confident']:4d} {'all' if r['confident_agree'] else 'NOT':>3s} agree "
                              f"{r['relative_error']:24.2%}", flush=True)
                    if DEFAULT_NUMERICS in results:
                        best = min(r["relative_error"] for r in results.values())
                        if results[DEFAULT_NUMERICS]["relative_error"] > best:
                            worse.append(f"{name} {weights} n_batch {n_batch}")
    if worse:
        print(f"\nthe default ({DEFAULT_NUMERICS}) is not the closest on: {'; '.join(worse)}")
        return 1
    print(f"\nthe default ({DEFAULT_NUMERICS}) is the closest on every run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
