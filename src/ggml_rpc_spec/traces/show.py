"""Decode a trace frame by frame with the protocol schemas (what `ggml-rpc-trace show` prints).

Like a protocol dissector: each request with its reply, the command, its fields, tensors by
name, type and shape (data addresses shown relative to their buffer's base once the trace
has revealed it), payload sizes, and for graphs the node and tensor counts and the ops.
"""

from __future__ import annotations

from collections import Counter

from ggml_rpc_spec.protocol import Command, decode_name, message_spec
from ggml_rpc_spec.protocol.exchanges import DecodedSession
from ggml_rpc_spec.protocol.trace import CLIENT, SERVER, StreamClock, Trace


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
    out = {}
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


def render(trace: Trace, *, graphs: bool = False) -> str:
    session, rows = decode(trace)
    head = trace.header
    lines = [f"trace: protocol {head.get('protocol', '?')} recorded by {head.get('recorder', '?')} "
             f"against {head.get('peer', '?')} on {head.get('date', '?')}"
             + (f" ({head['note']})" if head.get("note") else ""),
             f"{len(trace.records)} records, {len(trace.stream(CLIENT))} bytes from the client, "
             f"{len(trace.stream(SERVER))} from the server; {len(rows)} requests"]
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
