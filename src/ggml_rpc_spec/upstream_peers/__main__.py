"""python -m ggml_rpc_spec.upstream_peers: the same as ggml-rpc-peers."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
