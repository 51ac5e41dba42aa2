"""The sans-IO framing layer: any chunking, typed errors for broken frames, zero-copy paths."""

from __future__ import annotations

import struct
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import golden as G
from conftest import V36, V70
from ggml_rpc_spec.protocol import (
    CLOSED,
    NEED_DATA,
    Command,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ReplyParser,
    RequestParser,
    build_reply,
    build_request,
    encode_request,
    make_tensor,
    profile_for,
)

from ggml_rpc_spec.protocol.framing import Data  # noqa: E402

TENSOR = make_tensor("padding", id=1, buffer=5, ne=[4, 1, 1, 1], nb=[4, 16, 16, 16], data=64, name="t")


def session(profile=V36) -> bytes:
    """A realistic request stream: HELLO, small calls, bulk data, a graph."""
    tensor = make_tensor(profile.tensor, **{k: v for k, v in TENSOR.items() if k in ("id", "buffer", "ne", "nb", "data")})
    set_body = {"tensor": tensor, "offset": 0}
    if profile.set_tensor == "cache_flag":
        set_body["cache_flag"] = 0
    hello = {"conn_caps": bytes(24)} if profile.hello == "caps" else None
    from ggml_rpc_spec.protocol import Graph
    from ggml_rpc_spec.protocol.graph import tensors_from_containers

    graph = Graph(np.array([1], dtype="<u8"), tensors_from_containers(profile, [tensor]))
    return b"".join([
        build_request(profile, Command.HELLO, hello),
        build_request(profile, Command.GET_ALIGNMENT, {"device": 0}),
        build_request(profile, Command.SET_TENSOR, set_body, data=bytes(range(256)) * 300),
        build_request(profile, Command.GET_TENSOR, {"tensor": tensor, "offset": 0, "size": 16}),
        build_request(profile, Command.GRAPH_COMPUTE, {"device": 0}, graph=graph),
        build_request(profile, Command.DEVICE_COUNT),
    ])


def drain(parser) -> list:
    events = []
    while (event := parser.next_event()) is not NEED_DATA:
        events.append(event)
    return events


@pytest.mark.parametrize("profile", [V36, V70], ids=str)
def test_byte_at_a_time_equals_all_at_once(profile):
    raw = session(profile)
    whole = RequestParser(profile)
    whole.receive_data(raw)
    expected = drain(whole)
    assert [e.command for e in expected] == [Command.HELLO, Command.GET_ALIGNMENT, Command.SET_TENSOR,
                                             Command.GET_TENSOR, Command.GRAPH_COMPUTE, Command.DEVICE_COUNT]
    one = RequestParser(profile)
    got = []
    for byte in raw:
        one.receive_data(bytes([byte]))
        got += drain(one)
    assert got == expected


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(1, 5000), max_size=40))
def test_any_chunking_gives_the_same_events(cuts):
    raw = session()
    whole = RequestParser(V36)
    whole.receive_data(raw)
    expected = drain(whole)
    parser, got, pos = RequestParser(V36), [], 0
    for cut in cuts + [len(raw)]:
        parser.receive_data(raw[pos:pos + cut])
        pos += cut
        got += drain(parser)
    assert got == expected


def test_buffered_protocol_path_lands_bulk_data_in_the_sink():
    """get_buffer/buffer_updated (what a recv_into shell uses) with a SET_TENSOR sink."""
    destination = bytearray(256 * 300)
    seen = []

    def sink(command, body, size):
        seen.append((command, body.offset, size))
        return memoryview(destination)

    parser = RequestParser(V36, bulk_sink=sink)
    raw, pos, events = session(), 0, []
    while pos < len(raw):
        event = parser.next_event()
        if event is not NEED_DATA:
            events.append(event)
            continue
        view = parser.get_buffer()
        n = min(len(view), len(raw) - pos, 1000)
        view[:n] = raw[pos:pos + n]
        parser.buffer_updated(n)
        pos += n
    events += drain(parser)
    assert seen == [(Command.SET_TENSOR, 0, 256 * 300)]
    assert bytes(destination) == bytes(range(256)) * 300
    set_tensor = events[2]
    assert set_tensor.data.obj is destination  # the event's data is the sink itself, not a copy


def joined(events) -> list:
    """Streamed events with every request's Data pieces put back into it (as a storing
    parser would deliver them), checking that the pieces add up and end where announced."""
    out, pieces, announced = [], [], 0
    for event in events:
        if isinstance(event, Data):
            pieces.append(bytes(event.data))
            if event.end:
                assert sum(map(len, pieces)) == announced
                out[-1] = replace(out[-1], data=b"".join(pieces))
                pieces = []
            continue
        assert not pieces, "a piece arrived without its end"
        announced = event.data_size
        out.append(replace(event, data=b"" if announced == 0 else event.data) if announced is not None else event)
    assert not pieces
    return out


def _data_as_bytes(events) -> list:
    return [replace(e, data=bytes(e.data)) if e.data is not None else e for e in events]


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(1, 5000), max_size=40), zero_copy=st.booleans())
def test_streamed_data_tails_arrive_in_pieces_that_add_up(cuts, zero_copy):
    """stream_data=True: a data tail becomes Data events, never stored whole; fed in any
    chunks, through receive_data or the zero-copy get_buffer path, the pieces rebuild the
    same requests a storing parser returns."""
    raw = session()
    whole = RequestParser(V36)
    whole.receive_data(raw)
    expected = _data_as_bytes(drain(whole))
    parser, got, pos = RequestParser(V36, stream_data=True), [], 0
    for cut in cuts + [len(raw)]:
        chunk = raw[pos:pos + cut]
        pos += cut
        while chunk:
            if zero_copy:  # what a recv_into shell does: every event handled before more bytes
                view = parser.get_buffer()
                n = min(len(view), len(chunk))
                view[:n] = chunk[:n]
                parser.buffer_updated(n)
            else:
                n = len(chunk)
                parser.receive_data(chunk)
            chunk = chunk[n:]
            got += [replace(e, data=memoryview(bytes(e.data))) if isinstance(e, Data) else e for e in drain(parser)]
    assert joined(got) == expected
    assert max(len(e.data) for e in got if isinstance(e, Data)) <= 1 << 20


def test_streamed_data_replies():
    data = bytes(range(256)) * 10
    parser = ReplyParser(V70, stream_data=True)
    parser.expect(Command.GET_ALIGNMENT)
    parser.expect(Command.GET_TENSOR, size=len(data))
    parser.expect(Command.GET_TENSOR, size=0)
    raw = G.reply(struct.pack("<Q", 32)) + G.reply(data) + G.reply(b"")
    events = []
    for byte in raw:
        parser.receive_data(bytes([byte]))
        events += drain(parser)
    heads = [e for e in events if not isinstance(e, Data)]
    assert [(e.command, e.data_size) for e in heads] == [(Command.GET_ALIGNMENT, None), (Command.GET_TENSOR, len(data)),
                                                         (Command.GET_TENSOR, 0)]
    assert b"".join(bytes(e.data) for e in events if isinstance(e, Data)) == data
    assert [e.end for e in events if isinstance(e, Data)][-1] is True


def test_a_streamed_reply_tail_passed_on_outside_the_parser():
    """stream_pending/stream_passed: a shell that splices a data tail from socket to socket
    tells the parser how many bytes went by; the tail's end is an empty Data event, and the
    next frame parses as if the parser had seen every byte."""
    data = bytes(range(256)) * 10
    parser = ReplyParser(V70, stream_data=True)
    parser.expect(Command.GET_TENSOR, size=len(data))
    parser.expect(Command.GET_ALIGNMENT)
    raw = G.reply(data) + G.reply(struct.pack("<Q", 32))
    parser.receive_data(raw[:8 + 100])  # the size and the tail's first 100 bytes
    assert [len(e.data) if isinstance(e, Data) else e.data_size for e in drain(parser)] == [len(data), 100]
    assert parser.stream_pending() == len(data) - 100
    with pytest.raises(ValueError, match="may be"):
        parser.stream_passed(len(data))
    parser.stream_passed(1000)
    assert drain(parser) == [] and parser.stream_pending() == len(data) - 1100
    parser.stream_passed(len(data) - 1100)
    (end,) = drain(parser)
    assert isinstance(end, Data) and end.end and len(end.data) == 0 and parser.stream_pending() == 0
    parser.receive_data(raw[8 + len(data):])
    (alignment,) = drain(parser)
    assert alignment.command is Command.GET_ALIGNMENT and alignment.body.alignment == 32


def test_a_streamed_tail_is_not_passed_on_while_received_bytes_wait():
    """Bytes already received belong to the parser: stream_pending is 0 until they are given out."""
    data = bytes(300)
    parser = ReplyParser(V70, stream_data=True)
    parser.expect(Command.GET_TENSOR, size=len(data))
    parser.receive_data(G.reply(data)[:108])
    assert parser.next_event().data_size == len(data)
    assert parser.stream_pending() == 0  # 100 bytes of the tail not yet given out as events
    assert len(parser.next_event().data) == 100
    assert parser.stream_pending() == 200


def test_a_streamed_request_can_be_sent_head_first():
    body = {"tensor": TENSOR, "offset": 0}
    head = b"".join(bytes(p) for p in encode_request(V36, Command.SET_TENSOR, body, data_size=100))
    assert head + bytes(100) == build_request(V36, Command.SET_TENSOR, body, data=bytes(100))
    with pytest.raises(LocalProtocolError, match="no data tail"):
        encode_request(V36, Command.GET_ALIGNMENT, {"device": 0}, data_size=1)


def test_sink_is_consulted_only_after_earlier_events_are_taken():
    """Validation of a SET_TENSOR may depend on the request before it (e.g. FREE_BUFFER)."""
    order = []
    parser = RequestParser(V36, hello_done=True, bulk_sink=lambda c, b, n: order.append("sink"))
    parser.receive_data(build_request(V36, Command.FREE_BUFFER, {"remote_ptr": 5})
                        + build_request(V36, Command.SET_TENSOR, {"tensor": TENSOR, "offset": 0}, data=b"x"))
    event = parser.next_event()
    order.append(event.command.name)
    assert parser.next_event().command is Command.SET_TENSOR
    assert order == ["FREE_BUFFER", "sink"]


def test_sink_refusal_stops_the_stream():
    def refuse(command, body, size):
        raise RemoteProtocolError("no", command="SET_TENSOR", section="7.1")

    parser = RequestParser(V36, hello_done=True, bulk_sink=refuse)
    parser.receive_data(build_request(V36, Command.SET_TENSOR, {"tensor": TENSOR, "offset": 0}, data=b"abc"))
    with pytest.raises(RemoteProtocolError, match="no"):
        parser.next_event()
    with pytest.raises(RemoteProtocolError):  # sticky
        parser.next_event()


def expect_error(raw: bytes, match: str, profile=V36, hello_done=True, **kw) -> RemoteProtocolError:
    parser = RequestParser(profile, hello_done=hello_done, **kw)
    parser.receive_data(raw)
    with pytest.raises(RemoteProtocolError, match=match) as info:
        drain(parser)
    return info.value


def test_unknown_command_is_refused_before_the_size():
    error = expect_error(bytes([17]), "unknown command byte")  # MEMSET does not exist in 3.6
    assert (error.command, error.field, error.value, error.section) == (None, "cmd", 17, "2.2")
    expect_error(bytes([18]), "unknown command byte", profile=V70)  # RPC_CMD_NONE never goes on the wire
    expect_error(bytes([0xFF]), "unknown command byte")


def test_hello_must_come_first_and_only_once():
    error = expect_error(G.request(1, struct.pack("<I", 0)), "first command", hello_done=False)
    assert error.section == "3.1"
    expect_error(G.request(14, b""), "only once", hello_done=True)


def test_hello_of_the_other_family_is_refused():
    error = expect_error(G.request(14, bytes(24)), "exactly 0 bytes", hello_done=False)
    assert (error.command, error.field, error.value) == ("HELLO", "size", 24)
    expect_error(G.request(14, b""), "exactly 24 bytes", profile=V70, hello_done=False)


@pytest.mark.parametrize("profile", [V36, V70], ids=str)
def test_a_server_of_both_hello_families_takes_the_hellos_profile(profile):
    """HELLO has no version field, only a shape: each shape picks one of the server's profiles,
    and the rest of the stream is parsed as that profile (byte by byte, too)."""
    raw = session(profile)
    parser = RequestParser(V70 if profile is V36 else V36, profiles=(V36, V70))
    events = []
    for byte in raw:
        parser.receive_data(bytes([byte]))
        events += drain(parser)
    alone = RequestParser(profile)
    alone.receive_data(raw)
    assert events == drain(alone)
    assert parser.profile is profile


def test_profiles_that_share_a_hello_shape_cannot_share_a_server():
    with pytest.raises(ValueError, match="share a HELLO"):
        RequestParser(V36, profiles=(V36, profile_for("3.6.0")))


def test_fixed_size_must_match_exactly_and_is_checked_before_the_payload():
    parser = RequestParser(V36, hello_done=True)
    parser.receive_data(struct.pack("<BQ", 1, 5))  # GET_ALIGNMENT with 5 bytes announced, none sent
    with pytest.raises(RemoteProtocolError, match="exactly 4 bytes") as info:
        parser.next_event()
    assert (info.value.command, info.value.field, info.value.value, info.value.section) == (
        "GET_ALIGNMENT", "size", 5, "2.4")


def test_variable_payload_minimum_and_cap():
    expect_error(G.request(6, bytes(100)), "at least 304 bytes")
    error = expect_error(struct.pack("<BQ", 6, 1 << 40), "limit of 1048576", max_payload=1 << 20)
    assert error.value == 1 << 40


def test_announced_size_alone_allocates_little():
    parser = RequestParser(V36, hello_done=True)
    parser.receive_data(struct.pack("<BQ", 10, 1 << 29) + struct.pack("<I", 0))
    assert parser.next_event() is NEED_DATA
    assert len(parser.get_buffer()) <= 64 * 1024  # grows with the bytes that arrive, not the claim


def test_graph_counts_beyond_the_payload():
    error = expect_error(G.request(10, struct.pack("<II", 0, 1000)), "1000 node ids")
    assert (error.command, error.field, error.section) == ("GRAPH_COMPUTE", "n_nodes", "8.1")
    error = expect_error(G.request(10, struct.pack("<III", 0, 0, 3) + G.tensor()), "3 tensors")
    assert error.field == "n_tensors"
    expect_error(G.request(10, G.graph_payload(0, [1], [G.tensor(id=1)]) + b"xx"), "payload has")


def test_truncated_request_at_close():
    parser = RequestParser(V36, hello_done=True)
    parser.receive_data(G.request(8, bytes(312))[:100])
    assert parser.next_event() is NEED_DATA
    parser.receive_eof()
    with pytest.raises(RemoteProtocolError, match="middle of a request, 100 bytes") as info:
        parser.next_event()
    assert info.value.section == "2.5"


def test_clean_close_between_frames():
    parser = RequestParser(V36, hello_done=True)
    parser.receive_data(G.request(15, b""))
    parser.receive_eof()
    assert parser.next_event().command is Command.DEVICE_COUNT
    assert parser.next_event() is CLOSED


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=400), profile=st.sampled_from([V36, V70]))
def test_garbage_never_escapes_as_anything_but_a_protocol_error(garbage, profile):
    parser = RequestParser(profile, max_payload=1 << 20)
    parser.receive_data(garbage)
    parser.receive_eof()
    try:
        while parser.next_event() is not CLOSED:
            pass
    except RemoteProtocolError:
        pass


# -- replies ---------------------------------------------------------------------------------


def test_reply_byte_at_a_time():
    parser = ReplyParser(V36)
    parser.expect(Command.HELLO)
    parser.expect(Command.GET_TENSOR, size=5)
    parser.expect(Command.FREE_BUFFER)
    raw = G.reply(bytes([3, 6, 1])) + G.reply(b"hello") + G.reply(b"")
    events = []
    for byte in raw:
        parser.receive_data(bytes([byte]))
        events += drain(parser)
    assert [e.command for e in events] == [Command.HELLO, Command.GET_TENSOR, Command.FREE_BUFFER]
    assert events[0].body.patch == 1 and bytes(events[1].data) == b"hello"


def test_reply_into_caller_buffer():
    target = bytearray(5)
    parser = ReplyParser(V36)
    parser.expect(Command.GET_TENSOR, size=5, into=target)
    parser.receive_data(G.reply(b"abcde"))
    assert parser.next_event().data.obj is target
    assert target == b"abcde"


def test_reply_with_wrong_size():
    parser = ReplyParser(V36)
    parser.expect(Command.GET_ALIGNMENT)
    parser.receive_data(G.reply(b"\x20\x00\x00\x00"))
    with pytest.raises(RemoteProtocolError, match="exactly 8 bytes") as info:
        parser.next_event()
    assert (info.value.command, info.value.field, info.value.value) == ("GET_ALIGNMENT", "size", 4)


def test_reply_to_a_one_way_command_is_unexpected():
    parser = ReplyParser(V70)
    parser.receive_data(G.reply(b""))  # e.g. a 3.6-style empty ack to a 7.0 FREE_BUFFER
    with pytest.raises(RemoteProtocolError, match="no reply was pending"):
        parser.next_event()


def test_server_closing_instead_of_replying_names_the_command():
    parser = ReplyParser(V36)
    parser.expect(Command.GET_TENSOR, size=64)
    parser.receive_data(G.reply(bytes(64))[:20])
    parser.receive_eof()
    with pytest.raises(RemoteProtocolError, match="GET_TENSOR: connection closed before the complete reply"):
        parser.next_event()


# -- builders ----------------------------------------------------------------------------------


def test_builders_refuse_what_the_version_lacks():
    with pytest.raises(LocalProtocolError, match="MEMSET_TENSOR: command does not exist in protocol 3.6.1"):
        build_request(V36, Command.MEMSET_TENSOR, {})
    with pytest.raises(LocalProtocolError, match="ALLOC_BUFFER: cannot build the request"):
        build_request(V36, Command.ALLOC_BUFFER, {"size": 5})  # no device
    with pytest.raises(LocalProtocolError, match="GET_ALIGNMENT: device=-1: cannot build the request"):
        build_request(V36, Command.GET_ALIGNMENT, {"device": -1})
    with pytest.raises(LocalProtocolError, match="one-way"):
        build_reply(V70, Command.FREE_BUFFER)


def test_error_hierarchy():
    assert issubclass(RemoteProtocolError, ProtocolError) and issubclass(LocalProtocolError, ProtocolError)
    error = RemoteProtocolError("region outside the buffer", command="GET_TENSOR", field="size",
                                value=1 << 40, section="7.2")
    assert str(error) == ("GET_TENSOR: size=1099511627776 (0x10000000000): region outside the buffer [§7.2]")
