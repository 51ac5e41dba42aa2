"""Debian 13 (trixie)'s C library, for peers whose binary wheels need a newer glibc than this
system's (Debian 12 has 2.36; the libraries of llama-cpp-py-sync 0.11739 need 2.38).

Its libc6 package is fetched with apt through a private state (a sources list, package lists,
cache and status file of its own: the system's apt state is neither read nor changed) and
unpacked with dpkg-deb into a folder of the peer cache.  It is never installed: a process
uses it by starting through its dynamic loader,

    .../ld-linux-x86-64.so.2 --library-path LIBS PROGRAM ARGS...

which loads that C library for this one process and the system's for every other.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCE = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main"
MULTIARCH = "usr/lib/x86_64-linux-gnu"
LOADER = "ld-linux-x86-64.so.2"
# after trixie's C library: the system's other libraries (libstdc++, libgomp, ...)
SYSTEM_LIBS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu")


class GlibcError(RuntimeError):
    """Fetching or unpacking trixie's libc6 failed."""


def loader(root: Path) -> Path:
    return root / MULTIARCH / LOADER


def ensure(root: Path, *, log=print) -> Path:
    """`root` with trixie's libc6 unpacked in it, fetched first if needed (a few seconds: the
    package lists and one package).  The unpacked tree is moved into place whole, so an
    interrupted fetch never looks finished."""
    if loader(root).exists():
        return root
    work = root.with_name(root.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    apt = work / "apt"
    for folder in ("lists/partial", "cache/archives/partial", "debs"):
        (apt / folder).mkdir(parents=True)
    (apt / "status").touch()
    (apt / "sources.list").write_text(SOURCE + "\n")
    options = [f"-oDir::Etc::SourceList={apt / 'sources.list'}", "-oDir::Etc::SourceParts=/dev/null",
               f"-oDir::State::Lists={apt / 'lists'}", f"-oDir::Cache={apt / 'cache'}",
               f"-oDir::State::status={apt / 'status'}", "-oAcquire::Languages=none",
               "-oAPT::Sandbox::User=root"]  # the private folders are not the _apt user's to write
    log(f"fetching Debian trixie's libc6 into {root} (private apt state, not installed) ...")
    _run(["apt-get", *options, "update"], "apt-get update (trixie package lists)")
    _run(["apt-get", *options, "download", "libc6"], "apt-get download libc6", cwd=apt / "debs")
    packages = sorted((apt / "debs").glob("libc6_*.deb"))
    if not packages:
        raise GlibcError(f"apt-get download libc6 left no libc6_*.deb in {apt / 'debs'}")
    _run(["dpkg-deb", "-x", str(packages[-1]), str(work / "root")], f"dpkg-deb -x {packages[-1].name}")
    if not loader(work / "root").exists():
        raise GlibcError(f"{packages[-1].name} has no {MULTIARCH}/{LOADER}")
    shutil.rmtree(root, ignore_errors=True)
    (work / "root").rename(root)
    shutil.rmtree(work)
    return root


def _run(command: list[str], what: str, *, cwd: Path | None = None) -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise GlibcError(f"{what}: {exc.filename} not found (fetching trixie's libc6 needs Debian's apt)") from None
    if result.returncode != 0:
        raise GlibcError(f"{what} failed (exit {result.returncode}):\n{(result.stderr or result.stdout)[-2000:]}")


def loader_command(root: Path, program: Path, first: Path) -> list[str]:
    """The command prefix that runs `program` on the C library under `root`.  The loader's
    --library-path also overrides the program's RUNPATH, so `first` (where the program's own
    libraries are, e.g. an interpreter's libpython) comes before everything else: otherwise
    a same-named system copy would be loaded instead."""
    path = ":".join([str(first), str(root / MULTIARCH), *SYSTEM_LIBS])
    return [str(loader(root)), "--library-path", path, str(program)]
