"""Build a real peer into the user cache; a finished build is moved into place atomically, so
an interrupted build never looks finished.

- A llama-cpp-python release: a virtualenv with it compiled from its sdist with the RPC
  backend on (a few minutes), and upstream's op test program compiled against it
  (backend_ops.py).
- A wheel peer (llama-cpp-py-sync): a virtualenv with the published wheel and its
  dependencies, a download and no compile.  Its libraries need a newer glibc than Debian 12's,
  so Debian 13's libc6 is unpacked into the cache too (glibc.py; shared by every such peer)
  and the peer's processes start through its loader (`python_command`).

    ggml-rpc-peers build 0.3.20 0.3.36 0.11739     # or protocol versions: 3.6 7.0 8.0
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

from . import glibc
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
    return cache_root() / f"{peer.dist.package}-{peer.release}"


def trixie_libc_dir() -> Path:
    """Debian 13's libc6, unpacked once for every peer that needs it."""
    return cache_root() / "debian-trixie-libc6"


def lib_dir(peer: Peer, venv_path: Path) -> Path:
    found = sorted(venv_path.glob(f"lib/python3*/site-packages/{peer.dist.libs}"))
    if not found:
        raise PeerNotBuilt(f"{venv_path} has no {peer.dist.libs}")
    return found[0]


def library(libs: Path, stem: str) -> Path:
    """The file to load for a library: its SONAME copy (libX.so.0) when the wheel has one
    (it is what libllama links to), else plain libX.so (older releases)."""
    versioned = libs / f"{stem}.so.0"
    return versioned if versioned.exists() else libs / f"{stem}.so"


def _installed(peer: Peer, path: Path) -> bool:
    try:
        return library(lib_dir(peer, path), "libggml-rpc").exists()
    except PeerNotBuilt:
        return False


def find_built(peer: Peer) -> Path | None:
    """The peer's virtualenv if a complete build is cached (with the C library it runs on),
    else None."""
    path = venv_dir(peer)
    if not _installed(peer, path) or (peer.trixie_libc and not glibc.loader(trixie_libc_dir()).exists()):
        return None
    return path


def python_command(peer: Peer, python: str | Path | None = None) -> list[str]:
    """The command that starts `python` (default: the peer's own venv python) able to load the
    peer's libraries: the interpreter itself, or for a peer on trixie's C library, that
    library's loader running it (ahead of everything, the lib folder of the interpreter's
    libpython, found from a venv's pyvenv.cfg)."""
    python = Path(python) if python is not None else venv_dir(peer) / "bin" / "python"
    if not peer.trixie_libc:
        return [str(python)]
    return glibc.loader_command(trixie_libc_dir(), python, _interpreter_lib(python))


def loads_here(peer: Peer) -> bool:
    """Whether this process can load the peer's libraries: always for a peer built against
    this system; for one on trixie's C library, only in a process started by its loader."""
    return not peer.trixie_libc or Path("/proc/self/exe").resolve() == glibc.loader(trixie_libc_dir()).resolve()


def _interpreter_lib(python: Path) -> Path:
    """The lib folder beside the interpreter a venv was made from (pyvenv.cfg's `home`; a venv
    may hold a copy of the binary), or beside the interpreter itself outside a venv."""
    config = python.parent.parent / "pyvenv.cfg"
    home = None
    if config.exists():
        pairs = (line.split("=", 1) for line in config.read_text().splitlines() if "=" in line)
        home = {key.strip(): value.strip() for key, value in pairs}.get("home")
    return Path(home or os.path.dirname(os.path.realpath(python))).parent / "lib"


def sdist(peer: Peer, *, log=print) -> Path:
    """The peer's sdist from PyPI, kept in the cache (its vendored sources build the peer and
    upstream's op test program)."""
    package = peer.dist.package
    folder = cache_root() / "sdists"
    target = folder / f"{package.replace('-', '_')}-{peer.release}.tar.gz"
    if target.exists():
        return target
    partial = folder / f"{target.name}.download"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log(f"downloading the {package} {peer.release} sdist from PyPI ...")
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                             f"{package}=={peer.release}", "-d", str(partial)], capture_output=True, text=True)
    found = sorted(partial.glob("*.tar.gz"))
    if result.returncode != 0 or not found:
        raise PeerNotBuilt(f"downloading the {package} {peer.release} sdist failed:\n{result.stderr[-2000:]}")
    found[0].rename(target)
    shutil.rmtree(partial, ignore_errors=True)
    return target


def ensure_built(peer: Peer, *, log=print) -> Path:
    """The peer's virtualenv (and the C library it runs on), built first if needed: a few
    minutes on 2 cores for an sdist, seconds for a wheel."""
    if peer.trixie_libc:
        try:
            glibc.ensure(trixie_libc_dir(), log=log)
        except glibc.GlibcError as exc:
            raise PeerNotBuilt(f"{peer.dist.package} {peer.release} runs on Debian trixie's C library: {exc}") from exc
    final = venv_dir(peer)
    if _installed(peer, final):
        return final
    if peer.dist.sdist:  # compiled, with the RPC backend on
        env = dict(os.environ, CMAKE_ARGS=CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
        return _install(peer, ["--no-binary", peer.dist.package, str(sdist(peer, log=log))], env, log)
    return _install(peer, ["--only-binary", peer.dist.package, f"{peer.dist.package}=={peer.release}"], None, log)


def _install(peer: Peer, pip_args: list[str], env: dict | None, log) -> Path:
    """A new virtualenv with `pip install pip_args` in it, moved into place once complete."""
    final = venv_dir(peer)
    work = final.with_name(final.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    log(f"installing {peer.dist.package} {peer.release} (RPC protocol {peer.protocol}) into {final} ...")
    started = time.monotonic()
    venv.EnvBuilder(with_pip=True).create(work)
    logfile = final.with_name(final.name + ".build.log")
    with open(logfile, "w") as out:
        result = subprocess.run([str(work / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir", *pip_args],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-20:]
        raise PeerNotBuilt(f"installing {peer.dist.package} {peer.release} failed (log: {logfile}):\n" + "\n".join(tail))
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


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise JudgeError(f"{member.name} in the sdist is not a regular file")
    return handle.read()


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
    if not peer.dist.sdist:
        raise JudgeError(f"{peer.dist.package} {peer.release} is a binary wheel: PyPI has no sdist of it and the "
                         f"wheel holds no sources, so there is no {Path(SOURCE_MEMBER).name} or ggml headers "
                         f"to compile {PROGRAM} from")
    final = program_dir(peer)
    binary = final / PROGRAM
    if binary.exists():
        return binary
    libs = lib_dir(peer, ensure_built(peer, log=log))
    archive = sdist(peer, log=log)
    work = final.with_name(final.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    (work / "include").mkdir(parents=True)
    log(f"compiling {PROGRAM} of {peer.dist.package} {peer.release} ...")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            inner = member.name.split("/", 1)[-1]
            if inner.startswith(INCLUDE_DIR) and member.isfile():
                target = work / "include" / inner[len(INCLUDE_DIR):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(_member_bytes(tar, member))
            elif inner == SOURCE_MEMBER:
                source = _member_bytes(tar, member).decode()
                (work / f"{PROGRAM}.cpp").write_text(patched_source(source))
    if not (work / f"{PROGRAM}.cpp").exists():
        raise JudgeError(f"{archive} has no {SOURCE_MEMBER}")
    command = ["g++", "-O1", "-std=c++17", "-I", str(work / "include"), str(work / f"{PROGRAM}.cpp"),
               "-o", str(work / PROGRAM), "-L", str(libs), f"-l:{library(libs, 'libggml').name}",
               f"-l:{library(libs, 'libggml-base').name}", f"-Wl,-rpath,{libs}", "-lpthread"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise JudgeError(f"compiling {PROGRAM} of {peer.release} failed:\n{result.stderr[-4000:]}")
    shutil.rmtree(final, ignore_errors=True)
    work.rename(final)
    return binary

