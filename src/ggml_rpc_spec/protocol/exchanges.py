"""Decode both directions of one recorded connection into request/reply exchanges.

Given what a client sent and what the server answered, this pairs every request with its
reply, in the version the HELLO exchange announced.  It is what a trace decoder, a replayer
or a test of captured bytes needs, and it touches no socket.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .commands import Command
from .errors import ProtocolError, RemoteProtocolError
from .framing import CLOSED, NEED_DATA, Reply, ReplyParser, Request, RequestParser
from .messages import message_spec
from .versions import PROFILES, Profile, profile_for


@dataclass
class Exchange:
    request: Request
    reply: Reply | None  # None for one-way commands, or when the server sent no reply


@dataclass
class DecodedSession:
    profile: Profile | None
    exchanges: list[Exchange] = field(default_factory=list)
    error: ProtocolError | None = None  # where decoding stopped early, if it did

    def requests(self, command: Command) -> list[Request]:
        return [e.request for e in self.exchanges if e.request.command is command]


def hello_family(client_bytes: bytes) -> Profile | None:
    """A provisional profile able to parse the HELLO exchange, from its request size."""
    if len(client_bytes) < 9 or client_bytes[0] != Command.HELLO:
        return None
    (size,) = struct.unpack_from("<Q", client_bytes, 1)
    for profile in reversed(PROFILES):
        if message_spec(profile, Command.HELLO).request_size == size:
            return profile
    return None


def detect_profile(client_bytes: bytes, server_bytes: bytes) -> Profile:
    """The profile a connection speaks, from its HELLO request size and the version reply."""
    family = hello_family(client_bytes)
    if family is None:
        raise RemoteProtocolError("the connection does not start with a HELLO of a known size", section="3.1")
    replies = ReplyParser(family)
    replies.expect(Command.HELLO)
    replies.receive_data(server_bytes[: 8 + (message_spec(family, Command.HELLO).reply_size or 0)])
    replies.receive_eof()
    reply = replies.next_event()
    version = (reply.body.major, reply.body.minor, reply.body.patch)
    return profile_for(version, lenient_patch=True)


def decode_connection(client_bytes: bytes, server_bytes: bytes, profile: Profile | None = None,
                      *, max_payload: int = 1 << 34) -> DecodedSession:
    """Pair requests and replies; stops (recording the error) at the first broken frame."""
    session = DecodedSession(profile)
    try:
        session.profile = profile or detect_profile(client_bytes, server_bytes)
    except ProtocolError as exc:
        session.error = exc
        return session
    requests = RequestParser(session.profile, max_payload=max_payload)
    replies = ReplyParser(session.profile)
    requests.receive_data(client_bytes)
    requests.receive_eof()
    replies.receive_data(server_bytes)
    replies.receive_eof()
    try:
        while (request := requests.next_event()) not in (CLOSED, NEED_DATA):
            spec = message_spec(session.profile, request.command)
            if not spec.has_reply:
                session.exchanges.append(Exchange(request, None))
                continue
            replies.expect(request.command, size=spec.data_size(request.body))
            try:
                reply = replies.next_event()
            except RemoteProtocolError as exc:
                session.exchanges.append(Exchange(request, None))
                session.error = exc
                return session
            session.exchanges.append(Exchange(request, reply))
    except RemoteProtocolError as exc:
        session.error = exc
        return session
    try:
        if replies.next_event() is not CLOSED:
            raise RemoteProtocolError("the server sent more than its replies", section="2.3")
    except RemoteProtocolError as exc:
        session.error = exc
    return session
