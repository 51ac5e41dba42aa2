"""The real upstream GGML RPC peers (llama.cpp's C++ server and client), built and driven.

Upstream is the judge of wire compatibility, so tests, the conformance suite and the
benchmarks run against it.  Each peer is a llama-cpp-python release built from its PyPI
sdist with GGML_RPC=ON into a cached virtualenv outside the checkout, or (protocol 8.0.0,
in no llama-cpp-python release) the llama-cpp-py-sync wheel, run on Debian trixie's C
library; the servers and clients are reached through the shared libraries with ctypes (no
binaries needed).
"""

from .catalog import PEERS, Peer, peer_for
from .build import PeerNotBuilt, cache_root, ensure_built, find_built

__all__ = ["PEERS", "Peer", "PeerNotBuilt", "cache_root", "ensure_built", "find_built", "peer_for"]
