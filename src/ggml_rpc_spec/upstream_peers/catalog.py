"""Which PyPI release carries which RPC protocol, and how each is installed and run.

Everything that differs between peers is a field of its row: the distribution it comes
from (llama-cpp-python sdists built here, or a binary wheel), the C library its shared
libraries need, and the signature of its server entry point.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Distribution:
    """A PyPI project that ships llama.cpp with the RPC backend, as installed in a peer's venv."""

    package: str  # PyPI project name
    module: str  # import name of its Python bindings (llama_run.py drives them)
    libs: str  # folder of its ggml and llama shared libraries, inside site-packages
    sdist: bool  # True: compiled here from its sdist, whose vendored sources also give the op judge;
    #              False: a binary wheel, installed as published (no sources to build a judge from)


LLAMA_CPP_PYTHON = Distribution("llama-cpp-python", "llama_cpp", "llama_cpp/lib", sdist=True)
LLAMA_CPP_PY_SYNC = Distribution("llama-cpp-py-sync", "llama_cpp_py_sync", "llama_cpp_py_sync", sdist=False)


@dataclass(frozen=True)
class Peer:
    release: str  # version of `dist` on PyPI
    protocol: str  # RPC protocol version its ggml-rpc speaks
    server_api: str  # "devices": start_server(endpoint, cache, threads, n_devices, devices);
    #                  "backend": start_server(backend, endpoint, cache, free_mem, total_mem)
    dist: Distribution = LLAMA_CPP_PYTHON
    trixie_libc: bool = False  # its libraries need a newer glibc than Debian 12's: they run through
    #                            the loader of Debian 13 (trixie)'s libc6, extracted into the cache


PEERS: tuple[Peer, ...] = (
    Peer("0.3.16", "2.0.0", "backend"),
    Peer("0.3.20", "3.6.1", "devices"),
    Peer("0.3.25", "4.0.0", "devices"),
    Peer("0.3.30", "4.0.1", "devices"),
    Peer("0.3.34", "4.0.2", "devices"),
    Peer("0.3.35", "5.0.0", "devices"),
    Peer("0.3.36", "7.0.0", "devices"),
    # llama.cpp b11739 (commit 0ce8cd11); no llama-cpp-python release carries protocol 8
    Peer("0.11739", "8.0.0", "devices", dist=LLAMA_CPP_PY_SYNC, trixie_libc=True),
)

CI_PEERS = ("0.3.20", "0.3.36", "0.11739")  # 3.6.1 (design target), 7.0.0 and 8.0.0 (newest)


def peer_for(name: str) -> Peer:
    """A peer by PyPI release ("0.3.36", "0.11739") or protocol version ("7.0.0", "7.0", "3.6")."""
    for peer in PEERS:
        if name == peer.release:
            return peer
    matches = [p for p in PEERS if p.protocol == name or p.protocol.startswith(name + ".")]
    if matches:
        return matches[-1]
    known = ", ".join(f"{p.release} (protocol {p.protocol})" for p in PEERS)
    raise KeyError(f"no upstream peer {name!r}; known: {known}")
