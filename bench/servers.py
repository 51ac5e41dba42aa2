"""The servers the benchmarks measure, each in a process of its own (so that no server shares
an interpreter, and its GIL, with the client measuring it or with another server):

    reference(proto, ...)         ggml-rpc-server
    upstream(peer, ...)           the real upstream server of a built peer
    guard(upstream), bridge(...)  ggml-rpc-guard / ggml-rpc-proxy --bridge in front of a server
    setup(kinds, peer)            one server ("ours" or "real"), or two for a tensor split

Each is a context manager yielding the endpoint it listens on (setup: a list of them).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import subprocess
import sys
import threading

from ggml_rpc_spec.upstream_peers.server import UpstreamServer, comm_safe_port

# what each program prints once it listens: ggml-rpc-server "  endpoint    : HOST:PORT" on stdout;
# the relays "ggml-rpc-guard (guard): HOST:PORT -> UPSTREAM" on stderr
SERVER_LINE = r"endpoint\s*:\s*(\S+)"
RELAY_LINE = r"\((?:bridge|guard)\): (\S+) ->"


@contextlib.contextmanager
def started(argv: list[str], pattern: str, *, stderr: bool = False, env: dict | None = None):
    """Run `argv` (with `env` added to the environment), yield the endpoint from the first
    line matching `pattern` (on stdout, or on stderr with `stderr`), stop the process afterwards."""
    proc = subprocess.Popen(argv, text=True, stdout=subprocess.DEVNULL if stderr else subprocess.PIPE,
                            stderr=subprocess.PIPE if stderr else subprocess.DEVNULL,
                            env={**os.environ, **env} if env else None)
    stream = proc.stderr if stderr else proc.stdout
    try:
        for line in stream:
            match = re.search(pattern, line)
            if match:
                break
        else:
            raise RuntimeError(f"{' '.join(argv[:4])} exited ({proc.wait()}) before it listened")
        # what it prints later (a relay logs every connection) is read and dropped, so that a
        # full pipe never blocks it
        threading.Thread(target=collections.deque, args=(stream, 0), daemon=True).start()
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def python(code_or_module: str, *args: str) -> list[str]:
    """This interpreter running a module (`-m`), or a `module:function` entry point."""
    if ":" in code_or_module:
        module, function = code_or_module.split(":")
        return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())", *args]
    return [sys.executable, "-m", code_or_module, *args]


def reference(proto: str, *args: str, port: int = 0, mem: str = "8G", threads: int | None = None):
    """ggml-rpc-server speaking `proto`; `args` are more of its options; `threads`: NumPy's
    BLAS threads (default: its own choice, the machine's cores)."""
    env = dict.fromkeys(("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"), str(threads)) if threads else None
    return started(python("ggml_rpc_spec.server.cli", "--port", str(port), "--proto", proto, "--mem", mem, *args),
                   SERVER_LINE, env=env)


@contextlib.contextmanager
def upstream(peer, *, port: int = 0, threads: int | None = None):
    """The real upstream server; `threads`: its CPU backend's threads (default: the peers' own)."""
    with UpstreamServer(peer, port=port, **({"threads": threads} if threads else {})) as server:
        yield server.endpoint


def guard(target: str):
    """ggml-rpc-guard in front of `target`."""
    return started(python("ggml_rpc_spec.relay.cli:guard_main", "--listen", "127.0.0.1:0", "--upstream", target),
                   RELAY_LINE, stderr=True)


def bridge(target: str, client_proto: str):
    """ggml-rpc-proxy --bridge in front of `target`, for clients speaking `client_proto`."""
    return started(python("ggml_rpc_spec.relay.cli", "--bridge", "--listen", "127.0.0.1:0", "--upstream", target,
                          "--client-proto", client_proto), RELAY_LINE, stderr=True)


@contextlib.contextmanager
def setup(kinds: tuple[str, ...], peer, *, numerics: str = "ggml"):
    """Servers of `peer`'s protocol, each "ours", "real" or "guarded" (real behind
    ggml-rpc-guard), as a list of endpoints: one for a layer split, two for a tensor split.
    The two of a tensor split share the machine: each
    computes on its share of the cores (the upstream CPU backend's threads wait for work
    spinning: two real servers of two threads each on two cores decoded 0.2-0.5 tokens/s,
    of one thread each 14-18), and rank 0 listens on a port whose + 1000 is free (where the
    upstream client puts the link)."""
    threads = max(1, (os.cpu_count() or 1) // len(kinds)) if len(kinds) > 1 else None
    with contextlib.ExitStack() as stack:
        endpoints = []
        for rank, kind in enumerate(kinds):
            port = comm_safe_port() if len(kinds) == 2 and rank == 0 else 0
            if kind == "ours":
                endpoint = stack.enter_context(reference(peer.protocol, "--numerics", numerics, port=port, mem="4G",
                                                         threads=threads))
            else:
                endpoint = stack.enter_context(upstream(peer, port=port, threads=threads))
                if kind == "guarded":
                    endpoint = stack.enter_context(guard(endpoint))
            endpoints.append(endpoint)
        yield endpoints
