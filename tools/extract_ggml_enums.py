"""Regenerate releases of protocol/ggml_tables.json from upstream's ggml enums.

The ggml enums (`ggml_type`, `ggml_op`, `ggml_unary_op`, `ggml_glu_op`) change between
releases, and an rpc_tensor carries raw enum values, so the protocol needs one table per
release.  Each release named on the command line is read from one of:

- `VERSION=path/to/ggml.h`: the header vendored in the llama-cpp-python sdist of that release
  (member names read from the enums);
- `VERSION=peer:RELEASE`: a built upstream peer whose ggml.h is published nowhere (a binary
  wheel): its libggml-base is asked through ggml's own functions, in the peer's python
  (tools/probe_ggml_enums.py), and the sizes of ggml's per-member arrays are read from the
  library's symbol table.  ggml's name tables spell each member as its enum does (checked on
  7.0.0, whose header and library both are at hand); a type whose block or type size differs
  from this project's type table (protocol/ggml.py) is reported.

Releases not named keep their entries.

    python tools/extract_ggml_enums.py 3.6.1=/path/to/ggml.h 8.0.0=peer:0.11739 ...
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "src" / "ggml_rpc_spec" / "protocol" / "ggml_tables.json"
PROBE = Path(__file__).resolve().parent / "probe_ggml_enums.py"

ENUMS = {"ggml_op": "GGML_OP_", "ggml_unary_op": "GGML_UNARY_OP_", "ggml_glu_op": "GGML_GLU_OP_"}


def enum_body(header: str, enum: str) -> str:
    match = re.search(r"enum\s+%s\s*\{(.*?)\};" % enum, header, re.S)
    if not match:
        raise SystemExit(f"enum {enum} not found")
    return re.sub(r"//[^\n]*", "", match.group(1))


def members(header: str, enum: str, prefix: str) -> list[str]:
    """Names in declaration order; every member of these enums is implicitly numbered."""
    names = []
    for item in enum_body(header, enum).split(","):
        item = item.strip()
        if not item:
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        if value.strip() and int(value.strip(), 0) != len(names):
            raise SystemExit(f"{enum}: {name} has an explicit value out of sequence")
        if name.endswith("_COUNT"):
            break
        names.append(name.removeprefix(prefix))
    return names


def tensor_flags(header: str) -> dict[str, int]:
    """enum ggml_tensor_flag: name -> bit (COMPUTE marks nodes the CPU backend must run)."""
    body = enum_body(header, "ggml_tensor_flag")
    return {name.removeprefix("GGML_TENSOR_FLAG_"): int(value)
            for name, value in re.findall(r"(GGML_TENSOR_FLAG_\w+)\s*=\s*(\d+)", body)}


def type_count(header: str) -> int:
    match = re.search(r"GGML_TYPE_COUNT\s*=\s*(\d+)", enum_body(header, "ggml_type"))
    if not match:
        raise SystemExit("GGML_TYPE_COUNT not found")
    return int(match.group(1))


def from_header(path: Path) -> dict:
    header = path.read_text()
    return {
        "type_count": type_count(header),
        "ops": members(header, "ggml_op", ENUMS["ggml_op"]),
        "unary_ops": members(header, "ggml_unary_op", ENUMS["ggml_unary_op"]),
        "glu_ops": members(header, "ggml_glu_op", ENUMS["ggml_glu_op"]),
        "tensor_flags": tensor_flags(header),
    }


# -- a built peer's library ---------------------------------------------------------------------

SHT_SYMTAB = 2


def symbol_sizes(path: Path, names: set[str]) -> dict[str, int]:
    """The sizes of the named symbols in an ELF64 library's full symbol table (.symtab, which
    keeps ggml's static arrays unless the library is stripped)."""
    data = path.read_bytes()
    (section_table,) = struct.unpack_from("<Q", data, 0x28)
    entry_size, count = struct.unpack_from("<HH", data, 0x3A)
    # per section: name, type, flags, addr, offset, size, link, info, addralign, entsize
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, section_table + i * entry_size) for i in range(count)]
    found = {}
    for _, kind, _, _, offset, size, link, _, _, symbol_size in sections:
        if kind != SHT_SYMTAB:
            continue
        strings = sections[link][4]
        for at in range(offset, offset + size, symbol_size):
            name_at, _, _, _, _, value_size = struct.unpack_from("<IBBHQQ", data, at)
            start = strings + name_at
            name = data[start:data.index(b"\0", start)].decode(errors="replace")
            if name in names:
                found[name] = value_size
    missing = names - found.keys()
    if missing:
        raise SystemExit(f"{path}: no symbol table entry for {', '.join(sorted(missing))} (a stripped library?)")
    return found


def from_peer(release: str) -> dict:
    """The tables of a built peer's libggml-base (see tools/probe_ggml_enums.py)."""
    from ggml_rpc_spec.protocol.ggml import TYPES
    from ggml_rpc_spec.upstream_peers.build import find_built, lib_dir, library, python_command
    from ggml_rpc_spec.upstream_peers.catalog import peer_for

    peer = peer_for(release)
    venv = find_built(peer)
    if venv is None:
        raise SystemExit(f"peer {peer.release} is not built; run: ggml-rpc-peers build {peer.release}")
    base = library(lib_dir(peer, venv), "libggml-base")
    sizes = symbol_sizes(base, {"GGML_OP_NAME", "GGML_UNARY_OP_NAME", "GGML_GLU_OP_NAME", "type_traits"})
    probe = subprocess.run([*python_command(peer), str(PROBE), str(base), json.dumps(sizes)],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(f"probing {base} failed (exit {probe.returncode}):\n{probe.stderr[-2000:]}")
    found = json.loads(probe.stdout)
    unlike = [f"{value} {name} ({block}, {size})" for value, (name, block, size) in enumerate(found["types"])
              if block and (value not in TYPES or (TYPES[value].name.lower(), TYPES[value].block_size,
                                                   TYPES[value].type_size) != (name.lower(), block, size))]
    if unlike:  # a finding about protocol/ggml.py, not about the enums written here (only the type count)
        print(f"warning: {peer.release}'s ggml sizes types unlike protocol/ggml.py (value, name, block size, "
              f"type size): {', '.join(unlike)}", file=sys.stderr)
    return {"type_count": len(found["types"]), "ops": found["ops"], "unary_ops": found["unary_ops"],
            "glu_ops": found["glu_ops"], "tensor_flags": found["tensor_flags"]}


def render(tables: dict[str, dict]) -> str:
    ordered = dict(sorted(tables.items(), key=lambda item: tuple(int(part) for part in item[0].split("."))))
    document = {"generated_by": "tools/extract_ggml_enums.py from each release's vendored ggml.h, or a built "
                                "peer's libggml-base where no header is published; do not edit",
                "releases": ordered}
    return json.dumps(document, indent=1) + "\n"


def main(argv: list[str]) -> None:
    if not argv or any("=" not in arg for arg in argv):
        raise SystemExit(__doc__)
    tables = json.loads(OUTPUT.read_text())["releases"]
    for arg in argv:
        version, source = arg.split("=", 1)
        tables[version] = from_peer(source.removeprefix("peer:")) if source.startswith("peer:") else from_header(Path(source))
    OUTPUT.write_text(render(tables))
    print(f"wrote {OUTPUT} ({', '.join(arg.split('=', 1)[0] for arg in argv)})")


if __name__ == "__main__":
    main(sys.argv[1:])
