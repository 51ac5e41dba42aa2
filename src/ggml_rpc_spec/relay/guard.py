"""The guard: every request checked against the rules before an unmodified server sees it.

A `GuardSession` keeps what a server knows of one connection, learned from the replies the
relay passes back (buffers and their bases, devices, the graphs kept for GRAPH_RECOMPUTE,
links), and checks each request against every rule of protocol.rules that the wire decides:
framing (the parser), tensors, regions, requests, graphs, and the executor's own validation
of every node (its kernels are built, never run, over buffers that reserve no memory).  A
request that breaks a rule is refused: the relay closes that client's connection and the
server never sees the request.  COMM_INIT is held to a policy instead: rank 0 only where the
operator allows listening, rank 1 only towards admitted hosts; otherwise it is declined with
ok=0, on which the upstream client reduces through itself.

What a guard cannot see are values computed inside a graph (row indices, expert ids, state
ids produced by earlier nodes) and the server's own cache (SET_TENSOR_HASH): those rules are
UNENFORCEABLE and listed as such.
"""

from __future__ import annotations

import logging
import mmap
import threading
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ggml_rpc_spec.executor import DequantCache, ExecContext, ExecutionError, plan_graph
from ggml_rpc_spec.executor.device import Buffer
from ggml_rpc_spec.protocol import Command, Graph, Reply, Request
from ggml_rpc_spec.protocol.comm import host_of
from ggml_rpc_spec.protocol.errors import RemoteProtocolError
from ggml_rpc_spec.protocol.messages import local_reply, message_spec
from ggml_rpc_spec.protocol.rules import (RULES, Rule, Violation, as_error, request_checks, rule,
                                          sized_violation)
from ggml_rpc_spec.protocol.versions import Profile
from ggml_rpc_spec.server.graphs import GraphStore, StoredGraph
from ggml_rpc_spec.server.link import LinkPolicy
from ggml_rpc_spec.server.view import ConnectionTables

log = logging.getLogger("ggml_rpc.guard")
C = Command

# Rules that depend on what the guard never sees, with what an operator can do about them.
UNENFORCEABLE: dict[str, str] = {
    "exec.rows-in-range": "row indices are tensor data, set by the client or computed inside the graph; the real "
                          "3.6.1, 7.0.0 and 8.0.0 servers abort on one out of range: admit trusted clients only",
    "exec.expert-ids": "expert ids are computed by the graph's router from the activations; the real servers abort "
                       "on one out of range: admit trusted clients only",
    "exec.state-ids": "state ids are tensor data (#25765); the real servers abort on one out of range: admit "
                      "trusted clients only",
    "set_tensor_hash.region": "whether the cached file fits depends on its size on the server: run upstream "
                              "without -c (no cache)",
    "set_tensor_hash.in-tensor": "whether the cached file fits depends on its size on the server: run upstream "
                                 "without -c (no cache)",
    "set_tensor_hash.buffer": "decided only when the server has the file; the guard refuses a foreign buffer "
                              "whether or not it has",
    "comm.peer-agrees": "the bytes between two linked servers do not pass the guard: filter the link port to the "
                        "other server",
    "comm.listen": "where upstream listens is upstream's choice (every interface): the guard declines rank 0 "
                   "unless --link-listen",
}


def enforced_rules() -> tuple[Rule, ...]:
    """The rules a guard in front of a server enforces (every rule that refuses a request,
    save those it cannot decide from the wire)."""
    return tuple(r for r in RULES if not r.serves and r.key not in UNENFORCEABLE)


def reserved_memory(size: int) -> np.ndarray:
    """`size` bytes of address space that never become memory: the executor builds views over
    them to validate a graph, and nothing is ever written."""
    if size == 0:
        return np.zeros(0, np.uint8)
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0))
    return np.frombuffer(area, np.uint8)


@dataclass
class GuardStats:
    """Counters of one guard, for all its connections (thread-safe)."""

    connections: int = 0
    requests: int = 0
    refused: Counter = field(default_factory=Counter)  # rule key -> connections closed for it
    declined: Counter = field(default_factory=Counter)  # COMM_INIT declined, by reason
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, what: str, key: str = "") -> None:
        with self._lock:
            if what == "refused":
                self.refused[key] += 1
            elif what == "declined":
                self.declined[key] += 1
            else:
                setattr(self, what, getattr(self, what) + 1)

    def prometheus(self) -> str:
        """The counters in Prometheus' text exposition format."""
        with self._lock:
            lines = ["# HELP ggml_rpc_guard_connections_total Client connections accepted.",
                     "# TYPE ggml_rpc_guard_connections_total counter",
                     f"ggml_rpc_guard_connections_total {self.connections}",
                     "# HELP ggml_rpc_guard_requests_total Requests checked.",
                     "# TYPE ggml_rpc_guard_requests_total counter",
                     f"ggml_rpc_guard_requests_total {self.requests}",
                     "# HELP ggml_rpc_guard_refused_total Connections closed for a request that broke a rule.",
                     "# TYPE ggml_rpc_guard_refused_total counter"]
            lines += [f'ggml_rpc_guard_refused_total{{rule="{key}"}} {n}' for key, n in sorted(self.refused.items())]
            lines += ["# HELP ggml_rpc_guard_declined_total COMM_INIT answered ok=0 by the guard's link policy.",
                      "# TYPE ggml_rpc_guard_declined_total counter"]
            lines += [f'ggml_rpc_guard_declined_total{{reason="{key}"}} {n}' for key, n in sorted(self.declined.items())]
            return "\n".join(lines) + "\n"

    def summary(self) -> str:
        with self._lock:
            refused = ", ".join(f"{key} {n}" for key, n in self.refused.most_common()) or "none"
            return (f"{self.connections} connections, {self.requests} requests checked; connections closed per rule: "
                    f"{refused}; links declined: {sum(self.declined.values())}")


@dataclass(frozen=True)
class GuardSettings:
    links: LinkPolicy  # where rank 1 may connect (and from where links are admitted)
    listen: bool = False  # whether a client may make the server rank 0 (upstream then listens on every interface)


class Declined(Exception):
    """The guard answers the request itself (COMM_INIT refused by its link policy)."""

    def __init__(self, reply: dict, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason


class GuardSession(ConnectionTables):
    """One connection's server state as the guard sees it (implements protocol.rules.ServerView
    with ConnectionTables' lookups)."""

    def __init__(self, profile: Profile, n_devices: int, settings: GuardSettings, stats: GuardStats) -> None:
        self.profile = profile
        self.n_devices = n_devices
        self.settings = settings
        self.stats = stats
        self.sizes: dict[int, int] = {}  # handle -> size, from ALLOC_BUFFER
        self.buffers: dict[int, Buffer] = {}  # handle -> buffer, once its base is known
        self.graphs = GraphStore(profile.graphs)
        self.links: set[int] = set()
        self.ctx = ExecContext(profile.ggml, DequantCache())
        self._checks = {c: request_checks(c, message_spec(profile, c).request) for c in profile.commands}

    # -- requests ---------------------------------------------------------------------------------

    def check(self, req: Request) -> None:
        """Raise the RemoteProtocolError of the first rule `req` breaks (Declined: answer it
        locally).  Called once the head has arrived; a streamed data tail is sized by then."""
        self.stats.count("requests")
        command = req.command
        if command is C.COMM_INIT:
            self._link_policy(req)
        resent = self._resent(req)
        broken = self._checks[command].first_violation(self, req.body, None if resent else req.graph)
        size = req.data_size if req.data is None else len(req.data)
        if broken is None and size is not None:
            broken = sized_violation(self, command, req.body, size)
        if broken is None and command is C.SET_TENSOR_HASH and self.buffer(req.body.tensor.buffer) is None:
            broken = (rule("set_tensor_hash.buffer"), Violation("tensor.buffer", req.body.tensor.buffer,
                                                                 "a live buffer of this connection is required"))
        if broken is not None:
            raise as_error(command, broken)
        if req.graph is not None and resent is None:
            self._plan(req, req.graph)

    def _resent(self, req: Request) -> StoredGraph | None:
        """The device's last graph if `req` carries the very same one (clients before 7.0
        resend it for every token): its verdict still holds, and it is kept under the new uid."""
        if req.graph is None:
            return None
        device = req.body.get("device", 0)
        last = self.graphs.last(device)
        if last is None or last.graph != req.graph:
            return None
        self.graphs.keep(device, req.body.get("uid"), last)
        return last

    def _plan(self, req: Request, graph: Graph) -> None:
        """The executor's own validation of every node (of `graph`, the request's), without
        computing anything."""
        device = req.body.get("device", 0)
        previous = self.graphs.last(device)
        try:
            plan = plan_graph(graph, self.buffers, self.profile, self.ctx,
                              previous.plan if previous is not None else None)
        except ExecutionError as exc:
            raise RemoteProtocolError(str(exc), command="GRAPH_COMPUTE", section=exc.rule.section,
                                      key=exc.rule.key) from None
        self.graphs.keep(device, req.body.get("uid"), StoredGraph(plan, graph))

    def _link_policy(self, req: Request) -> None:
        body = req.body
        if body.rank == 0 and not self.settings.listen:
            self.stats.count("declined", "rank 0 not allowed to listen")
            raise Declined(local_reply(C.COMM_INIT), "rank 0 would listen on every interface; allow it with "
                                                     "--link-listen")
        host = host_of(body.host)
        if body.rank > 0 and not self._admitted(host):
            self.stats.count("declined", "peer host not admitted")
            raise Declined(local_reply(C.COMM_INIT), f"rank 0's host {host!r} is not admitted (--link-allow)")

    def _admitted(self, host: str) -> bool:
        try:
            self.settings.links.resolve(host, 0)
        except Exception:  # LinkError: not admitted or not resolvable
            return False
        return True

    # -- what the replies teach -------------------------------------------------------------------

    def learn(self, req: Request, reply: Reply | None) -> list[tuple[Command, dict]]:
        """Update the state from a request that went through and its reply; the requests the
        guard must make itself to complete its view (a new buffer's base)."""
        command, body = req.command, req.body
        if command is C.ALLOC_BUFFER and reply is not None and reply.body.remote_ptr:
            self.sizes[reply.body.remote_ptr] = reply.body.remote_size
            return [(C.BUFFER_GET_BASE, {"remote_ptr": reply.body.remote_ptr})]
        if command is C.BUFFER_GET_BASE and reply is not None:
            self._known(body.remote_ptr, reply.body.base_ptr)
        elif command is C.FREE_BUFFER:
            self.buffers.pop(body.remote_ptr, None)
            self.sizes.pop(body.remote_ptr, None)
            self.graphs.discard_using(body.remote_ptr)
        elif command is C.COMM_INIT and reply is not None and reply.body.ok:
            self.links.add(body.device)
        elif command is C.COMM_FREE:
            self.links.discard(body.device)
        return []

    def _known(self, handle: int, base: int) -> None:
        size = self.sizes.get(handle)
        if size is not None and handle not in self.buffers:
            self.buffers[handle] = Buffer(handle, base, size, None, reserved_memory(size))
