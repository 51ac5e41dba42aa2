"""A relay that times the graphs a client sends, as the server computes them.

Upstream's op test program times its `perf` mode with `ggml_backend_graph_compute`, which
for an RPC device returns once the request is sent: GRAPH_COMPUTE and GRAPH_RECOMPUTE have no
reply after 2.0.0, and the client's synchronize only waits for its own send queue.  Through
RPC its timing loop therefore measures how fast the client writes requests, and queues graphs
on the server far faster than they are computed (observed with 0.3.36's program against the
real 7.0.0 server: ARGMAX 32x10 at "0.55 us/run", 222 graphs of 8192 nodes sent in its one
second; a SUM_ROWS case still had not finished after 13 minutes of backlog).

`GraphMeter` sits between the program and a server and makes each graph it times a round
trip: it forwards the graph, sends GET_ALIGNMENT behind it (served in order, so answered once
the graph is computed) and keeps that reply to itself.  A case is what the program sends
between two requests that are neither graphs nor SET_TENSOR (it may redraw inputs between
runs): a small warm-up graph, then the timed graph, which repeats the op's node (the count of
its last node is the runs per graph), first as GRAPH_COMPUTE, then as GRAPH_RECOMPUTE or as
the same GRAPH_COMPUTE bytes again (clients that never recompute).  The timed graph's first execution
is the measurement when it takes the whole `budget` (one second, as the program's own loop);
otherwise it is a warm-up and the repeats after it are timed until the budget is spent.
Further repeats are dropped.  Every other request is forwarded unchanged, with its reply.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass

import numpy as np

from ggml_rpc_spec.netio import ThreadedTCPService, receive_exactly, send_all
from ggml_rpc_spec.protocol import Command, build_request, message_spec
from ggml_rpc_spec.protocol.graph import decode_graph
from ggml_rpc_spec.protocol.messages import device_fields
from ggml_rpc_spec.protocol.versions import Profile

_HEADER = struct.Struct("<BQ")  # a request's command byte and payload size
_SIZE = struct.Struct("<Q")  # a reply's payload size
GRAPHS = (Command.GRAPH_COMPUTE, Command.GRAPH_RECOMPUTE)
IN_A_CASE = (*GRAPHS, Command.SET_TENSOR)  # what a perf loop sends (inputs redrawn between runs)


@dataclass
class GraphTiming:
    """One case as the meter saw it: the runs of its graph, the time of the graph's first
    execution, and the timed repeats after it."""

    runs: int = 0  # the op's executions per graph
    first: float | None = None
    repeats: int = 0
    seconds: float = 0.0

    def start(self, runs: int) -> None:
        """A new graph in this case (the program's warm-up graph holds the op once, the timed
        one repeats it): only the last one counts."""
        self.runs, self.first, self.repeats, self.seconds = runs, None, 0, 0.0

    def wants_more(self, budget: float) -> bool:
        """Whether to compute (and time) the next execution: the first always; it is the
        measurement when it took the whole budget, else a warm-up followed by timed repeats."""
        if self.first is None:
            return True
        return self.first < budget and (self.repeats == 0 or self.seconds < budget)

    def add(self, seconds: float) -> None:
        if self.first is None:
            self.first = seconds
        else:
            self.repeats += 1
            self.seconds += seconds

    @property
    def us_per_run(self) -> float | None:
        if self.repeats:
            return self.seconds / (self.repeats * self.runs) * 1e6
        return None if self.first is None else self.first / self.runs * 1e6


class GraphMeter(ThreadedTCPService):
    """Listen on 127.0.0.1, relay to `target` (a server speaking `profile`) and append a
    GraphTiming per case to `cases`, in the order the cases ran."""

    kind = "graph-meter"

    def __init__(self, target: str, profile: Profile, *, budget: float = 1.0) -> None:
        host, port = target.rsplit(":", 1)
        self.target, self.profile, self.budget = (host, int(port)), profile, budget
        self.cases: list[GraphTiming] = []
        self._specs = {int(c): message_spec(profile, c) for c in profile.commands}
        self._sync = build_request(profile, Command.GET_ALIGNMENT, device_fields(profile, 0))
        alignment_reply = message_spec(profile, Command.GET_ALIGNMENT).reply_size
        if alignment_reply is None:  # every version answers GET_ALIGNMENT with a fixed reply
            raise ValueError(f"GET_ALIGNMENT has no fixed reply in protocol {profile.name}")
        self._sync_reply = _SIZE.size + alignment_reply
        self._active = 0  # connections being relayed
        self._done = threading.Event()  # relay nothing more (see finish)
        self._changed = threading.Condition()  # notified when a case starts or a connection ends
        super().__init__(("127.0.0.1", 0))

    def wait_past(self, n: int, timeout: float | None = None) -> bool:
        """Wait until the program has gone past its `n` first cases (the next one started, or
        every connection ended): only then are their timings final.  False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.cases) > n or self._active == 0, timeout)

    def finish(self) -> None:
        """Relay nothing more: what the program sent and the server has not seen yet is
        dropped (a program stopped early may have queued graphs of minutes)."""
        self._done.set()

    def wait_done(self, timeout: float | None = None) -> bool:
        """Wait until no connection is being relayed any more (once the program has exited:
        until the graph in flight, if any, is computed).  False on timeout.  A connection
        counts from its handler's start, before the meter forwards its HELLO."""
        with self._changed:
            return self._changed.wait_for(lambda: self._active == 0, timeout)

    def handle(self, sock: socket.socket, name: str) -> None:
        with self._changed:
            self._active += 1
        try:
            self._relay(sock)
        except OSError:
            pass  # the program finished or died; the server's side ends with it
        finally:
            with self._changed:
                self._active -= 1
                self._changed.notify_all()

    def _relay(self, sock: socket.socket) -> None:
        with socket.create_connection(self.target) as server:
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            case, graph = None, None
            while not self._done.is_set():
                head = receive_exactly(sock, _HEADER.size)
                cmd, size = _HEADER.unpack(head)
                spec = self._specs.get(cmd)
                payload = receive_exactly(sock, size) if size else b""
                if spec is None or spec.command not in IN_A_CASE:
                    case = None
                if spec is not None and spec.command in GRAPHS:
                    if spec.command is Command.GRAPH_COMPUTE and payload != graph:
                        graph = payload  # GRAPH_RECOMPUTE runs the last one again
                        if case is None:
                            case = GraphTiming()
                            with self._changed:
                                self.cases.append(case)
                                self._changed.notify_all()
                        case.start(_runs(self.profile, graph))
                    if case is not None and case.wants_more(self.budget):
                        started = time.perf_counter()
                        send_all(server, [head, payload, self._sync])
                        receive_exactly(server, self._sync_reply)  # in order: the graph is computed
                        case.add(time.perf_counter() - started)
                    continue  # beyond the budget: dropped
                send_all(server, [head, payload])
                if spec is not None and spec.has_reply:
                    (reply_size,) = _SIZE.unpack(reply := receive_exactly(server, _SIZE.size))
                    send_all(sock, [reply, receive_exactly(server, reply_size) if reply_size else b""])


def _runs(profile: Profile, payload) -> int:
    """How many times the graph's last node occurs: a perf graph repeats the op's node."""
    head = message_spec(profile, Command.GRAPH_COMPUTE).request_size
    nodes = decode_graph(profile, memoryview(payload)[head:]).nodes
    return int(np.count_nonzero(nodes == nodes[-1])) if len(nodes) else 0
