"""Run a GGUF model with the real llama.cpp (llama-cpp-python) of a built peer.

Runs inside the peer's own virtualenv (which has llama_cpp), so it imports nothing outside
the standard library, numpy and llama_cpp:

    <peer venv>/bin/python .../upstream_peers/llama_run.py MODEL --out result.npz
        [--rpc HOST:PORT] [--text TEXT | --tokens 1,2,3] [--n-batch 512] [--generate N]

With --rpc every layer is offloaded to the RPC server (or, with a comma-separated list as
llama.cpp's --rpc takes, split across the servers); without it the model runs on the local
CPU.  The .npz holds `tokens`, `logits` (one row per position, teacher-forced),
`generated` (greedy continuation) and its `text`, plus `seconds` spent generating.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path


def _preload_ggml() -> ctypes.CDLL:
    """Load the SONAME copies llama.cpp links against, globally, before llama_cpp does."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    libs = Path(spec.origin).parent / "lib"
    handles = {}
    for stem in ("libggml-base", "libggml-cpu", "libggml", "libggml-rpc"):
        versioned = libs / f"{stem}.so.0"  # the copy libllama links to, when the wheel has one
        path = versioned if versioned.exists() else libs / f"{stem}.so"
        handles[stem] = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    return handles["libggml"]


def add_rpc_server(ggml: ctypes.CDLL, endpoint: str) -> None:
    """Register an RPC server as llama.cpp's --rpc does: through the RPC backend's
    `ggml_backend_rpc_add_server` (a registry per server, 3.x and later), or on 2.0.0 its
    `ggml_backend_rpc_add_device` (one device)."""
    ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    rpc_reg = ggml.ggml_backend_reg_by_name(b"RPC")
    if not rpc_reg:
        raise SystemExit("this llama.cpp build has no RPC backend")
    for function, register in ((b"ggml_backend_rpc_add_server", ggml.ggml_backend_register),
                               (b"ggml_backend_rpc_add_device", ggml.ggml_backend_device_register)):
        address = ggml.ggml_backend_reg_get_proc_address(rpc_reg, function)
        if address:
            break
    else:
        raise SystemExit("this llama.cpp build's RPC backend cannot add servers")
    register.restype = None
    register.argtypes = [ctypes.c_void_p]
    added = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(address)(endpoint.encode())
    if not added:
        raise SystemExit(f"cannot reach RPC server {endpoint}")
    register(added)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rpc", default=None,
                        help="HOST:PORT of an RPC server to offload every layer to (comma-separated: several)")
    parser.add_argument("--text", default="The quick brown fox jumps over the lazy dog.")
    parser.add_argument("--tokens", default=None, help="comma-separated token ids instead of --text")
    parser.add_argument("--n-batch", type=int, default=512)
    parser.add_argument("--n-ctx", type=int, default=256)
    parser.add_argument("--generate", type=int, default=0, help="greedy tokens to generate after the prompt")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    ggml = _preload_ggml()
    for endpoint in args.rpc.split(",") if args.rpc else ():
        add_rpc_server(ggml, endpoint)
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=args.model, n_gpu_layers=99 if args.rpc else 0, n_ctx=args.n_ctx,
                          n_batch=args.n_batch, n_ubatch=args.n_batch, logits_all=True, verbose=False,
                          n_threads=args.threads, seed=0)
    tokens = ([int(t) for t in args.tokens.split(",")] if args.tokens
              else llm.tokenize(args.text.encode(), add_bos=True))
    llm.eval(tokens)
    logits = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    generated = []
    started = time.monotonic()
    for _ in range(args.generate):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        generated.append(token)
        llm.eval([token])
    seconds = time.monotonic() - started
    text = llm.detokenize(generated).decode("utf-8", errors="replace") if generated else ""
    np.savez(args.out, tokens=np.array(tokens), logits=logits, generated=np.array(generated, dtype=np.int64),
             seconds=np.array(seconds), text=np.array(text))
    sys.stdout.flush()
    os._exit(0)  # skip llama.cpp's teardown: the RPC backend's atexit ordering can abort


if __name__ == "__main__":
    main()


def run_llama(peer, model, *, rpc: str | None = None, text: str | None = None, tokens=None, n_batch: int = 512,
              n_ctx: int = 256, generate: int = 0, timeout: float = 900.0) -> dict:
    """Run this script with a built peer's own Python; returns the arrays of its .npz.

    Called from the project's environment (which has numpy); raises RuntimeError with the
    script's output when llama.cpp fails.
    """
    import subprocess
    import tempfile

    import numpy as np

    from .build import find_built
    from .catalog import peer_for

    peer = peer_for(peer) if isinstance(peer, str) else peer
    venv = find_built(peer)
    if venv is None:
        raise RuntimeError(f"peer {peer.release} is not built")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.npz"
        # this file runs as a script in the peer's own Python (which has llama_cpp, not this project)
        cmd = [str(venv / "bin" / "python"), str(Path(__file__).resolve()), str(model), "--out", str(out),
               "--n-batch", str(n_batch), "--n-ctx", str(n_ctx), "--generate", str(generate)]
        if rpc:
            cmd += ["--rpc", rpc]
        if tokens is not None:
            cmd += ["--tokens", ",".join(str(int(t)) for t in tokens)]
        elif text is not None:
            cmd += ["--text", text]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"llama.cpp {peer.release} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        with np.load(out) as data:
            return {key: data[key] for key in data.files}
