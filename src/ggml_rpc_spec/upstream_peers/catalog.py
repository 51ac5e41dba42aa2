"""Which llama-cpp-python release vendors which RPC protocol version."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    release: str  # llama-cpp-python version on PyPI
    protocol: str  # RPC protocol version its vendored ggml-rpc speaks
    server_api: str  # "devices": start_server(endpoint, cache, threads, n_devices, devices);
    #                  "backend": start_server(backend, endpoint, cache, free_mem, total_mem)


PEERS: tuple[Peer, ...] = (
    Peer("0.3.16", "2.0.0", "backend"),
    Peer("0.3.20", "3.6.1", "devices"),
    Peer("0.3.25", "4.0.0", "devices"),
    Peer("0.3.30", "4.0.1", "devices"),
    Peer("0.3.34", "4.0.2", "devices"),
    Peer("0.3.35", "5.0.0", "devices"),
    Peer("0.3.36", "7.0.0", "devices"),
)

CI_PEERS = ("0.3.20", "0.3.36")  # 3.6.1 (design target) and 7.0.0 (newest)


def peer_for(name: str) -> Peer:
    """A peer by llama-cpp-python release ("0.3.36") or protocol version ("7.0.0", "7.0", "3.6")."""
    for peer in PEERS:
        if name == peer.release:
            return peer
    matches = [p for p in PEERS if p.protocol == name or p.protocol.startswith(name + ".")]
    if matches:
        return matches[-1]
    known = ", ".join(f"{p.release} (protocol {p.protocol})" for p in PEERS)
    raise KeyError(f"no upstream peer {name!r}; known: {known}")
