"""The server-to-server link of 8.0.0 (SPEC §10): its bytes (protocol/comm.py) and the
reference server's end of it, with the test playing the other rank where the bytes matter."""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time

import numpy as np
import pytest

from ggml_rpc_spec.client.rpc import RPCClient, ServerClosed
from ggml_rpc_spec.protocol import comm
from ggml_rpc_spec.netio import Networks
from ggml_rpc_spec.server.link import Link, LinkError, LinkPolicy

PROTO = "8.0.0"


# -- the bytes ----------------------------------------------------------------------------------


def _nearest_bf16(bits: int) -> int:
    """BF16 by definition: the nearer of the two neighbours, ties to the even one."""
    low = bits >> 16
    value = np.uint32(bits).view(np.float32).astype(np.float64)
    candidates = [np.uint32(c << 16).view(np.float32).astype(np.float64) for c in (low, low + 1)]
    below, above = abs(value - candidates[0]), abs(candidates[1] - value)
    if below != above:
        return low if below < above else low + 1
    return low if low % 2 == 0 else low + 1


def test_bf16_rounds_to_nearest_even():
    rng = np.random.default_rng(7)
    finite = rng.integers(0, 0x7F7F0000, 4000, dtype=np.uint32) | (rng.integers(0, 2, 4000, dtype=np.uint32) << 31)
    ties = (rng.integers(0, 0x7F7F, 200, dtype=np.uint32) << 16) | np.uint32(0x8000)
    bits = np.concatenate([finite, ties])
    got = comm.fp32_to_bf16(bits.view(np.float32))
    assert [int(g) for g in got] == [_nearest_bf16(int(b)) & 0xFFFF for b in bits]
    special = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x7F800000, 0xFF800000], dtype=np.uint32)
    assert comm.fp32_to_bf16(special.view(np.float32)).tolist() == [0x3F80, 0x3F82, 0x3F81, 0x7F80, 0xFF80]


def test_bf16_makes_nan_quiet_and_keeps_its_sign():
    nans = np.array([0x7F800001, 0xFF812345, 0x7FC00000, 0x7FFFFFFF], dtype=np.uint32)
    got = comm.fp32_to_bf16(nans.view(np.float32)).tolist()
    assert got == [0x7FC0, 0xFFC1, 0x7FC0, 0x7FFF]
    assert np.isnan(comm.bf16_to_fp32(np.array(got, dtype=np.uint16))).all()


def test_partials_travel_as_f32_below_32768_elements_and_as_bf16_from_there():
    assert comm.BF16_MIN_ELEMENTS == 32768 and comm.HANDSHAKE_SIZE == 24 and comm.PORT_OFFSET == 1000
    assert comm.wire_size(0) == 0
    assert comm.wire_size(32767) == 4 * 32767 and comm.wire_size(32768) == 2 * 32768
    small = np.linspace(-1, 1, 576, dtype=np.float32)
    assert comm.encode_partial(small).tobytes() == small.tobytes()  # little-endian F32, memory order
    big = np.linspace(-1, 1, 43776, dtype=np.float32)
    assert comm.encode_partial(big).tobytes() == comm.fp32_to_bf16(big).astype("<u2").tobytes()


def test_the_two_ranks_differ_in_bf16_and_agree_in_f32():
    rng = np.random.default_rng(1)
    for n, same in ((32767, True), (32768, False)):
        x0, x1 = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
        rank0 = comm.reduce(x0, comm.decode_partial(comm.encode_partial(x1), n))
        rank1 = comm.reduce(x1, comm.decode_partial(comm.encode_partial(x0), n))
        assert np.array_equal(rank0, rank1) is same
        if not same:
            assert np.allclose(rank0, x0 + x1, rtol=0, atol=2e-2)


# -- the reference server's end: the test plays the other rank --------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_thread(call):
    """Run `call` in a thread (COMM_INIT waits for the peer); .result() joins it."""
    box: dict = {}

    def run():
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    class Pending:
        @staticmethod
        def result(timeout=10.0):
            thread.join(timeout)
            assert not thread.is_alive(), "the call did not return"
            if "error" in box:
                raise box["error"]
            return box["value"]

    return Pending


def _connect_retrying(port: int, timeout=5.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"the server closed the link after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def _as_rank1_of(rpc: RPCClient) -> socket.socket:
    """Make the server rank 0 and join it as rank 1: the test's end of the link."""
    port = _free_port()
    pending = _in_thread(lambda: rpc.comm_init(rank=0, port=port))
    peer = _connect_retrying(port)
    peer.sendall(bytes(24))  # rank 1 speaks first
    assert _recv_exactly(peer, 24) == bytes(24)  # all-zero caps: plain TCP
    assert pending.result() is True  # answered once the link is up
    return peer


def _partial(rpc: RPCClient, values: np.ndarray):
    buf = rpc.alloc_buffer(max(values.nbytes, 1))
    tensor = rpc.tensor_for(buf, 0, values, name="ffn_out-0")
    rpc.set_tensor(tensor, values)
    return tensor


@pytest.mark.parametrize("n", [576, 43776])
def test_rank0_sends_first_and_keeps_its_own_partial_exact(reference_server, n):
    server = reference_server(PROTO)
    rng = np.random.default_rng(n)
    x0, x1 = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    with RPCClient(server.endpoint) as rpc:
        peer = _as_rank1_of(rpc)
        tensor = _partial(rpc, x0)
        rpc.comm_allreduce(tensor)
        sent = _recv_exactly(peer, comm.wire_size(n))  # before the test sends anything
        assert sent == comm.encode_partial(x0).tobytes()
        peer.sendall(comm.encode_partial(x1).tobytes())
        got = rpc.read_array(tensor)
        expected = x0 + (comm.bf16_to_fp32(comm.fp32_to_bf16(x1)) if n >= 32768 else x1)
        assert np.array_equal(got, expected)
        peer.close()


def test_rank1_connects_and_speaks_first(reference_server):
    server = reference_server(PROTO)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    x0, x1 = np.arange(8, dtype=np.float32), np.full(8, 0.5, dtype=np.float32)
    with RPCClient(server.endpoint) as rpc:
        pending = _in_thread(lambda: rpc.comm_init(rank=1, port=port, host="127.0.0.1"))
        listener.settimeout(5)
        peer, _ = listener.accept()
        assert _recv_exactly(peer, 24) == bytes(24)
        peer.sendall(bytes(24))
        assert pending.result() is True
        tensor = _partial(rpc, x1)
        rpc.comm_allreduce(tensor)
        peer.sendall(x0.tobytes())  # as rank 0: first
        assert _recv_exactly(peer, 32) == x1.tobytes()
        assert np.array_equal(rpc.read_array(tensor), x1 + x0)
        peer.close()
    listener.close()


def test_two_reference_servers_pair_up(reference_server):
    a, b = reference_server(PROTO), reference_server(PROTO)
    port = _free_port()
    rng = np.random.default_rng(3)
    with RPCClient(a.endpoint) as ra, RPCClient(b.endpoint) as rb:
        pending = _in_thread(lambda: ra.comm_init(rank=0, port=port))
        assert rb.comm_init(rank=1, port=port, host="127.0.0.1") is True
        assert pending.result() is True
        assert ra.comm_init(rank=0, port=0) is True  # a device with a link: ok at once, fields unread
        for n in (2880, 43776):
            x0, x1 = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
            t0, t1 = _partial(ra, x0), _partial(rb, x1)
            ra.comm_allreduce(t0)
            rb.comm_allreduce(t1)
            s0, s1 = ra.read_array(t0), rb.read_array(t1)
            assert np.array_equal(s0, s1) is (n < 32768)  # BF16: each rank keeps its own partial exact
        rb.close()  # rank 1's connection ends, and its link with it
        t0 = _partial(ra, np.ones(8, dtype=np.float32))
        ra.comm_allreduce(t0)
        with pytest.raises(ServerClosed):
            ra.sync()
    assert a.last_rejection == "comm.peer-agrees"


@pytest.mark.parametrize("fields", [dict(rank=0, world=3), dict(rank=2, world=2), dict(rank=0, device=5)])
def test_comm_init_of_no_pair_answers_ok_0_and_keeps_the_connection(reference_server, fields):
    server = reference_server(PROTO)
    with RPCClient(server.endpoint) as rpc:
        assert rpc.comm_init(port=_free_port(), **fields) is False
        assert rpc.device_count() == 1
    assert server.rejections == 0


def test_comm_init_without_a_link_answers_ok_0(reference_server):
    server = reference_server(PROTO, link_timeout=0.5)
    with RPCClient(server.endpoint) as rpc:
        assert rpc.comm_init(rank=0, port=70000) is False  # no TCP port
        started = time.monotonic()
        assert rpc.comm_init(rank=0, port=_free_port()) is False  # no peer within the timeout
        assert 0.4 < time.monotonic() - started < 5
        assert rpc.comm_init(rank=1, port=_free_port(), host="127.0.0.1") is False  # nobody listens
        started = time.monotonic()
        assert rpc.comm_init(rank=1, port=9, host="192.0.2.1") is False  # not admitted: no attempt
        assert time.monotonic() - started < 0.4
        assert rpc.device_count() == 1
    assert server.rejections == 0


def test_rank0_listens_on_its_own_address_only_and_serves_others_meanwhile(reference_server):
    server = reference_server(PROTO, link_timeout=2)
    port = _free_port()
    with RPCClient(server.endpoint) as rpc:
        pending = _in_thread(lambda: rpc.comm_init(rank=0, port=port))
        _connect_retrying(port).close()  # it listens (and the unanswered peer fails the handshake)
        pending.result()
        pending = _in_thread(lambda: rpc.comm_init(rank=0, port=port))
        time.sleep(0.2)
        with RPCClient(server.endpoint) as other:  # the server serves others meanwhile
            assert other.device_count() == 1
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.2", port))  # taken if rank 0 had bound every interface
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                pytest.skip(f"127.0.0.2 is not usable here: {exc}")
            raise AssertionError("rank 0 listens on every interface") from None
        finally:
            probe.close()
        _connect_retrying(port).close()
        pending.result()


def test_rank0_admits_only_allowed_peers():
    port = _free_port()
    policy = LinkPolicy("127.0.0.1", Networks(["10.0.0.0/8"]), timeout=1.0)
    pending = _in_thread(lambda: Link.open(policy, 0, "", port))
    stranger = _connect_retrying(port)
    stranger.settimeout(2)
    try:
        assert stranger.recv(24) == b""  # closed at once, no handshake
    except ConnectionResetError:
        pass
    finally:
        stranger.close()
    with pytest.raises(LinkError):  # and rank 0 went on waiting for an admitted peer, in vain
        pending.result()


def test_a_peer_that_stops_sending_closes_the_connection(reference_server):
    server = reference_server(PROTO, link_timeout=0.5)
    with RPCClient(server.endpoint) as rpc:
        peer = _as_rank1_of(rpc)
        tensor = _partial(rpc, np.ones(16, dtype=np.float32))
        rpc.comm_allreduce(tensor)
        _recv_exactly(peer, 64)
        peer.sendall(bytes(32))  # half of its share, then nothing
        with pytest.raises(ServerClosed):
            rpc.sync()
        peer.close()
    assert server.last_rejection == "comm.peer-agrees"


@pytest.mark.parametrize("rule", ["comm.linked", "comm.buffer", "comm.f32"])
def test_all_reduce_rules_close(reference_server, rule):
    server = reference_server(PROTO)
    with RPCClient(server.endpoint) as rpc:
        peer = None if rule == "comm.linked" else _as_rank1_of(rpc)
        values = np.ones(8, dtype=np.float16 if rule == "comm.f32" else np.float32)
        tensor = _partial(rpc, values)
        if rule == "comm.buffer":
            tensor = tensor.copy()
            tensor.buffer = tensor.data = 0
        rpc.comm_allreduce(tensor)
        with pytest.raises(ServerClosed):
            rpc.sync()
        if peer is not None:
            peer.close()
    assert server.last_rejection == rule


def test_comm_free_closes_the_link_and_is_no_error_without_one(reference_server):
    server = reference_server(PROTO)
    with RPCClient(server.endpoint) as rpc:
        rpc.comm_free()  # no link: nothing to do
        peer = _as_rank1_of(rpc)
        rpc.comm_free()
        peer.settimeout(2)
        assert peer.recv(1) == b""  # the server's end closed, nothing sent
        peer.close()
        peer = _as_rank1_of(rpc)  # a new pair after COMM_FREE
        rpc.comm_free()
        peer.close()
        tensor = _partial(rpc, np.ones(4, dtype=np.float32))
        rpc.comm_allreduce(tensor)
        with pytest.raises(ServerClosed):
            rpc.sync()
    assert server.last_rejection == "comm.linked"


def test_comm_init_frame_bytes():
    """The COMM_INIT the real client sent to rank 1 (llama.cpp b11739, port 22152, host 127.0.0.1)."""
    body = struct.pack("<IIII", 0, 1, 2, 22152) + comm.encode_host("127.0.0.1")
    assert len(body) == 80 and comm.host_of(body[16:]) == "127.0.0.1"
    assert body[:16].hex() == "00000000" "01000000" "02000000" "88560000"
