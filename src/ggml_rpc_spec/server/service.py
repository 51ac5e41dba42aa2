"""ggml-rpc-server: the reference GGML RPC server (a thin TCP shell around Session).

    ggml-rpc-server --host 127.0.0.1 --port 50052 --proto 3.6 --devices 1 --mem 8G

One thread per connection: a client that stalls mid-frame blocks nobody else, and the
graph work of one connection runs while others are served (NumPy releases the GIL).  Bytes
are received straight into the parser's target buffers (for SET_TENSOR, the tensor's own
memory) and replies go out with vectored sends, so bulk data is never copied in Python.
A connection with no bytes waiting polls for `--poll-us` before its thread sleeps, so a
client's next small call does not pay for waking it.
A request that breaks a rule is logged with its rule and closes only its connection.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

from ggml_rpc_spec.executor import ExecutionError
from ggml_rpc_spec.executor.numerics import DEFAULT_NUMERICS, Numerics
from ggml_rpc_spec.executor.device import make_devices
from ggml_rpc_spec.netio import (DEFAULT_FRAME_TIMEOUT, DEFAULT_MIN_RATE, DEFAULT_POLL, FramePace, FrameStalled,
                                  ThreadedTCPService, receive_paced, send_all)
from ggml_rpc_spec.protocol import (
    CLOSED,
    NEED_DATA,
    NEWEST,
    Command,
    RequestParser,
    message_spec,
)
from ggml_rpc_spec.protocol.errors import RemoteProtocolError
from ggml_rpc_spec.protocol.framing import hello_shapes, reply_parts
from ggml_rpc_spec.protocol.messages import MessageSpec, specs
from ggml_rpc_spec.protocol.versions import Profile

from .link import LinkPolicy
from .session import ServerState, Session

log = logging.getLogger("ggml_rpc.server")
PAYLOAD_HEADROOM = 1 << 16  # above a device's memory: room for any request's fixed part
DEFAULT_LINK_TIMEOUT = 30.0  # seconds a server-to-server link may wait for its peer (§10)


class ReferenceServer(ThreadedTCPService):
    """The reference server, on `host:port` (port 0: any free port; see `address`)."""

    kind = "rpc"
    session_class = Session  # what serves one connection (tests substitute deliberately faulty ones)

    def __init__(self, *, profile: Profile | tuple[Profile, ...] = NEWEST, host: str = "127.0.0.1", port: int = 0,
                 devices: int = 1,
                 memory: int | None = None, cache_dir: str | Path | None = None,
                 max_payload: int | None = None, max_connections: int = 64, verbose: bool = False,
                 numerics: Numerics = DEFAULT_NUMERICS, poll: float = DEFAULT_POLL,
                 frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT, min_rate: float = DEFAULT_MIN_RATE,
                 link_allow: tuple[str, ...] = (),
                 link_timeout: float = DEFAULT_LINK_TIMEOUT) -> None:
        memory = memory if memory is not None else physical_memory()
        cache = Path(cache_dir) if cache_dir else None
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        profiles = profile if isinstance(profile, tuple) else (profile,)
        hello_shapes(profiles)  # at most one profile per HELLO shape
        self.state = ServerState(profiles, make_devices(devices, memory), cache, verbose, numerics,
                                 links=LinkPolicy.for_endpoint(host, link_allow, link_timeout))
        # Each weight tensor arrives in one SET_TENSOR (multi-GiB ones are normal), straight into
        # its buffer: by default the limit is what a device could hold, plus a request's fixed part.
        self.max_payload = max_payload if max_payload is not None else memory + PAYLOAD_HEADROOM
        self.poll = poll
        self.pace = FramePace(frame_timeout or None, min_rate)
        self.rejections = 0  # connections closed for a broken rule, and the last rule's key
        self.last_rejection: str | None = None
        self._rejection_lock = threading.Lock()
        super().__init__((host, port), max_connections=max_connections)

    @property
    def profile(self) -> Profile:
        """The (first) protocol served; see `profiles`."""
        return self.state.profile

    @property
    def profiles(self) -> tuple[Profile, ...]:
        return self.state.profiles

    def handle(self, sock: socket.socket, name: str) -> None:
        session = self.session_class(self.state, name)
        log.info("[%s] connected", name)
        try:
            self._converse(sock, session)
            log.info("[%s] closed by the client", name)
        except RemoteProtocolError as exc:
            if exc.command == "HELLO" and exc.field == "size":  # a client probing the other HELLO shape
                log.info("[%s] closing: client sent a HELLO of %s bytes; protocol %s expects %s", name, exc.value,
                         "/".join(p.name for p in self.profiles),
                         " or ".join(str(message_spec(p, Command.HELLO).request_size) for p in self.profiles))
            else:
                log.warning("[%s] closing: %s", name, exc)
                self._rejected(exc.key)
        except ExecutionError as exc:
            log.warning("[%s] closing: cannot compute the graph: %s", name, exc)
            self._rejected(exc.rule.key)
        except OSError as exc:
            log.info("[%s] connection lost: %s", name, exc)
        except Exception:  # a bug must cost one connection, never the server
            log.exception("[%s] internal error, closing the connection", name)
        finally:
            session.close()

    def _rejected(self, key: str | None) -> None:
        with self._rejection_lock:
            self.rejections += 1
            self.last_rejection = key

    def _converse(self, sock: socket.socket, session: Session) -> None:
        profile = self.profile
        replies = _reply_specs(profile)
        parser = RequestParser(profile, max_payload=self.max_payload, bulk_sink=session.bulk_sink,
                               profiles=self.profiles)
        activity = self.activity(sock)
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                try:
                    receive_paced(sock, parser, activity, self.pace, self.poll)
                except FrameStalled as exc:
                    raise RemoteProtocolError(str(exc), section="2.5") from None
                continue
            if event is CLOSED:
                return
            if parser.profile is not profile:  # the HELLO's shape chose another of the server's profiles
                profile = parser.profile
                session.use_profile(profile)
                replies = _reply_specs(profile)
            result = session.handle(event)
            spec = replies.get(event.command)
            if spec is not None:
                self.send_reply(sock, spec, result)

    def send_reply(self, sock: socket.socket, spec: MessageSpec, result) -> None:
        """Send a handler's result as the command's reply (body fields, or data for GET_TENSOR)."""
        send_all(sock, reply_parts(spec, result))


def _reply_specs(profile: Profile) -> dict:
    return {c: spec for c, spec in specs(profile).items() if spec.has_reply}


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30
