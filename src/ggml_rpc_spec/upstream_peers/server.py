"""Run the real upstream RPC server of a built peer, in a process of its own.

    python -m ggml_rpc_spec.upstream_peers.server --peer 0.3.36 [--host 127.0.0.1] [--port 0] [--cache DIR]

The upstream server serves forever and aborts the whole process on some hostile inputs,
so it always runs in a child process.  `UpstreamServer` starts it on port 0 and learns the
port the kernel picked from /proc (the C++ server never reports it), which also tells
when it is ready.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

from .build import loads_here, python_command
from .catalog import Peer, peer_for
from .libs import GGML_BACKEND_DEVICE_TYPE_CPU, load

# The C++ CPU device reports the host's physical memory; keep the numbers honest instead.
DEFAULT_THREADS = 2


def serve(peer: Peer, host: str, port: int, cache_dir: str | None, devices: int, threads: int) -> None:
    libs = load(peer)
    endpoint = f"{host}:{port}".encode()
    cache = cache_dir.encode() if cache_dir else None
    if peer.server_api == "devices":
        cpu = libs.ggml.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
        if not cpu:
            raise SystemExit("no CPU device in the peer's ggml registry")
        array = (ctypes.c_void_p * devices)(*([cpu] * devices))
        libs.rpc.ggml_backend_rpc_start_server(endpoint, cache, threads, devices, array)
    else:
        backend = libs.cpu.ggml_backend_cpu_init()
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        libs.rpc.ggml_backend_rpc_start_server(backend, endpoint, cache, total, total)
    raise SystemExit("the upstream server returned (it could not bind or start)")


def _listening_ports(pid: int) -> list[int]:
    """TCP ports on which process `pid` listens (Linux /proc)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir() if fd_dir.exists() else ():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# llama.cpp 8.0.0's tensor split: the server of rank 0 (the first in the client's list) listens
# for rank 1's server-to-server link on its own port + 1000
COMM_PORT_OFFSET = 1000


def comm_safe_port() -> int:
    """A port for the server that will be rank 0 of a tensor split: free, its link port free
    too, and both below the kernel's ephemeral range, where no client socket can come to hold
    the link port before the link opens (a kernel-chosen port + 1000 may be any connection's)."""
    lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(10000, lowest_ephemeral - COMM_PORT_OFFSET), 200):
        if _bindable(port) and _bindable(port + COMM_PORT_OFFSET):
            return port
    raise RuntimeError(f"no free port pair (P, P + {COMM_PORT_OFFSET}) below {lowest_ephemeral} in 200 tries")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))  # where the link listens
        except OSError:
            return False
    return True


class UpstreamServer:
    """A real upstream server in a child process, on 127.0.0.1 and a kernel-chosen port (or
    `port`: where more than the server's own port matters, see COMM_PORT_OFFSET)."""

    def __init__(self, peer: Peer | str, *, cache_dir: str | None = None, devices: int = 1,
                 host: str = "127.0.0.1", port: int = 0, threads: int = DEFAULT_THREADS,
                 start_timeout: float = 60.0) -> None:
        self.peer = peer_for(peer) if isinstance(peer, str) else peer
        self.cache_dir = cache_dir
        self.devices = devices
        self.threads = threads
        self.host = host
        self.listen_port = port
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._log = tempfile.NamedTemporaryFile(prefix=f"upstream-{self.peer.release}-", suffix=".log", delete=False)

    @property
    def address(self) -> tuple[str, int]:
        assert self.port is not None, "server not started"
        return self.host, self.port

    @property
    def endpoint(self) -> str:
        host, port = self.address
        return f"{host}:{port}"

    def command(self) -> list[str]:
        # this project's interpreter, started so that it can load the peer's libraries
        cmd = [*python_command(self.peer, sys.executable), "-m", "ggml_rpc_spec.upstream_peers.server",
               "--peer", self.peer.release, "--host", self.host, "--port", str(self.listen_port),
               "--devices", str(self.devices), "--threads", str(self.threads)]
        if self.cache_dir:
            cmd += ["--cache", self.cache_dir]
        return cmd

    def start(self) -> "UpstreamServer":
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"upstream server {self.peer.release} exited ({self.process.returncode}):\n{self.log()}")
            ports = _listening_ports(self.process.pid)
            if ports:
                self.port = ports[0]
                return self
            time.sleep(0.02)  # polling for the LISTEN socket to appear, not a fixed wait
        self.stop()
        raise RuntimeError(f"upstream server {self.peer.release} did not listen within {self.start_timeout}s")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def restart(self) -> "UpstreamServer":
        self.stop()
        return self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def close(self) -> None:
        self.stop()
        self._log.close()
        os.unlink(self._log.name)

    def __enter__(self) -> "UpstreamServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the real upstream GGML RPC server of a built peer.")
    parser.add_argument("--peer", required=True, help="PyPI release (0.3.36, 0.11739) or protocol (7.0, 8.0)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50052)
    parser.add_argument("--cache", default=None, help="hash cache directory (SET_TENSOR_HASH)")
    parser.add_argument("--devices", type=int, default=1, help="number of CPU devices to expose")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    args = parser.parse_args(argv)
    peer = peer_for(args.peer)
    if not loads_here(peer):  # started by hand: again, through the loader of the C library the peer needs
        command = python_command(peer, sys.executable)
        os.execv(command[0], [*command, "-m", __spec__.name, *(sys.argv[1:] if argv is None else argv)])
    cast(io.TextIOWrapper, sys.stdout).reconfigure(line_buffering=True)  # the interpreter's own stdout
    serve(peer, args.host, args.port, args.cache, args.devices, args.threads)


if __name__ == "__main__":
    main()
