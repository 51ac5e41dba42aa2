"""Build a real peer into the user cache: a virtualenv with llama-cpp-python compiled from
its sdist with the RPC backend on, and upstream's op test program compiled against it
(backend_ops.py).  A finished build is moved into place atomically, so an interrupted build
never looks finished.

    ggml-rpc-peers build 0.3.20 0.3.36     # or protocol versions: 3.6 7.0
"""

from __future__ import annotations

import os
import tarfile
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


# -- upstream's op test program, compiled against the peer (the judge of GRAPH_COMPUTE) --------------

PROGRAM = "test-backend-ops"
SOURCE_MEMBER = "vendor/llama.cpp/tests/test-backend-ops.cpp"
INCLUDE_DIR = "vendor/llama.cpp/ggml/include/"
TARGET_VARIABLE = "GGML_RPC_TARGET"
DEVICE = "RPC0"

# The lines added after the program's `ggml_backend_load_all();`: register the RPC server
# named by GGML_RPC_TARGET, through the RPC backend's registry (as llama.cpp's --rpc does).
REGISTER_RPC_DEVICE = """ggml_backend_load_all();
    if (const char * rpc_target = getenv("%s")) {
        ggml_backend_reg_t rpc_reg = ggml_backend_reg_by_name("RPC");
        typedef ggml_backend_reg_t (*rpc_add_server_t)(const char *);
        rpc_add_server_t rpc_add_server = rpc_reg ? (rpc_add_server_t) ggml_backend_reg_get_proc_address(
            rpc_reg, "ggml_backend_rpc_add_server") : nullptr;
        ggml_backend_reg_t rpc_server = rpc_add_server ? rpc_add_server(rpc_target) : nullptr;
        if (rpc_server == nullptr) {
            fprintf(stderr, "cannot register the RPC server %%s\\n", rpc_target);
            return 2;
        }
        ggml_backend_register(rpc_server);
    }
""" % TARGET_VARIABLE


class JudgeError(RuntimeError):
    """The judge could not be built or run (not a verdict on the target)."""


def program_dir(peer: Peer) -> Path:
    return cache_root() / f"{PROGRAM}-{peer.release}"


def patched_source(text: str) -> str:
    """The program's source with the RPC device registration added."""
    if text.count("ggml_backend_load_all();") != 1:
        raise JudgeError(f"{SOURCE_MEMBER}: expected one `ggml_backend_load_all();` to register the RPC device after")
    return text.replace("ggml_backend_load_all();", REGISTER_RPC_DEVICE)


def ensure_program(peer: Peer, *, log=print) -> Path:
    """The compiled judge for `peer` (its libraries and its own test source), built on first use
    (under a minute on 2 cores once the peer is built)."""
    final = program_dir(peer)
    binary = final / PROGRAM
    if binary.exists():
        return binary
    libs = lib_dir(ensure_built(peer, log=log))
    archive = sdist(peer, log=log)
    work = final.with_name(final.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    (work / "include").mkdir(parents=True)
    log(f"compiling {PROGRAM} of llama-cpp-python {peer.release} ...")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            inner = member.name.split("/", 1)[-1]
            if inner.startswith(INCLUDE_DIR) and member.isfile():
                target = work / "include" / inner[len(INCLUDE_DIR):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
            elif inner == SOURCE_MEMBER:
                source = tar.extractfile(member).read().decode()
                (work / f"{PROGRAM}.cpp").write_text(patched_source(source))
    if not (work / f"{PROGRAM}.cpp").exists():
        raise JudgeError(f"{archive} has no {SOURCE_MEMBER}")
    command = ["g++", "-O1", "-std=c++17", "-I", str(work / "include"), str(work / f"{PROGRAM}.cpp"),
               "-o", str(work / PROGRAM), "-L", str(libs), f"-l:{_soname(libs, 'libggml')}",
               f"-l:{_soname(libs, 'libggml-base')}", f"-Wl,-rpath,{libs}", "-lpthread"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise JudgeError(f"compiling {PROGRAM} of {peer.release} failed:\n{result.stderr[-4000:]}")
    shutil.rmtree(final, ignore_errors=True)
    work.rename(final)
    return binary


def _soname(libs: Path, stem: str) -> str:
    """Link against the SONAME copy that libllama uses (see libs.py)."""
    return f"{stem}.so.0" if (libs / f"{stem}.so.0").exists() else f"{stem}.so"


