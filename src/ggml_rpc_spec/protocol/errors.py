"""The protocol's error hierarchy: who broke which rule, on which command, field and value.

As in h11, the split is by culprit.  `RemoteProtocolError` means the bytes that arrived
break the protocol (a server closes that connection; a client gives up on the server).
`LocalProtocolError` means our own caller asked us to produce something the protocol does
not allow, before anything was sent.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A GGML RPC protocol rule was broken.

    `command` is the command name (e.g. "GET_TENSOR"), `field` the offending field (dotted
    path for nested fields), `value` what it held, `rule` the rule in words, `section` the
    SPEC.md section that states it and `key` its protocol.rules key, where a rule of that
    table is the one broken.  The message says all of that in one line.
    """

    def __init__(
        self,
        rule: str,
        *,
        command: str | None = None,
        field: str | None = None,
        value: object = None,
        section: str | None = None,
        offset: int | None = None,
        key: str | None = None,
    ) -> None:
        self.rule = rule
        self.key = key
        self.command = command
        self.field = field
        self.value = value
        self.section = section
        self.offset = offset
        super().__init__(self._message())

    def _message(self) -> str:
        parts = []
        if self.command:
            parts.append(self.command)
        if self.field is not None:
            parts.append(f"{self.field}={_show(self.value)}")
        where = f" [§{self.section}]" if self.section else ""
        at = f" (at byte {self.offset})" if self.offset is not None else ""
        head = ": ".join(parts)
        return f"{head}: {self.rule}{where}{at}" if head else f"{self.rule}{where}{at}"


class LocalProtocolError(ProtocolError):
    """We were asked to build or send something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol."""


class PeerClosed(RemoteProtocolError):
    """The peer closed the connection where the protocol did not allow it (mid-frame, or
    before a reply that was due)."""


class UnsupportedVersion(RemoteProtocolError):
    """The peer speaks a protocol version we have no profile for."""


def _show(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0xFFFF:
        return f"{value} (0x{value:x})"
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value[:16])
        more = "..." if len(value) > 16 else ""
        return raw.hex() + more
    return repr(value)
