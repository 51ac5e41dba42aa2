"""The Python client: version negotiation, errors that explain, timeouts, the info command."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from ggml_rpc_spec.protocol.errors import LocalProtocolError
from ggml_rpc_spec.client.cli import main as client_main
from ggml_rpc_spec.client.rpc import RPCClient, ServerClosed, parse_endpoint
from ggml_rpc_spec.netio import receive_into


@pytest.mark.parametrize("proto", ["2.0.0", "3.6.1", "4.0.2", "5.0.0", "7.0.0"])
def test_negotiates_the_servers_version(reference_server, proto):
    server = reference_server(proto)
    with RPCClient(server.endpoint) as rpc:
        assert rpc.profile.name == proto


def test_forced_version(reference_server):
    server = reference_server("3.6.1")
    with RPCClient(server.endpoint, proto="3.6.0") as rpc:
        assert rpc.profile.name == "3.6.0" and rpc.server_version == (3, 6, 1)


class Silent:
    """A TCP endpoint that accepts and reads but never answers (or closes at once)."""

    def __init__(self, close: bool = False) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.close = close
        self.held = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.close:
                conn.close()
            else:
                self.held.append(conn)

    @property
    def endpoint(self) -> str:
        return "127.0.0.1:%d" % self.listener.getsockname()[1]

    def stop(self):
        self.listener.close()
        for conn in self.held:
            conn.close()


def test_not_an_rpc_server_is_explained():
    silent = Silent(close=True)
    try:
        with pytest.raises(ServerClosed, match="closed the connection on every HELLO shape"):
            RPCClient(silent.endpoint, timeout=5)
    finally:
        silent.stop()


def test_timeout_names_the_command():
    silent = Silent()
    try:
        with pytest.raises(TimeoutError, match=r"no reply to HELLO from 127\.0\.0\.1:\d+ within 0\.3s"):
            RPCClient(silent.endpoint, proto="7.0", timeout=0.3)
    finally:
        silent.stop()


def test_rejection_names_the_request(reference_server):
    server = reference_server("7.0")
    with RPCClient(server.endpoint) as rpc:
        buf = rpc.alloc_buffer(64)
        tensor = rpc.tensor_for(buf, 0, np.zeros(16, np.float32))
        with pytest.raises(ServerClosed, match="server closed the connection after GET_TENSOR: request rejected"):
            rpc.get_tensor(tensor, 0, 65)


def test_rejected_one_way_request_is_reported_with_the_next_call(reference_server):
    server = reference_server("7.0")
    with RPCClient(server.endpoint) as rpc:
        buf = rpc.alloc_buffer(64)
        tensor = rpc.tensor_for(buf, 0, np.zeros(16, np.float32))
        rpc.set_tensor(tensor, bytes(100))  # one-way, too long: the server closes
        with pytest.raises(ServerClosed, match="after SET_TENSOR, GET_ALIGNMENT: request rejected"):
            rpc.alignment()


def test_commands_missing_from_the_version_are_refused_locally(reference_server):
    server = reference_server("3.6")
    with RPCClient(server.endpoint) as rpc:
        buf = rpc.alloc_buffer(64)
        with pytest.raises(LocalProtocolError, match="MEMSET_TENSOR: does not exist in protocol 3.6.1"):
            rpc.memset_tensor(rpc.tensor_for(buf, 0, np.zeros(4, np.float32)), 0)
        assert rpc.alignment() == 32  # nothing was sent


def test_get_tensor_into_caller_buffer(reference_server):
    server = reference_server("7.0")
    with RPCClient(server.endpoint) as rpc:
        buf = rpc.alloc_buffer(1 << 20)
        data = np.random.default_rng(0).integers(0, 255, 1 << 20, dtype=np.uint8)
        tensor = rpc.tensor_for(buf, 0, data.view(np.int8))
        rpc.set_tensor(tensor, data)
        target = bytearray(1 << 20)
        view = rpc.get_tensor(tensor, into=target)
        assert view.obj is target and target == data.tobytes()


def test_tensor_helpers_cover_float_and_int_types(reference_server):
    import ml_dtypes

    server = reference_server("7.0")
    with RPCClient(server.endpoint) as rpc:
        buf = rpc.alloc_buffer(1 << 16)
        for i, dtype in enumerate([np.float32, np.float16, ml_dtypes.bfloat16, np.int32, np.int64, np.int8]):
            values = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
            tensor = rpc.tensor_for(buf, i * 1024, values)
            rpc.set_tensor(tensor, values)
            assert np.array_equal(rpc.read_array(tensor), values), dtype


def test_parse_endpoint():
    assert parse_endpoint("10.0.0.1:50052") == ("10.0.0.1", 50052)
    assert parse_endpoint("[::1]:7") == ("::1", 7)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_endpoint("localhost")


def test_info_command(reference_server, capsys):
    server = reference_server("3.6", devices=2, memory=1 << 30)
    assert client_main(["info", server.endpoint]) == 0
    out = capsys.readouterr().out
    assert "protocol   3.6.1" in out and "devices    2" in out
    assert "device 1   memory 1.0 GiB free of 1.0 GiB; alignment 32; max buffer unlimited (2^64-1)" in out


def test_info_command_errors_are_one_line():
    silent = Silent(close=True)
    try:
        out = subprocess.run([sys.executable, "-m", "ggml_rpc_spec.client.cli", "info", silent.endpoint],
                             capture_output=True, text=True)
    finally:
        silent.stop()
    assert out.returncode == 1 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    refused = subprocess.run([sys.executable, "-m", "ggml_rpc_spec.client.cli", "info", "127.0.0.1:1"],
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "cannot reach 127.0.0.1:1: Connection refused" in refused.stderr


def test_receive_into_polls_then_sleeps_and_keeps_the_timeout():
    """Bytes already waiting are taken while polling; when none come, the socket's own
    timeout applies after the poll, and the socket keeps that timeout; EOF reads 0."""
    mine, theirs = socket.socketpair()
    buf = bytearray(8)
    try:
        theirs.sendall(b"ping")
        assert receive_into(mine, memoryview(buf), poll=1e-3) == 4 and buf[:4] == b"ping"
        mine.settimeout(0.2)
        with pytest.raises(TimeoutError):
            receive_into(mine, memoryview(buf), poll=1e-3)
        assert mine.gettimeout() == 0.2
        theirs.close()
        assert receive_into(mine, memoryview(buf), poll=1e-3) == 0
    finally:
        mine.close()
        theirs.close()
