"""Translation between two protocol versions, for a bridge between an upstream client of one
version and a server of another (sans-IO: bytes in, bytes out).

Everything that differs between two versions is already data: the profile columns (HELLO
shape, device fields, SET_TENSOR variant, which replies exist, rpc_tensor's last field) and
each release's ggml enums (op numbers, unary and GLU sub-ops, type count, the COMPUTE
flag).  `Translation` turns those tables into lookup arrays once per pair of versions, and
`BridgeConnection` applies them to one client connection's requests and the server's
replies.  It holds no version knowledge of its own: adding a version adds a profile row and
a release table, nothing here.

What one side lacks is emulated from what the other has:
- DEVICE_COUNT towards a single-device server: answered 1;
- GRAPH_RECOMPUTE towards a server without it: the stored graph is sent again;
- MEMSET_TENSOR towards a server without it: SET_TENSOR of `size` copies of the byte;
- replies one side has and the other lacks (empty acks, the 2.0.0 graph status): answered
  locally, or read from the server and dropped;
- a graph of a release that marks nodes to compute (COMPUTE flag) for one that computes
  every node: only the marked nodes are sent, and the other way round every node is marked;
- rpc_tensor's `use_count` (5.1.0+, used by the server to decide fusions) is counted from
  the graph's links when the client's version has only padding there;
- an op_params word a newer ggml reads and the client's left unset (SSM_SCAN's snapshot
  count) gets the value that asks for the older behaviour (Param.legacy);
- a tensor without a buffer is sent without an address: 2.0.0 clients put their own host
  address there, which every later server rejects (graph.null-buffer-data).
An op, sub-op or type without a counterpart on the other side is refused (Untranslatable),
never mistranslated.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from construct import Container

from .commands import ROW, Absent, Command
from .comm import host_of
from .errors import LocalProtocolError
from .framing import Data, Reply, Request, data_reply_header, encode_reply, encode_request
from .graph import Graph
from .columns import GRAPH_CACHE_LIMIT, Devices, Graphs
from .messages import HASH_THRESHOLD, graph_fields, hello_reply, local_reply, message_spec
from .ops import CATALOGUE
from .tensor import RPC_TENSOR_DTYPE, make_tensor
from .versions import Profile

C = Command
_SUB_OPS = {"UNARY": "unary_ops", "GLU": "glu_ops"}  # ops whose op_params[0] names a sub-op


class Untranslatable(LocalProtocolError):
    """A request has no counterpart in the server's version (an op, sub-op, type or device
    it lacks).  The bridge closes the client's connection with this message."""


def _name_map(source: tuple[str, ...], target: tuple[str, ...]) -> np.ndarray:
    """source value -> target value of the same name (-1: the target lacks it)."""
    where = {name: i for i, name in enumerate(target)}
    return np.array([where.get(name, -1) for name in source], dtype=np.int64)


@dataclass(frozen=True)
class Translation:
    """The lookup tables between a client's profile and a server's."""

    client: Profile
    server: Profile
    # derived from the two profiles in __post_init__ (not compared, hashed or shown)
    ops: np.ndarray = field(init=False, repr=False, compare=False)
    sub_ops: dict[str, np.ndarray] = field(init=False, repr=False, compare=False)
    types_ok: np.ndarray = field(init=False, repr=False, compare=False)
    new_words: tuple[tuple[int, int, int, bool], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        c, s = self.client.ggml, self.server.ggml
        object.__setattr__(self, "ops", _name_map(c.ops, s.ops))
        object.__setattr__(self, "sub_ops", {op: _name_map(getattr(c, field), getattr(s, field))
                                             for op, field in _SUB_OPS.items() if op in c.ops})
        # type numbers are stable across releases; a type must be valid in both
        valid = np.array([c.tensor_type(v) is not None and s.tensor_type(v) is not None
                          for v in range(max(c.type_count, s.type_count))])
        object.__setattr__(self, "types_ok", valid)
        # op_params words one release reads and the other does not: (client op value, word, legacy value, the
        # server reads it) -- written with the legacy value for a server that reads it, refused otherwise
        words = [(c.op_value(op), param.index, param.legacy, param.read_by(self.server.name))
                 for op, spec in CATALOGUE.items() if op in c.ops and op in s.ops
                 for param in spec.params
                 if param.legacy is not None and param.read_by(self.client.name) != param.read_by(self.server.name)]
        object.__setattr__(self, "new_words", tuple(words))

    # -- single tensors ---------------------------------------------------------------------------

    def tensor(self, tensor: Container) -> Container:
        """An rpc_tensor of the client's layout and enums, in the server's."""
        c, s = self.client.ggml, self.server.ggml
        fields = {k: v for k, v in tensor.items() if not k.startswith("_") and k not in ("padding", "use_count")}
        if tensor.type >= len(self.types_ok) or not self.types_ok[tensor.type]:
            raise Untranslatable(f"tensor {_name(tensor)!r} has type {tensor.type}, which ggml {s.release} "
                                 f"(protocol {self.server.name}) does not have", field="type", value=tensor.type)
        fields["op"] = self._op(tensor.op, tensor)
        name = c.op_name(tensor.op)
        if name is not None and name in self.sub_ops and tensor.op_params[0] >= 0:
            params = list(tensor.op_params)
            params[0] = self._sub_op(name, params[0], tensor)
            fields["op_params"] = params
        fields["flags"] = self._flags(np.array([tensor.flags]), np.array([tensor.op != 0]))[0]
        if tensor.buffer == 0:
            fields["data"] = 0
        if self.new_words:
            words = np.array(fields.get("op_params", tensor.op_params), dtype=np.int32)[None]
            self._words(np.array([tensor.op]), words, lambda row: tensor)
            fields["op_params"] = words[0].tolist()
        return make_tensor(self.server.tensor, **fields)

    def _op(self, value: int, tensor) -> int:
        if not 0 <= value < len(self.ops) or self.ops[value] < 0:
            raise Untranslatable(f"op {self.client.ggml.op_name(value) or value} of tensor {_name(tensor)!r} does "
                                 f"not exist in ggml {self.server.ggml.release} (protocol {self.server.name})",
                                 field="op", value=value)
        return int(self.ops[value])

    def _sub_op(self, op: str, value: int, tensor) -> int:
        table = self.sub_ops[op]
        if not 0 <= value < len(table) or table[value] < 0:
            names = getattr(self.client.ggml, _SUB_OPS[op])
            shown = names[value] if 0 <= value < len(names) else value
            raise Untranslatable(f"{op} op {shown} of tensor {_name(tensor)!r} does not exist in ggml "
                                 f"{self.server.ggml.release} (protocol {self.server.name})", field="op_params[0]",
                                 value=value)
        return int(table[value])

    def _words(self, ops: np.ndarray, params: np.ndarray, tensor_at) -> None:
        """Op_params words only one of the two releases reads (in place): the legacy value for
        a server whose ggml reads a word the client's left unset; towards a server whose ggml
        ignores a word, only the legacy value (or an unset word) means the same there."""
        for op, index, legacy, server_reads in self.new_words:
            rows = np.flatnonzero(ops == op)
            if server_reads:
                params[rows, index] = legacy
                continue
            bad = rows[(params[rows, index] != legacy) & (params[rows, index] != 0)]
            if len(bad):
                row = int(bad[0])
                name = self.client.ggml.op_name(op)
                raise Untranslatable(f"{name} of tensor {_name(tensor_at(row))!r} asks for op_params[{index}] = "
                                     f"{int(params[row, index])}, which ggml {self.server.ggml.release} (protocol "
                                     f"{self.server.name}) ignores: it computes what {legacy} asks for",
                                     field=f"op_params[{index}]", value=int(params[row, index]))

    def _flags(self, flags: np.ndarray, computed: np.ndarray) -> np.ndarray:
        """Tensor flags: the COMPUTE bit exists in one release and not the other."""
        mine, theirs = self.client.ggml.compute_flag, self.server.ggml.compute_flag
        if mine and not theirs:
            return flags & ~mine
        if theirs and not mine:
            return np.where(computed, flags | theirs, flags)
        return flags

    # -- graphs -----------------------------------------------------------------------------------

    def graph(self, graph: Graph) -> Graph:
        """A graph of the client's layout and enums, in the server's (whole arrays at once)."""
        c, s = self.client.ggml, self.server.ggml
        source = graph.tensors
        out = np.zeros(len(source), dtype=RPC_TENSOR_DTYPE[self.server.tensor])
        for name in _field_names(source):
            if name in _field_names(out) and name not in ("padding", "use_count"):
                out[name] = source[name]
        types = source["type"]
        bad = (types >= len(self.types_ok)) | ~self.types_ok[np.minimum(types, len(self.types_ok) - 1)]
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise Untranslatable(f"tensor {_name(source[row])!r} has type {int(types[row])}, which ggml {s.release} "
                                 f"does not have", field="type", value=int(types[row]))
        ops = source["op"].astype(np.int64)
        unknown = (ops >= len(self.ops)) | (self.ops[np.minimum(ops, len(self.ops) - 1)] < 0)
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            self._op(int(ops[row]), source[row])  # raises, naming the op
        out["op"] = self.ops[ops]
        for op, table in self.sub_ops.items():
            rows = np.flatnonzero(ops == c.op_value(op))
            for row in rows.tolist():
                out["op_params"][row, 0] = self._sub_op(op, int(source["op_params"][row, 0]), source[row])
        nodes = graph.nodes
        node_rows = graph.node_rows
        is_node = np.zeros(len(source), bool)
        is_node[node_rows[node_rows >= 0]] = True
        if c.compute_flag and not s.compute_flag:  # the server computes every node it is sent
            marked = (source["flags"][np.maximum(node_rows, 0)] & c.compute_flag) != 0
            nodes = nodes[(node_rows < 0) | marked]
        self._words(ops, out["op_params"], lambda row: source[row])
        out["data"][source["buffer"] == 0] = 0  # no buffer, no address (2.0.0 clients send their own there)
        out["flags"] = self._flags(source["flags"], is_node & (ops != 0))
        if "use_count" in _field_names(out):
            if "use_count" in _field_names(source):
                out["use_count"] = source["use_count"]
            else:  # what ggml counts when it builds a graph: how many src[] slots name the tensor
                links = graph.link_rows[:, :-1]
                out["use_count"] = np.bincount(links[links >= 0], minlength=len(source))
        return Graph(np.ascontiguousarray(nodes), out)


def _field_names(array: np.ndarray) -> tuple[str, ...]:
    """The fields of a structured array of rpc_tensors."""
    names = array.dtype.names
    if names is None:
        raise TypeError(f"expected a structured array of rpc_tensors, got dtype {array.dtype}")
    return names


def _name(tensor) -> str:
    raw = bytes(tensor["name"])
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


# -- one connection ---------------------------------------------------------------------------------


@dataclass
class ToServer:
    """Bytes for the server; `reply` is the command whose server reply is due (None: none),
    with the size of a data reply, and whether that reply goes back to the client."""

    parts: list
    reply: Command | None = None
    size: int | None = None
    relay: bool = True


class _Slot:
    """One reply the client awaits, in order: the buffers ready for it, and how many server
    replies are still to feed it (0: complete once `parts` are out).  A data reply streamed
    from the server stays open until its last piece."""

    __slots__ = ("parts", "pending", "size", "opened", "streaming")

    def __init__(self, parts: list | None = None, pending: int = 0, size: int = 0) -> None:
        self.parts = parts if parts is not None else []
        self.pending = pending  # server replies still to come into this slot
        self.size = size  # the client reply's data size, when several server replies make it up
        self.opened = False  # (those) its header is out
        self.streaming = False  # a streamed server reply's pieces are passing through


class _DataRoute:
    """Where the pieces of a streamed request's data go: into segments, one per request sent
    to the server for it, each opened by that request's head (a plain relay: one segment,
    whose head went out with the request)."""

    def __init__(self, segments: list[tuple[list, int]]) -> None:
        self.segments = deque(segments)

    def route(self, piece: memoryview) -> list:
        out = []
        while len(piece):
            head, left = self.segments[0]
            if head:
                out += head
                head.clear()
            n = min(left, len(piece))
            out.append(piece[:n])
            piece = piece[n:]
            if n == left:
                self.segments.popleft()
            else:
                self.segments[0] = (head, left - n)
        return out

    def untouched(self, nbytes: int) -> bool:
        """Whether the next `nbytes` go on as they are, no head between them."""
        return bool(self.segments) and not self.segments[0][0] and self.segments[0][1] >= nbytes

    def passed(self, nbytes: int) -> None:
        """`nbytes` went on as they are (`untouched`), outside `route`."""
        head, left = self.segments[0]
        if left == nbytes:
            self.segments.popleft()
        else:
            self.segments[0] = (head, left - nbytes)


class BridgeConnection:
    """One client connection through the bridge.

    `request(req)` takes a request parsed in the client's profile and returns the ToServer
    messages to send; `server_reply(reply)` takes a reply parsed in the server's profile.
    Bytes for the client come out of `to_client()` in the order the client expects its
    replies: answers made here wait behind replies still due from the server.

    Graphs: the bridge keeps every graph the client could name in GRAPH_RECOMPUTE (in the
    server's layout, under the client's key: its uid, or None for the device's last graph,
    mirroring the client's cache limit), and per device the key of the graph the server holds
    as its last one, so that a GRAPH_RECOMPUTE becomes what the server understands: the same
    request, the server's uid for that graph, or the graph sent again.
    """

    def __init__(self, translation: Translation) -> None:
        self.t = translation
        self.client, self.server = translation.client, translation.server
        self._queue: deque[_Slot] = deque()  # per reply the client awaits
        self._relays: deque[_Slot | None] = deque()  # per server reply due: its client slot, or None to drop
        self._graphs: dict[int, dict[int | None, Graph]] = {}  # device -> client key -> graph
        self._held: dict[int, tuple[int | None, int]] = {}  # device -> (client key, server uid) of its last graph
        self._uids = itertools.count(1)  # uids the bridge gives graphs of a client that names none
        self.releases: list[tuple[str, int]] = []  # links the shell must connect to and close (see _decline_link)
        self._route: _DataRoute | None = None  # the streamed data of the current request
        self._reply_route: _Slot | None = None  # the slot of the current streamed reply (None: dropped)

    # -- client -> server ----------------------------------------------------------------------------

    def request(self, req: Request) -> list[ToServer]:
        if req.command not in self.server.commands:
            return self._absent(req)
        own = _OWN_HANDLERS.get(req.command)
        if own is not None:
            return own(self, req)
        return self._forward(req.command, self._body(req))

    def _absent(self, req: Request) -> list[ToServer]:
        """A command the server's version lacks: what its row says a bridge does."""
        row = ROW[req.command]
        if row.absent is Absent.EMULATE:
            return EMULATIONS[req.command](self, req)
        if row.absent is Absent.DECLINE:
            return DECLINES[req.command](self, req)
        if row.absent is Absent.ANSWER:
            self._answer(req.command, local_reply(req.command))
            return []
        if row.absent is Absent.DROP:
            return []
        raise Untranslatable(f"has no counterpart in protocol {self.server.name}", command=req.command.name)

    def _forward(self, command: Command, body, *, data=None, graph=None, data_size=None) -> list[ToServer]:
        """Send `command` to the server and route its reply, or answer the client here when
        only the client's version has a reply.  With `data_size` the data is streamed after
        the head (see `data`)."""
        ours, theirs = message_spec(self.client, command), message_spec(self.server, command)
        out = ToServer(encode_request(self.server, command, body, data=data, graph=graph, data_size=data_size))
        if theirs.has_reply:
            out.reply, out.size = command, theirs.data_size(body)
            out.relay = ours.has_reply
            self._relays.append(self._slot(pending=1) if ours.has_reply else None)
        elif ours.has_reply:
            self._answer(command, local_reply(command))  # the server closes on failure
        return [out]

    def _body(self, req: Request, command: Command | None = None, data_size: int = 0) -> dict:
        """The request's fixed fields in the server's variant of `command` (default: the
        request's own): device fields, SET_TENSOR's cache flag, GET_ALLOC_SIZE's sources,
        every rpc_tensor translated."""
        command = command or req.command
        body = {k: v for k, v in req.body.items() if not k.startswith("_")}
        device = body.pop("device", 0)
        if device and self.server.devices is Devices.SINGLE:
            raise Untranslatable(f"device {device} does not exist on a single-device server "
                                 f"(protocol {self.server.name})", command=req.command.name, field="device",
                                 value=device)
        spec = message_spec(self.server, command).request
        if _has_field(spec, "device"):
            body["device"] = device
        for key in ("tensor", "src", "dst"):
            if key in body:
                body[key] = self.t.tensor(body[key])
        if _has_field(spec, "srcs"):
            srcs = [self.t.tensor(s) for s in body.get("srcs", ())]
            body["srcs"] = srcs + [make_tensor(self.server.tensor, ne=[0, 0, 0, 0])] * (10 - len(srcs))
        if _has_field(spec, "cache_flag") and "cache_flag" not in body:
            body["cache_flag"] = int(data_size > HASH_THRESHOLD)  # plain-SET_TENSOR servers cached above it
        return {k: v for k, v in body.items() if _has_field(spec, k)}

    def _on_hello(self, req: Request) -> list[ToServer]:
        self._answer(C.HELLO, hello_reply(self.client))  # the bridge speaks TCP only
        return []

    def _on_data_request(self, req: Request) -> list[ToServer]:
        """SET_TENSOR, SET_TENSOR_2D: the head translated, the data tail passed on as it is."""
        if req.data is None:  # streamed: the pieces follow (`data`)
            size = _streamed_size(req)
            self._route = _DataRoute([([], size)])
            return self._forward(req.command, self._body(req, data_size=size), data_size=size)
        return self._forward(req.command, self._body(req, data_size=len(req.data)), data=req.data)

    def data(self, piece: Data) -> list:
        """The bytes to send the server for a piece of the current request's streamed data."""
        if self._route is None:
            raise LocalProtocolError("a data piece arrived while no request's data was streaming")
        parts = self._route.route(piece.data)
        if piece.end:
            self._route = None
        return parts

    def data_untouched(self, nbytes: int) -> bool:
        """Whether the next `nbytes` of the current request's streamed data go to the server
        exactly as the client sent them, so that a shell may pass them on without showing
        them to `data` (then it calls `data_passed`)."""
        return self._route is not None and self._route.untouched(nbytes)

    def data_passed(self, nbytes: int) -> None:
        if self._route is None:
            raise LocalProtocolError(f"{nbytes} bytes of data passed on, but no request's data is streaming")
        self._route.passed(nbytes)

    def _on_free_buffer(self, req: Request) -> list[ToServer]:
        self._held.clear()  # the server discards the graphs that reach the buffer: send them again when named
        return self._forward(C.FREE_BUFFER, self._body(req))

    # -- graphs ----------------------------------------------------------------------------------------

    def _client_key(self, req: Request) -> int | None:
        return req.body.get("uid") if self.client.graphs is Graphs.UID else None

    def _on_graph_compute(self, req: Request) -> list[ToServer]:
        device, key = req.body.get("device", 0), self._client_key(req)
        if req.graph is None:
            raise LocalProtocolError("carries no graph", command=req.command.name, field="graph")
        graph = self.t.graph(req.graph)
        kept = self._graphs.setdefault(device, {})
        if self.client.graphs is Graphs.LAST:
            kept[None] = graph
        elif key:
            if len(kept) >= GRAPH_CACHE_LIMIT:
                kept.clear()  # as the client does with its record of the server's cache
            kept[key] = graph
        return self._send_graph(device, key, graph)

    def _send_graph(self, device: int, key: int | None, graph: Graph) -> list[ToServer]:
        if self.client.graphs is not Graphs.UID:
            uid = next(self._uids)
        elif key is None:
            raise Untranslatable("names no graph uid", command="GRAPH_COMPUTE", field="uid")
        else:
            uid = key
        self._held[device] = (key, uid)
        return self._forward(C.GRAPH_COMPUTE, graph_fields(self.server, device, uid), graph=graph)

    def _on_graph_recompute(self, req: Request) -> list[ToServer]:
        device, key = req.body.device, self._client_key(req)
        held = self._held.get(device)
        if held is not None and held[0] == key:
            return self._forward(C.GRAPH_RECOMPUTE, graph_fields(self.server, device, held[1]))
        return self._resend_graph(req)

    def _resend_graph(self, req: Request) -> list[ToServer]:
        """GRAPH_RECOMPUTE of a graph the server does not hold as its last one (or towards a
        server without GRAPH_RECOMPUTE): the stored graph, sent again."""
        device, key = req.body.device, self._client_key(req)
        graph = self._graphs.get(device, {}).get(key)
        if graph is None:
            what = f"uid {key}" if key is not None else "a graph"
            raise Untranslatable(f"GRAPH_RECOMPUTE names {what} that device {device} does not hold",
                                 command="GRAPH_RECOMPUTE", field="uid" if key is not None else "device")
        return self._send_graph(device, key, graph)

    # -- emulations ------------------------------------------------------------------------------------

    def _memset_by_set_tensor(self, req: Request) -> list[ToServer]:
        """MEMSET_TENSOR towards a server without it: SET_TENSOR of `size` copies of the byte."""
        data = bytes([req.body.value]) * req.body.size
        sent = self._forward(C.SET_TENSOR, self._body(req, C.SET_TENSOR), data=data)
        if message_spec(self.client, C.MEMSET_TENSOR).has_reply:
            self._answer(C.MEMSET_TENSOR, {})
        return sent

    def _copies(self, req: Request, command: Command) -> list[dict]:
        """The bodies of one plain `command` per copy of a 2-D transfer."""
        bodies = []
        for index in range(req.body.n_copies):
            body = self._body(req, command, data_size=req.body.size)
            body["offset"] = req.body.offset + index * req.body.stride
            if command is C.GET_TENSOR:
                body["size"] = req.body.size
            bodies.append(body)
        return bodies

    def _set_2d_by_set_tensor(self, req: Request) -> list[ToServer]:
        """SET_TENSOR_2D towards a server without it: one SET_TENSOR per copy (streamed: each
        head goes out when its copy's first byte does)."""
        size = req.body.size
        bodies = self._copies(req, C.SET_TENSOR)
        if req.data is None:
            self._route = _DataRoute([(list(encode_request(self.server, C.SET_TENSOR, body, data_size=size)), size)
                                      for body in bodies])
            return []
        data = memoryview(req.data)
        return [message for index, body in enumerate(bodies)
                for message in self._forward(C.SET_TENSOR, body, data=data[index * size:(index + 1) * size])]

    def _get_2d_by_get_tensor(self, req: Request) -> list[ToServer]:
        """GET_TENSOR_2D towards a server without it: one GET_TENSOR per copy, their replies
        joined into the client's one."""
        gather = self._slot(pending=req.body.n_copies, size=req.body.size * req.body.n_copies)
        out = []
        for body in self._copies(req, C.GET_TENSOR):
            out.append(ToServer(encode_request(self.server, C.GET_TENSOR, body), C.GET_TENSOR, body["size"]))
            self._relays.append(gather)
        return out

    def _decline_link(self, req: Request) -> list[ToServer]:
        """COMM_INIT towards a server without links: ok=0, on which the upstream client falls
        back to reducing through itself.  Rank 0 of the pair, if a real one, waits in accept()
        for this rank until it connects: the shell is asked to connect to it and hang up, so
        that it answers its own client instead of hanging it."""
        self._answer(C.COMM_INIT, local_reply(C.COMM_INIT))
        host = host_of(req.body.host)
        if req.body.rank > 0 and host:
            self.releases.append((host, req.body.port))
        return []

    # -- server -> client ----------------------------------------------------------------------------

    def server_reply(self, reply: Reply) -> None:
        """A reply from the server, in the order the requests were sent.  A streamed data
        reply's pieces follow through `reply_data`."""
        slot = self._relays.popleft()
        streamed = reply.data_size is not None
        if streamed:
            self._reply_route = slot
        if slot is None:
            return  # a reply the client's version does not have
        slot.pending -= 1
        if slot.size:  # one of the server replies that make up one client data reply
            if not slot.opened:
                slot.parts.append(data_reply_header(slot.size))
                slot.opened = True
            if not streamed:
                slot.parts.append(reply.data)
        elif reply.data_size is not None:  # streamed
            slot.parts.append(data_reply_header(reply.data_size))
        else:
            body = {k: v for k, v in reply.body.items() if not k.startswith("_")}
            slot.parts += encode_reply(self.client, reply.command, body, data=reply.data)
        if streamed and reply.data_size:
            slot.streaming = True  # open until its last piece

    def reply_data(self, piece: Data) -> list:
        """The bytes to send the client for a piece of the current streamed reply (sent after
        `to_client()` has given out what precedes it)."""
        slot = self._reply_route
        if piece.end:
            self._reply_route = None
            if slot is not None:
                slot.streaming = False
        return [] if slot is None else [piece.data]

    def reply_data_untouched(self) -> bool:
        """Whether the current streamed reply's data go to the client exactly as the server
        sends them (a shell may then pass them on without `reply_data`, whose end piece it
        still gives)."""
        return self._reply_route is not None

    def _slot(self, parts: list | None = None, *, pending: int = 0, size: int = 0) -> _Slot:
        slot = _Slot(parts, pending, size)
        self._queue.append(slot)
        return slot

    def _answer(self, command: Command, body: dict) -> None:
        self._slot(encode_reply(self.client, command, body))

    def to_client(self) -> list:
        """The buffers now due to the client, in order; a reply still fed by the server keeps
        its place at the head of the queue."""
        out: list = []
        while self._queue:
            head = self._queue[0]
            out += head.parts
            head.parts = []
            if head.pending or head.streaming:
                break
            self._queue.popleft()
        return out


# Commands the bridge translates itself, when the server has them.
_OWN_HANDLERS = {
    C.HELLO: BridgeConnection._on_hello,
    C.SET_TENSOR: BridgeConnection._on_data_request,
    C.SET_TENSOR_2D: BridgeConnection._on_data_request,
    C.FREE_BUFFER: BridgeConnection._on_free_buffer,
    C.GRAPH_COMPUTE: BridgeConnection._on_graph_compute,
    C.GRAPH_RECOMPUTE: BridgeConnection._on_graph_recompute,
}
# How each command whose row says Absent.EMULATE is carried out towards a server without it.
EMULATIONS = {
    C.GRAPH_RECOMPUTE: BridgeConnection._resend_graph,
    C.MEMSET_TENSOR: BridgeConnection._memset_by_set_tensor,
    C.SET_TENSOR_2D: BridgeConnection._set_2d_by_set_tensor,
    C.GET_TENSOR_2D: BridgeConnection._get_2d_by_get_tensor,
}
# How each command whose row says Absent.DECLINE is declined.
DECLINES = {
    C.COMM_INIT: BridgeConnection._decline_link,
}


def _streamed_size(req: Request) -> int:
    """The data size a request whose data tail is streamed announces."""
    if req.data_size is None:
        raise LocalProtocolError("has neither data nor a streamed data size", command=req.command.name)
    return req.data_size


def _has_field(schema, name: str) -> bool:
    return any(sub.name == name for sub in schema.subcons)
