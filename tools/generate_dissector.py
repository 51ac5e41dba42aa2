"""Generate the Wireshark Lua dissector (wireshark/ggml_rpc.lua) from the protocol package.

The dissector's code is tools/dissector.lua.in; everything it knows about the protocol is
written into it here as Lua tables: the version profiles and, per profile, every request and
reply layout (field names, sizes, kinds and SPEC.md meanings, from the construct schemas),
rpc_tensor's layouts, every ggml release's enums and the type table, the rules it can
check without server state, and the sizes of the server-to-server link (protocol/comm.py).  tests/test_dissector.py fails when the file is stale.

    python tools/generate_dissector.py          # rewrite wireshark/ggml_rpc.lua
    python tools/generate_dissector.py --check  # exit 1 if it is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from construct import Array, Bytes, FormatField, Rebuild, Renamed, Struct

from ggml_rpc_spec.protocol.commands import Command
from ggml_rpc_spec.protocol.comm import BF16_MIN_ELEMENTS, HANDSHAKE_SIZE, PORT_OFFSET
from ggml_rpc_spec.protocol.ggml import GGML_RELEASES, TYPES
from ggml_rpc_spec.protocol.messages import message_spec
from ggml_rpc_spec.protocol.rules import BY_KEY
from ggml_rpc_spec.protocol.tensor import RPC_TENSOR, RPC_TENSOR_SIZE
from ggml_rpc_spec.protocol.versions import PROFILES

ROOT = Path(__file__).resolve().parent.parent

TEMPLATE = ROOT / "tools" / "dissector.lua.in"
OUTPUT = ROOT / "wireshark" / "ggml_rpc.lua"
# Rules the dissector checks on one frame, with no knowledge of the server's state.
STATELESS_RULES = ("frame.command", "frame.fixed-size", "frame.min-size", "tensor.type", "tensor.blocks",
                   "graph.counts", "graph.trailing", "graph.node-nonzero", "graph.null-buffer-data")
_SCALARS = {"<B": "u8", "<L": "u32", "<Q": "u64", "<l": "i32"}


def lua(value) -> str:
    """A Python value as a Lua literal (dicts with int keys become [k]=v tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(lua(v) for v in value) + "}"
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            name = f"[{key}]" if isinstance(key, int) else (key if key.isidentifier() else f"[{lua(key)}]")
            items.append(f"{name} = {lua(item)}")
        return "{" + ", ".join(items) + "}"
    raise TypeError(type(value))


def _unwrap(con):
    while isinstance(con, (Renamed, Rebuild)):
        con = con.subcon
    return con


def field_list(schema: Struct) -> list[dict]:
    """The subcons of a message struct as dissector fields: name, kind, size, doc."""
    tensors = set(RPC_TENSOR.values())
    out = []
    for sub in schema.subcons:
        con = _unwrap(sub)
        entry = {"name": sub.name, "size": sub.sizeof(), "doc": sub.docs or ""}
        if con in tensors:
            entry["kind"] = "tensor"
        elif isinstance(con, Array) and _unwrap(con.subcon) in tensors:
            entry.update(kind="tensors", count=con.count)
        elif isinstance(con, Array):
            entry["kind"] = f"{_SCALARS[_unwrap(con.subcon).fmtstr]}[{con.count}]"
        elif isinstance(con, FormatField):
            entry["kind"] = _SCALARS[con.fmtstr]
        elif isinstance(con, Bytes):
            entry["kind"] = "bytes"
        else:
            raise TypeError(f"{sub.name}: {type(con).__name__}")
        out.append(entry)
    return out


def tensor_fields(schema: Struct) -> list[dict]:
    fields, offset = [], 0
    for entry in field_list(schema):
        fields.append({**entry, "offset": offset})
        offset += entry["size"]
    return fields


def profile_table(profile) -> dict:
    requests, replies = {}, {}
    for command in profile.commands:
        spec = message_spec(profile, command)
        requests[int(command)] = {"size": spec.request_size, "tail": spec.request_tail,
                                  "fields": field_list(spec.request)}
        if spec.has_reply:
            replies[int(command)] = {"size": spec.reply_size or 0, "tail": spec.reply_tail,
                                     "fields": field_list(spec.reply) if spec.reply_tail is None else []}
    return {"name": profile.name, "version": list(profile.version), "ggml": profile.ggml_release,
            "tensor": profile.tensor, "host_data": profile.host_data, "requests": requests, "replies": replies}


def data_section() -> str:
    releases = {name: {"type_count": t.type_count, "ops": dict(enumerate(t.ops)), "unary": dict(enumerate(t.unary_ops)),
                       "glu": dict(enumerate(t.glu_ops))} for name, t in GGML_RELEASES.items()}
    tables = {
        "VERSION_NAMES": [p.name for p in PROFILES],
        "COMMANDS": {int(c): c.name for c in Command},
        "TENSOR_SIZE": RPC_TENSOR_SIZE,
        "TENSOR_FIELDS": {variant: tensor_fields(schema) for variant, schema in RPC_TENSOR.items()},
        "TYPES": {value: [t.name, t.block_size, t.type_size] for value, t in sorted(TYPES.items())},
        "RELEASES": releases,
        "PROFILES": {p.name: profile_table(p) for p in PROFILES},
        "RULES": {key: f"§{BY_KEY[key].section} {key}: {BY_KEY[key].title}" for key in STATELESS_RULES},
        "LINK": {"handshake": HANDSHAKE_SIZE, "bf16_min": BF16_MIN_ELEMENTS, "port_offset": PORT_OFFSET},
    }
    return "\n".join(f"local {name} = {lua(value)}" for name, value in tables.items())


def render() -> str:
    return TEMPLATE.read_text().replace("--@DATA@", data_section())


def main(argv: list[str]) -> int:
    fresh = render()
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text() != fresh:
            print(f"{OUTPUT} is stale: run python tools/generate_dissector.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(fresh)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
