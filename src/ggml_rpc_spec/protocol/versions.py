"""The table of protocol versions: everything that differs between versions is one column.

Each row is a profile: one value of every column (columns.py) and the upstream release whose
ggml enums the version carries.  The commands a version has follow from the command rows
(commands.py: each names the first version that has it).  Code never compares version
numbers; it reads a profile's columns.  Adding a version means adding a row here (and, if it
brings a new message shape, a column value that the command rows give a layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import cast

from .columns import Acks, Devices, GraphReply, Graphs, Hello, HostData, SetTensor, TensorTail
from .commands import ROWS, Command
from .errors import UnsupportedVersion
from .ggml import GGML_RELEASES, GgmlTables

Version = tuple[int, int, int]


@dataclass(frozen=True)
class Profile:
    """One protocol version as seen on the wire: a value of every column (columns.py says
    what each value means) and `ggml_release`, the upstream release whose ggml enums (types,
    ops) the version carries."""

    version: Version
    hello: Hello
    devices: Devices
    tensor: TensorTail
    set_tensor: SetTensor
    graph_reply: GraphReply
    acks: Acks
    host_data: HostData
    graphs: Graphs
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

    @cached_property
    def commands(self) -> tuple[Command, ...]:
        """The commands of this version, in wire order: every row since this version or earlier."""
        return tuple(row.command for row in ROWS if row.since <= self.version)

    def __str__(self) -> str:
        return self.name


H, D, T, S, R, A, X, G = Hello, Devices, TensorTail, SetTensor, GraphReply, Acks, HostData, Graphs

PROFILES: tuple[Profile, ...] = (
    #       version     hello    devices   tensor       set_tensor    graph     acks     host data  graphs   ggml
    Profile((2, 0, 0), H.BARE, D.SINGLE, T.PADDING, S.PLAIN, R.STATUS, A.EMPTY, X.ADDRESS, G.LAST, "2.0.0"),
    Profile((3, 6, 0), H.BARE, D.MULTI, T.PADDING, S.PLAIN, R.NONE, A.EMPTY, X.ZERO, G.LAST, "3.6.1",
            note="same wire as 3.6.1; its op enum was not pinned, the 3.6.1 table is assumed"),
    Profile((3, 6, 1), H.BARE, D.MULTI, T.PADDING, S.PLAIN, R.NONE, A.EMPTY, X.ZERO, G.LAST, "3.6.1"),
    Profile((4, 0, 0), H.CAPS, D.MULTI, T.PADDING, S.PLAIN, R.NONE, A.EMPTY, X.ZERO, G.LAST, "4.0.0"),
    Profile((4, 0, 1), H.CAPS, D.MULTI, T.PADDING, S.PLAIN, R.NONE, A.EMPTY, X.ZERO, G.LAST, "4.0.1"),
    Profile((4, 0, 2), H.CAPS, D.MULTI, T.PADDING, S.PLAIN, R.NONE, A.EMPTY, X.ZERO, G.LAST, "4.0.2"),
    Profile((5, 0, 0), H.CAPS, D.MULTI, T.PADDING, S.PLAIN, R.NONE, A.EMPTY, X.ZERO, G.LAST, "5.0.0"),
    Profile((5, 1, 0), H.CAPS, D.MULTI, T.USE_COUNT, S.PLAIN, R.NONE, A.EMPTY, X.ZERO, G.LAST, "5.0.0",
            note="no release of its own was found; the 5.0.0 ggml enums are assumed"),
    Profile((7, 0, 0), H.CAPS, D.MULTI, T.USE_COUNT, S.CACHE_FLAG, R.NONE, A.NONE, X.ZERO, G.LAST, "7.0.0"),
    Profile((8, 0, 0), H.CAPS, D.MULTI, T.USE_COUNT, S.CACHE_FLAG, R.NONE, A.NONE, X.ZERO, G.UID, "8.0.0"),
)

BY_VERSION: dict[Version, Profile] = {p.version: p for p in PROFILES}
NEWEST: Profile = PROFILES[-1]
# What a client tries, in order, on a server whose version it does not know yet: the
# newest profile of each HELLO shape (a server closes on a HELLO of the other shape).
HELLO_PROBES: tuple[Profile, ...] = (NEWEST, next(p for p in reversed(PROFILES) if p.hello is Hello.BARE))
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
    major, minor, patch = numbers
    return major, minor, patch


def profile_for(version: Version | str, *, lenient_patch: bool = False) -> Profile:
    """The profile of a version number, e.g. from a HELLO reply.

    With `lenient_patch`, an unknown patch of a known major.minor maps to that minor's
    newest known patch (same wire; only ggml op numbers may differ), as upstream clients
    accept any patch.
    """
    if isinstance(version, str):
        version = parse_version(version)
    # a list of three numbers (e.g. construct's ListContainer) as the tuple the table is keyed by
    version = cast(Version, tuple(version))
    found = BY_VERSION.get(version)
    if found is not None:
        return found
    if lenient_patch:
        same_minor = [p for p in PROFILES if p.version[:2] == version[:2]]
        if same_minor:
            return same_minor[-1]
    raise UnsupportedVersion(
        "protocol version %d.%d.%d is not supported; supported: %s" % (*version, supported())
    )
