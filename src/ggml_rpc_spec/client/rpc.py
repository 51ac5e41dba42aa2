"""A blocking Python client for any GGML RPC server, in any supported protocol version.

    with RPCClient("127.0.0.1:50052") as rpc:            # version negotiated from HELLO
        buf = rpc.alloc_buffer(1 << 20)
        t = rpc.tensor_for(buf, 0, np.arange(16, dtype=np.float32))
        rpc.upload(t, np.arange(16, dtype=np.float32))
        print(rpc.read_array(t))

One method per command; bulk data goes out with vectored sends and comes back with
recv_into a caller-provided or fresh buffer, never through intermediate copies.  When the
server closes the connection instead of answering (its way of rejecting a request), the
error says after which request.
"""

from __future__ import annotations

import itertools
import logging
import socket
from dataclasses import dataclass

import numpy as np
from construct import Container

from ggml_rpc_spec.protocol import (
    CLOSED,
    NEED_DATA,
    NEWEST,
    Command,
    Graph,
    ReplyParser,
    encode_request,
    make_tensor,
    message_spec,
    profile_for,
)
from ggml_rpc_spec.protocol.errors import LocalProtocolError, PeerClosed, ProtocolError, RemoteProtocolError, UnsupportedVersion
from ggml_rpc_spec.protocol.ggml import ELEMENT_DTYPES, TYPE_BY_NAME, TYPE_OF_DTYPE, TensorType, nbytes
from ggml_rpc_spec.protocol.hashing import fnv1a64
from ggml_rpc_spec.protocol.columns import Devices, SetTensor
from ggml_rpc_spec.protocol.comm import WORLD, encode_host
from ggml_rpc_spec.protocol.messages import HASH_THRESHOLD, device_fields, graph_fields, hello_request
from ggml_rpc_spec.protocol.tensor import contiguous_strides
from ggml_rpc_spec.protocol.versions import HELLO_PROBES, Profile

from ggml_rpc_spec.netio import DEFAULT_POLL, receive_into, send_all

log = logging.getLogger("ggml_rpc.client")



class ServerClosed(ConnectionError):
    """The server closed the connection instead of answering: it rejected a request."""


@dataclass(frozen=True)
class RemoteBuffer:
    handle: int
    size: int
    base: int
    device: int = 0


def parse_endpoint(endpoint: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(endpoint, tuple):
        return endpoint
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"endpoint must be HOST:PORT with a port up to 65535, got {endpoint!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class RPCClient:
    """One connection to a GGML RPC server.

    `proto`: speak this version (a Profile or "3.6", "7.0.0"...) instead of negotiating; the
    server's own HELLO answer is still recorded in `server_version`.  `poll`: seconds to poll
    for a reply before sleeping (netio.receive_into; 0 turns it off).
    """

    def __init__(self, endpoint, *, proto: Profile | str | None = None, timeout: float | None = 30.0,
                 tap=None, poll: float = DEFAULT_POLL) -> None:
        self.address = parse_endpoint(endpoint)
        self.timeout = timeout
        self.poll = poll
        self.tap = tap  # tap("sent" | "received", bytes): sees every byte (for reports); None costs nothing
        forced = profile_for(proto) if isinstance(proto, str) else proto
        self.profile: Profile = forced or NEWEST
        self.server_version: tuple[int, int, int]  # what the server's HELLO reported: set by _connect
        self.sock: socket.socket | None = None
        self._replies: ReplyParser | None = None
        self._since_reply: list[str] = []  # commands sent since the last reply arrived
        self._uids = itertools.count(1)  # graph uids (8.0.0), unique per connection
        self._last_uid: dict[int, int] = {}  # device -> uid of the last graph computed there
        try:
            self._connect(forced)
        except BaseException:
            self.close()  # never leave a half-open connection behind (a serial server would wait on it)
            raise

    @property
    def endpoint(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    # -- connection and handshake ------------------------------------------------------------

    def _open(self, profile: Profile) -> None:
        self.close()
        self.sock = socket.create_connection(self.address, timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.profile = profile
        self._replies = ReplyParser(profile)
        self._since_reply = []

    def _connect(self, forced: Profile | None) -> None:
        families = [forced] if forced else HELLO_PROBES
        failures = []
        for family in families:
            self._open(family)
            try:
                hello = self.call(Command.HELLO, hello_request(family))
            except ServerClosed as exc:
                failures.append(f"{family.hello} HELLO ({family.name}-style): {exc}")
                continue
            self.server_version = (hello.body.major, hello.body.minor, hello.body.patch)
            if forced:
                if self.server_version != forced.version:
                    log.warning("server reports protocol %d.%d.%d; speaking %s as asked", *self.server_version,
                                forced.name)
                return
            profile = profile_for(self.server_version, lenient_patch=True)
            if profile.hello != family.hello:
                raise UnsupportedVersion(f"server reports {'%d.%d.%d' % self.server_version} but answered a "
                                         f"{family.hello} HELLO", command="HELLO", section="3.1")
            if profile.version != self.server_version:
                log.warning("server protocol %d.%d.%d is unknown; using %s (same wire, ops may differ)",
                            *self.server_version, profile.name)
            self.profile = profile
            self._replies = ReplyParser(profile)
            return
        self.close()
        raise ServerClosed(f"{self.endpoint} closed the connection on every HELLO shape "
                           f"({'; '.join(failures)}): not a GGML RPC server of a supported version")

    def connection(self) -> socket.socket:
        """The socket of the open connection (ConnectionError once it is closed)."""
        if self.sock is None:
            raise ConnectionError("the connection is closed")
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> "RPCClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one request ---------------------------------------------------------------------------

    def call(self, command: Command, body=None, *, data=None, graph: Graph | None = None, into=None):
        """Send a request; the Reply (body, data), or None for a one-way command."""
        if self.sock is None or self._replies is None:  # (both are set together when a connection opens)
            raise ConnectionError("the connection is closed")
        spec = message_spec(self.profile, command) if command in self.profile.commands else None
        if spec is None:
            raise LocalProtocolError(f"does not exist in protocol {self.profile.name}", command=command.name)
        parts = encode_request(self.profile, command, body, data=data, graph=graph)
        if self.tap is not None:
            self.tap("sent", b"".join(parts))
        try:
            send_all(self.sock, parts)
        except OSError as exc:
            raise self._closed(command, exc) from None
        self._since_reply.append(command.name)
        if not spec.has_reply:
            return None
        self._replies.expect(command, size=spec.data_size(body), into=into)
        return self._receive(command)

    def _receive(self, command: Command):
        parser, sock = self._replies, self.sock
        if parser is None or sock is None:
            raise ConnectionError("the connection is closed")
        while True:
            try:
                event = parser.next_event()
            except PeerClosed:
                raise self._closed(command, None) from None
            except RemoteProtocolError:
                self.close()
                raise
            if event is not NEED_DATA and event is not CLOSED:
                self._since_reply = []
                return event
            try:
                view = parser.get_buffer()
                received = receive_into(sock, view, self.poll)
            except socket.timeout:
                self.close()  # a late reply would be taken for the next one's: the stream is unusable now
                raise TimeoutError(f"no reply to {command.name} from {self.endpoint} within {self.timeout}s") from None
            except OSError as exc:
                raise self._closed(command, exc) from None
            if received:
                if self.tap is not None:
                    self.tap("received", bytes(view[:received]))  # the view is reused: keep a copy
                parser.buffer_updated(received)
            else:
                parser.receive_eof()

    def _closed(self, command: Command, exc: OSError | None) -> ServerClosed:
        self.close()
        after = ", ".join(self._since_reply) or command.name
        how = f" ({exc.strerror or exc})" if exc is not None else ""
        return ServerClosed(f"server closed the connection after {after}: request rejected{how}")

    # -- commands --------------------------------------------------------------------------------

    def _device(self, device: int) -> dict:
        return device_fields(self.profile, device)

    def device_count(self) -> int:
        if Command.DEVICE_COUNT not in self.profile.commands:
            return 1
        return self.call(Command.DEVICE_COUNT).body.device_count

    def alignment(self, device: int = 0) -> int:
        return self.call(Command.GET_ALIGNMENT, self._device(device)).body.alignment

    def max_size(self, device: int = 0) -> int:
        return self.call(Command.GET_MAX_SIZE, self._device(device)).body.max_size

    def device_memory(self, device: int = 0) -> tuple[int, int]:
        body = self.call(Command.GET_DEVICE_MEMORY, self._device(device)).body
        return body.free_mem, body.total_mem

    def alloc_buffer(self, size: int, device: int = 0) -> RemoteBuffer | None:
        """A new buffer, or None when the server cannot allocate it (remote_ptr 0)."""
        body = self.call(Command.ALLOC_BUFFER, {**self._device(device), "size": size}).body
        if body.remote_ptr == 0:
            return None
        return RemoteBuffer(body.remote_ptr, body.remote_size, self.buffer_base(body.remote_ptr), device)

    def buffer_base(self, handle: int) -> int:
        return self.call(Command.BUFFER_GET_BASE, {"remote_ptr": handle}).body.base_ptr

    def free_buffer(self, buffer: RemoteBuffer | int) -> None:
        self.call(Command.FREE_BUFFER, {"remote_ptr": _handle(buffer)})

    def buffer_clear(self, buffer: RemoteBuffer | int, value: int = 0) -> None:
        self.call(Command.BUFFER_CLEAR, {"remote_ptr": _handle(buffer), "value": value})

    def set_tensor(self, tensor, data, offset: int = 0, *, cache: bool = False) -> None:
        body = {"tensor": tensor, "offset": offset}
        if self.profile.set_tensor is SetTensor.CACHE_FLAG:
            body["cache_flag"] = int(cache)
        self.call(Command.SET_TENSOR, body, data=_bytes_view(data))

    def set_tensor_hash(self, tensor, hash_value: int, offset: int = 0) -> bool:
        """True when the server had the data in its cache and wrote it."""
        reply = self.call(Command.SET_TENSOR_HASH, {"tensor": tensor, "offset": offset, "hash": hash_value})
        return bool(reply.body.result)

    def upload(self, tensor, data, offset: int = 0) -> bool:
        """Write data like upstream clients do: above 10 MiB try the hash cache first.
        Returns True when the server's cache supplied the data."""
        view = _bytes_view(data)
        if len(view) > HASH_THRESHOLD:
            if self.set_tensor_hash(tensor, fnv1a64(view), offset):
                return True
            self.set_tensor(tensor, view, offset, cache=True)
            return False
        self.set_tensor(tensor, view, offset)
        return False

    def get_tensor(self, tensor, offset: int = 0, size: int | None = None, *, into=None) -> memoryview:
        """`size` bytes at tensor.data+offset (default: the whole tensor), into `into` if given."""
        if size is None:
            size = self.nbytes(tensor) - offset
        return self.call(Command.GET_TENSOR, {"tensor": tensor, "offset": offset, "size": size}, into=into).data

    def copy_tensor(self, src, dst) -> bool:
        return bool(self.call(Command.COPY_TENSOR, {"src": src, "dst": dst}).body.result)

    def init_tensor(self, tensor) -> None:
        self.call(Command.INIT_TENSOR, {"tensor": tensor})

    def get_alloc_size(self, tensor, srcs=(), device: int = 0) -> int:
        body = {**self._device(device), "tensor": tensor}
        if self.profile.devices is Devices.MULTI:
            empty = [make_tensor(self.profile.tensor, ne=[0, 0, 0, 0]) for _ in range(10 - len(srcs))]
            body["srcs"] = list(srcs) + empty  # unused slots are all zero, as upstream sends them
        return self.call(Command.GET_ALLOC_SIZE, body).body.alloc_size

    def memset_tensor(self, tensor, value: int, offset: int = 0, size: int | None = None) -> None:
        if size is None:
            size = self.nbytes(tensor) - offset
        self.call(Command.MEMSET_TENSOR, {"tensor": tensor, "offset": offset, "size": size, "value": value})

    def graph_compute(self, graph: Graph, device: int = 0, *, uid: int | None = None) -> int | None:
        """Run a graph; 2.0.0 servers answer a ggml status, later ones nothing.  Where the
        server caches graphs by uid (8.0.0), the graph gets `uid` (default: a new one; 0: not
        cached), which graph_recompute() names."""
        if uid is None:
            uid = next(self._uids)
        self._last_uid[device] = uid
        reply = self.call(Command.GRAPH_COMPUTE, graph_fields(self.profile, device, uid), graph=graph)
        return reply.body.result if reply is not None else None

    def graph_recompute(self, device: int = 0, *, uid: int | None = None) -> None:
        """Run a stored graph again: the device's last one, or (8.0.0) the graph of `uid`."""
        self.call(Command.GRAPH_RECOMPUTE, graph_fields(self.profile, device, uid or self._last_uid.get(device, 0)))

    def set_tensor_2d(self, tensor, data, *, offset: int = 0, n_copies: int, stride: int) -> None:
        """Write `data` as `n_copies` equal copies, the i-th at offset + i * stride (8.0.0)."""
        view = _bytes_view(data)
        if n_copies < 1 or len(view) % n_copies:
            raise LocalProtocolError(f"{len(view)} bytes are not {n_copies} equal copies", command="SET_TENSOR_2D")
        self.call(Command.SET_TENSOR_2D, {"tensor": tensor, "offset": offset, "size": len(view) // n_copies,
                                          "n_copies": n_copies, "stride": stride}, data=view)

    def get_tensor_2d(self, tensor, *, offset: int = 0, size: int, n_copies: int, stride: int,
                      into=None) -> memoryview:
        """`n_copies` runs of `size` bytes, the i-th at offset + i * stride, back to back (8.0.0)."""
        body = {"tensor": tensor, "offset": offset, "size": size, "n_copies": n_copies, "stride": stride}
        return self.call(Command.GET_TENSOR_2D, body, into=into).data

    def comm_init(self, *, rank: int, port: int, host: str = "", world: int = WORLD, device: int = 0) -> bool:
        """Make `device` rank `rank` of a pair of servers linked on `port` (rank 1 connects to
        `host`); True when the link is up (8.0.0)."""
        body = {"device": device, "rank": rank, "world": world, "port": port, "host": encode_host(host)}
        return bool(self.call(Command.COMM_INIT, body).body.ok)

    def comm_allreduce(self, tensor, device: int = 0) -> None:
        """Replace `tensor` by its sum with the other rank's tensor of the pair (8.0.0)."""
        self.call(Command.COMM_ALLREDUCE, {"device": device, "tensor": tensor})

    def comm_free(self, device: int = 0) -> None:
        self.call(Command.COMM_FREE, {"device": device})

    def sync(self) -> None:
        """Wait until every request sent so far was processed (a cheap round trip)."""
        self.alignment(0)

    # -- tensor helpers ----------------------------------------------------------------------------

    def nbytes(self, tensor) -> int:
        kind = self.profile.ggml.tensor_type(tensor.type)
        if kind is None:
            raise LocalProtocolError(f"type {tensor.type} is not valid in protocol {self.profile.name}")
        return nbytes(kind, tensor.ne, tensor.nb)

    def tensor_for(self, buffer: RemoteBuffer, offset: int, array=None, *, shape=None, type: str | None = None,
                   name: str = "", id: int | None = None, **fields) -> Container:
        """An rpc_tensor for a contiguous tensor at buffer.base + offset.

        Give a NumPy `array` (its dtype picks the type), or a `shape` (ggml order: ne0 first)
        and a ggml `type` name such as "Q4_0".
        """
        if array is not None:
            array = np.asarray(array)
            type = type or TYPE_OF_DTYPE.get(array.dtype)
            if type is None:
                raise LocalProtocolError(f"no ggml type for NumPy dtype {array.dtype}; pass type=")
            shape = tuple(reversed(array.shape)) or (1,)
        if shape is None or type is None:
            raise LocalProtocolError("tensor_for needs an array, or a shape and a type")
        kind: TensorType = TYPE_BY_NAME[type]
        ne = list(shape) + [1] * (4 - len(shape))
        return make_tensor(self.profile.tensor, id=id if id is not None else buffer.base + offset + 1,
                           type=kind.value, buffer=buffer.handle, ne=ne,
                           nb=contiguous_strides(kind.type_size, kind.block_size, ne), data=buffer.base + offset,
                           name=name, **fields)

    def read_array(self, tensor) -> np.ndarray:
        """A contiguous tensor's contents as a NumPy array: shape (..., ne1, ne0), without
        the trailing dimensions of size 1 (the shape `tensor_for` was given)."""
        kind = self.profile.ggml.tensor_type(tensor.type)
        dtype = ELEMENT_DTYPES.get(kind.name) if kind is not None else None
        if dtype is None:
            raise LocalProtocolError(f"type {kind.name if kind else tensor.type} has no NumPy dtype; use get_tensor "
                                     "for raw bytes")
        dims = list(tensor.ne)
        while len(dims) > 1 and dims[-1] == 1:
            dims.pop()
        raw = self.get_tensor(tensor)
        return np.frombuffer(raw, dtype=dtype).reshape(tuple(reversed(dims)))


def _handle(buffer: RemoteBuffer | int) -> int:
    return buffer.handle if isinstance(buffer, RemoteBuffer) else buffer


def _bytes_view(data) -> memoryview:
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    return memoryview(data).cast("B")


__all__ = ["RPCClient", "RemoteBuffer", "ServerClosed", "ProtocolError", "parse_endpoint"]
