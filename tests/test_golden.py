"""Every request and reply of every protocol version against hand-packed golden bytes
(tests/golden.py): each value of each profile column (HELLO shape, device fields, rpc_tensor
tail, SET_TENSOR shape, GRAPH_COMPUTE reply, acks) meets its own bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import golden as G
from conftest import V36, V70
from ggml_rpc_spec.protocol import (
    PROFILES,
    Command,
    Graph,
    ReplyParser,
    RequestParser,
    build_reply,
    build_request,
    make_tensor,
)
from ggml_rpc_spec.protocol.graph import tensors_from_containers


TENSOR_FIELDS = dict(id=0x7F00_5566_0000, type=8, buffer=0x55AA_0000_1000, ne=[64, 2, 1, 1], nb=[34, 68, 136, 136],
                     op=29, op_params=[10] + [0] * 15, flags=1, src=[0x11, 0x22] + [0] * 8, view_src=0x33,
                     view_offs=68, data=0x55AA_0000_2000)
NAME = b"blk.0.attn_q.weight"


def golden_tensor(profile, **over) -> bytes:
    fields = dict(TENSOR_FIELDS, name=NAME, **over)
    if profile.tensor == "use_count":
        fields["tail"] = G.use_count(fields.pop("use_count", 0))
    return G.tensor(**fields)


def schema_tensor(profile, **over):
    return make_tensor(profile.tensor, **dict(TENSOR_FIELDS, name=NAME, **over))


def cases(p):
    """(command, request body, extra, golden request payload, reply body, golden reply payload)."""
    t = golden_tensor(p)
    ack = b"" if p.acks == "empty" else None
    hello_req, hello_body = (b"", None) if p.hello == "bare" else (bytes(24), {"conn_caps": bytes(24)})
    hello_reply = (struct.pack("<BBB", *p.version) if p.hello == "bare"
                   else struct.pack("<BBBB", *p.version, 0) + bytes(24))
    hello_reply_body = dict(zip(("major", "minor", "patch"), p.version, strict=True))
    if p.hello == "caps":
        hello_reply_body.update(padding=0, conn_caps=bytes(24))
    data = bytes(range(40))
    set_head = (struct.pack("<Q", 128) if p.set_tensor == "plain" else struct.pack("<BQ", 1, 128))
    set_body = {"tensor": schema_tensor(p), "offset": 128}
    if p.set_tensor == "cache_flag":
        set_body["cache_flag"] = 1
    empty_src = G.tensor(tail=b"\0\0\0\0")
    srcs = [golden_tensor(p, id=0x11)] + [empty_src] * 9
    srcs_body = [schema_tensor(p, id=0x11)] + [make_tensor(p.tensor) for _ in range(9)]
    for s in srcs_body[1:]:
        s.ne = [1, 1, 1, 1]
    multi = p.devices == "multi"

    def device(n: int) -> tuple[dict | None, dict, bytes]:
        """A request of only a device field: body, extra and bytes (empty on single-device versions)."""
        return ({"device": n}, {}, struct.pack("<I", n)) if multi else (None, {}, b"")

    def with_device(n: int, body: dict) -> dict:
        return {"device": n, **body} if multi else body

    rows = [
        (Command.HELLO, hello_body, {}, hello_req, hello_reply_body, hello_reply),
        (Command.ALLOC_BUFFER, with_device(1, {"size": 1 << 33}), {}, device(1)[2] + struct.pack("<Q", 1 << 33),
         {"remote_ptr": 0x55AA_0000_1000, "remote_size": 1 << 33}, struct.pack("<QQ", 0x55AA_0000_1000, 1 << 33)),
        (Command.GET_ALIGNMENT, *device(0), {"alignment": 32}, struct.pack("<Q", 32)),
        (Command.GET_MAX_SIZE, *device(0), {"max_size": 2**64 - 1}, struct.pack("<Q", 2**64 - 1)),
        (Command.BUFFER_GET_BASE, {"remote_ptr": 7}, {}, struct.pack("<Q", 7), {"base_ptr": 0x7000_0000},
         struct.pack("<Q", 0x7000_0000)),
        (Command.FREE_BUFFER, {"remote_ptr": 7}, {}, struct.pack("<Q", 7), {}, ack),
        (Command.BUFFER_CLEAR, {"remote_ptr": 7, "value": 0xAB}, {}, struct.pack("<QB", 7, 0xAB), {}, ack),
        (Command.SET_TENSOR, set_body, {"data": data}, t + set_head + data, None, None),
        (Command.SET_TENSOR_HASH, {"tensor": schema_tensor(p), "offset": 0, "hash": 0xCBF29CE484222325}, {},
         t + struct.pack("<QQ", 0, 0xCBF29CE484222325), {"result": 1}, b"\x01"),
        (Command.GET_TENSOR, {"tensor": schema_tensor(p), "offset": 4, "size": 40}, {},
         t + struct.pack("<QQ", 4, 40), {}, data),
        (Command.COPY_TENSOR, {"src": schema_tensor(p), "dst": schema_tensor(p, data=0x55AA_0000_3000)}, {},
         t + golden_tensor(p, data=0x55AA_0000_3000), {"result": 1}, b"\x01"),
        (Command.GET_DEVICE_MEMORY, *device(0), {"free_mem": 1 << 30, "total_mem": 1 << 31},
         struct.pack("<QQ", 1 << 30, 1 << 31)),
        (Command.INIT_TENSOR, {"tensor": schema_tensor(p)}, {}, t, {}, ack),
    ]
    if multi:  # the tensor, then its 10 sources (empty ones have ne = 1)
        rows.append((Command.GET_ALLOC_SIZE, {"device": 0, "tensor": schema_tensor(p), "srcs": srcs_body}, {},
                     struct.pack("<I", 0) + t + b"".join(srcs), {"alloc_size": 4352}, struct.pack("<Q", 4352)))
    else:
        rows.append((Command.GET_ALLOC_SIZE, {"tensor": schema_tensor(p)}, {}, t, {"alloc_size": 4352},
                     struct.pack("<Q", 4352)))
    if Command.DEVICE_COUNT in p.commands:
        rows.append((Command.DEVICE_COUNT, None, {}, b"", {"device_count": 2}, struct.pack("<I", 2)))
    uids = p.graphs == "uid"  # 8.0.0: graphs are cached by a u64 uid after the device
    if Command.GRAPH_RECOMPUTE in p.commands:
        if uids:
            rows.append((Command.GRAPH_RECOMPUTE, {"device": 1, "uid": 0x1234_5678_9ABC}, {},
                         struct.pack("<IQ", 1, 0x1234_5678_9ABC), None, None))
        else:
            rows.append((Command.GRAPH_RECOMPUTE, {"device": 1}, {}, struct.pack("<I", 1), None, None))
    nodes_body = [schema_tensor(p, id=0x11, src=[0] * 10, view_src=0),
                  schema_tensor(p, id=0x22, src=[0x11] + [0] * 9, view_src=0)]
    graph = Graph(np.array([0x22], dtype="<u8"), tensors_from_containers(p, nodes_body))
    golden_tensors = [golden_tensor(p, id=0x11, src=(0,) * 10, view_src=0),
                      golden_tensor(p, id=0x22, src=(0x11,) + (0,) * 9, view_src=0)]
    status = ({"result": 0}, b"\x00") if p.graph_reply == "status" else (None, None)  # GGML_STATUS_SUCCESS
    graph_body = {"device": 0, "uid": 77} if uids else device(0)[0] or {}
    rows.append((Command.GRAPH_COMPUTE, graph_body, {"graph": graph},
                 G.graph_payload(0 if multi else None, [0x22], golden_tensors, 77 if uids else None), *status))
    copies = bytes(range(24))  # 3 copies of 8 bytes
    if Command.SET_TENSOR_2D in p.commands:
        rows.append((Command.SET_TENSOR_2D, {"tensor": schema_tensor(p), "offset": 16, "size": 8, "n_copies": 3,
                                             "stride": 68}, {"data": copies},
                     t + struct.pack("<QQQQ", 16, 8, 3, 68) + copies, None, None))
        rows.append((Command.GET_TENSOR_2D, {"tensor": schema_tensor(p), "offset": 16, "size": 8, "n_copies": 3,
                                             "stride": 68}, {}, t + struct.pack("<QQQQ", 16, 8, 3, 68), {}, copies))
        host = b"10.0.0.5".ljust(64, b"\0")
        rows.append((Command.COMM_INIT, {"device": 0, "rank": 1, "world": 2, "port": 51052, "host": host}, {},
                     struct.pack("<IIII", 0, 1, 2, 51052) + host, {"ok": 1}, b"\x01"))
        rows.append((Command.COMM_ALLREDUCE, {"device": 0, "tensor": schema_tensor(p)}, {}, struct.pack("<I", 0) + t,
                     None, None))
        rows.append((Command.COMM_FREE, {"device": 0}, {}, struct.pack("<I", 0), None, None))
    if Command.MEMSET_TENSOR in p.commands:
        rows.append((Command.MEMSET_TENSOR, {"tensor": schema_tensor(p), "offset": 8, "size": 16, "value": 0xFF}, {},
                     t + struct.pack("<QQB", 8, 16, 0xFF), {}, ack))
    return rows


ALL = [(p, row) for p in PROFILES for row in cases(p)]
IDS = [f"{p.name}-{row[0].name}" for p, row in ALL]


def test_every_command_has_a_golden_case():
    for p in PROFILES:
        assert sorted(row[0] for row in cases(p)) == sorted(p.commands)




@pytest.mark.parametrize("profile,row", ALL, ids=IDS)
def test_request_bytes(profile, row):
    command, body, extra, payload, _, _ = row
    assert build_request(profile, command, body, **extra) == G.request(command, payload)


@pytest.mark.parametrize("profile,row", ALL, ids=IDS)
def test_request_parse(profile, row):
    command, body, extra, payload, _, _ = row
    parser = RequestParser(profile, hello_done=command is not Command.HELLO)
    parser.receive_data(G.request(command, payload))
    event = parser.next_event()
    assert event.command is command
    assert event.body == (body or {})
    if "data" in extra:
        assert bytes(event.data) == extra["data"]
    if "graph" in extra:
        assert event.graph == extra["graph"]


@pytest.mark.parametrize("profile,row", [(p, r) for p, r in ALL if r[5] is not None],
                         ids=[i for i, (p, r) in zip(IDS, ALL, strict=True) if r[5] is not None])
def test_reply_bytes_and_parse(profile, row):
    command, request_body, _, _, body, payload = row
    is_data = command in (Command.GET_TENSOR, Command.GET_TENSOR_2D)
    built = build_reply(profile, command, None if is_data else body, data=payload if is_data else None)
    assert built == G.reply(payload)
    parser = ReplyParser(profile)
    parser.expect(command, size=len(payload) if is_data else None)
    parser.receive_data(G.reply(payload))
    event = parser.next_event()
    assert event.command is command
    if is_data:
        assert bytes(event.data) == payload
    else:
        assert event.body == body


@pytest.mark.parametrize("profile,command", [(p, r[0]) for p, r in ALL if r[5] is None],
                         ids=[i for i, (p, r) in zip(IDS, ALL, strict=True) if r[5] is None])
def test_one_way_commands_have_no_reply(profile, command):
    from ggml_rpc_spec.protocol import LocalProtocolError

    with pytest.raises(LocalProtocolError, match="one-way"):
        build_reply(profile, command)
    with pytest.raises(LocalProtocolError, match="no reply"):
        ReplyParser(profile).expect(command)


def test_hello_is_the_same_on_both_families():
    # cmd 14 and u64 size: the only bytes both HELLO shapes share
    assert build_request(V36, Command.HELLO)[:9] == bytes([14]) + bytes(8)
    assert build_request(V70, Command.HELLO, {"conn_caps": bytes(24)})[:9] == bytes([14]) + struct.pack("<Q", 24)
