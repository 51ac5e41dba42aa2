"""Load a built peer's shared libraries with ctypes.

Each library is loaded by its SONAME file (libggml.so.0, ...) with RTLD_GLOBAL: recent wheels
ship three separate copies of each library (.so, .so.0, .so.0.x.y), and loading a different
copy than the one libllama links to would create a second, empty backend registry.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_char_p, c_int, c_size_t, c_uint32, c_void_p
from dataclasses import dataclass
from pathlib import Path

from .build import PeerNotBuilt, find_built, lib_dir, library, loads_here
from .catalog import Peer

GGML_BACKEND_DEVICE_TYPE_CPU = 0


@dataclass
class PeerLibs:
    peer: Peer
    path: Path
    base: ctypes.CDLL
    cpu: ctypes.CDLL
    ggml: ctypes.CDLL
    rpc: ctypes.CDLL
    llama: ctypes.CDLL | None = None


def _declare(lib: ctypes.CDLL, name: str, restype, *argtypes) -> None:
    function = getattr(lib, name, None)
    if function is not None:
        function.restype = restype
        function.argtypes = list(argtypes)


def load(peer: Peer, *, with_llama: bool = False) -> PeerLibs:
    venv_path = find_built(peer)
    if venv_path is None:
        raise PeerNotBuilt(f"upstream peer {peer.release} (protocol {peer.protocol}) is not built; "
                           f"run: ggml-rpc-peers build {peer.release}")
    if not loads_here(peer):
        raise PeerNotBuilt(f"upstream peer {peer.release}'s libraries need Debian trixie's C library: load them in "
                           f"a python started by build.python_command")
    libs = lib_dir(peer, venv_path)

    def open_lib(stem: str) -> ctypes.CDLL:
        return ctypes.CDLL(str(library(libs, stem)), mode=ctypes.RTLD_GLOBAL)

    loaded = PeerLibs(peer, libs, open_lib("libggml-base"), open_lib("libggml-cpu"), open_lib("libggml"),
                      open_lib("libggml-rpc"))
    if with_llama:
        loaded.llama = open_lib("libllama")
    g, r = loaded.ggml, loaded.rpc
    _declare(g, "ggml_backend_dev_by_type", c_void_p, c_int)
    _declare(g, "ggml_backend_dev_init", c_void_p, c_void_p, c_char_p)
    _declare(g, "ggml_backend_reg_by_name", c_void_p, c_char_p)
    _declare(g, "ggml_backend_reg_get_proc_address", c_void_p, c_void_p, c_char_p)
    _declare(g, "ggml_backend_register", None, c_void_p)
    _declare(loaded.cpu, "ggml_backend_cpu_init", c_void_p)
    _declare(r, "ggml_backend_rpc_init", c_void_p, c_char_p, c_uint32)
    _declare(r, "ggml_backend_rpc_buffer_type", c_void_p, c_char_p, c_uint32)
    _declare(r, "ggml_backend_rpc_get_device_memory", None, c_char_p, c_uint32, POINTER(c_size_t), POINTER(c_size_t))
    _declare(r, "ggml_backend_rpc_add_server", c_void_p, c_char_p)
    if peer.server_api == "devices":
        _declare(r, "ggml_backend_rpc_start_server", None, c_char_p, c_char_p, c_size_t, c_size_t, POINTER(c_void_p))
    else:
        _declare(r, "ggml_backend_rpc_start_server", None, c_void_p, c_char_p, c_char_p, c_size_t, c_size_t)
        _declare(r, "ggml_backend_rpc_init", c_void_p, c_char_p)
        _declare(r, "ggml_backend_rpc_buffer_type", c_void_p, c_char_p)
        _declare(r, "ggml_backend_rpc_get_device_memory", None, c_char_p, POINTER(c_size_t), POINTER(c_size_t))
    return loaded
