"""The reference server's end of the server-to-server link (protocol/comm.py has the bytes).

Wire-compatible with upstream's, and safer where upstream is not: rank 0 listens on the
address of its own RPC endpoint only (upstream: every interface), admits only peers the
server's allow-list names, and waits a bounded time; rank 1 connects only to a host the
allow-list admits; every exchange has a timeout, so a peer that stops sending ends the link
instead of hanging the connection.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from dataclasses import dataclass, field

import numpy as np

from ggml_rpc_spec.netio import Networks, take_turn
from ggml_rpc_spec.protocol.comm import (HANDSHAKE_SIZE, decode_partial, encode_partial, handshake, handshake_first,
                                         partial_first, reduce, wire_size)

log = logging.getLogger("ggml_rpc.server")

CONNECT_TRIES = 100  # as upstream: rank 0 may not listen yet
CONNECT_PAUSE = 0.05


class LinkError(Exception):
    """The link could not be set up, or broke during an exchange."""


@dataclass(frozen=True)
class LinkPolicy:
    """Where a server's links may go: the address it listens on as rank 0, the networks it
    admits peers from (and connects to as rank 1), and how long it waits."""

    listen_host: str
    admit: Networks
    timeout: float = 30.0

    @classmethod
    def for_endpoint(cls, host: str, extra: tuple[str, ...] = (), timeout: float = 30.0) -> "LinkPolicy":
        """The default for a server bound to `host`: peers at 127.0.0.1, ::1 and the bound
        address itself, nothing else (binding every interface admits no one more); `extra`
        widens it with networks in CIDR form, or "any"."""
        cidrs = ["127.0.0.1/32", "::1/128", *extra]
        try:
            bound = ipaddress.ip_address(host)
            if not bound.is_unspecified:
                cidrs.append(str(bound))
        except ValueError:
            pass  # a name: only what --link-allow names
        return cls(host, Networks(cidrs), timeout)

    def admits(self, address: str) -> bool:
        return self.admit.admits(address)

    def resolve(self, host: str, port: int) -> tuple:
        """The socket address to connect to `host`, if the allow-list admits what it names."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise LinkError(f"cannot resolve rank 0's host {host!r}: {exc}") from None
        for family, _, _, _, address in infos:
            if self.admits(str(address[0])):  # an IPv4 or IPv6 address (typeshed also allows AF_UNIX's int)
                return family, address
        raise LinkError(f"rank 0's host {host!r} ({', '.join(sorted({str(i[4][0]) for i in infos}))}) is not admitted "
                        "by the link allow-list (--link-allow)")


@dataclass
class Link:
    """One device's end of a pair: its rank and the socket to the other rank."""

    rank: int
    sock: socket.socket
    peer: str
    exchanged: int = field(default=0)

    @classmethod
    def open(cls, policy: LinkPolicy, rank: int, host: str, port: int) -> "Link":
        """Rank 0 listens on `port` and takes the first admitted peer; rank 1 connects to
        `host:port`.  Either way the 24-byte handshake follows (all-zero caps: plain TCP)."""
        if not 0 < port < 65536:
            raise LinkError(f"port {port} is not a TCP port")
        if rank == 0:
            sock, peer = _accept(policy, port)
        else:
            sock, peer = _connect(policy, host, port)
        sock.settimeout(policy.timeout)
        try:
            take_turn(sock, handshake_first(rank), handshake(), HANDSHAKE_SIZE)
        except OSError as exc:
            sock.close()
            raise LinkError(f"handshake with {peer} failed: {exc}") from None
        return cls(rank, sock, peer)

    def all_reduce(self, values: np.ndarray) -> np.ndarray:
        """The sum of `values` (this rank's float32 partial) and the peer's, as this rank
        computes it.  Raises LinkError when the peer sends less than the partial or nothing
        within the timeout."""
        size = wire_size(values.size)
        ours = encode_partial(values)
        try:
            theirs = take_turn(self.sock, partial_first(self.rank), ours, size)
        except OSError as exc:
            raise LinkError(f"the link to {self.peer} broke: {exc}") from None
        self.exchanged += 2 * size
        return reduce(values, decode_partial(theirs, values.size))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _accept(policy: LinkPolicy, port: int) -> tuple[socket.socket, str]:
    try:
        listener = socket.create_server((policy.listen_host, port), family=_family(policy.listen_host), backlog=1)
    except OSError as exc:
        raise LinkError(f"cannot listen on {policy.listen_host}:{port}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + policy.timeout
    try:
        while True:
            listener.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                sock, address = listener.accept()
            except TimeoutError:
                raise LinkError(f"no peer connected to {policy.listen_host}:{port} within {policy.timeout:g} s") from None
            if policy.admits(address[0]):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock, f"{address[0]}:{address[1]}"
            log.warning("link on port %d: refused a peer at %s, which the allow-list does not admit", port, address[0])
            sock.close()
    finally:
        listener.close()


def _connect(policy: LinkPolicy, host: str, port: int) -> tuple[socket.socket, str]:
    family, address = policy.resolve(host, port)
    failure: OSError | None = None
    deadline = time.monotonic() + policy.timeout
    for _ in range(CONNECT_TRIES):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(max(min(policy.timeout, deadline - time.monotonic()), 0.001))
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            failure = exc
            if time.monotonic() >= deadline:
                break
            time.sleep(CONNECT_PAUSE)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, f"{address[0]}:{address[1]}"
    raise LinkError(f"cannot connect to rank 0 at {host}:{port}: {failure}")


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
