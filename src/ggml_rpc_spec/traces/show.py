"""Decode a trace frame by frame with the protocol schemas (what `ggml-rpc-trace show` prints).

Like a protocol dissector: each request with its reply, the command, its fields, tensors by
name, type and shape (data addresses shown relative to their buffer's base once the trace
has revealed it), payload sizes, and for graphs the node and tensor counts and the ops.
A link trace (a server-to-server link, SPEC §10) shows its handshake and each all-reduce:
the element count, F32 or BF16, and the first values of each rank's partial.
"""

from __future__ import annotations

from collections import Counter

from ggml_rpc_spec.protocol import Command, decode_name, message_spec
from ggml_rpc_spec.protocol.comm import RANK0, RANK1, SHOWN_VALUES, DecodedLink, handshake
from ggml_rpc_spec.protocol.exchanges import DecodedSession
from ggml_rpc_spec.protocol.trace import CLIENT, LINK, SERVER, StreamClock, Trace


def as_json(trace: Trace, path: str) -> dict:
    """What `show --json` prints for one trace, of either kind."""
    out = {"file": path, "header": trace.header, "kind": trace.kind}
    if trace.kind == LINK:
        link, rows = decode_link(trace)
        return {**out, "handshake": {name: link.handshake[rank].hex() for rank, name in RANKS.items()},
                "exchanges": rows, "unsplit_bytes": {name: link.unsplit[rank] for rank, name in RANKS.items()},
                "problems": link.problems}
    session, rows = decode(trace)
    return {**out, "protocol": session.profile.name if session.profile else None, "exchanges": rows,
            "error": str(session.error) if session.error else None}


def render(trace: Trace, *, graphs: bool = False) -> str:
    """What `show` prints for one trace, of either kind."""
    return _render_link(trace) if trace.kind == LINK else _render_connection(trace, graphs=graphs)


def decode(trace: Trace) -> tuple[DecodedSession, list[dict]]:
    """The decoded session and one dict per exchange (what --json prints)."""
    session = trace.decoded()
    times = StreamClock((r.direction, r.time_us / 1e6, len(r.data)) for r in trace.records).time_of
    bases: dict[int, int] = {}
    rows = []
    sent = 0  # client bytes before this request, for its time
    for index, exchange in enumerate(session.exchanges, 1):
        request, reply = exchange.request, exchange.reply
        row = {"index": index, "time": times(CLIENT, sent), "command": request.command.name,
               "request_bytes": request.frame_size, "request": _fields(request.body, session, bases)}
        sent += request.frame_size
        if request.data is not None:
            row["request"]["data_bytes"] = len(request.data)
        if request.graph is not None:
            row["graph"] = _graph(request.graph, session, bases)
        if reply is not None:
            row["reply_bytes"] = reply.frame_size
            row["reply"] = {"data_bytes": len(reply.data)} if reply.data is not None else _fields(reply.body,
                                                                                                   session, bases)
            if request.command is Command.BUFFER_GET_BASE:
                bases[request.body.remote_ptr] = reply.body.base_ptr
        else:  # (exchanges exist only once the session's profile is known)
            row["reply"] = None if not message_spec(session.profile, request.command).has_reply else "missing"
        if request.command is Command.FREE_BUFFER:
            bases.pop(request.body.remote_ptr, None)
        rows.append(row)
    return session, rows


def _tensor(tensor, session, bases) -> dict:
    kind = session.profile.ggml.tensor_type(tensor.type)
    out = {"name": decode_name(tensor.name), "type": kind.name if kind else tensor.type,
           "ne": list(tensor.ne), "nb": list(tensor.nb), "buffer": hex(tensor.buffer), "data": hex(tensor.data)}
    base = bases.get(tensor.buffer)
    if base is not None and tensor.data >= base:
        out["data"] = f"base+{tensor.data - base:#x}"
    if tensor.op:
        out["op"] = session.profile.ggml.op_name(tensor.op)
    return out


def _fields(body, session, bases) -> dict:
    out: dict[str, object] = {}
    for key, value in body.items():
        if key.startswith("_"):
            continue
        if hasattr(value, "ne"):
            out[key] = _tensor(value, session, bases)
        elif isinstance(value, list) and value and hasattr(value[0], "ne"):
            out[key] = [_tensor(t, session, bases) for t in value if t.id]
        elif isinstance(value, (bytes, bytearray)):
            out[key] = value.hex()
        elif key in ("remote_ptr", "base_ptr", "hash"):
            out[key] = hex(value)
        else:
            out[key] = value
    return out


def _graph(graph, session, bases) -> dict:
    ggml = session.profile.ggml
    ops = Counter(ggml.op_name(int(op)) or str(int(op)) for op in graph.tensors["op"])
    tensors = []
    for row in graph.tensors:
        kind = ggml.tensor_type(int(row["type"]))
        tensors.append({"id": hex(int(row["id"])), "name": decode_name(bytes(row["name"])),
                        "type": kind.name if kind else int(row["type"]), "ne": row["ne"].tolist(),
                        "op": ggml.op_name(int(row["op"])) or int(row["op"])})
    return {"n_nodes": graph.n_nodes, "n_tensors": graph.n_tensors, "ops": dict(ops.most_common()),
            "tensors": tensors}


def _short(fields: dict) -> str:
    parts = []
    for key, value in fields.items():
        if isinstance(value, dict) and "type" in value:
            parts.append(f"{key}='{value['name']}' {value['type']} {value['ne']} @{value['data']}")
        elif isinstance(value, list):
            parts.append(f"{key}=[{len(value)} tensors]")
        elif key == "data_bytes":
            parts.append(f"{value} data bytes")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def _note(header: dict) -> str:
    return f" ({header['note']})" if header.get("note") else ""


def _sizes(trace: Trace, senders: tuple[str, str], count: str) -> str:
    """The line under a trace's title: its records and each direction's bytes (`senders`:
    who sent direction 0 and 1), then what it holds."""
    return (f"{len(trace.records)} records, {len(trace.stream(CLIENT))} bytes from {senders[0]}, "
            f"{len(trace.stream(SERVER))} from {senders[1]}; {count}")


def _render_connection(trace: Trace, *, graphs: bool) -> str:
    session, rows = decode(trace)
    head = trace.header
    lines = [f"trace: protocol {head.get('protocol', '?')} recorded by {head.get('recorder', '?')} "
             f"against {head.get('peer', '?')} on {head.get('date', '?')}{_note(head)}",
             _sizes(trace, ("the client", "the server"), f"{len(rows)} requests")]
    for row in rows:
        reply = row.get("reply")
        answer = ("one-way" if reply is None else "NO REPLY (connection closed)" if reply == "missing" else
                  f"-> {_short(reply) or 'empty'}")
        lines.append(f"#{row['index']:<5d} +{row['time']:9.6f}s {row['command']:17s} {_short(row['request'])}  {answer}")
        if "graph" in row:
            graph = row["graph"]
            ops = ", ".join(f"{op} {n}" for op, n in graph["ops"].items())
            lines.append(f"        graph: {graph['n_nodes']} nodes, {graph['n_tensors']} tensors; ops: {ops}")
            if graphs:
                for tensor in graph["tensors"]:
                    lines.append(f"          {tensor['id']:>16s} {tensor['op']!s:14s} {tensor['type']!s:6s} "
                                 f"{tensor['ne']} '{tensor['name']}'")
    if session.error is not None:
        lines.append(f"decoding stopped: {session.error}")
    return "\n".join(lines)


# -- link traces ----------------------------------------------------------------------------------------

RANKS = {RANK0: "rank0", RANK1: "rank1"}  # a link trace's directions as --json names them
LABELS = {"rank0": "rank 0", "rank1": "rank 1"}


def decode_link(trace: Trace) -> tuple[DecodedLink, list[dict]]:
    """The decoded link and one dict per all-reduce (what --json prints): its element
    count, the tensor the header names for it, the wire format, and per rank the time its
    partial began and its first values."""
    link = trace.link()
    times = StreamClock((r.direction, r.time_us / 1e6, len(r.data)) for r in trace.records).time_of
    names = trace.header.get("tensors") or []
    rows = []
    for exchange in link.exchanges:
        row = {"index": exchange.index, "elements": exchange.elements, "format": "BF16" if exchange.bf16 else "F32",
               "bytes_each_way": exchange.wire_size}
        if exchange.index <= len(names):
            row["tensor"] = names[exchange.index - 1]
        for rank, name in RANKS.items():
            row[name] = {"time": times(rank, exchange.starts[rank]), "values": exchange.values(rank)}
        rows.append(row)
    return link, rows


def _render_link(trace: Trace) -> str:
    link, rows = decode_link(trace)
    head = trace.header
    lines = [f"trace: server-to-server link, protocol {head.get('protocol', '?')}, rank 0 {head.get('peer', '?')}, "
             f"rank 1 {head.get('client', '?')}, recorded by {head.get('recorder', '?')} on {head.get('date', '?')}"
             f"{_note(head)}", _sizes(trace, ("rank 1", "rank 0"), f"{len(rows)} all-reduces")]
    for rank, name in ((RANK1, "rank 1 -> rank 0"), (RANK0, "rank 0 -> rank 1")):
        caps = link.handshake[rank]
        what = "all zero (plain TCP)" if caps == handshake() else caps.hex() or "none"
        lines.append(f"handshake  {name}: {len(caps)} bytes of conn_caps, {what}")
    for row in rows:
        tensor = f" '{row['tensor']}'" if "tensor" in row else ""
        lines.append(f"#{row['index']:<5d} +{row['rank0']['time']:9.6f}s ALLREDUCE{tensor} {row['elements']} elements, "
                     f"{row['format']}, {row['bytes_each_way']} bytes each way")
        for name, label in LABELS.items():
            values = [f"{v:.6g}" for v in row[name]["values"]] + (["..."] if row["elements"] > SHOWN_VALUES else [])
            lines.append(f"        {label} +{row[name]['time']:9.6f}s [{', '.join(values)}]")
    unsplit = [f"{link.unsplit[rank]} bytes from {LABELS[name]}" for rank, name in RANKS.items() if link.unsplit[rank]]
    if unsplit:
        lines.append("not split: " + ", ".join(unsplit))
    lines += [f"problem: {problem}" for problem in link.problems]
    return "\n".join(lines)
