"""Socket plumbing shared by the server, client and proxy shells."""

from __future__ import annotations

import fcntl
import ipaddress
import itertools
import logging
import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field

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


class Networks:
    """A set of IP networks (CIDR) that admits addresses: who may connect, where links go."""

    def __init__(self, cidrs=()) -> None:
        networks = []
        for item in cidrs:
            if item == "any":
                networks += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
            else:
                networks.append(ipaddress.ip_network(item, strict=False))  # ValueError names a bad entry
        self.networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __str__(self) -> str:
        return ", ".join(map(str, self.networks)) or "none"

    def admits(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks if network.version == ip.version)


DEFAULT_FRAME_TIMEOUT = 60.0  # seconds a started frame may go without a byte (§2.5); 0/None: forever
DEFAULT_MIN_RATE = 1024  # bytes per second a started frame must average, after its grace period
FRAME_GRACE = 30.0  # seconds a started frame may take before the minimum rate applies


@dataclass
class FramePace:
    """How fast a started frame must arrive, so that a peer cannot hold a connection (and on
    a serial upstream server, everyone's turn) by trickling bytes: no gap longer than
    `gap` seconds, and from `grace` seconds on an average of at least `min_rate` bytes/s."""

    gap: float | None = DEFAULT_FRAME_TIMEOUT
    min_rate: float = DEFAULT_MIN_RATE
    grace: float = FRAME_GRACE

    def timeout(self, started: float, received: int, now: float) -> float | None:
        """The socket timeout for the next receive of a frame started at `started` of which
        `received` bytes arrived (None: wait forever)."""
        limits = [] if self.gap is None else [self.gap]
        if self.min_rate:
            limits.append(started + self.grace + received / self.min_rate - now)
        return max(min(limits), 0.001) if limits else None

    def describe(self, started: float, received: int, now: float) -> str:
        return (f"a started frame stalled: {received} bytes in {now - started:.1f} s (at most {self.gap:g} s "
                f"between bytes, at least {self.min_rate:g} bytes/s after {self.grace:g} s)")


class FrameStalled(TimeoutError):
    """A started frame broke its FramePace."""


def _frame_timeout(parser, activity: "Activity", pace: FramePace) -> float | None:
    """How long the next receive of `parser`'s current frame may wait (None: between frames)."""
    received = parser.frame_bytes
    if received and (not activity.in_frame or activity.frame_offset != parser.frame_offset):
        activity.mark(True, parser.frame_offset)  # a frame started with the last bytes received
    return pace.timeout(activity.frame_started, received, time.monotonic()) if received else None


def receive_paced(sock: socket.socket, parser, activity: "Activity", pace: FramePace, poll: float = 0.0,
                  seen=None) -> int:
    """One receive into `parser`'s buffer (0: the peer closed).  Between frames the peer may
    stay idle as long as it likes; inside one, `pace` bounds the wait (FrameStalled).
    `seen(view)`, if given, is shown the bytes received (a recorder)."""
    received = parser.frame_bytes
    timeout = _frame_timeout(parser, activity, pace)
    sock.settimeout(timeout)
    view = parser.get_buffer()
    try:
        n = receive_into(sock, view, poll)
    except TimeoutError:
        raise FrameStalled(pace.describe(activity.frame_started, received, time.monotonic())) from None
    finally:
        if timeout is not None:
            sock.settimeout(None)  # the pace bounds receiving only: replies go out at the client's speed
    if n:
        if seen is not None:
            seen(view[:n])
        parser.buffer_updated(n)
        activity.mark(parser.frame_bytes > 0, parser.frame_offset)
    else:
        parser.receive_eof()
    return n


class Splicer:
    """Moves bytes from one socket to another through a pipe inside the kernel (os.splice):
    a data tail that a relay passes on untouched never crosses into Python, which halves
    the copies a relayed transfer costs.  One per connection; close() releases the pipe."""

    PIPE_SIZE = 1 << 20

    def __init__(self) -> None:
        self._out, self._in = os.pipe()
        try:
            fcntl.fcntl(self._in, fcntl.F_SETPIPE_SZ, self.PIPE_SIZE)
        except OSError:  # above the system's pipe-max-size: the default size works too
            pass
        self.capacity = fcntl.fcntl(self._in, fcntl.F_GETPIPE_SZ)

    @staticmethod
    def available() -> bool:
        return hasattr(os, "splice") and hasattr(fcntl, "F_GETPIPE_SZ")

    def move(self, src: socket.socket, dst: socket.socket, limit: int, timeout: float | None) -> int:
        """Up to `limit` bytes from `src` to `dst`, all of them sent on before it returns;
        0 when `src` closed.  Waits at most `timeout` seconds (None: forever) for `src` to
        have bytes, else TimeoutError; a send waits as long as `dst`'s own timeout allows."""
        while True:
            _wait(src, select.POLLIN, timeout)
            try:
                n = os.splice(src.fileno(), self._in, min(limit, self.capacity), flags=_SPLICE_FLAGS)
                break
            except BlockingIOError:  # readable, yet nothing to take (a spurious wake-up)
                continue
        left = n
        while left:
            try:
                left -= os.splice(self._out, dst.fileno(), left, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                _wait(dst, select.POLLOUT, dst.gettimeout())
        return n

    def close(self) -> None:
        os.close(self._out)
        os.close(self._in)


_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


def _wait(sock: socket.socket, event: int, timeout: float | None) -> None:
    """Until `sock` is ready for `event` (POLLIN, POLLOUT), an error or hang-up included."""
    poller = select.poll()
    poller.register(sock, event)
    if not poller.poll(None if timeout is None else max(1, int(timeout * 1000))):
        raise TimeoutError(f"the socket was not ready within {timeout:g} s")


def splice_paced(src: socket.socket, dst: socket.socket, parser, activity: "Activity", pace: FramePace,
                 splicer: Splicer) -> int:
    """receive_paced for a data tail passed on untouched: up to the tail's remaining bytes go
    from `src` straight to `dst` through `splicer`, under the same pace, and `parser` is told
    they went by (0: the peer closed)."""
    received = parser.frame_bytes
    try:
        n = splicer.move(src, dst, parser.stream_pending(), _frame_timeout(parser, activity, pace))
    except TimeoutError:
        raise FrameStalled(pace.describe(activity.frame_started, received, time.monotonic())) from None
    if n:
        parser.stream_passed(n)
        activity.mark(parser.frame_bytes > 0, parser.frame_offset)
    else:
        parser.receive_eof()
    return n


@dataclass
class Activity:
    """When a connection last made progress, and whether it is inside a frame: what the
    service consults to decide which connection to drop when it is full."""

    sock: socket.socket
    name: str
    last: float = field(default_factory=time.monotonic)
    in_frame: bool = False
    frame_started: float = 0.0
    frame_offset: int = -1  # where in the stream the frame under way began

    def mark(self, in_frame: bool, frame_offset: int = -1) -> None:
        """Progress now; `in_frame`: a frame is under way, the one that began at `frame_offset`
        (a new offset: a new frame, whose clock starts now)."""
        now = time.monotonic()
        if in_frame and (not self.in_frame or frame_offset != self.frame_offset):
            self.frame_started = now
        self.last, self.in_frame, self.frame_offset = now, in_frame, frame_offset


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
    socket is closed when it returns; it reports progress through `activity(sock).mark()`.
    When `max_connections` are open, a new connection takes the place of the one that has
    made no progress for longest (a stalled frame first, then an idle connection), if that
    one has been quiet for `evict_after` seconds; otherwise the new one is refused.
    `shutdown()` stops accepting, wakes every connection (shutting its socket down) and waits
    for the threads.
    """

    kind = "service"

    evict_after = 1.0  # seconds without progress before a connection may make room for a new one

    def __init__(self, listen: tuple[str, int], *, max_connections: int = 64, allow: Networks | None = None) -> None:
        self.max_connections = max_connections
        self.allow = allow  # clients admitted (None: every client)
        self._activity: dict[int, Activity] = {}  # connection number -> its activity
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
            if self.allow is not None and not self.allow.admits(peer[0]):
                log.warning("[%s] refused: %s is not in the allowed networks (%s)", name, peer[0], self.allow)
                sock.close()
                continue
            with self._lock:
                victim = self._victim() if len(self._open) >= self.max_connections else None
                full = len(self._open) >= self.max_connections and victim is None
                if not full:
                    self._open[number] = sock
                    self._activity[number] = Activity(sock, name)
            if victim is not None:
                log.warning("[%s] dropped to make room for %s: no progress for %.1f s%s", victim.name, name,
                            time.monotonic() - victim.last, " inside a frame" if victim.in_frame else "")
                _shut(victim.sock)
            if full:
                log.warning("[%s] refused: %d connections already open, all of them busy", name,
                            self.max_connections)
                sock.close()
                continue
            thread = threading.Thread(target=self._run, args=(number, name, sock), name=f"{self.kind}-{number}",
                                      daemon=True)
            with self._lock:  # started under the lock: shutdown() joins only started threads
                self._threads.add(thread)
                thread.start()

    def _victim(self) -> Activity | None:
        """The open connection quiet for longest (stalled frames before idle connections), if
        it has been quiet for `evict_after` seconds."""
        now = time.monotonic()
        quiet = [a for a in self._activity.values() if now - a.last >= self.evict_after]
        if not quiet:
            return None
        return min(quiet, key=lambda a: (not a.in_frame, a.last))

    def activity(self, sock: socket.socket) -> Activity:
        """The activity record of one of this service's connections (for its handler)."""
        with self._lock:
            return next(a for a in self._activity.values() if a.sock is sock)

    def _run(self, number: int, name: str, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.handle(sock, name)
        finally:
            sock.close()
            with self._lock:
                self._open.pop(number, None)
                self._activity.pop(number, None)
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
            _shut(sock)
        for thread in threads:
            thread.join(timeout=10)
        self._acceptor.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _shut(sock: socket.socket) -> None:
    """Wake a connection's thread: its next receive or send fails."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
