"""The guard in front of a server: what breaks a rule never reaches the server, what is
fine passes unchanged (bulk data cut-through), and the real servers survive through it what
kills them directly."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
import urllib.request

import numpy as np
import pytest

from conftest import require_peer
from ggml_rpc_spec.client import RPCClient, ServerClosed, parse_endpoint
from ggml_rpc_spec.client.graphs import GraphBuilder
from ggml_rpc_spec.netio import FramePace, Networks, Splicer
from ggml_rpc_spec.protocol import Command
from ggml_rpc_spec.protocol.framing import encode_request
from ggml_rpc_spec.relay.cli import _serve_metrics
from ggml_rpc_spec.relay.guard import UNENFORCEABLE, GuardSettings, enforced_rules
from ggml_rpc_spec.relay.relay import Relay
from ggml_rpc_spec.server.link import LinkPolicy
from ggml_rpc_spec.upstream_peers.llama_run import run_llama

TEXT = "The quick brown fox jumps over the lazy dog. In the end, the dog and the fox are friends."


@pytest.fixture
def guarded(reference_server):
    """guarded(proto, **guard options) -> (guard, upstream reference server); both shut down after."""
    started = []

    def start(proto="7.0.0", *, listen_links=False, upstream=None, **options):
        server = upstream or reference_server(proto, memory=512 << 20)
        guard = Relay(parse_endpoint(server.endpoint), guard=GuardSettings(LinkPolicy.for_endpoint("127.0.0.1"),
                                                                           listen_links), **options).start()
        started.append(guard)
        return guard, server

    yield start
    for guard in started:
        guard.shutdown()


def test_a_request_that_breaks_a_rule_never_reaches_the_server(guarded):
    guard, server = guarded()
    with RPCClient(guard.endpoint) as rpc:
        buf = rpc.alloc_buffer(4096)
        values = np.arange(1024, dtype=np.float32)
        tensor = rpc.tensor_for(buf, 0, values)
        rpc.upload(tensor, values)
        assert np.array_equal(rpc.read_array(tensor), values)
        with pytest.raises(ServerClosed):
            rpc.get_tensor(tensor, 0, 4096 + 16)  # past the buffer
    with RPCClient(guard.endpoint) as again:  # everyone else is still served
        assert again.device_count() == 1
    assert server.rejections == 0  # the server never saw it
    assert guard.stats.refused == {"get_tensor.region": 1}


def test_the_executor_validates_every_node_without_computing(guarded):
    """A graph whose node the executor refuses (NORM with a negative eps: ggml asserts) is
    refused by the guard under the executor's rule."""
    guard, server = guarded()
    with RPCClient(guard.endpoint) as rpc:
        g = GraphBuilder(rpc.profile, rpc.alloc_buffer(1 << 16))
        x = g.input(np.ones((2, 8), np.float32), name="x")
        y = g.norm(x, eps=-1.0)
        with pytest.raises(ServerClosed):
            g.run(rpc, [y])
    assert server.rejections == 0 and guard.stats.refused == {"exec.op-params": 1}


def test_recompute_after_free_is_refused(guarded):
    guard, server = guarded("8.0.0")
    with RPCClient(guard.endpoint) as rpc:
        buf = rpc.alloc_buffer(1 << 16)
        g = GraphBuilder(rpc.profile, buf)
        x = g.input(np.ones((2, 8), np.float32), name="x")
        g.run(rpc, [g.add(x, x)])
        rpc.graph_recompute()
        rpc.free_buffer(buf)
        rpc.graph_recompute()
        with pytest.raises(ServerClosed):
            rpc.device_count()
    assert server.rejections == 0 and guard.stats.refused == {"recompute.stored": 1}


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "bridge"])
def test_two_dimensional_transfers_pass_through_between_8_0_0_peers(reference_server, guard):
    """SET_TENSOR_2D's data tail goes on to a server that has the command, as SET_TENSOR's
    does; GET_TENSOR_2D reads the copies back."""
    server = reference_server("8.0.0")
    settings = GuardSettings(LinkPolicy.for_endpoint("127.0.0.1"), False) if guard else None
    relay = Relay(parse_endpoint(server.endpoint), client_profiles=(server.profile,), guard=settings).start()
    try:
        with RPCClient(relay.endpoint) as rpc:
            tensor = rpc.tensor_for(rpc.alloc_buffer(4096), 0, shape=(1024,), type="I8")
            rpc.set_tensor(tensor, bytes(1024))
            copies = bytes(range(48))
            rpc.set_tensor_2d(tensor, copies, offset=8, n_copies=3, stride=100)
            assert bytes(rpc.get_tensor_2d(tensor, offset=8, size=16, n_copies=3, stride=100)) == copies
            assert bytes(rpc.get_tensor(tensor, 0, 8 + 100 + 16)) == bytes(8) + copies[:16] + bytes(84) + copies[16:32]
    finally:
        relay.shutdown()
    assert server.rejections == 0


@pytest.mark.parametrize("splice", [True, False], ids=["kernel", "python"])
def test_bulk_data_passes_through_without_being_stored(guarded, splice, monkeypatch):
    """64 MiB up and down through the guard: its memory grows by a piece, not by the data.
    Both tails go through the kernel (os.splice) unless the relay is told not to."""
    moved: list[int] = []
    move = Splicer.move
    monkeypatch.setattr(Splicer, "move", lambda self, *args: moved.append(move(self, *args)) or moved[-1])
    guard, server = guarded(splice=splice)
    size = 64 << 20
    data = np.random.default_rng(1).integers(-128, 127, size, dtype=np.int8)
    with RPCClient(guard.endpoint) as rpc:
        buf = rpc.alloc_buffer(size)
        tensor = rpc.tensor_for(buf, 0, data)
        into = bytearray(size)
        tracemalloc.start()
        try:
            rpc.set_tensor(tensor, data)
            rpc.get_tensor(tensor, into=into)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert bytes(into) == data.tobytes()
    assert peak < 8 << 20, f"the guard held {peak} bytes at once"
    # all but what arrived in one receive with the heads
    assert 2 * size - (1 << 20) < sum(moved) <= 2 * size if splice else not moved


def test_a_data_tail_stalled_inside_the_kernel_path_is_closed_by_the_pace(guarded):
    """A SET_TENSOR whose data stops coming holds the guard's connection no longer than the
    frame pace allows, spliced or not."""
    guard, server = guarded(pace=FramePace(gap=30, min_rate=1000, grace=0.2))
    with RPCClient(guard.endpoint, timeout=10) as rpc:
        buf = rpc.alloc_buffer(1 << 20)
        tensor = rpc.tensor_for(buf, 0, shape=(1 << 20,), type="I8")
        body = {"tensor": tensor, "offset": 0, "cache_flag": 0}  # 7.0.0's SET_TENSOR has the flag
        head = b"".join(bytes(p) for p in encode_request(rpc.profile, Command.SET_TENSOR, body, data_size=1 << 20))
        rpc.sock.sendall(head + bytes(1000))  # the head and 1000 bytes of the data, then nothing
        started = time.monotonic()
        assert rpc.sock.recv(1) == b""
        assert time.monotonic() - started < 5


def test_links_are_held_to_the_policy(guarded):
    """COMM_INIT: rank 0 (upstream would listen on every interface) is declined unless
    allowed; rank 1 only towards admitted hosts; the upstream client then reduces through itself."""
    guard, server = guarded("8.0.0")
    with RPCClient(guard.endpoint) as rpc:
        assert not rpc.comm_init(rank=0, port=40000)
        assert not rpc.comm_init(rank=1, port=40000, host="192.0.2.7")
        assert rpc.device_count() == 1  # declined, not closed
    assert guard.stats.declined == {"rank 0 not allowed to listen": 1, "peer host not admitted": 1}
    assert server.rejections == 0


def test_the_guard_says_what_it_enforces():
    enforced = {r.key for r in enforced_rules()}
    assert {"tensor.bounds", "graph.bounds", "exec.op-params", "recompute.after-free", "tensor_2d.region"} <= enforced
    assert not enforced & set(UNENFORCEABLE)
    assert {"exec.rows-in-range", "exec.expert-ids", "exec.state-ids"} <= set(UNENFORCEABLE)


def test_counters_in_prometheus_format(guarded):
    guard, _ = guarded()
    guard.stats.count("refused", "tensor.bounds")
    text = guard.stats.prometheus()
    assert 'ggml_rpc_guard_refused_total{rule="tensor.bounds"} 1' in text
    assert "# TYPE ggml_rpc_guard_connections_total counter" in text


def test_metrics_are_served_over_http(guarded):
    guard, _ = guarded()
    server = _serve_metrics(("127.0.0.1", 0), guard)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=10) as answer:
            assert b"ggml_rpc_guard_requests_total" in answer.read()
    finally:
        server.shutdown()


def test_clients_outside_the_allowed_networks_are_refused(guarded):
    guard, _ = guarded(allow=Networks(["10.0.0.0/8"]))
    with pytest.raises((ServerClosed, OSError)):
        with RPCClient(guard.endpoint, timeout=5) as rpc:
            rpc.device_count()


def test_guard_command_line():
    out = subprocess.run([sys.executable, "-m", "ggml_rpc_spec.relay.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--guard" in out.stdout
    bad = subprocess.run([sys.executable, "-c", "from ggml_rpc_spec.relay.cli import guard_main; "
                          "raise SystemExit(guard_main(['--upstream', '127.0.0.1:1', '--allow', '10.0.0.0/33']))"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "10.0.0.0/33" in bad.stderr


# -- the real servers behind the guard -------------------------------------------------------------



@pytest.mark.upstream
@pytest.mark.parametrize("release", ["0.3.20", "0.3.36"])
def test_what_kills_a_real_server_does_not_kill_it_through_the_guard(release, upstream_server, guarded, tmp_path):
    """Every destructive case of the suite and a bounded hostile fuzz run, through the guard
    (but what the guard cannot see: the data-dependent rules): the real server is still alive
    at the end."""
    server = upstream_server(release)
    guard, _ = guarded(upstream=server)
    proc = subprocess.run([sys.executable, "-m", "ggml_rpc_spec.conformance.cli", guard.endpoint, "--destructive",
                           "--fuzz-examples", "100", "--skip-rule", ",".join(UNENFORCEABLE), "--trace-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert "passed" in proc.stdout, proc.stdout[-2000:]
    assert server.alive(), f"the real {release} server died behind the guard:\n{server.log()[-3000:]}"
    assert sum(guard.stats.refused.values()) > 20


@pytest.mark.upstream
def test_a_real_model_runs_through_the_guard_unchanged(upstream_server, guarded, tiny_models):
    peer = require_peer("0.3.36")
    server = upstream_server("0.3.36")
    guard, _ = guarded(upstream=server)
    direct = run_llama(peer, tiny_models["2"], rpc=server.endpoint, text=TEXT, generate=8)
    through = run_llama(peer, tiny_models["2"], rpc=guard.endpoint, text=TEXT, generate=8)
    assert np.array_equal(direct["logits"], through["logits"])
    assert np.array_equal(direct["generated"], through["generated"])
    assert sum(guard.stats.refused.values()) == 0
