"""ggml-rpc-peers build PEER...            build real peers (release or protocol version)
ggml-rpc-peers backend-ops --target H:P  judge a server with upstream's test-backend-ops
                                         (--help for its options)
(also: python -m ggml_rpc_spec.upstream_peers ...)"""

from __future__ import annotations

import sys

from . import backend_ops, build
from .catalog import PEERS, peer_for


def build_main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(build.__doc__)
        print("known peers: " + ", ".join(f"{p.release} (protocol {p.protocol})" for p in PEERS))
        return 0 if argv else 2
    for name in argv:
        try:
            peer = peer_for(name)
            path = build.ensure_built(peer)
        except (KeyError, build.PeerNotBuilt) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            judge = str(build.ensure_program(peer))
        except build.JudgeError as exc:  # older programs lack what registering an RPC device needs
            judge = f"not available ({str(exc).splitlines()[0]})"
        print(f"{peer.release} (protocol {peer.protocol}): {path}; op test program: {judge}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["build"]:
        return build_main(args[1:])
    if args[:1] == ["backend-ops"]:
        return backend_ops.main(args[1:])
    print(__doc__)
    return 0 if args[:1] in (["-h"], ["--help"]) else 2
