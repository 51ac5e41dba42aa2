"""A client-side program as the other rank of a target's server-to-server link (SPEC §10):
the conformance suite's link cases, and the trace replayer replaying one rank of a recorded
tensor-parallel session.

A target's COMM_INIT answers only once its link is up, and its COMM_ALLREDUCE ends only once
the peer's partial arrived, so this end of the link runs in a thread of its own while the
caller talks to the target over RPC.  The thread opens the link (accepting as rank 0 or
connecting as rank 1), does the handshake and then the scripted exchanges in the rank's turn
order, and records what the target sent; protocol/comm.py has the bytes.  A caller stops
the thread when it knows nothing more will come (the target answered without linking), and
closes it with its connections.
"""

from __future__ import annotations

import ipaddress
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ggml_rpc_spec.netio import take_turn
from ggml_rpc_spec.protocol.comm import PORT_OFFSET, HANDSHAKE_SIZE, handshake, handshake_first, partial_first

CONNECT_PAUSE = 0.05  # between tries to reach a rank 0 that may not listen yet (upstream's rank 1 pause)


@dataclass(frozen=True)
class Exchange:
    """One all-reduce as the suite's rank does it: `send` goes out and `receive` bytes come
    in, in the rank's turn (rank 0 sends first).  After the last exchange the suite closes
    the link: a short `send` with `receive` 0 is a peer that stops halfway."""

    send: bytes
    receive: int


@dataclass
class PeerLog:
    """What the target did on the link."""

    peer: str = ""  # the target's end ("": no link was made)
    handshake: bytes = b""  # the target's 24 bytes
    received: list[bytes] = field(default_factory=list)  # per exchange
    error: str = ""  # why the link ended before the script did
    notes: dict[str, str] = field(default_factory=dict)  # what a custom opener found


Opened = tuple[socket.socket, str] | None  # the link and the target's address; None: stopped first
Opener = Callable[["LinkPeer", float], Opened]


class LinkPeer:
    """The suite's rank of one link: `opener` makes the connection (accepting() or
    connecting()), then the handshake and `exchanges` follow in `rank`'s turn order."""

    def __init__(self, rank: int, opener: Opener, exchanges=(), *, timeout: float) -> None:
        self.rank = rank
        self.opener = opener
        self.exchanges = tuple(exchanges)
        self.timeout = timeout
        self.log = PeerLog()
        self.stopping = threading.Event()
        self._wake_read, self._wake = socket.socketpair()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name=f"link-peer-rank{rank}", daemon=True)

    def start(self) -> "LinkPeer":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            opened = self.opener(self, time.monotonic() + self.timeout)
            if opened is None:
                return
            self._sock, self.log.peer = opened
            if self.stopping.is_set():  # closed while the link was being made
                return
            self._sock.settimeout(self.timeout)
            self.log.handshake = bytes(take_turn(self._sock, handshake_first(self.rank), handshake(),
                                                 HANDSHAKE_SIZE))
            for exchange in self.exchanges:
                self.log.received.append(bytes(take_turn(self._sock, partial_first(self.rank), exchange.send,
                                                         exchange.receive)))
        except OSError as exc:
            self.log.error = self.log.error or str(exc)
        finally:
            if self._sock is not None:
                self._sock.close()

    def wait_woken(self, sock: socket.socket, deadline: float) -> bool:
        """Wait until `sock` is readable (True) or the peer is stopped or out of time (False)."""
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            ready = selector.select(max(deadline - time.monotonic(), 0))
        return any(key.fileobj is sock for key, _ in ready) and not self.stopping.is_set()

    def finish(self) -> PeerLog:
        """Wait for the script to end (the target's side of it has happened by now, or never
        will within the timeout) and give its log."""
        self._thread.join(self.timeout)
        if self._thread.is_alive():
            self.close()
            self.log.error = self.log.error or f"the link was still busy after {self.timeout:g} s"
        return self.log

    def close(self) -> None:
        """Stop the script wherever it is and release the link (once: closing again does nothing)."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self._wake.send(b"!")
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes a receive in the thread
            except OSError:
                pass
        if self._thread.ident is not None:
            self._thread.join(self.timeout)
        self._wake.close()
        self._wake_read.close()


def listener(host: str) -> socket.socket:
    """A socket listening on `host` at a free port, for a target that is rank 1 to reach."""
    return socket.create_server((host, 0), family=family(host), backlog=1)


def accepting(sock: socket.socket) -> Opener:
    """Rank 0's opener: take the first connection made to the listening `sock`."""
    def open_link(peer: LinkPeer, deadline: float) -> Opened:
        try:
            if not peer.wait_woken(sock, deadline):
                if not peer.stopping.is_set():
                    peer.log.error = "the target did not connect"
                return None
            link, address = sock.accept()
        finally:
            sock.close()
        link.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return link, f"{address[0]}:{address[1]}"

    return open_link


def connect(address: tuple[str, int], peer: LinkPeer, deadline: float) -> Opened:
    """Connect to a target that is rank 0, trying again while it does not listen yet (it
    starts to once its COMM_INIT arrived, which the case sends after starting the peer)."""
    while True:
        try:
            link = socket.create_connection(address, timeout=max(deadline - time.monotonic(), 0.001))
        except ConnectionRefusedError:
            if peer.stopping.wait(CONNECT_PAUSE) or time.monotonic() >= deadline:  # polling for its listener
                peer.log.error = peer.log.error or f"nothing listened on {address[0]}:{address[1]}"
                return None
            continue
        link.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return link, f"{address[0]}:{address[1]}"


def connecting(address: tuple[str, int]) -> Opener:
    """Rank 1's opener: connect to the target's listening `address`."""
    return lambda peer, deadline: connect(address, peer, deadline)


def linked(rpc, attach, exchanges=(), *, target_rank: int = 1, device: int = 0,
           timeout: float) -> LinkPeer | None:
    """Make `device` of the target behind `rpc` rank `target_rank` of a link whose other rank
    is the suite, which then does `exchanges`: the running peer (`attach` ties its closing to
    the case's connections), or None when the target declined (COMM_INIT answered ok=0)."""
    if target_rank == 1:
        host = rpc.sock.getsockname()[0]  # the suite's address as the target sees it
        sock = listener(host)
        peer = attach(LinkPeer(0, accepting(sock), exchanges, timeout=timeout)).start()
        ok = rpc.comm_init(rank=1, host=host, port=sock.getsockname()[1], device=device)
    else:
        port = rank0_port(rpc.address)
        peer = attach(LinkPeer(1, connecting((rpc.address[0], port)), exchanges, timeout=timeout)).start()
        ok = rpc.comm_init(rank=0, port=port, device=device)
    if not ok:
        peer.close()
        return None
    return peer


def rank0_port(endpoint: tuple[str, int]) -> int:
    """A port for a target that is rank 0 to listen on: a free one where the target runs on
    this machine, else the upstream client's choice (the target's RPC port + 1000)."""
    try:
        return free_port(endpoint[0])
    except OSError:  # not an address of this machine
        return endpoint[1] + PORT_OFFSET


def free_port(host: str) -> int:
    """A port nothing listens on at `host` now (for a target that is rank 0 to listen on)."""
    with socket.socket(family(host)) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def other_loopback(host: str) -> str | None:
    """Another IPv4 loopback address than `host` (a second address of the same machine that
    a server bound to `host` does not listen on), or None when `host` is not IPv4 loopback."""
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return None
    if address.version != 4 or not address.is_loopback:
        return None
    return "127.0.0.2" if str(address) != "127.0.0.2" else "127.0.0.3"
