"""Run a GGUF model with the real llama.cpp of a built peer.

Runs inside the peer's own virtualenv, which has the peer's Python bindings (`llama_cpp` of
llama-cpp-python, or `llama_cpp_py_sync`), so it imports nothing outside the standard
library, numpy and those bindings:

    <peer python> .../upstream_peers/llama_run.py MODEL --out result.npz --bindings MODULE
        [--rpc HOST:PORT[,HOST:PORT...]] [--split-mode layer|tensor] [--flash-attn-type -1|0|1]
        [--text TEXT | --tokens 1,2,3] [--n-batch 512] [--generate N]

With --rpc every layer is offloaded to the RPC server (or, with a comma-separated list as
llama.cpp's --rpc takes, split across the servers: by layers, or with `--split-mode tensor`
every weight split between them); without it the model runs on the local CPU.  The .npz
holds `tokens`, `logits` (one row per position, teacher-forced), `generated` (greedy
continuation) and its `text`, plus `seconds` spent generating.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path
from typing import Protocol

SPLIT_MODES = ("layer", "tensor")  # llama.h's LLAMA_SPLIT_MODE_* that RPC servers can take


def _preload_ggml() -> ctypes.CDLL:
    """Load the SONAME copies llama.cpp links against, globally, before llama_cpp does."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise SystemExit("llama_cpp (llama-cpp-python) is not installed in this interpreter")
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


class LlamaCppPython:
    """llama-cpp-python's `Llama`: RPC servers registered in ggml's device registry (as
    llama.cpp's --rpc does) before the model loads; every position's logits are kept
    (logits_all)."""

    def __init__(self, args, servers: list[str]) -> None:
        ggml = _preload_ggml()
        for endpoint in servers:
            add_rpc_server(ggml, endpoint)
        import llama_cpp

        modes = sorted(name[len("LLAMA_SPLIT_MODE_"):].lower() for name in dir(llama_cpp)
                       if name.startswith("LLAMA_SPLIT_MODE_"))
        if args.split_mode not in modes:
            raise SystemExit(f"llama-cpp-python {llama_cpp.__version__} has no split mode {args.split_mode!r} "
                             f"(its llama.h has {', '.join(modes)})")
        options = {"split_mode": getattr(llama_cpp, f"LLAMA_SPLIT_MODE_{args.split_mode.upper()}")}
        if args.flash_attn_type is not None:
            if args.flash_attn_type not in (0, 1):
                raise SystemExit(f"llama-cpp-python {llama_cpp.__version__}'s Llama turns flash attention on (1) or "
                                 f"off (0); it has no flash_attn_type {args.flash_attn_type}")
            options["flash_attn"] = bool(args.flash_attn_type)
        self.llm = llama_cpp.Llama(model_path=args.model, n_gpu_layers=99 if servers else 0, n_ctx=args.n_ctx,
                                   n_batch=args.n_batch, n_ubatch=args.n_batch, logits_all=True, verbose=False,
                                   n_threads=args.threads, seed=0, **options)

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=True)

    def eval(self, tokens: list[int]):
        """The logits of each of `tokens`, appended to the context."""
        import numpy as np

        self.llm.eval(tokens)
        return np.array(self.llm.scores[self.llm.n_tokens - len(tokens): self.llm.n_tokens], dtype=np.float32)

    def detokenize(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="replace")


class LlamaCppPySync:
    """llama-cpp-py-sync's `Llama` (cffi over llama.h), RPC servers given by its `rpc_servers`.
    Its own evaluation asks llama_decode for the last position's logits only, so tokens are
    decoded here, through the context it holds, with every position's logits requested."""

    def __init__(self, args, servers: list[str]) -> None:
        from llama_cpp_py_sync import Llama

        options = {} if args.flash_attn_type is None else {"flash_attn_type": args.flash_attn_type}
        self.llm = Llama(args.model, n_ctx=args.n_ctx, n_batch=args.n_batch, n_ubatch=args.n_batch,
                         n_threads=args.threads, n_gpu_layers=99 if servers else 0, seed=0, verbose=False,
                         rpc_servers=servers or None, split_mode=args.split_mode, **options)
        self.n_batch = args.n_batch
        self.n_past = 0

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text, add_special=True)

    def eval(self, tokens: list[int]):
        """The logits of each of `tokens`, appended to the context in batches of n_batch."""
        import numpy as np

        lib, ffi, ctx, n_vocab = self.llm._lib, self.llm._ffi, self.llm._ctx, self.llm.n_vocab
        rows = []
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            batch = lib.llama_batch_init(len(chunk), 0, 1)
            try:
                batch.n_tokens = len(chunk)
                for i, token in enumerate(chunk):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, self.n_past + i, 1
                    batch.seq_id[i][0], batch.logits[i] = 0, 1
                status = lib.llama_decode(ctx, batch)
            finally:
                lib.llama_batch_free(batch)
            if status != 0:
                raise SystemExit(f"llama_decode failed with status {status}")
            self.n_past += len(chunk)
            rows += [np.frombuffer(ffi.buffer(lib.llama_get_logits_ith(ctx, i), 4 * n_vocab), dtype=np.float32).copy()
                     for i in range(len(chunk))]
        return np.stack(rows)

    def detokenize(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens)


class Bindings(Protocol):
    """What main() asks of a peer's bindings."""

    def __init__(self, args, servers: list[str]) -> None: ...

    def tokenize(self, text: str) -> list[int]: ...

    def eval(self, tokens: list[int]): ...

    def detokenize(self, tokens: list[int]) -> str: ...


BINDINGS: dict[str, type[Bindings]] = {"llama_cpp": LlamaCppPython, "llama_cpp_py_sync": LlamaCppPySync}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--out", required=True)
    parser.add_argument("--bindings", choices=sorted(BINDINGS), required=True,
                        help="the peer's Python bindings (its Distribution.module)")
    parser.add_argument("--rpc", default=None,
                        help="HOST:PORT of an RPC server to offload every layer to (comma-separated: several)")
    parser.add_argument("--split-mode", choices=SPLIT_MODES, default="layer",
                        help="how several servers share the model: whole layers, or every weight split")
    parser.add_argument("--flash-attn-type", type=int, choices=(-1, 0, 1), default=None,
                        help="llama.h's llama_flash_attn_type: -1 auto, 0 off, 1 on (default: the bindings' own)")
    parser.add_argument("--text", default="The quick brown fox jumps over the lazy dog.")
    parser.add_argument("--tokens", default=None, help="comma-separated token ids instead of --text")
    parser.add_argument("--n-batch", type=int, default=512)
    parser.add_argument("--n-ctx", type=int, default=256)
    parser.add_argument("--generate", type=int, default=0, help="greedy tokens to generate after the prompt")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import numpy as np

    model = BINDINGS[args.bindings](args, args.rpc.split(",") if args.rpc else [])
    tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else model.tokenize(args.text)
    logits = model.eval(tokens)
    generated, last = [], logits[-1]
    started = time.monotonic()
    for _ in range(args.generate):
        generated.append(int(np.argmax(last)))
        last = model.eval(generated[-1:])[-1]
    seconds = time.monotonic() - started
    text = model.detokenize(generated) if generated else ""
    np.savez(args.out, tokens=np.array(tokens), logits=logits, generated=np.array(generated, dtype=np.int64),
             seconds=np.array(seconds), text=np.array(text))
    sys.stdout.flush()
    os._exit(0)  # skip llama.cpp's teardown: the RPC backend's atexit ordering can abort


if __name__ == "__main__":
    main()


def run_llama(peer, model, *, rpc: str | None = None, split_mode: str = "layer", flash_attn_type: int | None = None,
              text: str | None = None, tokens=None, n_batch: int = 512, n_ctx: int = 256, generate: int = 0,
              timeout: float = 900.0) -> dict:
    """Run this script with a built peer's own Python; returns the arrays of its .npz.

    `rpc`: servers as llama.cpp's --rpc takes them ("HOST:PORT,HOST:PORT"); `split_mode`
    ("layer", "tensor") and `flash_attn_type` (-1 auto, 0 off, 1 on; None: the bindings'
    default, off) as in llama.h, refused by the script with a message where the peer's
    bindings lack them.  Called from the project's environment (which has numpy); raises
    RuntimeError with the script's output when llama.cpp fails.
    """
    import subprocess
    import tempfile

    import numpy as np

    from .build import find_built, python_command
    from .catalog import peer_for

    peer = peer_for(peer) if isinstance(peer, str) else peer
    if find_built(peer) is None:
        raise RuntimeError(f"peer {peer.release} is not built")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.npz"
        # this file runs as a script in the peer's own Python (which has its bindings, not this project)
        cmd = [*python_command(peer), str(Path(__file__).resolve()), str(model), "--out", str(out),
               "--bindings", peer.dist.module, "--split-mode", split_mode, "--n-batch", str(n_batch),
               "--n-ctx", str(n_ctx), "--generate", str(generate)]
        if rpc:
            cmd += ["--rpc", rpc]
        if flash_attn_type is not None:
            cmd += ["--flash-attn-type", str(flash_attn_type)]
        if tokens is not None:
            cmd += ["--tokens", ",".join(str(int(t)) for t in tokens)]
        elif text is not None:
            cmd += ["--text", text]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"llama.cpp {peer.release} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        with np.load(out) as data:
            return {key: data[key] for key in data.files}
