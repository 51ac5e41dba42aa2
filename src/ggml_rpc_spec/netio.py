"""Socket plumbing shared by the server, client and proxy shells."""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time

log = logging.getLogger("ggml_rpc.net")


def send_all(sock: socket.socket, parts) -> None:
    """Send every buffer in `parts` with vectored sends (no joining), resuming partial sends."""
    if len(parts) == 1:
        sock.sendall(parts[0])
        return
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views[:64])
        while sent:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0] = views[0][sent:]
                sent = 0


_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)  # where the platform lacks it, a blocking socket just waits
DEFAULT_POLL = 50e-6  # seconds a connection polls for bytes before sleeping (see receive_into)


def receive_into(sock: socket.socket, view, poll: float = 0.0) -> int:
    """sock.recv_into(view), first polling the socket for up to `poll` seconds before
    sleeping in the kernel.  Bytes that arrive while we poll are taken without the wake-up
    of a sleeping thread, which on virtual machines costs tens of microseconds per round
    trip.  A socket's timeout still applies once polling gives up."""
    if poll:
        timeout = sock.gettimeout()
        if timeout is not None:
            sock.settimeout(0.0)  # a socket with a timeout would wait even with MSG_DONTWAIT
        try:
            deadline = time.perf_counter() + poll
            while True:
                try:
                    return sock.recv_into(view, 0, _DONTWAIT)
                except BlockingIOError:
                    if time.perf_counter() >= deadline:
                        break
        finally:
            if timeout is not None:
                sock.settimeout(timeout)
    return sock.recv_into(view)


def receive_exactly(sock: socket.socket, size: int) -> bytearray:
    """Exactly `size` bytes from `sock`; ConnectionError when the peer closes it before."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError(f"the peer closed the connection after {got} of {size} bytes")
        got += n
    return buffer


def take_turn(sock: socket.socket, first: bool, ours, size: int) -> bytearray:
    """One exchange of a turn-taking stream (a server-to-server link): send `ours` and receive
    the other side's `size` bytes, sending `first` or second; the bytes received."""
    if first:
        sock.sendall(ours)
        return receive_exactly(sock, size)
    theirs = receive_exactly(sock, size)
    sock.sendall(ours)
    return theirs


class ThreadedTCPService:
    """A listening socket whose connections each get a thread of their own.

    Subclasses implement `handle(sock, name)`; it runs in the connection's thread and the
    socket is closed when it returns.  `shutdown()` stops accepting, wakes every connection
    (shutting its socket down) and waits for the threads.
    """

    kind = "service"

    def __init__(self, listen: tuple[str, int], *, max_connections: int = 64) -> None:
        self.max_connections = max_connections
        self._listener = socket.create_server(listen, backlog=128)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: dict[int, socket.socket] = {}
        self._threads: set[threading.Thread] = set()
        self._numbers = itertools.count(1)
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"{self.kind}-accept", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self._listener.getsockname()[:2]

    @property
    def endpoint(self) -> str:
        host, port = self.address
        return f"{host}:{port}"

    def start(self):
        self._acceptor.start()
        return self

    def serve_forever(self) -> None:
        self.start()
        self._stopping.wait()

    def request_stop(self) -> None:
        """Make serve_forever() return (safe from a signal handler)."""
        self._stopping.set()

    def handle(self, sock: socket.socket, name: str) -> None:
        raise NotImplementedError

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except OSError:
                return
            number = next(self._numbers)
            name = f"#{number} {peer[0]}:{peer[1]}"
            with self._lock:
                full = len(self._open) >= self.max_connections
                if not full:
                    self._open[number] = sock
            if full:
                log.warning("[%s] refused: %d connections already open", name, self.max_connections)
                sock.close()
                continue
            thread = threading.Thread(target=self._run, args=(number, name, sock), name=f"{self.kind}-{number}",
                                      daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _run(self, number: int, name: str, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.handle(sock, name)
        finally:
            sock.close()
            with self._lock:
                self._open.pop(number, None)
                self._threads.discard(threading.current_thread())

    def shutdown(self) -> None:
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            sockets = list(self._open.values())
            threads = list(self._threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(timeout=10)
        self._acceptor.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()
