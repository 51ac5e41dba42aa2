"""Drive the real upstream RPC client (libggml-rpc) through ggml's own API, with ctypes.

The upstream client aborts its process when a server misbehaves (RPC_STATUS_ASSERT) and
keeps process-wide socket caches, so every session runs in a child process:

    results = run_client(peer, "127.0.0.1:50052", steps)

`steps` is a list of small dicts (JSON-able), executed in order by `ClientSession`; each
yields one result.  Operations (names in quotes, arguments after):

    "device_count"                                   -> int (3.x+; 1 for 2.0.0)
    "memory"        device                           -> [free, total]
    "buffer_type"   device                           -> {"alignment", "max_size"}
    "alloc"         name, size, device               -> {"size", "base"} or null
    "tensor"        name, buffer, type, ne, offset   -> {"nbytes", "data"} (a tensor at base+offset)
    "view"          name, of, ne, nb, offset         -> {"nbytes"} (strided view of a tensor)
    "alloc_size"    tensor, device                   -> int  (asks the server for quantized rows)
    "set"           tensor, hex, offset              -> null
    "fill"          tensor, value, size              -> null (SET_TENSOR of `size` bytes of `value`, timed)
    "read"          tensor, size                     -> null (GET_TENSOR of `size` bytes, timed, data dropped)
    "get"           tensor, offset, size             -> hex
    "memset"        tensor, value, offset, size      -> null (5.0+)
    "copy"          src, dst                         -> null
    "clear"         buffer, value                    -> null
    "free"          buffer                           -> null
    "add"           name, a, b, buffer, offset       -> {"nbytes"}: out = a + b, computed on the server
    "compute"       output, device                   -> null (GRAPH_COMPUTE, or RECOMPUTE when unchanged)
    "compute_empty" device                           -> null (a graph without nodes: the client asserts)
    "add_server"                                     -> int or null (the devices of the server's registry, as
                                                        llama.cpp's --rpc registers it; null: no registry)
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from ctypes import Structure, c_bool, c_char_p, c_int, c_int64, c_size_t, c_uint8, c_void_p
from pathlib import Path

from .build import python_command
from .catalog import Peer, peer_for
from .libs import load

GGML_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 8, "Q4_K": 12, "I8": 24, "I32": 26, "I64": 27, "BF16": 30}


class _InitParams(Structure):
    _fields_ = [("mem_size", c_size_t), ("mem_buffer", c_void_p), ("no_alloc", c_bool)]


def _bind(peer: Peer):
    libs = load(peer)
    base, rpc = libs.base, libs.rpc
    signatures = {
        "ggml_init": (c_void_p, [_InitParams]),
        "ggml_new_tensor_4d": (c_void_p, [c_void_p, c_int, c_int64, c_int64, c_int64, c_int64]),
        "ggml_view_4d": (c_void_p, [c_void_p, c_void_p, c_int64, c_int64, c_int64, c_int64, c_size_t, c_size_t,
                                    c_size_t, c_size_t]),
        "ggml_add": (c_void_p, [c_void_p, c_void_p, c_void_p]),
        "ggml_set_name": (c_void_p, [c_void_p, c_char_p]),
        "ggml_nbytes": (c_size_t, [c_void_p]),
        "ggml_new_graph": (c_void_p, [c_void_p]),
        "ggml_build_forward_expand": (None, [c_void_p, c_void_p]),
        "ggml_backend_buft_alloc_buffer": (c_void_p, [c_void_p, c_size_t]),
        "ggml_backend_buft_get_alignment": (c_size_t, [c_void_p]),
        "ggml_backend_buft_get_max_size": (c_size_t, [c_void_p]),
        "ggml_backend_buft_get_alloc_size": (c_size_t, [c_void_p, c_void_p]),
        "ggml_backend_buffer_get_base": (c_void_p, [c_void_p]),
        "ggml_backend_buffer_get_size": (c_size_t, [c_void_p]),
        "ggml_backend_buffer_clear": (None, [c_void_p, c_uint8]),
        "ggml_backend_buffer_free": (None, [c_void_p]),
        "ggml_backend_tensor_alloc": (c_int, [c_void_p, c_void_p, c_void_p]),
        "ggml_backend_view_init": (c_int, [c_void_p]),
        "ggml_backend_tensor_set": (None, [c_void_p, c_void_p, c_size_t, c_size_t]),
        "ggml_backend_tensor_get": (None, [c_void_p, c_void_p, c_size_t, c_size_t]),
        "ggml_backend_tensor_memset": (None, [c_void_p, c_uint8, c_size_t, c_size_t]),
        "ggml_backend_tensor_copy": (None, [c_void_p, c_void_p]),
        "ggml_backend_graph_compute": (c_int, [c_void_p, c_void_p]),
        "ggml_backend_synchronize": (None, [c_void_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(base, name)
        function.restype, function.argtypes = restype, argtypes
    return libs, base, rpc


class ClientSession:
    """One process's view of a real upstream client talking to `endpoint`."""

    def __init__(self, peer: Peer, endpoint: str) -> None:
        self.peer = peer
        self.endpoint = endpoint.encode()
        self.libs, self.g, self.rpc = _bind(peer)
        self.multi = peer.server_api == "devices"
        self.ctx = self.g.ggml_init(_InitParams(64 * 1024 * 1024, None, True))
        self.buffers: dict[str, int] = {}
        self.tensors: dict[str, int] = {}
        self.backends: dict[int, int] = {}
        self._fill: tuple = (None, b"")  # (value, size) and its bytes, made once per shape
        self._into: dict[int, ctypes.Array] = {}  # receive buffers by size, made once

    def _dev(self, step) -> tuple:
        return (step.get("device", 0),) if self.multi else ()

    def buft(self, device: int = 0) -> int:
        args = (device,) if self.multi else ()
        buft = self.rpc.ggml_backend_rpc_buffer_type(self.endpoint, *args)
        if not buft:
            raise RuntimeError(f"cannot reach RPC server {self.endpoint.decode()}")
        return buft

    def backend(self, device: int = 0) -> int:
        if device not in self.backends:
            args = (device,) if self.multi else ()
            self.backends[device] = self.rpc.ggml_backend_rpc_init(self.endpoint, *args)
        return self.backends[device]

    def run(self, step: dict):
        return getattr(self, "op_" + step["op"])(step)

    def op_device_count(self, step):
        if not self.multi:
            return 1
        reg = self.rpc.ggml_backend_rpc_add_server(self.endpoint)
        ggml = self.libs.ggml
        ggml.ggml_backend_reg_dev_count.restype = c_size_t
        ggml.ggml_backend_reg_dev_count.argtypes = [c_void_p]
        return ggml.ggml_backend_reg_dev_count(reg)

    def op_memory(self, step):
        free, total = c_size_t(), c_size_t()
        self.rpc.ggml_backend_rpc_get_device_memory(self.endpoint, *self._dev(step), ctypes.byref(free),
                                                    ctypes.byref(total))
        return [free.value, total.value]

    def op_buffer_type(self, step):
        buft = self.buft(step.get("device", 0))
        return {"alignment": self.g.ggml_backend_buft_get_alignment(buft),
                "max_size": self.g.ggml_backend_buft_get_max_size(buft)}

    def op_alloc(self, step):
        buffer = self.g.ggml_backend_buft_alloc_buffer(self.buft(step.get("device", 0)), step["size"])
        if not buffer:
            return None
        self.buffers[step["name"]] = buffer
        return {"size": self.g.ggml_backend_buffer_get_size(buffer),
                "base": self.g.ggml_backend_buffer_get_base(buffer)}

    def _new(self, step) -> int:
        ne = list(step["ne"]) + [1] * (4 - len(step["ne"]))
        tensor = self.g.ggml_new_tensor_4d(self.ctx, GGML_TYPES[step.get("type", "F32")], *ne)
        self.g.ggml_set_name(tensor, step["name"].encode())
        return tensor

    def op_tensor(self, step):
        tensor = self._new(step)
        buffer = self.buffers[step["buffer"]]
        address = self.g.ggml_backend_buffer_get_base(buffer) + step.get("offset", 0)
        if self.g.ggml_backend_tensor_alloc(buffer, tensor, address) != 0:
            raise RuntimeError(f"ggml_backend_tensor_alloc failed for {step['name']}")
        self.tensors[step["name"]] = tensor
        return {"nbytes": self.g.ggml_nbytes(tensor), "data": address}

    def op_view(self, step):
        ne = list(step["ne"]) + [1] * (4 - len(step["ne"]))
        nb = list(step["nb"]) + [0] * (3 - len(step["nb"]))
        view = self.g.ggml_view_4d(self.ctx, self.tensors[step["of"]], *ne, *nb[:3], step.get("offset", 0))
        self.g.ggml_set_name(view, step["name"].encode())
        if self.g.ggml_backend_view_init(view) != 0:
            raise RuntimeError(f"ggml_backend_view_init failed for {step['name']}")
        self.tensors[step["name"]] = view
        return {"nbytes": self.g.ggml_nbytes(view)}

    def op_alloc_size(self, step):
        return self.g.ggml_backend_buft_get_alloc_size(self.buft(step.get("device", 0)), self.tensors[step["tensor"]])

    def op_set(self, step):
        data = bytes.fromhex(step["hex"])
        self.g.ggml_backend_tensor_set(self.tensors[step["tensor"]], data, step.get("offset", 0), len(data))

    def op_fill(self, step):
        key = (step.get("value", 0), step["size"])
        if self._fill[0] != key:  # made once, so repeated fills time only the transfer
            self._fill = (key, bytes([key[0]]) * key[1])
        data = self._fill[1]
        self.g.ggml_backend_tensor_set(self.tensors[step["tensor"]], data, step.get("offset", 0), len(data))

    def _received(self, step) -> ctypes.Array:
        """GET_TENSOR into a buffer made once per size, so repeated reads time only the transfer."""
        size = step["size"]
        out = self._into.get(size)
        if out is None:
            out = self._into[size] = ctypes.create_string_buffer(size)
        self.g.ggml_backend_tensor_get(self.tensors[step["tensor"]], out, step.get("offset", 0), size)
        return out

    def op_read(self, step):
        self._received(step)

    def op_get(self, step):
        return self._received(step).raw.hex()

    def op_memset(self, step):
        self.g.ggml_backend_tensor_memset(self.tensors[step["tensor"]], step["value"], step.get("offset", 0),
                                          step["size"])

    def op_copy(self, step):
        self.g.ggml_backend_tensor_copy(self.tensors[step["src"]], self.tensors[step["dst"]])

    def op_clear(self, step):
        self.g.ggml_backend_buffer_clear(self.buffers[step["buffer"]], step.get("value", 0))

    def op_free(self, step):
        self.g.ggml_backend_buffer_free(self.buffers.pop(step["buffer"]))

    def op_add(self, step):
        out = self.g.ggml_add(self.ctx, self.tensors[step["a"]], self.tensors[step["b"]])
        self.g.ggml_set_name(out, step["name"].encode())
        buffer = self.buffers[step["buffer"]]
        address = self.g.ggml_backend_buffer_get_base(buffer) + step.get("offset", 0)
        if self.g.ggml_backend_tensor_alloc(buffer, out, address) != 0:
            raise RuntimeError("ggml_backend_tensor_alloc failed for the add result")
        self.tensors[step["name"]] = out
        return {"nbytes": self.g.ggml_nbytes(out)}

    def op_compute(self, step):
        graph = self.g.ggml_new_graph(self.ctx)
        self.g.ggml_build_forward_expand(graph, self.tensors[step["output"]])
        backend = self.backend(step.get("device", 0))
        status = self.g.ggml_backend_graph_compute(backend, graph)
        self.g.ggml_backend_synchronize(backend)
        if status != 0:
            raise RuntimeError(f"graph compute returned status {status}")


    def op_compute_empty(self, step):
        backend = self.backend(step.get("device", 0))
        self.g.ggml_backend_graph_compute(backend, self.g.ggml_new_graph(self.ctx))

    def op_add_server(self, step):
        add = getattr(self.rpc, "ggml_backend_rpc_add_server", None) if self.multi else None
        if add is None:
            raise RuntimeError(f"{self.peer.release}'s RPC backend has no ggml_backend_rpc_add_server")
        add.restype, add.argtypes = c_void_p, [c_char_p]
        reg = add(self.endpoint)
        if not reg:
            return None
        ggml = self.libs.ggml
        ggml.ggml_backend_reg_dev_count.restype = c_size_t
        ggml.ggml_backend_reg_dev_count.argtypes = [c_void_p]
        return ggml.ggml_backend_reg_dev_count(reg)


def _child_main() -> None:
    """Child process: read {"peer", "endpoint", "steps"} from stdin, print one JSON line per step."""
    import time

    job = json.loads(sys.stdin.read())
    session = ClientSession(peer_for(job["peer"]), job["endpoint"])
    for step in job["steps"]:
        started = time.perf_counter()
        result = session.run(step)
        seconds = time.perf_counter() - started
        print(json.dumps({"op": step["op"], "result": result, "seconds": seconds}), flush=True)


class ClientFailed(RuntimeError):
    def __init__(self, message: str, results: list, output: str) -> None:
        super().__init__(message)
        self.results = results
        self.output = output


def run_client(peer: Peer | str, endpoint: str, steps: list[dict], *, timeout: float = 120.0,
               times: list | None = None) -> list:
    """Run `steps` with the real upstream client in a child process; the list of results
    (and, into `times` if given, the seconds each step took inside the child).

    Raises ClientFailed (with the results so far) when the client process dies, e.g. when
    upstream's RPC_STATUS_ASSERT aborts because the server closed the connection.
    """
    peer = peer_for(peer) if isinstance(peer, str) else peer
    root = Path(__file__).resolve().parent.parent
    job = json.dumps({"peer": peer.release, "endpoint": endpoint, "steps": steps})
    # this project's interpreter, started so that it can load the peer's libraries
    child = [*python_command(peer, sys.executable), "-c",
             "from ggml_rpc_spec.upstream_peers.client import _child_main; _child_main()"]
    proc = subprocess.run(child, input=job, capture_output=True, text=True, timeout=timeout, cwd=root)
    results = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            results.append(record["result"])
            if times is not None:
                times.append(record["seconds"])
    if proc.returncode != 0 or len(results) != len(steps):
        raise ClientFailed(f"upstream client {peer.release} failed at step {len(results)} "
                           f"({steps[len(results)]['op'] if len(results) < len(steps) else '?'}), "
                           f"exit {proc.returncode}", results, proc.stdout + proc.stderr)
    return results
