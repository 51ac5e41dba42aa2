"""Positive semantics of §2-§7: handshake, framing, devices, buffers and tensors."""

from __future__ import annotations

import socket
import struct
import threading
import time
from itertools import pairwise

import numpy as np

from ggml_rpc_spec.protocol import Command, make_tensor, profile_for
from ggml_rpc_spec.protocol.commands import ROW
from ggml_rpc_spec.protocol.errors import UnsupportedVersion
from ggml_rpc_spec.protocol.ggml import TYPES, nbytes
from ggml_rpc_spec.protocol.hashing import fnv1a64
from ggml_rpc_spec.protocol.messages import HASH_THRESHOLD, message_spec
from ggml_rpc_spec.protocol.tensor import contiguous_strides
from ggml_rpc_spec.client.rpc import ServerClosed, parse_endpoint

from ..core import Check, Checks, Context, SHOULD, new_buffer, require
from ..probe import ANSWERED

checks = Checks()  # this module's cases (see conformance.cases)

C = Command


# -- §3 handshake -------------------------------------------------------------------------------


@checks.check("3.2", "HELLO reports a known version of the HELLO family it answered")
def hello_answers_version(ctx: Context) -> None:
    rpc = ctx.client()
    reported = "%d.%d.%d" % rpc.server_version
    try:
        known = profile_for(rpc.server_version, lenient_patch=True)
    except UnsupportedVersion as exc:
        require(False, "a supported protocol version", f"{reported} ({exc.rule})")
    require(known.hello == ctx.profile.hello, f"a version answering a {ctx.profile.hello} HELLO",
            f"{reported}, whose HELLO is {known.hello}")


# A Linux RDMA client's caps {u32 qpn, u32 psn, u8 gid[16]}: a request to upgrade the transport
RDMA_CAPS = struct.pack("<II", 0x0001E2F3, 0x00ABCDEF) + bytes.fromhex("fe800000000000000202c9fffe0a1b2c")


@checks.check("3.1", "HELLO with RDMA conn_caps is answered with all-zero caps and the connection stays on TCP",
       needs=(C.HELLO,), rule="hello.caps-zero", advisory="CVE-2026-118375")
def hello_caps_zero(ctx: Context) -> None:
    if ctx.profile.hello != "caps":
        ctx.skip(f"protocol {ctx.profile.name} has no conn_caps")
    probe = ctx.probe(handshake=False, buffer_size=0)
    probe.send(C.HELLO, {"conn_caps": RDMA_CAPS})
    probe.sock.settimeout(ctx.timeout)
    raw = b""
    while len(raw) < 36:
        chunk = probe.sock.recv(64)
        if not chunk:
            break
        raw += chunk
    require(len(raw) == 36, "a 28-byte HELLO reply", f"{len(raw)} bytes")
    require(raw[8 + 4:] == bytes(24) and raw[8 + 3] == 0, "padding and conn_caps all zero (no RDMA: an echo of "
            "the client's caps starts an RDMA handshake on the TCP stream)", raw[8:].hex())
    verdict, _ = probe.outcome()  # a plain TCP request is served next
    require(verdict == ANSWERED, "the connection serves the next request over TCP", verdict)


# -- §2 framing -----------------------------------------------------------------------------------


def _fixed_size_checks() -> None:
    """For every fixed-size request of the profile: a wrong size closes the connection (HELLO's
    sizes tell the version families apart: hello.size has its own case)."""
    for command in Command:
        if command is C.HELLO or ROW[command].request_tail is not None:
            continue

        def run(ctx: Context, command=command) -> None:
            size = message_spec(ctx.profile, command).request_size
            probe = ctx.probe(buffer_size=0)
            probe.send_raw(struct.pack("<BQ", command, size + 1) + bytes(size + 1))
            ctx.expect_closed(probe, f"{command.name} with {size + 1} bytes instead of {size}")

        checks.add(Check(f"fixed-size.{command.name}", "2.4", f"{command.name} with a payload one byte too long closes",
                       run, needs=(command,), kind="negative"))


_fixed_size_checks()


@checks.check("2.2", "every unknown command byte closes the connection", kind="negative")
def unknown_bytes(ctx: Context) -> None:
    for byte in sorted({max(ctx.profile.commands) + 1, 18, 19, 0x7F, 0xFF} - set(ctx.profile.commands)):
        probe = ctx.probe(buffer_size=0)
        probe.send_raw(bytes([byte]))
        ctx.expect_closed(probe, f"command byte {byte}, sent without a size")


@checks.check("2.5", "a request cut short by the client leaves the server serving others", kind="negative")
def truncated_request(ctx: Context) -> None:
    probe = ctx.probe()
    probe.send_raw(struct.pack("<BQ", C.GET_TENSOR, 312) + bytes(100))
    probe.close()
    require(ctx.client().alignment() > 0, "a new connection is served", "it was not")


@checks.check("2.4", "a huge announced SET_TENSOR size is refused or waited for, never allocated", kind="negative")
def huge_announced_size(ctx: Context) -> None:
    probe = ctx.probe()
    probe.send_raw(struct.pack("<BQ", C.SET_TENSOR, 1 << 62) + bytes(64))
    probe.close()
    require(ctx.client().alignment() > 0, "the server survives and serves a new connection", "it did not")


@checks.check("2.5", "pipelined requests are answered in order")
def pipelined(ctx: Context) -> None:
    rpc = ctx.client()
    body = ctx.device_body()
    raw = b"".join(struct.pack("<BQ", C.GET_ALIGNMENT, len(body) * 4) + (struct.pack("<I", ctx.device) if body else b"")
                   for _ in range(20))
    rpc.connection().sendall(raw)
    parser = rpc._replies
    if parser is None:  # made with the connection
        raise ValueError("the client has no reply parser")
    for _ in range(20):
        parser.expect(C.GET_ALIGNMENT)
    replies = [rpc._receive(C.GET_ALIGNMENT) for _ in range(20)]
    require(all(r.body.alignment == replies[0].body.alignment for r in replies), "20 identical replies", "they differ")


@checks.check("2.5", "a client stalled mid-frame does not block another client", level=SHOULD)
def concurrent_clients(ctx: Context) -> None:
    stalled = socket.create_connection(parse_endpoint(ctx.endpoint), timeout=ctx.timeout)
    try:
        stalled.sendall(bytes([C.HELLO]) + struct.pack("<Q", 24 if ctx.profile.hello == "caps" else 0)[:4])
        result: dict[str, object] = {}

        def other():
            try:
                result["alignment"] = ctx.client(timeout=min(ctx.timeout, 5.0), keep=True).alignment()
            except (OSError, ServerClosed, TimeoutError) as exc:
                result["error"] = exc

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(ctx.timeout + 5)
        ctx.close()  # the second client first, so a serial server finds nothing left behind it
        require("alignment" in result, "the second client is served while the first stalls",
                f"{result.get('error', 'no answer')}")
    finally:
        stalled.close()


# -- §5 devices -------------------------------------------------------------------------------------


@checks.check("5.1", "DEVICE_COUNT is at least 1", needs=(C.DEVICE_COUNT,))
def device_count(ctx: Context) -> None:
    count = ctx.client().device_count()
    require(count >= 1, "at least one device", str(count))


@checks.check("5.2", "GET_ALIGNMENT is a power of two")
def alignment(ctx: Context) -> None:
    value = ctx.client().alignment(ctx.device)
    require(value > 0 and value & (value - 1) == 0, "a power of two", str(value))


@checks.check("5.3", "GET_MAX_SIZE is at least the alignment")
def max_size(ctx: Context) -> None:
    rpc = ctx.client()
    largest = rpc.max_size(ctx.device)
    require(largest >= rpc.alignment(ctx.device), "max size >= alignment", str(largest))


@checks.check("5.4", "GET_DEVICE_MEMORY reports free <= total")
def device_memory(ctx: Context) -> None:
    free, total = ctx.client().device_memory(ctx.device)
    require(0 < total and free <= total, "0 < total and free <= total", f"free {free}, total {total}")


@checks.check("5.5", "GET_ALLOC_SIZE is at least nbytes for every type", rule="alloc_size.covers")
def alloc_size(ctx: Context) -> None:
    rpc = ctx.client()
    for kind in filter(None, ctx.profile.ggml.types):
        ne = [kind.block_size * 4, 3, 2, 1]
        tensor = make_tensor(ctx.profile.tensor, id=1, type=kind.value, ne=ne,
                             nb=contiguous_strides(kind.type_size, kind.block_size, ne), name=kind.name)
        size = rpc.get_alloc_size(tensor, device=ctx.device)
        expected = nbytes(kind, ne, tensor.nb)
        require(size >= expected, f"{kind.name}: at least {expected}", str(size))


@checks.check("4.4", "INIT_TENSOR and GET_ALLOC_SIZE naming another server's buffer are served", rule="tensor.foreign",
       advisory="multi-server clients")
def foreign_handles(ctx: Context) -> None:
    """A client split across servers names the other server's buffers here (3.6.1 in every
    tensor, 7.0.0 in GET_ALLOC_SIZE sources); upstream treats them as buffer 0."""
    rpc = ctx.client()
    foreign = dict(buffer=0x7E57_0000_1000, data=0x7E57_0000_2000)  # never handed out on this connection
    ne = [64, 4, 1, 1]
    weight = make_tensor(ctx.profile.tensor, id=1, type=2, ne=ne, nb=contiguous_strides(18, 32, ne), name="w",
                         **foreign)  # Q4_0
    rpc.init_tensor(weight)
    node = make_tensor(ctx.profile.tensor, id=3, type=0, ne=[4, 5, 1, 1], nb=[4, 16, 80, 80], name="mm",
                       op=ctx.profile.ggml.op_value("MUL_MAT"), src=[1, 2] + [0] * 8, **foreign)
    activations = make_tensor(ctx.profile.tensor, id=2, type=0, ne=[64, 5, 1, 1], nb=[4, 256, 1280, 1280],
                              name="x", **foreign)
    for tensor, srcs in ((weight, ()), (node, (weight, activations))):
        size = rpc.get_alloc_size(tensor, srcs=srcs, device=ctx.device)
        expected = nbytes(TYPES[tensor.type], tensor.ne, tensor.nb)
        require(size >= expected, f"{tensor.name}: an answer of at least {expected}", str(size))


# -- §6 buffers -------------------------------------------------------------------------------------


@checks.check("6.1", "ALLOC_BUFFER returns a non-zero handle and the requested size")
def alloc(ctx: Context) -> None:
    rpc = ctx.client()
    for size in (1, 4096, 1 << 20):
        buf = rpc.alloc_buffer(size, ctx.device)
        require(buf is not None and buf.size >= size, f"a buffer of {size} bytes", str(buf))


@checks.check("6.1", "an allocation the device cannot hold answers remote_ptr 0 and keeps the connection")
def alloc_too_big(ctx: Context) -> None:
    rpc = ctx.client()
    require(rpc.alloc_buffer(1 << 62, ctx.device) is None, "remote_ptr 0 for 2^62 bytes", "a buffer")
    require(rpc.alignment(ctx.device) > 0, "the connection stays usable", "it closed")


@checks.check("6.1", "free memory shrinks with allocations", level=SHOULD)
def memory_accounting(ctx: Context) -> None:
    rpc = ctx.client()
    before, _ = rpc.device_memory(ctx.device)
    buf = rpc.alloc_buffer(64 << 20, ctx.device)
    after, _ = rpc.device_memory(ctx.device)
    require(buf is not None and before - after >= 64 << 20, "free memory 64 MiB lower", f"{before} -> {after}")
    assert buf is not None  # require() above failed the case otherwise
    rpc.free_buffer(buf)
    restored, _ = rpc.device_memory(ctx.device)
    require(restored == before, f"back to {before} after FREE_BUFFER", str(restored))


@checks.check("6.2", "BUFFER_GET_BASE is non-zero, aligned and stable; buffers do not overlap")
def bases(ctx: Context) -> None:
    rpc = ctx.client()
    alignment = rpc.alignment(ctx.device)
    buffers = [new_buffer(rpc, size, ctx.device) for size in (100, 4096, 65536)]
    for buf in buffers:
        require(buf.base != 0 and buf.base % alignment == 0, f"a non-zero multiple of {alignment}", hex(buf.base))
        require(rpc.buffer_base(buf.handle) == buf.base, "the same base when asked again", "a different one")
    spans = sorted((b.base, b.base + b.size) for b in buffers)
    require(all(end <= start for (_, end), (start, _) in pairwise(spans)), "disjoint buffers", str(spans))


@checks.check("6.3", "a freed handle is no longer valid", kind="negative")
def freed_handle(ctx: Context) -> None:
    probe = ctx.probe()
    buffer = probe.own_buffer()
    probe.rpc.free_buffer(buffer)
    probe.send(C.BUFFER_GET_BASE, {"remote_ptr": buffer.handle})
    ctx.expect_closed(probe, "BUFFER_GET_BASE of a freed buffer")


@checks.check("6.3", "handles of one connection are invalid on another", kind="negative")
def foreign_handle(ctx: Context) -> None:
    owner = ctx.client()
    handle = new_buffer(owner, 4096, ctx.device).handle
    probe = ctx.probe(buffer_size=0)  # closes the owner first (upstream serves one connection at a
    # time) and allocates nothing, so the freed handle cannot come back as a buffer of its own
    probe.send(C.BUFFER_GET_BASE, {"remote_ptr": handle})
    ctx.expect_closed(probe, "another connection's handle")


@checks.check("6.3", "a connection's handles stay valid while another connection is served", level=SHOULD)
def handles_survive_others(ctx: Context) -> None:
    owner = ctx.client()
    buf = new_buffer(owner, 4096, ctx.device)
    probe = ctx.probe(keep=True)
    probe.send(C.BUFFER_GET_BASE, {"remote_ptr": buf.handle})
    ctx.expect_closed(probe, "another connection's handle")
    require(owner.buffer_base(buf.handle) == buf.base, "the owner still uses its buffer", "it could not")


@checks.check("2.5", "buffers are freed when their connection closes", level=SHOULD)
def freed_on_disconnect(ctx: Context) -> None:
    before, _ = ctx.client().device_memory(ctx.device)
    rpc = ctx.client()
    rpc.alloc_buffer(32 << 20, ctx.device)
    rpc.sync()
    rpc.close()
    probe = ctx.client()
    after, _ = probe.device_memory(ctx.device)
    deadline = time.monotonic() + 2.0
    while after < before and time.monotonic() < deadline:  # the release may run on another thread
        after, _ = probe.device_memory(ctx.device)
    # at least back to `before`: a buffer of an earlier case's closed connection may have been
    # released after `before` was read
    require(after >= before, f"free memory back to {before} within 2 s", str(after))


@checks.check("6.4", "BUFFER_CLEAR sets every byte of the buffer")
def clear(ctx: Context) -> None:
    rpc = ctx.client()
    buf = new_buffer(rpc, 1000, ctx.device)
    rpc.buffer_clear(buf, 0x5A)
    whole = rpc.tensor_for(buf, 0, shape=(1000,), type="I8")
    require(bytes(rpc.get_tensor(whole)) == b"\x5a" * 1000, "1000 bytes of 0x5a", "something else")


# -- §7 tensors -------------------------------------------------------------------------------------


def _type_roundtrip_checks() -> None:
    for value in sorted(TYPES):
        kind = TYPES[value]

        def run(ctx: Context, value=value, kind=kind) -> None:
            if ctx.profile.ggml.tensor_type(value) is None:
                ctx.skip(f"type {kind.name} is not valid in protocol {ctx.profile.name}")
            rpc = ctx.client()
            ne = [kind.block_size * 3, 5, 1, 1]
            size = nbytes(kind, ne, contiguous_strides(kind.type_size, kind.block_size, ne))
            buf = new_buffer(rpc, size + 64, ctx.device)
            tensor = rpc.tensor_for(buf, 0, shape=ne, type=kind.name)
            data = np.random.default_rng(value).integers(0, 256, size, dtype=np.uint8).tobytes()
            rpc.set_tensor(tensor, data)
            got = bytes(rpc.get_tensor(tensor))
            require(got == data, f"the {size} bytes written",
                    f"{len(got)} bytes" if len(got) != size else f"{sum(a != b for a, b in zip(got, data, strict=True))} differ")

        checks.add(Check(f"roundtrip.{kind.name}", "7.2", f"SET_TENSOR then GET_TENSOR returns the bytes ({kind.name})",
                       run))


_type_roundtrip_checks()


@checks.check("7.1", "SET_TENSOR and GET_TENSOR honour offsets")
def offsets(ctx: Context) -> None:
    rpc = ctx.client()
    buf = new_buffer(rpc, 4096, ctx.device)
    tensor = rpc.tensor_for(buf, 256, shape=(64,), type="F32")
    rpc.set_tensor(tensor, bytes(256))
    rpc.set_tensor(tensor, b"\x01\x02\x03\x04", offset=100)
    got = bytes(rpc.get_tensor(tensor, 98, 8))
    require(got == b"\0\0\x01\x02\x03\x04\0\0", "the patch at offset 100", got.hex())
    whole = rpc.tensor_for(buf, 0, shape=(4096,), type="I8")
    require(bytes(rpc.get_tensor(whole, 356, 4)) == b"\x01\x02\x03\x04", "tensor.data + offset addressing",
            "another place")


@checks.check("7.2", "GET_TENSOR of a strided view reads through the view's data address")
def strided_view(ctx: Context) -> None:
    rpc = ctx.client()
    buf = new_buffer(rpc, 4096, ctx.device)
    base = rpc.tensor_for(buf, 0, np.arange(64, dtype=np.float32))
    rpc.set_tensor(base, np.arange(64, dtype=np.float32))
    view = make_tensor(ctx.profile.tensor, id=99, type=0, buffer=buf.handle, ne=[4, 3, 1, 1], nb=[4, 32, 96, 96],
                       data=buf.base + 16, view_src=base.id, view_offs=16, name="view")
    got = np.frombuffer(bytes(rpc.get_tensor(view, 0, 4)), np.float32)
    require(got.tolist() == [4.0], "element 4 at data + 0", str(got))


@checks.check("7.4", "COPY_TENSOR copies nbytes(src) and answers 1")
def copy(ctx: Context) -> None:
    rpc = ctx.client()
    a_buf, b_buf = new_buffer(rpc, 1024, ctx.device), new_buffer(rpc, 1024, ctx.device)
    values = np.linspace(-1, 1, 32).astype(np.float32)
    src, dst = rpc.tensor_for(a_buf, 64, values), rpc.tensor_for(b_buf, 128, values)
    rpc.set_tensor(src, values)
    require(rpc.copy_tensor(src, dst), "result 1", "0")
    require(np.array_equal(rpc.read_array(dst), values), "the copied values", "other values")


@checks.check("7.5", "INIT_TENSOR is accepted for a tensor in a buffer")
def init_tensor(ctx: Context) -> None:
    rpc = ctx.client()
    buf = new_buffer(rpc, 4096, ctx.device)
    rpc.init_tensor(rpc.tensor_for(buf, 0, shape=(576, 2), type="Q4_0"))
    require(rpc.alignment(ctx.device) > 0, "the connection stays open", "it closed")


@checks.check("7.6", "MEMSET_TENSOR sets exactly the region", needs=(C.MEMSET_TENSOR,))
def memset(ctx: Context) -> None:
    rpc = ctx.client()
    buf = new_buffer(rpc, 256, ctx.device)
    tensor = rpc.tensor_for(buf, 0, shape=(64,), type="F32")
    rpc.set_tensor(tensor, bytes(256))
    rpc.memset_tensor(tensor, 0x7E, 10, 5)
    got = bytes(rpc.get_tensor(tensor, 8, 9))
    require(got == b"\0\0" + b"\x7e" * 5 + b"\0\0", "five 0x7e bytes at 10", got.hex())


@checks.check("7.3", "SET_TENSOR_HASH of unknown data answers 0 and changes nothing")
def hash_miss(ctx: Context) -> None:
    rpc = ctx.client()
    buf = new_buffer(rpc, 64, ctx.device)
    tensor = rpc.tensor_for(buf, 0, shape=(16,), type="F32")
    rpc.set_tensor(tensor, bytes(range(64)))
    require(not rpc.set_tensor_hash(tensor, 0x0123_4567_89AB_CDEF), "result 0", "1")
    require(bytes(rpc.get_tensor(tensor)) == bytes(range(64)), "the tensor unchanged", "changed")


@checks.check("9", "data above the threshold sent with SET_TENSOR is served from the hash cache afterwards")
def hash_hit(ctx: Context) -> None:
    if not ctx.cache:
        ctx.skip("the target is not known to run with a cache directory (--target-has-cache)")
    data = np.random.default_rng(9).integers(0, 256, HASH_THRESHOLD + 4096, dtype=np.uint8).tobytes()
    rpc = ctx.client()
    buf = new_buffer(rpc, len(data), ctx.device)
    tensor = rpc.tensor_for(buf, 0, shape=(len(data),), type="I8")
    rpc.set_tensor(tensor, data, cache=True)
    rpc.sync()
    other = ctx.client()  # a new connection (the first one is closed)
    buf2 = new_buffer(other, len(data), ctx.device)
    tensor2 = other.tensor_for(buf2, 0, shape=(len(data),), type="I8")
    require(other.set_tensor_hash(tensor2, fnv1a64(data)), "result 1 (a cache hit)", "0")
    require(bytes(other.get_tensor(tensor2)) == data, "the cached bytes written", "other bytes")


def _cache_path(ctx: Context, data: bytes):
    from pathlib import Path

    from ggml_rpc_spec.protocol.hashing import cache_name

    if ctx.cache_dir is None:  # the cases that damage cache files skip without one
        raise ValueError("the target's cache directory is not known (--target-cache-dir)")
    return Path(ctx.cache_dir) / cache_name(fnv1a64(data))


def _store_in_cache(ctx: Context, data: bytes, *, while_sending=None) -> None:
    """SET_TENSOR of `data` with the cache flag (stored by every version's cache), on a
    connection of its own; `while_sending()` runs in a thread until the server has the data."""
    rpc = ctx.client()
    buf = new_buffer(rpc, len(data), ctx.device)
    tensor = rpc.tensor_for(buf, 0, shape=(len(data),), type="I8")
    done = threading.Event()
    watcher = threading.Thread(target=while_sending, args=(done,), daemon=True) if while_sending else None
    if watcher:
        watcher.start()
    try:
        rpc.set_tensor(tensor, data, cache=True)
        rpc.sync()
    finally:
        done.set()
        if watcher:
            watcher.join(30)


def _hash_answer(ctx: Context, data: bytes) -> bool:
    """SET_TENSOR_HASH of `data` into a fresh tensor on a new connection: whether it hit."""
    rpc = ctx.client()
    buf = new_buffer(rpc, len(data), ctx.device)
    tensor = rpc.tensor_for(buf, 0, shape=(len(data),), type="I8")
    return bool(rpc.set_tensor_hash(tensor, fnv1a64(data)))


@checks.check("9", "a cache file whose bytes no longer hash to its name (damaged, cut short) is a miss",
              rule="cache.verified")
def cache_verified(ctx: Context) -> None:
    if not ctx.cache_dir:
        ctx.skip("the target's cache directory is not known here (--target-cache-dir)")
    data = np.random.default_rng(91).integers(0, 256, HASH_THRESHOLD + 8192, dtype=np.uint8).tobytes()
    _store_in_cache(ctx, data)
    path = _cache_path(ctx, data)
    require(path.exists() and path.stat().st_size == len(data), f"the entry {path.name} of {len(data)} bytes",
            "no such file")
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    require(not _hash_answer(ctx, data), "a damaged entry: result 0 (a miss)", "1 (a hit on wrong bytes)")
    path.write_bytes(data[:len(data) // 2])
    require(not _hash_answer(ctx, data), "an entry cut short: result 0 (a miss)", "1 (a hit on half the bytes)")


@checks.check("9", "no cache file appears under its final name before it holds all its bytes", rule="cache.atomic")
def cache_atomic(ctx: Context) -> None:
    if not ctx.cache_dir:
        ctx.skip("the target's cache directory is not known here (--target-cache-dir)")
    data = np.random.default_rng(92).integers(0, 256, 4 * HASH_THRESHOLD, dtype=np.uint8).tobytes()
    path = _cache_path(ctx, data)
    seen: list[int] = []

    def watch(done: threading.Event) -> None:
        """The sizes of the final name while the data travels and is stored (polled)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                size = path.stat().st_size
            except OSError:
                size = None
            if size is not None:
                seen.append(size)
                if size == len(data) and done.is_set():
                    return
            elif done.is_set() and seen:
                return
            time.sleep(0.0005)

    _store_in_cache(ctx, data, while_sending=watch)
    require(bool(seen) and seen[-1] == len(data), f"the entry {path.name} of {len(data)} bytes",
            f"sizes seen: {seen[-3:]}")
    short = sorted({size for size in seen if size != len(data)})
    require(not short, f"only complete entries under the final name ({len(data)} bytes)",
            f"the entry seen with {short[:5]} bytes")


# -- §7.7, §7.8 2-D transfers ---------------------------------------------------------------------

# (offset, size, n_copies, stride) in a Q4_1 [64, 6] tensor (6 rows of 40 bytes): a column slice of
# every row (how split weights are written), copies further apart than rows, copies back to back
# (stride = size), one copy
LAYOUTS_2D = ((20, 20, 6, 40), (3, 5, 4, 57), (16, 16, 8, 16), (7, 9, 1, 0))


def _layouts_2d(ctx: Context):
    """For each of LAYOUTS_2D: one fresh connection (the same for all), a seed, a Q4_1 [64, 6] tensor in a buffer of
    it holding random bytes (new for each layout), those bytes and the layout."""
    rpc = ctx.client()
    buf = new_buffer(rpc, 256, ctx.device)
    tensor = rpc.tensor_for(buf, 0, shape=(64, 6), type="Q4_1")
    for seed, layout in enumerate(LAYOUTS_2D):
        raw = np.random.default_rng(seed).integers(0, 256, rpc.nbytes(tensor), dtype=np.uint8).tobytes()
        rpc.set_tensor(tensor, raw)
        yield rpc, seed, tensor, raw, layout


def _copies(raw: bytes, offset: int, size: int, n_copies: int, stride: int) -> bytes:
    """The copies of a 2-D transfer out of a tensor's bytes, back to back."""
    return b"".join(raw[offset + i * stride:offset + i * stride + size] for i in range(n_copies))


def _require_bytes(got: bytes, want: bytes, expected: str) -> None:
    """Fail naming where `got` first differs from `want`."""
    if got != want:
        common = min(len(got), len(want))
        at = next((i for i in range(common) if got[i] != want[i]), common)
        require(False, expected, f"{len(got)} bytes, the first difference at byte {at}")


@checks.check("7.7", "SET_TENSOR_2D writes copy i at offset + i*stride and leaves the other bytes",
              needs=(C.SET_TENSOR_2D,))
def set_tensor_2d(ctx: Context) -> None:
    for rpc, seed, tensor, before, (offset, size, n_copies, stride) in _layouts_2d(ctx):
        data = np.random.default_rng(100 + seed).integers(0, 256, size * n_copies, dtype=np.uint8).tobytes()
        rpc.set_tensor_2d(tensor, data, offset=offset, n_copies=n_copies, stride=stride)
        want = bytearray(before)
        for i in range(n_copies):
            want[offset + i * stride:offset + i * stride + size] = data[i * size:(i + 1) * size]
        _require_bytes(bytes(rpc.get_tensor(tensor)), bytes(want),
                       f"offset {offset}, {n_copies} copies of {size} bytes at stride {stride} in place, the rest "
                       "unchanged")


@checks.check("7.8", "GET_TENSOR_2D returns copy i from offset + i*stride, the copies back to back",
              needs=(C.GET_TENSOR_2D,))
def get_tensor_2d(ctx: Context) -> None:
    for rpc, _, tensor, raw, (offset, size, n_copies, stride) in _layouts_2d(ctx):
        got = rpc.get_tensor_2d(tensor, offset=offset, size=size, n_copies=n_copies, stride=stride)
        _require_bytes(bytes(got), _copies(raw, offset, size, n_copies, stride),
                       f"offset {offset}, {n_copies} copies of {size} bytes at stride {stride}")
