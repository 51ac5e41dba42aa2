"""python -m bench: the reference server against the real upstream server, same client, same run.

    python -m bench [--peer 0.3.36[,0.11739]] [--repeat 5] [--skip-llama] [--skip-ops]
                    [--ops OP[,OP]] [--ops-sample N] [--skip-link]

For each upstream release named by --peer, starts our server (in a process of its own) and
the real upstream server speaking the same protocol version, measures both and prints each
figure with the ratio and the target it is held to:

  bench/wire.py     small-call round trip, SET_TENSOR / GET_TENSOR 64 MiB, GRAPH_COMPUTE of
                    2000 nodes, the same calls through ggml-rpc-guard and through the version
                    bridge against the upstream server straight, our client vs upstream's
  bench/decode.py   SmolLM2-135M's decode graph as the real client sends it, new to the
                    server: GRAPH_COMPUTE time                          target <= 2
  SmolLM2-135M decode, the real llama.cpp client of the release, every layer on one server:
                    ratio of tokens/s                                   target >= 0.6
  with an 8.0.0 release (0.11739), also:
    SmolLM2-135M decode split tensor by tensor over two reference servers vs over two real
                    servers, linked (--skip-llama leaves both decodes out)  target >= 0.5
    bench/link.py   all-reduce throughput of two linked servers (--skip-link)
  bench/ops.py      upstream's op test program in perf mode, per op, the geometric mean and
                    the slowest ops (--skip-ops; a release whose program can be built: not 8.0.0)

Progress goes to stderr; the table is printed at the end of each release.
"""

from __future__ import annotations

import argparse
import sys

from ggml_rpc_spec.protocol import Command, profile_for
from ggml_rpc_spec.upstream_peers import ensure_built, peer_for

from bench import decode, link, ops, servers, wire
from bench.measure import AT_LEAST, HEADER, row

DECODE_TOKENS = 32


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def linked(profile) -> bool:
    """Whether servers of `profile` link with each other (8.0.0's tensor split)."""
    return Command.COMM_INIT in profile.commands


def decode_rows(peer, profile) -> list[str]:
    """SmolLM2 decode through every layer on one server, and (8.0.0) split over two."""
    from ggml_rpc_spec.upstream_peers.models import smollm2

    from bench.smollm2 import decode, tokens_per_second

    model = smollm2()
    splits = [("layer", (("ours",), ("real",)), 0.6, "SmolLM2-135M decode (real llama.cpp client)")]
    if linked(profile):
        splits.append(("tensor", (("ours", "ours"), ("real", "real")), 0.5,
                       "SmolLM2-135M decode, tensor split over two servers"))
    out = []
    for split, setups, target, label in splits:
        log(f"SmolLM2 decode, {split} split")
        speeds = []
        for kinds in setups:
            with servers.setup(kinds, peer) as endpoints:
                run = decode(peer, model, endpoints, split=split, n_batch=512, tokens=DECODE_TOKENS)
            speeds.append(tokens_per_second(run, DECODE_TOKENS))
        out.append(row(label, *speeds, "tokens/s", (AT_LEAST, target)))
    return out


def release_rows(peer, args) -> list[str]:
    profile = profile_for(peer.protocol)
    with servers.reference(profile.name) as ours, servers.upstream(peer) as theirs:
        log(f"protocol {profile.name}: reference server {ours} vs upstream {peer.release} at {theirs}")
        out = wire.rows(peer, profile, ours, theirs, args.repeat, log=log)
        if not args.skip_llama:
            log("SmolLM2's decode graph, new to the server")
            out += decode.rows(peer, ours, theirs, 4 * args.repeat)
        if not args.skip_ops and peer.dist.sdist:  # the program is built from the release's sources
            log("op throughput (test-backend-ops perf)")
            named = args.ops.split(",") if args.ops else None
            out += ops.rows(*ops.measure(peer, ours, theirs, named, args.ops_sample, log=log), named=bool(named))
        elif not args.skip_ops:
            out.append(f"op throughput: {peer.release} has no op test program (a binary wheel, no sources)")
    if not args.skip_llama:
        out += decode_rows(peer, profile)
    if not args.skip_link and linked(profile):
        log("all-reduce over the link")
        out += link.rows(peer, profile, args.repeat)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", default="0.3.36",
                        help="upstream releases (protocols) to compare with, comma-separated: 0.3.36 (7.0.0), "
                             "0.3.20 (3.6.1), 0.11739 (8.0.0)")
    parser.add_argument("--repeat", type=int, default=5, help="samples per measurement, best kept (graphs: four "
                                                              "times as many)")
    parser.add_argument("--skip-llama", action="store_true", help="skip the SmolLM2 decode measurements")
    parser.add_argument("--skip-ops", action="store_true",
                        help="skip the op throughput measurement (the longest: every perf case of every op, twice)")
    parser.add_argument("--ops", default=None, metavar="OP[,OP]", help="ops to time (default: every op the program "
                                                                        "has perf cases for)")
    parser.add_argument("--ops-sample", type=int, default=0, metavar="N",
                        help="time the first N perf cases of each op only")
    parser.add_argument("--skip-link", action="store_true", help="skip the 8.0.0 all-reduce measurement")
    args = parser.parse_args(argv)
    for release in args.peer.split(","):
        peer = peer_for(release)
        ensure_built(peer)
        rows = release_rows(peer, args)
        print(f"\nprotocol {peer.protocol}, upstream {peer.release}")
        print(HEADER)
        for line in rows:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
