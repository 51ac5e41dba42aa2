"""A minimal blocking request/reply loop over the sans-IO layer, for tests that speak raw
protocol to a server."""

from __future__ import annotations

import socket

from ggml_rpc_spec.protocol import NEED_DATA, ReplyParser, encode_request, message_spec


class Wire:
    def __init__(self, sock: socket.socket, profile) -> None:
        self.sock = sock
        self.profile = profile
        self.replies = ReplyParser(profile)

    def call(self, command, body=None, *, data=None, graph=None):
        """Send one request; return its Reply, or None for a one-way command."""
        self.sock.sendall(b"".join(bytes(p) for p in encode_request(self.profile, command, body, data=data, graph=graph)))
        spec = message_spec(self.profile, command)
        if not spec.has_reply:
            return None
        self.replies.expect(command, size=spec.data_size(body))
        while (event := self.replies.next_event()) is NEED_DATA:
            chunk = self.sock.recv(1 << 20)
            if chunk:
                self.replies.receive_data(chunk)
            else:
                self.replies.receive_eof()
        return event
