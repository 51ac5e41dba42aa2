"""Build a real peer into the user cache: a virtualenv with llama-cpp-python compiled from
its sdist with the RPC backend on, and upstream's op test program compiled against it
(backend_ops.py).  A finished build is moved into place atomically, so an interrupted build
never looks finished.

    ggml-rpc-peers build 0.3.20 0.3.36     # or protocol versions: 3.6 7.0
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

from .catalog import Peer

CMAKE_ARGS = "-DGGML_RPC=ON -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"


class PeerNotBuilt(RuntimeError):
    pass


def cache_root() -> Path:
    """$GGML_RPC_PEERS_CACHE, else $XDG_CACHE_HOME/ggml-rpc-spec/peers, else ~/.cache/..."""
    explicit = os.environ.get("GGML_RPC_PEERS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ggml-rpc-spec" / "peers"


def venv_dir(peer: Peer) -> Path:
    return cache_root() / f"llama-cpp-python-{peer.release}"


def lib_dir(venv_path: Path) -> Path:
    found = sorted(venv_path.glob("lib/python3*/site-packages/llama_cpp/lib"))
    if not found:
        raise PeerNotBuilt(f"{venv_path} has no llama_cpp/lib")
    return found[0]


def library(libs: Path, stem: str) -> Path:
    """The file to load for a library: its SONAME copy (libX.so.0) when the wheel has one
    (it is what libllama links to), else plain libX.so (older releases)."""
    versioned = libs / f"{stem}.so.0"
    return versioned if versioned.exists() else libs / f"{stem}.so"


def find_built(peer: Peer) -> Path | None:
    """The peer's virtualenv if a complete build is cached, else None."""
    path = venv_dir(peer)
    try:
        libs = lib_dir(path)
    except PeerNotBuilt:
        return None
    return path if library(libs, "libggml-rpc").exists() else None


def sdist(peer: Peer, *, log=print) -> Path:
    """The peer's sdist from PyPI, kept in the cache (its vendored sources build the peer and
    upstream's op test program)."""
    folder = cache_root() / "sdists"
    target = folder / f"llama_cpp_python-{peer.release}.tar.gz"
    if target.exists():
        return target
    partial = folder / f"{target.name}.download"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log(f"downloading the llama-cpp-python {peer.release} sdist from PyPI ...")
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                             f"llama-cpp-python=={peer.release}", "-d", str(partial)], capture_output=True, text=True)
    found = sorted(partial.glob("*.tar.gz"))
    if result.returncode != 0 or not found:
        raise PeerNotBuilt(f"downloading the llama-cpp-python {peer.release} sdist failed:\n{result.stderr[-2000:]}")
    found[0].rename(target)
    shutil.rmtree(partial, ignore_errors=True)
    return target


def ensure_built(peer: Peer, *, log=print) -> Path:
    """The peer's virtualenv, building it first if needed (a few minutes on 2 cores)."""
    found = find_built(peer)
    if found is not None:
        return found
    archive = sdist(peer, log=log)
    final = venv_dir(peer)
    work = final.with_name(final.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    log(f"building llama-cpp-python {peer.release} (RPC protocol {peer.protocol}) into {final} ...")
    started = time.monotonic()
    venv.EnvBuilder(with_pip=True).create(work)
    env = dict(os.environ, CMAKE_ARGS=CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    logfile = final.with_name(final.name + ".build.log")
    with open(logfile, "w") as out:
        result = subprocess.run(
            [str(work / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir",
             "--no-binary", "llama-cpp-python", str(archive)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-20:]
        raise PeerNotBuilt(f"building llama-cpp-python {peer.release} failed (log: {logfile}):\n" + "\n".join(tail))
    shutil.rmtree(final, ignore_errors=True)
    work.rename(final)
    log(f"built {peer.release} in {time.monotonic() - started:.0f}s")
    return final


def main(argv: list[str]) -> int:
    from .backend_ops import JudgeError, ensure_program
    from .catalog import PEERS, peer_for

    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("known peers: " + ", ".join(f"{p.release} (protocol {p.protocol})" for p in PEERS))
        return 0 if argv else 2
    for name in argv:
        try:
            peer = peer_for(name)
            path = ensure_built(peer)
        except (KeyError, PeerNotBuilt) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            judge = str(ensure_program(peer))
        except JudgeError as exc:  # older programs lack what registering an RPC device needs
            judge = f"not available ({str(exc).splitlines()[0]})"
        print(f"{peer.release} (protocol {peer.protocol}): {path}; op test program: {judge}")
    return 0
