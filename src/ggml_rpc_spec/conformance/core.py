"""The conformance suite's building blocks: checks as data, and what a check runs against.

A Check is one case: the SPEC section it verifies, a title, the level (MUST cases always
run; SHOULD cases with --level should), and a function taking a Context.  The Context opens
fresh connections to the target (each check starts clean) and keeps every byte that went
over them, so a failure report can show the exchange and save it as a trace file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, NoReturn

import pytest

from ggml_rpc_spec.protocol import Command
from ggml_rpc_spec.protocol.messages import device_fields
from ggml_rpc_spec.protocol.rules import MUST, SHOULD
from ggml_rpc_spec.protocol.trace import CLIENT, SERVER, Trace, encode_trace, frame_records
from ggml_rpc_spec.protocol.versions import PROFILES, Profile, parse_version
from ggml_rpc_spec.client.rpc import RemoteBuffer, RPCClient

from .probe import ANSWERED, CLOSED, SILENT, Transcript, Probe

__all__ = ["CaseFailure", "Check", "Checks", "Context", "MUST", "SHOULD", "new_buffer", "require"]


def first_version(column: str, value) -> str:
    """The first protocol version whose profile has `value` in `column`: a case of a feature
    names the version it arrived in as the version table says, not as a number written down."""
    return next(p.name for p in PROFILES if getattr(p, column) == value)


def skip(reason: str) -> NoReturn:
    """End the case as skipped: what it checks does not exist on this target (also from the
    request builders of hostile cases, which see a probe rather than the context)."""
    pytest.skip(reason)


def missing_from(profile: Profile, *, needs=(), ops=(), since: str | None = None, protocols=()) -> str:
    """Why a case needing commands `needs`, graph ops `ops`, protocol `since` or later (or
    one of `protocols`) cannot run on `profile`'s version ("" when it can)."""
    if protocols and profile.name not in protocols:
        return f"only for protocol {', '.join(protocols)}"
    if since is not None and profile.version < parse_version(since):
        return f"only from protocol {since} on"
    missing = [c.name for c in needs if c not in profile.commands]
    missing += [f"op {op}" for op in ops if op not in profile.ggml.ops]
    return f"protocol {profile.name} lacks {', '.join(missing)}" if missing else ""


@dataclass(frozen=True)
class Check:
    key: str
    section: str
    title: str
    run: Callable[["Context"], None]
    level: str = MUST
    needs: tuple[Command, ...] = ()
    destructive: bool = False
    advisory: str = ""
    kind: str = "semantics"  # "semantics", "negative", "security", "op", "fuzz", "trace"
    protocols: tuple[str, ...] = ()  # only for these exact versions (recorded traces); empty: any
    rule: str = ""  # the protocol.rules key this check verifies, when it is one
    harmless_from: tuple[int, int, int] | None = None  # a destructive case that upstream survives from this version
    ops: tuple[str, ...] = ()  # graph ops the check needs in the version's op table
    since: str | None = None  # the first protocol version the check applies to

    def destroys(self, profile: Profile) -> bool:
        """Whether the case can kill a vulnerable server of `profile`'s version."""
        return self.destructive and (self.harmless_from is None or profile.version < self.harmless_from)

    @property
    def case_id(self) -> str:
        tag = f" [{self.advisory}]" if self.advisory else ""
        return f"§{self.section} {self.title}{tag}"

    def missing_from(self, profile: Profile) -> str:
        """Why the check cannot run on `profile`'s version ("" when it can)."""
        return missing_from(profile, needs=self.needs, ops=self.ops, since=self.since, protocols=self.protocols)


class Checks:
    """The checks of one case module, in the order they are declared.  Each module of
    `conformance.cases` has its own; that package joins them, so no check exists by the
    side effect of an import."""

    def __init__(self) -> None:
        self.items: list[Check] = []

    def add(self, item: Check) -> Check:
        if any(existing.key == item.key for existing in self.items):
            raise ValueError(f"two checks with key {item.key!r}")
        self.items.append(item)
        return item

    def check(self, section: str, title: str, *, level: str = MUST, needs=(), destructive: bool = False,
              advisory: str = "", kind: str = "semantics", key: str | None = None, rule: str = "",
              since: str | None = None):
        """Decorator: declare a function as a check of this module."""
        def wrap(function):
            self.add(Check(key or function.__name__, section, title, function, level, tuple(needs), destructive,
                           advisory, kind, rule=rule, since=since))
            return function

        return wrap


class CaseFailure(AssertionError):
    """A case's verdict: the server did not do what SPEC.md says.  `rules` are the rule keys
    of what failed, where a case finds several (the hostile fuzzer's findings): a run that
    knows the target's deviations forgives the failure only if it lists every one of them."""

    def __init__(self, message: str, rules: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.rules = rules


class Context:
    """One case's view of the target."""

    def __init__(self, endpoint: str, profile: Profile, *, device: int = 0, timeout: float = 10.0,
                 cache: bool = False, cache_dir: str | None = None, fuzz_examples: int = 25, live_fuzz: bool = True,
                 run=None) -> None:
        self.endpoint = endpoint
        self.profile = profile
        self.device = device
        self.timeout = timeout
        self.cache = cache or bool(cache_dir)  # the target is known to have a hash cache directory
        self.cache_dir = cache_dir  # ... and the suite can read and damage its files there (None: not known)
        self.fuzz_examples = fuzz_examples
        self.live_fuzz = live_fuzz  # generate without shrinking (external targets)
        self.run = run  # the run (runner.Conformance): liveness, restarts, fuzzing campaign, trace folder
        self.transcripts: list[tuple[str, Transcript]] = []
        self._open: list = []

    # -- connections ------------------------------------------------------------------------

    def client(self, *, timeout: float | None = None, keep: bool = False) -> RPCClient:
        """A fresh connection.  Earlier connections of the case are closed first unless
        `keep`: upstream serves one connection at a time, so a case holding two would hang."""
        if not keep:
            self.close()
        transcript = Transcript()
        self.transcripts.append((f"connection {len(self.transcripts) + 1}", transcript))
        rpc = RPCClient(self.endpoint, proto=self.profile, timeout=timeout or self.timeout, tap=transcript.add)
        self._open.append(rpc)
        return rpc

    def probe(self, *, buffer_size: int = 4096, handshake: bool = True, keep: bool = False) -> Probe:
        if not keep:
            self.close()
        probe = Probe(self.endpoint, self.profile, timeout=self.timeout, buffer_size=buffer_size, handshake=handshake)
        self.transcripts.append((f"connection {len(self.transcripts) + 1}", probe.transcript))
        self._open.append(probe)
        return probe

    def device_body(self) -> dict:
        return device_fields(self.profile, self.device)

    def fail(self, message: str) -> NoReturn:
        raise CaseFailure(message)

    def skip(self, reason: str) -> NoReturn:
        skip(reason)

    def attach(self, item):
        """Close `item` (a link peer, say) with the case's connections; `item` back."""
        self._open.append(item)
        return item

    def close(self) -> None:
        for item in self._open:
            item.close()
        self._open.clear()

    # -- verdicts -----------------------------------------------------------------------------

    def expect_closed(self, probe: Probe, what: str) -> None:
        verdict, data = probe.outcome()
        if verdict != CLOSED:
            detail = {ANSWERED: f"answered {len(data)} bytes ({data[:32].hex()}...)",
                      SILENT: f"went silent for {self.timeout}s without closing"}[verdict]
            raise CaseFailure(f"expected: the server closes the connection ({what})\n"
                              f"actual:   the server {detail}")

    def expect_served(self, probe: Probe, what: str) -> None:
        verdict, _ = probe.outcome()
        if verdict != ANSWERED:
            raise CaseFailure(f"expected: the server keeps serving ({what})\nactual:   it {verdict}")

    # -- reporting ----------------------------------------------------------------------------

    def hexdump(self, limit: int = 256) -> str:
        parts = []
        for name, exchange in self.transcripts:
            if exchange.events:
                parts.append(f"{name}:\n{exchange.hexdump(limit)}")
        return "\n".join(parts)

    def traces(self, case_id: str, exchanges=None) -> list[bytes]:
        """Every connection of this case (or `exchanges`) as a trace file (replayable with
        ggml-rpc-trace)."""
        out = []
        for name, exchange in self.transcripts if exchanges is None else exchanges:
            if not exchange.events:
                continue
            records = frame_records([(CLIENT if d == "sent" else SERVER, t, data) for d, t, data in exchange.events])
            header = {"protocol": self.profile.name, "recorder": "conformance suite", "peer": self.endpoint,
                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "case": case_id,
                      "connection": name}
            out.append(encode_trace(Trace(header, records)))
        return out


def require(condition: bool, expected: str, actual: str) -> None:
    """Fail a case with expected vs actual when `condition` is false."""
    if not condition:
        raise CaseFailure(f"expected: {expected}\nactual:   {actual}")


def new_buffer(rpc: RPCClient, size: int, device: int = 0) -> RemoteBuffer:
    """A buffer a case goes on to use: a server that cannot allocate it fails the case."""
    buffer = rpc.alloc_buffer(size, device)
    if buffer is None:
        raise CaseFailure(f"expected: a buffer of {size} bytes\nactual:   remote_ptr 0")
    return buffer
