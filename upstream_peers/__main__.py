"""ggml-rpc-peers build PEER...            build real peers (release or protocol version)
ggml-rpc-peers backend-ops --target H:P  judge a server with upstream's test-backend-ops
                                         (--help for its options)
(also: python -m ggml_rpc_spec.upstream_peers ...)"""

import sys


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["build"]:
        from .build import main as build_main

        return build_main(args[1:])
    if args[:1] == ["backend-ops"]:
        from .backend_ops import main as backend_ops_main

        return backend_ops_main(args[1:])
    print(__doc__)
    return 0 if args[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main())
