"""Regenerate the tables of SPEC.md from the protocol package (the schemas are the truth).

SPEC.md's prose is written by hand; every table between
    <!-- BEGIN GENERATED name -->  and  <!-- END GENERATED name -->
is rendered here from protocol/ (field layouts, sizes, version profiles, enums, rules).
tests/test_spec.py fails when SPEC.md differs from what this script would write.

    python tools/generate_spec.py          # rewrite SPEC.md in place
    python tools/generate_spec.py --check  # exit 1 if SPEC.md is stale
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from construct import Array, Bytes, FormatField, Rebuild, Renamed, Struct

from ggml_rpc_spec.protocol import comm
from ggml_rpc_spec.protocol.columns import GRAPH_CACHE_LIMIT, Graphs
from ggml_rpc_spec.protocol.commands import ROW, Command
from ggml_rpc_spec.protocol.ggml import GGML_RELEASES, TYPES
from ggml_rpc_spec.protocol.messages import message_spec
from ggml_rpc_spec.protocol.ops import CATALOGUE, OpSpec, Param, since
from ggml_rpc_spec.protocol.rules import RULES
from ggml_rpc_spec.protocol.tensor import RPC_TENSOR
from ggml_rpc_spec.protocol.trace import PREAMBLE, RECORD_HEAD
from ggml_rpc_spec.protocol.versions import PROFILES, Profile
from ggml_rpc_spec.relay.guard import UNENFORCEABLE

SPEC = Path(__file__).resolve().parent.parent / "SPEC.md"
BLOCK = re.compile(r"(<!-- BEGIN GENERATED (\S+) -->\n)(.*?)(<!-- END GENERATED \2 -->)", re.S)

_SCALARS = {"<Q": "u64", "<L": "u32", "<l": "i32", "<B": "u8", "<b": "i8", "<H": "u16", "<h": "i16"}  # construct codes
# The commands of the specified versions (a row whose version has no profile yet is not specified).
SPECIFIED = tuple(c for c in Command if any(c in p.commands for p in PROFILES))
# Ops that llama.cpp sends for llama-architecture models, shown with their numbers per release.
LLAMA_OPS = ("NONE", "ADD", "MUL", "RMS_NORM", "MUL_MAT", "SCALE", "CPY", "CONT", "RESHAPE", "VIEW",
             "PERMUTE", "TRANSPOSE", "GET_ROWS", "SET_ROWS", "SOFT_MAX", "ROPE", "FLASH_ATTN_EXT",
             "UNARY", "GLU")


def _unwrap(con):
    while isinstance(con, (Renamed, Rebuild)):
        con = con.subcon
    return con


def type_name(con) -> str:
    con = _unwrap(con)
    if con in RPC_TENSOR.values():
        return "rpc_tensor (§4.1)"
    if isinstance(con, FormatField):
        return _SCALARS[con.fmtstr]
    if isinstance(con, Bytes):
        return f"u8[{con.length}]"
    if isinstance(con, Array):
        return f"{type_name(con.subcon)}[{con.count}]"
    raise TypeError(type(con).__name__)


def struct_rows(schema: Struct) -> list[tuple[int, str, str, int, str]]:
    rows, offset = [], 0
    for sub in schema.subcons:
        size = sub.sizeof()
        rows.append((offset, sub.name, type_name(sub), size, sub.docs or ""))
        offset += size
    return rows


class _Field:
    """A request field by name, for printing what a row's `data_size` computes from it."""

    def __init__(self, text: str, product: bool = False) -> None:
        self.text, self.product = text, product

    def __mul__(self, other: "_Field") -> "_Field":
        return _Field(f"{self.text} × {other.text}", True)


def data_size_text(command: Command) -> str | None:
    """What a command's data (a data reply, or a data tail the head announces) measures, as
    the request fields it multiplies ("`size`", "`size` × `n_copies`"); None: the frame says."""
    row = ROW[command]
    if row.data_size is None:
        return None
    return row.data_size(_Fields()).text


class _Fields(dict):
    def __getitem__(self, name: str) -> _Field:
        return _Field(f"`{name}`")


def struct_table(schema: Struct, tail: str | None = None, data: str | None = None) -> str:
    """A fixed part's fields; `tail` what follows it, `data` (a data tail) the length its
    fields announce."""
    lines = ["| offset | field | type | bytes | meaning |", "|---:|---|---|---:|---|"]
    rows = struct_rows(schema)
    for offset, name, kind, size, doc in rows:
        lines.append(f"| {offset} | `{name}` | {kind} | {size} | {doc} |")
    end = schema.sizeof()
    if tail == "data" and data is not None:
        lines.append(f"| {end} | `data` | u8[…] | {data} | the copies back to back: exactly {data} bytes, "
                     f"the frame's size − {end} |")
    elif tail == "data":
        lines.append(f"| {end} | `data` | u8[…] | size − {end} | the bytes, up to the end of the payload |")
    elif tail == "graph":
        lines.append(f"| {end} | graph | §8.1 | size − {end} | node ids and tensors, see below |")
    if not rows and tail is None:
        return "empty (size 0)"
    total = f"**{end} bytes**" if tail is None else f"**{end} bytes + tail**"
    return "\n".join(lines) + f"\n\nTotal: {total}."


def version_ranges(names: list[str]) -> str:
    """Collapse consecutive profile names ("3.6.0", "3.6.1", "4.0.0") to "3.6.0 – 4.0.0"."""
    order = [p.name for p in PROFILES]
    index = sorted(order.index(n) for n in names)
    runs, start = [], index[0]
    for prev, cur in zip(index, index[1:] + [None]):
        if cur != prev + 1:
            runs.append(order[start] if start == prev else f"{order[start]} – {order[prev]}")
            start = cur
    return ", ".join(runs)


def _grouped(render) -> list[tuple[str, str]]:
    """[(versions, rendered)] grouping profiles whose rendering is identical."""
    groups: dict[str, list[str]] = {}
    for profile in PROFILES:
        text = render(profile)
        if text is not None:
            groups.setdefault(text, []).append(profile.name)
    return [(version_ranges(names), text) for text, names in groups.items()]


def command_block(command: Command) -> str:
    def request(p: Profile):
        if command not in p.commands:
            return None
        spec = message_spec(p, command)
        return struct_table(spec.request, spec.request_tail, data_size_text(command))

    def reply(p: Profile):
        if command not in p.commands:
            return None
        spec = message_spec(p, command)
        if spec.reply is None:
            return "none: the command is one-way, the server sends nothing back"
        if spec.reply_tail == "data":
            data = data_size_text(command)
            if data == "`size`":
                return "exactly `size` bytes (the request's `size`): the tensor data"
            return f"exactly {data} bytes (the request's fields): the copies, back to back"
        return struct_table(spec.reply)

    out = [f"Command byte **{int(command)}**.", ""]
    for title, render in (("Request payload", request), ("Reply payload", reply)):
        groups = _grouped(render)
        for versions, text in groups:
            label = f"{title} ({versions})" if len(groups) > 1 or versions != version_ranges([p.name for p in PROFILES]) else title
            out += [f"*{label}:*", "", text, ""]
    return "\n".join(out).rstrip() + "\n"


def rpc_tensor_block() -> str:
    common = RPC_TENSOR["padding"]
    table = struct_table(common)
    last = struct_rows(RPC_TENSOR["use_count"])[-1]
    tensor_users = {name: [p.name for p in PROFILES if p.tensor == name] for name in RPC_TENSOR}
    notes = [
        "",
        f"The last four bytes are `padding` (u8[4], zero) in {version_ranges(tensor_users['padding'])} "
        f"and `use_count` ({last[2]}: {last[4]}) in {version_ranges(tensor_users['use_count'])}.",
    ]
    return table + "\n" + "\n".join(notes) + "\n"


def graph_block() -> str:
    from ggml_rpc_spec.protocol.graph import graph_tail_schema

    lines = ["| field | type | bytes | meaning |", "|---|---|---:|---|"]
    meaning = {"n_nodes": "number of node ids", "nodes": "ids of the tensors to compute, in order",
               "n_tensors": "number of tensors", "tensors": "every tensor the nodes reach"}
    for sub in graph_tail_schema(PROFILES[-1]).subcons:
        con = _unwrap(sub)
        if isinstance(con, Array):
            size = "8 × n_nodes" if sub.name == "nodes" else "296 × n_tensors"
            kind = "u64[n_nodes]" if sub.name == "nodes" else "rpc_tensor[n_tensors]"
        else:
            size, kind = str(con.sizeof()), type_name(con)
        lines.append(f"| `{sub.name}` | {kind} | {size} | {meaning[sub.name]} |")
    return "\n".join(lines) + "\n"


def profiles_block() -> str:
    head = ("| version | commands | HELLO | devices | rpc_tensor tail | SET_TENSOR | GRAPH_COMPUTE reply "
            "| acks | host data | graphs | ggml enums |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in PROFILES:
        commands = f"0–{max(p.commands)}"
        ggml = p.ggml_release + (" (assumed)" if "assumed" in p.note else "")
        lines.append(f"| {p.name} | {commands} | {p.hello} | {p.devices} | {p.tensor} | {p.set_tensor} "
                     f"| {p.graph_reply} | {p.acks} | {p.host_data} | {p.graphs} | {ggml} |")
    notes = [f"- {p.name}: {p.note}." for p in PROFILES if p.note]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def differences_block() -> str:
    columns = ("commands", "hello", "devices", "tensor", "set_tensor", "graph_reply", "acks", "host_data",
               "graphs", "ggml_release")
    lines = ["| from → to | what changes on the wire |", "|---|---|"]
    for old, new in zip(PROFILES, PROFILES[1:]):
        changes = []
        for column in columns:
            a, b = getattr(old, column), getattr(new, column)
            if a == b:
                continue
            if column == "commands":
                added = [c.name for c in b if c not in a]
                changes.append("adds " + ", ".join(added))
            else:
                changes.append(f"`{column}`: {a} → {b}")
        lines.append(f"| {old.name} → {new.name} | {'; '.join(changes) or 'nothing (same wire)'} |")
    return "\n".join(lines) + "\n"


def graph_store_block() -> str:
    """How each profile keeps graphs for GRAPH_RECOMPUTE (profile column `graphs`)."""
    kept = {
        Graphs.LAST: ("the last graph computed on the device, whatever it was", "`device`"),
        Graphs.UID: (f"up to {GRAPH_CACHE_LIMIT} graphs per device, by the uid GRAPH_COMPUTE gave them (uid 0: "
                     f"not kept); a GRAPH_COMPUTE with a non-zero uid when {GRAPH_CACHE_LIMIT} are kept first "
                     "clears the device's cache", "`device`, `uid`"),
    }
    lines = ["| graphs | what a device keeps for GRAPH_RECOMPUTE | GRAPH_RECOMPUTE names | versions |",
             "|---|---|---|---|"]
    for mode, (what, names) in kept.items():
        users = [p.name for p in PROFILES if p.graphs is mode and Command.GRAPH_RECOMPUTE in p.commands]
        lines.append(f"| `{mode}` | {what} | {names} | {version_ranges(users)} |")
    return "\n".join(lines) + "\n"


def link_block() -> str:
    """The bytes of the server-to-server link (protocol/comm.py): no frames, no headers."""
    n = comm.BF16_MIN_ELEMENTS
    lines = ["| step | from → to | bytes | content |", "|---|---|---:|---|",
             f"| handshake | rank 1 → rank 0 | {comm.HANDSHAKE_SIZE} | rank 1's conn_caps (all zero over plain TCP) |",
             f"| handshake | rank 0 → rank 1 | {comm.HANDSHAKE_SIZE} | rank 0's conn_caps (all zero over plain TCP) |",
             f"| all-reduce of n < {n} elements | rank 0 → rank 1, then rank 1 → rank 0 | "
             f"{comm.wire_size(1)} × n | the partial as F32, little-endian, in memory order |",
             f"| all-reduce of n ≥ {n} elements | rank 0 → rank 1, then rank 1 → rank 0 | "
             f"{comm.wire_size(n) // n} × n | the partial as BF16 (the upper 16 bits of ggml's rounded F32), "
             "little-endian, in memory order |"]
    return "\n".join(lines) + "\n"


def types_block() -> str:
    lines = ["| value | type | block size | bytes per block | valid in |", "|---:|---|---:|---:|---|"]
    releases = {p.name: p.ggml for p in PROFILES}
    for value in sorted(TYPES):
        kind = TYPES[value]
        valid = [name for name, tables in releases.items() if tables.tensor_type(value) is not None]
        where = version_ranges(valid) if valid else "none"
        lines.append(f"| {value} | {kind.name} | {kind.block_size} | {kind.type_size} | {where} |")
    return "\n".join(lines) + "\n"


def ops_block() -> str:
    releases = list(GGML_RELEASES.values())
    header = "| op | " + " | ".join(r.release for r in releases) + " |"
    lines = [header, "|---|" + "---:|" * len(releases)]
    for name in LLAMA_OPS:
        cells = [str(r.ops.index(name)) if name in r.ops else "–" for r in releases]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| *count* | " + " | ".join(str(len(r.ops)) for r in releases) + " |")
    lines.append("| *unary ops* | " + " | ".join(str(len(r.unary_ops)) for r in releases) + " |")
    lines.append("| *glu ops* | " + " | ".join(str(len(r.glu_ops)) for r in releases) + " |")
    lines.append("| *types* | " + " | ".join(str(r.type_count) for r in releases) + " |")
    return "\n".join(lines) + "\n"


def _since(op: str, sub: str | None = None) -> str:
    first = since(op, sub)
    oldest = next(iter(GGML_RELEASES))
    return "–" if first is None else (f"≤ {first}" if first == oldest else first)


def _param_rows(params: tuple[Param, ...]) -> list[str]:
    rows = []
    for p in params:
        bounds = ""
        if p.low is not None or p.high is not None:
            bounds = f" ({'' if p.low is None else f'≥ {p.low:g}'}{', ' if None not in (p.low, p.high) else ''}"
            bounds += f"{'' if p.high is None else f'≤ {p.high:g}'})"
        if p.since is not None:
            bounds += f"; read from {p.since} on"
        kind = p.kind if not p.kind.startswith("enum:") else "i32: " + ", ".join(f"{v} {k}" for k, v in p.choices.items())
        rows.append(f"| {p.index} | `{p.name}` | {kind} | {p.meaning}{bounds} |")
    return rows


def _op_entry(spec: OpSpec) -> list[str]:
    semantics = spec.semantics[:1].upper() + spec.semantics[1:]
    lines = [f"#### {spec.name}", "", f"{semantics}.  Since {_since(spec.name)}; family `{spec.family}`.", ""]
    if spec.sources:
        sources = "; ".join(f"src[{i}] `{s.role}`{' (optional)' if s.optional else ''}: {s.meaning}"
                            for i, s in enumerate(spec.sources))
        lines += [f"- Sources: {sources}."]
    lines += [f"- Types: {spec.types}.", f"- Result: {spec.result}."]
    if spec.params:
        lines += ["", "| word | param | kind | meaning |", "|---:|---|---|---|", *_param_rows(spec.params)]
    if spec.sub_ops:
        lines += ["", f"| {spec.name.lower()} op | computes | extra params | since |", "|---|---|---|---|"]
        for sub in spec.sub_ops:
            extra = "; ".join(f"{p.index} `{p.name}` {p.kind}: {p.meaning}" for p in sub.params) or "–"
            lines.append(f"| {sub.name} | {sub.semantics} | {extra} | {_since(spec.name, sub.name)} |")
    return lines + [""]


def op_reference_block() -> str:
    """Every op of the catalogue, by family, then the enum ops a server refuses."""
    lines = []
    for spec in CATALOGUE.values():  # in family order
        lines += _op_entry(spec)
    known = sorted({op for r in GGML_RELEASES.values() for op in r.ops} - set(CATALOGUE))
    lines.append("Ops of the enums that no server computes (a node with one of them is refused, §8.2 / §8.4): "
                 + ", ".join(f"`{op}`" for op in known) + ".")
    return "\n".join(lines) + "\n"


def rules_block(section: str) -> str:
    chosen = [r for r in RULES if r.section == section]
    lines = ["| rule | level | the server | regression for |", "|---|---|---|---|"]
    for rule in chosen:
        answer = "serves the request" if rule.serves else "closes the connection"
        level = f"{rule.level}, stricter than upstream ({rule.stricter})" if rule.stricter else rule.level
        lines.append(f"| `{rule.key}`: {rule.title} | {level} | {answer} | {rule.advisory or '–'} |")
    return "\n".join(lines) + "\n"


def security_block() -> str:
    lines = ["| advisory / report | rule | level |", "|---|---|---|"]
    for rule in RULES:
        if rule.advisory:
            lines.append(f"| {rule.advisory} | §{rule.section} `{rule.key}` | {rule.level} |")
    return "\n".join(lines) + "\n"


def guard_block() -> str:
    """The rules that refuse a request but cannot be decided by watching the wire."""
    lines = ["| rule | why it cannot be decided from the wire, and what to do |", "|---|---|"]
    by_key = {r.key: r for r in RULES}
    for key, why in UNENFORCEABLE.items():
        lines.append(f"| §{by_key[key].section} `{key}` | {why} |")
    return "\n".join(lines) + "\n"


def summary_block() -> str:
    lines = ["| # | command | section | request bytes | reply bytes | versions |", "|---:|---|---|---|---|---|"]
    for command in SPECIFIED:
        def sizes(p: Profile):
            if command not in p.commands:
                return None
            spec = message_spec(p, command)
            request = f"{spec.request_size}" + (" + tail" if spec.request_tail else "")
            if spec.reply is None:
                reply = "none"
            elif spec.reply_tail:
                reply = data_size_text(command)
            else:
                reply = str(spec.reply_size)
            return f"{request} | {reply}"

        groups = _grouped(sizes)
        for versions, text in groups:
            lines.append(f"| {int(command)} | {command.name} | §{ROW[command].section} | {text} | {versions} |")
    return "\n".join(lines) + "\n"


def blocks() -> dict[str, str]:
    found = {
        "profiles": profiles_block(),
        "differences": differences_block(),
        "rpc_tensor": rpc_tensor_block(),
        "types": types_block(),
        "ops": ops_block(),
        "op-reference": op_reference_block(),
        "graph": graph_block(),
        "graph-store": graph_store_block(),
        "link": link_block(),
        "security": security_block(),
        "guard": guard_block(),
        "summary": summary_block(),
    }
    found["trace:preamble"] = struct_table(PREAMBLE) + "\n"
    found["trace:record"] = struct_table(RECORD_HEAD) + "\n"
    for command in SPECIFIED:
        found[f"command:{command.name}"] = command_block(command)
    for section in sorted({r.section for r in RULES}):
        found[f"rules:{section}"] = rules_block(section)
    return found


def render(text: str) -> str:
    """SPEC.md text with every generated block re-rendered; unknown block names are errors."""
    available = blocks()
    used = set()

    def replace(match: re.Match) -> str:
        name = match.group(2)
        if name not in available:
            raise KeyError(f"SPEC.md names an unknown generated block {name!r}")
        used.add(name)
        return match.group(1) + available[name] + match.group(4)

    result = BLOCK.sub(replace, text)
    missing = sorted(set(available) - used)
    if missing:
        raise KeyError(f"SPEC.md lacks generated blocks: {', '.join(missing)}")
    return result


def main(argv: list[str]) -> int:
    current = SPEC.read_text()
    fresh = render(current)
    if "--check" in argv:
        if fresh != current:
            print("SPEC.md is stale: run python tools/generate_spec.py", file=sys.stderr)
            return 1
        return 0
    SPEC.write_text(fresh)
    print(f"wrote {SPEC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
