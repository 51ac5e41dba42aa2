"""The reference server: every command, addresses, memory, scoping, concurrency, hostile input."""

from __future__ import annotations

import logging
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from ggml_rpc_spec.conformance.cases.hostile import CASES, SURVIVAL_CASES
from ggml_rpc_spec.conformance.probe import ANSWERED, CLOSED, Probe
from ggml_rpc_spec.protocol import PROFILES, Command, encode_request, profile_for
from ggml_rpc_spec.protocol.hashing import fnv1a64
from ggml_rpc_spec.protocol.ops import spec_for
from ggml_rpc_spec.client.rpc import RPCClient, ServerClosed
from ggml_rpc_spec.netio import DEFAULT_POLL, Activity, FramePace
from ggml_rpc_spec.server.cli import build_parser
from ggml_rpc_spec.server.service import ReferenceServer

MAIN = ["3.6.1", "7.0.0", "8.0.0"]


@pytest.mark.parametrize("proto", [p.name for p in PROFILES])
def test_every_command_round_trips(reference_server, proto):
    server = reference_server(proto)
    with RPCClient(server.endpoint) as rpc:
        assert rpc.profile.name == proto and rpc.server_version == rpc.profile.version
        assert rpc.device_count() == 1 and rpc.alignment() == 32 and rpc.max_size() == 2**64 - 1
        free, total = rpc.device_memory()
        assert free == total == 256 << 20
        buf = rpc.alloc_buffer(4096)
        values = np.arange(64, dtype=np.float32)
        a = rpc.tensor_for(buf, 0, values, name="a")
        b = rpc.tensor_for(buf, 1024, values, name="b")
        rpc.set_tensor(a, values)
        assert np.array_equal(rpc.read_array(a), values)
        assert bytes(rpc.get_tensor(a, 8, 8)) == values.tobytes()[8:16]
        assert rpc.copy_tensor(a, b) and np.array_equal(rpc.read_array(b), values)
        assert rpc.get_alloc_size(a) == 256
        rpc.init_tensor(a)
        assert rpc.set_tensor_hash(a, fnv1a64(values.tobytes())) is False  # no cache directory
        rpc.buffer_clear(buf, 0xFF)
        assert bytes(rpc.get_tensor(a, 0, 4)) == b"\xff" * 4
        if Command.MEMSET_TENSOR in rpc.profile.commands:
            rpc.memset_tensor(a, 0x11, 4, 4)
            assert bytes(rpc.get_tensor(a, 0, 12)) == b"\xff" * 4 + b"\x11" * 4 + b"\xff" * 4
        graph_status = rpc.graph_compute(Probe.graph(rpc_probe(rpc, buf), [a.copy()], [a.id]))
        assert graph_status == (0 if rpc.profile.graph_reply == "status" else None)
        if Command.GRAPH_RECOMPUTE in rpc.profile.commands:
            rpc.graph_recompute()
        rpc.free_buffer(buf)
        assert rpc.device_memory() == (total, total)


def rpc_probe(rpc, buf):
    """A stand-in with what Probe.graph needs (profile)."""
    class _P:
        profile = rpc.profile
    return _P()


def test_addresses_look_like_pointers(reference_server):
    server = reference_server("3.6")
    with RPCClient(server.endpoint) as rpc:
        buffers = [rpc.alloc_buffer(size) for size in (1, 100, 4096, 1 << 20)]
        handles = [b.handle for b in buffers]
        bases = [b.base for b in buffers]
        assert all(h and b for h, b in zip(handles, bases, strict=True))
        assert len(set(handles)) == len(handles) and len(set(bases)) == len(bases)
        assert all(b % rpc.alignment() == 0 for b in bases)
        assert [rpc.buffer_base(h) for h in handles] == bases  # stable
        spans = sorted((b.base, b.base + b.size) for b in buffers)
        assert all(end <= start for (_, end), (start, _) in pairwise(spans))  # no overlap
        t = rpc.tensor_for(buffers[3], 4096, np.ones(4, np.float32))
        rpc.set_tensor(t, np.ones(4, np.float32))
        assert t.data == bases[3] + 4096 and np.array_equal(rpc.read_array(t), np.ones(4))
        zero = rpc.alloc_buffer(0)
        assert zero.handle != 0 and zero.size == 0 and zero.base == 0  # like upstream


def test_memory_accounting_and_allocation_limits(reference_server):
    server = reference_server("7.0", memory=1 << 20)
    with RPCClient(server.endpoint) as rpc:
        first = rpc.alloc_buffer(600_000)
        assert rpc.device_memory() == ((1 << 20) - 600_000, 1 << 20)
        assert rpc.alloc_buffer(600_000) is None  # remote_ptr 0: too little left, connection stays
        assert rpc.alignment() == 32
        rpc.free_buffer(first)
        assert rpc.alloc_buffer(600_000) is not None
    with RPCClient(server.endpoint) as rpc:  # the buffer died with its connection
        assert rpc.device_memory() == (1 << 20, 1 << 20)


def test_buffers_belong_to_their_connection(reference_server):
    server = reference_server("3.6")
    with RPCClient(server.endpoint) as owner, RPCClient(server.endpoint) as other:
        buf = owner.alloc_buffer(4096)
        with pytest.raises(ServerClosed, match="after BUFFER_GET_BASE: request rejected"):
            other.buffer_base(buf.handle)
        assert owner.buffer_base(buf.handle) == buf.base


def test_a_stalled_client_blocks_nobody(reference_server):
    server = reference_server("7.0")
    stalled = socket.create_connection(server.address)
    stalled.sendall(bytes([Command.HELLO]) + (24).to_bytes(8, "little") + bytes(10))  # 10 of 24 bytes
    with RPCClient(server.endpoint, timeout=5) as rpc:
        buf = rpc.alloc_buffer(64)
        assert rpc.buffer_base(buf.handle) == buf.base
    stalled.close()


@pytest.mark.parametrize("proto", MAIN)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key)
def test_hostile_input_closes_only_that_connection(reference_server, proto, case, caplog, tmp_path):
    missing = case.missing_from(profile_for(proto))
    if missing:
        pytest.skip(f"{case.key}: {missing}")
    server = reference_server(proto, cache_dir=tmp_path if case.needs_cache else None)
    with caplog.at_level(logging.INFO, logger="ggml_rpc.server"):
        probe = Probe(server.endpoint, profile_for(proto), timeout=5, handshake=case.handshake)
        case.send(probe)
        verdict, data = probe.outcome()
        probe.close()
    assert verdict == CLOSED, f"{case.case_id}: server {verdict} {data.hex()}\n{probe.exchange.hexdump()}"
    assert any("closing" in r.getMessage() for r in caplog.records)  # logged with its reason
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]  # not an internal error
    with RPCClient(server.endpoint, timeout=5) as rpc:  # and still serves
        assert rpc.alloc_buffer(64) is not None


@pytest.mark.parametrize("proto", MAIN)
@pytest.mark.parametrize("case", SURVIVAL_CASES, ids=lambda c: c.key)
def test_valid_stress_is_served(reference_server, proto, case):
    server = reference_server(proto)
    probe = Probe(server.endpoint, profile_for(proto), timeout=5)
    case.send(probe)
    verdict, _ = probe.outcome()
    probe.close()
    assert verdict == ANSWERED


def test_rejections_name_the_rule(reference_server, caplog):
    server = reference_server("3.6")
    with caplog.at_level(logging.WARNING, logger="ggml_rpc.server"):
        probe = Probe(server.endpoint, timeout=5)
        probe.send(Command.GET_TENSOR, {"tensor": probe.tensor(0), "offset": 4090, "size": 64})
        assert probe.outcome()[0] == CLOSED
    message = next(r.getMessage() for r in caplog.records if "closing" in r.getMessage())
    assert "GET_TENSOR" in message and "size=64" in message and "[§7.2]" in message and "outside" in message


def host_tensor_graph(rpc, *, read_by_a_node: bool):
    """x in a buffer, scaled; and a host tensor (buffer 0, the client's own address in
    `data`, as 2.0.0 clients send) that a VIEW node names, or that a SCALE node reads."""
    from ggml_rpc_spec.client.graphs import GraphBuilder

    g = GraphBuilder(rpc.profile, rpc.alloc_buffer(1 << 12))
    x = g.input(np.arange(8, dtype=np.float32), name="x")
    host = g.new("F32", (4,), name="leaf_1")
    host.buffer, host.data = 0, 0x5594574A48C0
    user = g.scale(host, 2.0) if read_by_a_node else g.view(host, (2,), ())
    if not read_by_a_node:
        user.buffer = 0
    y = g.scale(x, 2.0, name="y")
    return g, [user, y], y


@pytest.mark.parametrize("proto,read,served", [("2.0.0", False, True), ("2.0.0", True, False),
                                               ("3.6.1", False, False)])
def test_a_host_address_in_a_graph_is_ignored_only_where_clients_send_it(reference_server, proto, read, served):
    """SPEC §4.1: 2.0.0 clients send their own address of a host tensor (profile column host
    data); the server never dereferences it and serves the graph unless an op needs that
    tensor's memory.  Later clients send 0 there, and an address is refused."""
    server = reference_server(proto)
    with RPCClient(server.endpoint, proto=proto) as rpc:
        g, nodes, y = host_tensor_graph(rpc, read_by_a_node=read)
        g.upload(rpc)
        if served:
            rpc.graph_compute(g.graph(nodes))
            assert g.read(rpc, y).ravel().tolist() == [2.0 * i for i in range(8)]
        else:
            with pytest.raises(ServerClosed):
                rpc.graph_compute(g.graph(nodes))
                g.read(rpc, y)


def test_a_refused_node_is_named_with_its_op_types_and_rule(reference_server, caplog):
    server = reference_server("3.6")
    with caplog.at_level(logging.WARNING, logger="ggml_rpc.server"):
        probe = Probe(server.endpoint, timeout=5)
        tensors = [probe.tensor(0, id=1), probe.tensor(64, id=2, name="steps", op=probe.profile.ggml.op_value(
            "TIMESTEP_EMBEDDING"), src=[1] + [0] * 9, op_params=spec_for("TIMESTEP_EMBEDDING").pack(dim=1000))]
        probe.send(Command.GRAPH_COMPUTE, {"device": 0}, graph=probe.graph(tensors, [2]))
        assert probe.outcome()[0] == CLOSED
    message = next(r.getMessage() for r in caplog.records if "closing" in r.getMessage())
    assert "TIMESTEP_EMBEDDING 'steps' (F32 <- F32)" in message and "exec.op-params §8.4" in message, message


def test_verbose_logs_one_line_per_command(reference_server, caplog):
    server = reference_server("7.0", verbose=True)
    with caplog.at_level(logging.INFO, logger="ggml_rpc.server"), RPCClient(server.endpoint) as rpc:
        rpc.alloc_buffer(64)
        rpc.sync()
    lines = [r.getMessage() for r in caplog.records]
    assert any(re.search(r"HELLO", line) for line in lines)
    assert any("ALLOC_BUFFER device=0 size=64" in line for line in lines)
    assert any("BUFFER_GET_BASE remote_ptr=0x" in line for line in lines)


@pytest.mark.parametrize("proto", MAIN)
def test_hash_cache(reference_server, tmp_path, proto):
    server = reference_server(proto, cache_dir=tmp_path, memory=64 << 20)
    data = np.random.default_rng(1).integers(0, 255, (10 << 20) + 4096, dtype=np.uint8)
    with RPCClient(server.endpoint) as rpc:
        buf = rpc.alloc_buffer(len(data))
        t = rpc.tensor_for(buf, 0, shape=(len(data),), type="I8")
        assert rpc.upload(t, data) is False  # miss: sent in full, and stored
        rpc.sync()
    name = f"{fnv1a64(data):016x}"
    assert (tmp_path / name).read_bytes() == data.tobytes()
    with RPCClient(server.endpoint) as rpc:
        buf = rpc.alloc_buffer(len(data))
        t = rpc.tensor_for(buf, 0, shape=(len(data),), type="I8")
        assert rpc.upload(t, data) is True  # hit: the server wrote it from its cache
        assert bytes(rpc.get_tensor(t)) == data.tobytes()
    # a damaged entry (cut short, as by a crash while writing) is a miss, never a wrong hit
    (tmp_path / name).write_bytes(data[: len(data) // 2].tobytes())
    with RPCClient(server.endpoint) as rpc:
        buf = rpc.alloc_buffer(len(data))
        t = rpc.tensor_for(buf, 0, shape=(len(data),), type="I8")
        assert rpc.set_tensor_hash(t, fnv1a64(data)) is False


def run_cli_server(*args, log, timeout=30):
    """The console script in a child process logging to `log`; returns (process, endpoint)."""
    proc = subprocess.Popen([sys.executable, "-m", "ggml_rpc_spec.server.cli", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        match = re.search(r"endpoint\s*:\s*(\S+)", line)
        if match:
            return proc, match.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("the server did not start")


def test_ctrl_c_shuts_down_cleanly(tmp_path):
    log = tmp_path / "server.log"
    with open(log, "w") as sink:
        proc, endpoint = run_cli_server("--proto", "3.6", log=sink)
    try:
        with RPCClient(endpoint) as rpc:
            assert rpc.profile.name == "3.6.1"
            proc.send_signal(signal.SIGINT)  # with a client still connected
            assert proc.wait(timeout=20) == 0
        assert "shutting down" in log.read_text()
    finally:
        proc.kill()


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))


def test_memory_does_not_grow_over_1000_connections(tmp_path):
    with open(tmp_path / "server.log", "w") as sink:
        proc, endpoint = run_cli_server("--proto", "7.0", "--mem", "1G", log=sink)
    try:
        def cycles(n):
            for _ in range(n):
                with RPCClient(endpoint) as rpc:
                    buf = rpc.alloc_buffer(1 << 20)
                    rpc.buffer_clear(buf, 1)  # touch the memory so it is really allocated
                    rpc.sync()
        cycles(100)
        before = rss_kib(proc.pid)
        cycles(900)
        after = rss_kib(proc.pid)
        assert after - before < 16 * 1024, f"RSS grew from {before} to {after} KiB over 900 connections"
        with RPCClient(endpoint) as rpc:
            assert rpc.device_memory() == (1 << 30, 1 << 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_non_loopback_bind_warns():
    from ggml_rpc_spec.server.cli import exposure_warning

    assert exposure_warning("127.0.0.1") is None and exposure_warning("localhost") is None
    assert "Never expose" in exposure_warning("0.0.0.0")


def test_cli_help_and_bad_arguments():
    out = subprocess.run([sys.executable, "-m", "ggml_rpc_spec.server.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--proto" in out.stdout and "--cache-dir" in out.stdout and "--mem" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "ggml_rpc_spec.server.cli", "--proto", "6.1"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "no supported version 6.1.x; supported: 2.0.0" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "ggml_rpc_spec.server.cli", "--mem", "lots"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a size" in bad.stderr


def test_poll_time_is_checked_on_the_command_line(capsys):
    parser = build_parser()
    assert parser.parse_args(["--poll-us", "0"]).poll_us == 0
    assert parser.parse_args([]).poll_us == DEFAULT_POLL * 1e6
    for bad in ("-1", "nan", "soon", "2e6"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--poll-us", bad])
        assert "not a time in microseconds" in capsys.readouterr().err


@pytest.mark.parametrize("poll", [0.0, DEFAULT_POLL])
def test_a_server_that_polls_or_sleeps_answers_alike(poll):
    with ReferenceServer(profile=profile_for("7.0.0"), memory=1 << 20, poll=poll) as server:
        for client_poll in (0.0, DEFAULT_POLL):
            with RPCClient(server.endpoint, poll=client_poll) as rpc:
                assert [rpc.alignment() for _ in range(3)] == [32] * 3


def test_a_stalled_frame_is_closed_but_an_idle_connection_is_kept(reference_server):
    """§2.5: a started request that sends no byte for the frame timeout loses its connection
    (it held a slot forever); a connection idle between requests is never closed (llama.cpp
    keeps its connections idle for long periods)."""
    server = reference_server("7.0.0", frame_timeout=0.3)
    with RPCClient(server.endpoint) as idle:
        idle.device_count()
        stalled = socket.create_connection(server.address)
        stalled.sendall(bytes([14]) + struct.pack("<Q", 24)[:5])  # a HELLO cut short in its size field
        stalled.settimeout(10)
        started = time.monotonic()
        assert stalled.recv(1) == b""  # the server closed it
        waited = time.monotonic() - started
        stalled.close()
        assert 0.25 <= waited < 5, waited
        time.sleep(0.6)  # idle for twice the frame timeout: the behaviour under test, not a synchronisation
        assert idle.device_count() == 1


def test_stalled_peers_cannot_shut_others_out(reference_server):
    """§2.5: with every slot held by a peer that sent half a request, a new client still gets
    in: the peer stalled longest makes room for it."""
    server = reference_server("7.0.0", max_connections=4)
    server.evict_after = 0.0  # the rule's pause, shortened for the test
    stalled = []
    for _ in range(4):
        sock = socket.create_connection(server.address)
        sock.sendall(bytes([14]) + struct.pack("<Q", 24)[:5])
        sock.settimeout(10)
        stalled.append(sock)
    try:
        with RPCClient(server.endpoint, timeout=5) as rpc:
            assert rpc.device_count() == 1
        readable, _, _ = select.select(stalled, [], [], 10)  # one of them was dropped to make room
        assert readable and all(sock.recv(1) == b"" for sock in readable)
    finally:
        for sock in stalled:
            sock.close()


def test_a_trickling_request_is_closed_by_the_minimum_rate(reference_server):
    """A started request must keep a minimum average rate, not just a byte per frame timeout."""
    server = reference_server("7.0.0", frame_timeout=30, min_rate=1000)
    server.pace = FramePace(gap=30, min_rate=1000, grace=0.2)  # the grace period, shortened for the test
    sock = socket.create_connection(server.address)
    sock.settimeout(10)
    sock.sendall(bytes([14]) + struct.pack("<Q", 24) + bytes(24))
    assert len(sock.recv(64)) == 36  # HELLO's reply
    sock.sendall(bytes([1]) + struct.pack("<Q", 4)[:3])  # most of a request's header, then nothing
    started = time.monotonic()
    try:
        assert sock.recv(1) == b""  # closed at grace + received / min_rate, long before the 30 s gap
        assert time.monotonic() - started < 5
    finally:
        sock.close()


def test_the_pace_of_a_frame():
    pace = FramePace(gap=60, min_rate=1000, grace=10)
    assert pace.timeout(100.0, 0, 100.0) == 10  # the grace period first
    assert pace.timeout(100.0, 5000, 112.0) == 3  # then received / min_rate: 5000 bytes buy 5 s
    assert pace.timeout(100.0, 10**9, 100.0) == 60  # never more than the gap between bytes
    assert pace.timeout(100.0, 0, 200.0) == 0.001
    assert FramePace(gap=None, min_rate=0).timeout(0.0, 0, 1e9) is None


def test_the_pace_bounds_receiving_only(reference_server):
    """A large reply goes out at the client's speed, whatever the pace of the request before it."""
    server = reference_server("7.0.0", memory=128 << 20)
    server.pace = FramePace(gap=5, min_rate=10**9, grace=0.05)  # a pace that allows a request 50 ms
    with RPCClient(server.endpoint) as rpc:
        size = 32 << 20
        buf = rpc.alloc_buffer(size)
        tensor = rpc.tensor_for(buf, 0, shape=(size,), type="I8")
        request = b"".join(bytes(p) for p in encode_request(rpc.profile, Command.GET_TENSOR,
                                                              {"tensor": tensor, "offset": 0, "size": size}))
        rpc.sock.sendall(request[:1])
        time.sleep(0.02)  # a request in two pieces: the server receives the rest inside a started frame
        rpc.sock.sendall(request[1:])
        time.sleep(0.3)  # a slow reader: the behaviour under test, not a synchronisation
        rpc.sock.settimeout(10)
        got = 0
        while got < 8 + size:
            chunk = rpc.sock.recv(1 << 20)
            assert chunk, f"the server closed the connection after {got} bytes of its reply"
            got += len(chunk)


def test_each_frame_has_its_own_clock():
    """Frames that follow one another without a pause each start the pace's clock anew: a
    client streaming requests is judged on each request, not on all since the first."""
    activity = Activity(socket.socket(), "test")
    try:
        activity.mark(True, 0)
        first = activity.frame_started
        activity.mark(True, 0)  # more bytes of the same frame
        assert activity.frame_started == first
        activity.mark(True, 4096)  # the next frame began with the last bytes received
        assert activity.frame_started > first and activity.frame_offset == 4096
    finally:
        activity.sock.close()
