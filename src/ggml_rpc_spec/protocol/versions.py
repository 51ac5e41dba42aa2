"""The table of protocol versions: everything that differs between versions is one column.

Each row is a profile: the commands a peer of that version accepts and the struct variant
each message uses.  Code never compares version numbers; it reads a profile's columns.
Adding a version means adding a row (and, if it brings a new struct shape, a variant in
messages.py that a column value names).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .commands import Command
from .errors import UnsupportedVersion
from .ggml import GGML_RELEASES, GgmlTables

Version = tuple[int, int, int]

_UP_TO_HELLO = tuple(Command(i) for i in range(Command.HELLO + 1))
_UP_TO_RECOMPUTE = _UP_TO_HELLO + (Command.DEVICE_COUNT, Command.GRAPH_RECOMPUTE)
_UP_TO_MEMSET = _UP_TO_RECOMPUTE + (Command.MEMSET_TENSOR,)


@dataclass(frozen=True)
class Profile:
    """One protocol version as seen on the wire.

    hello        -- "bare": empty HELLO request, 3-byte reply; "caps": 24-byte conn_caps
                    request, 28-byte reply (major, minor, patch, padding, conn_caps).
    devices      -- "single": no device fields; "multi": device index in ALLOC_BUFFER,
                    GET_ALIGNMENT, GET_MAX_SIZE, GET_DEVICE_MEMORY, GET_ALLOC_SIZE (with the
                    10 srcs), GRAPH_COMPUTE and GRAPH_RECOMPUTE.
    tensor       -- rpc_tensor's last field: "padding" or "use_count".
    set_tensor   -- "plain": tensor, offset, data; "cache_flag": tensor, cache_flag u8,
                    offset, data (the flag asks the server to store the data in its cache).
    graph_reply  -- "status": GRAPH_COMPUTE answers a status byte; "none": one-way.
    acks         -- "empty": FREE_BUFFER, BUFFER_CLEAR, INIT_TENSOR, MEMSET_TENSOR answer an
                    empty reply; "none": they are one-way.
    host_data    -- what a graph tensor held outside the server's buffers (buffer 0) carries in
                    `data`: "zero"; or "address": the client's own address of it, meaningless to
                    the server, which ignores it (2.0.0 clients; later servers reject non-zero).
    ggml         -- the upstream release whose ggml enums (types, ops) this version carries.
    """

    version: Version
    commands: tuple[Command, ...]
    hello: str
    devices: str
    tensor: str
    set_tensor: str
    graph_reply: str
    acks: str
    host_data: str
    ggml_release: str
    note: str = field(default="", compare=False)

    def __hash__(self) -> int:  # the version names a profile; the wire tables hash it per message
        return hash(self.version)

    @property
    def name(self) -> str:
        return "%d.%d.%d" % self.version

    @property
    def ggml(self) -> GgmlTables:
        return GGML_RELEASES[self.ggml_release]

    def __str__(self) -> str:
        return self.name


PROFILES: tuple[Profile, ...] = (
    #       version     commands          hello    devices   tensor       set_tensor    graph     acks  host data  ggml
    Profile((2, 0, 0), _UP_TO_HELLO, "bare", "single", "padding", "plain", "status", "empty", "address", "2.0.0"),
    Profile((3, 6, 0), _UP_TO_RECOMPUTE, "bare", "multi", "padding", "plain", "none", "empty", "zero", "3.6.1",
            note="same wire as 3.6.1; its op enum was not pinned, the 3.6.1 table is assumed"),
    Profile((3, 6, 1), _UP_TO_RECOMPUTE, "bare", "multi", "padding", "plain", "none", "empty", "zero", "3.6.1"),
    Profile((4, 0, 0), _UP_TO_RECOMPUTE, "caps", "multi", "padding", "plain", "none", "empty", "zero", "4.0.0"),
    Profile((4, 0, 1), _UP_TO_RECOMPUTE, "caps", "multi", "padding", "plain", "none", "empty", "zero", "4.0.1"),
    Profile((4, 0, 2), _UP_TO_RECOMPUTE, "caps", "multi", "padding", "plain", "none", "empty", "zero", "4.0.2"),
    Profile((5, 0, 0), _UP_TO_MEMSET, "caps", "multi", "padding", "plain", "none", "empty", "zero", "5.0.0"),
    Profile((5, 1, 0), _UP_TO_MEMSET, "caps", "multi", "use_count", "plain", "none", "empty", "zero", "5.0.0",
            note="no release of its own was found; the 5.0.0 ggml enums are assumed"),
    Profile((7, 0, 0), _UP_TO_MEMSET, "caps", "multi", "use_count", "cache_flag", "none", "none", "zero", "7.0.0"),
)

BY_VERSION: dict[Version, Profile] = {p.version: p for p in PROFILES}
NEWEST: Profile = PROFILES[-1]
# What a client tries, in order, on a server whose version it does not know yet: the
# newest profile of each HELLO shape (a server closes on a HELLO of the other shape).
HELLO_PROBES: tuple[Profile, ...] = (NEWEST, next(p for p in reversed(PROFILES) if p.hello == "bare"))
DESIGN_TARGET: Profile = BY_VERSION[(3, 6, 1)]


def supported() -> str:
    return ", ".join(p.name for p in PROFILES)


def parse_version(text: str) -> Version:
    """'3.6' or '3.6.1' (or 'v3.6.1') -> (3, 6, 1); a bare major.minor picks its newest patch."""
    parts = text.strip().lstrip("v").split(".")
    try:
        numbers = tuple(int(p) for p in parts)
    except ValueError:
        raise UnsupportedVersion(f"{text!r} is not a version number; supported: {supported()}") from None
    if len(numbers) == 2:
        patches = [p.version for p in PROFILES if p.version[:2] == numbers]
        if not patches:
            raise UnsupportedVersion(f"no supported version {text}.x; supported: {supported()}")
        return max(patches)
    if len(numbers) != 3:
        raise UnsupportedVersion(f"{text!r} is not major.minor[.patch]; supported: {supported()}")
    return numbers  # type: ignore[return-value]


def profile_for(version: Version | str, *, lenient_patch: bool = False) -> Profile:
    """The profile of a version number, e.g. from a HELLO reply.

    With `lenient_patch`, an unknown patch of a known major.minor maps to that minor's
    newest known patch (same wire; only ggml op numbers may differ), as upstream clients
    accept any patch.
    """
    if isinstance(version, str):
        version = parse_version(version)
    version = tuple(version)  # type: ignore[assignment]
    found = BY_VERSION.get(version)  # type: ignore[arg-type]
    if found is not None:
        return found
    if lenient_patch:
        same_minor = [p for p in PROFILES if p.version[:2] == version[:2]]
        if same_minor:
            return same_minor[-1]
    raise UnsupportedVersion(
        "protocol version %d.%d.%d is not supported; supported: %s" % (*version, supported())
    )
