"""Property round trips for every schema of every version: parse(build(x)) == x and
build(parse(b)) == b, through the framing layer as peers use it."""

from __future__ import annotations

import pytest
from construct import ConstructError
from hypothesis import given, settings
from hypothesis import strategies as st

from ggml_rpc_spec.protocol import PROFILES, Command, ReplyParser, RequestParser, build_reply, build_request, message_spec
from ggml_rpc_spec.protocol.errors import LocalProtocolError
from ggml_rpc_spec.protocol.framing import _codec, build_fixed
from strategies import for_schema, graphs

PAIRS = [(p, c) for p in PROFILES for c in p.commands]


def announcing(body, data):
    """`body` with copy counts small enough to draw the data they announce."""
    return dict(body, size=data.draw(st.integers(0, 16)), n_copies=data.draw(st.integers(0, 8)))
IDS = [f"{p.name}-{c.name}" for p, c in PAIRS]


def parse_request(profile, raw: bytes):
    parser = RequestParser(profile, hello_done=raw[0] != Command.HELLO)
    parser.receive_data(raw)
    return parser.next_event()


@pytest.mark.parametrize("profile,command", PAIRS, ids=IDS)
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_request_roundtrip(profile, command, data):
    spec = message_spec(profile, command)
    body = data.draw(for_schema(spec.request))
    extra = {}
    if spec.request_tail == "data":
        if spec.data_size(body) is not None:  # the head announces the data's length (SET_TENSOR_2D)
            body = announcing(body, data)
        announced = spec.data_size(body)
        extra["data"] = data.draw(st.binary(min_size=announced or 0, max_size=300 if announced is None else announced))
    elif spec.request_tail == "graph":
        extra["graph"] = data.draw(graphs(profile))
    raw = build_request(profile, command, body, **extra)
    event = parse_request(profile, raw)
    assert event.body == body
    if "data" in extra:
        assert bytes(event.data) == extra["data"]
    if "graph" in extra:
        assert event.graph == extra["graph"]
    again = build_request(profile, command, event.body, data=event.data, graph=event.graph)
    assert again == raw


@pytest.mark.parametrize("profile,command", PAIRS, ids=IDS)
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_request_bytes_roundtrip(profile, command, data):
    """Any bytes of the right size parse, and build back to themselves."""
    spec = message_spec(profile, command)
    payload = data.draw(st.binary(min_size=spec.request_size, max_size=spec.request_size))
    if spec.request_tail == "data":
        announced = spec.data_size(_codec(spec.request).parse(payload))
        if announced is not None:  # the head announces the data's length (SET_TENSOR_2D)
            head = announcing(_codec(spec.request).parse(payload), data)
            payload = build_fixed(spec.request, head, command=command.name, what="request")
            announced = spec.data_size(head)
        payload += data.draw(st.binary(min_size=announced or 0, max_size=64 if announced is None else announced))
    elif spec.request_tail == "graph":
        graph = data.draw(graphs(profile))
        payload += build_request(profile, command, data.draw(for_schema(spec.request)), graph=graph)[9 + spec.request_size:]
    raw = bytes([command]) + len(payload).to_bytes(8, "little") + payload
    event = parse_request(profile, raw)
    assert build_request(profile, command, event.body, data=event.data, graph=event.graph) == raw


@pytest.mark.parametrize("profile,command", [(p, c) for p, c in PAIRS if message_spec(p, c).has_reply],
                         ids=[i for i, (p, c) in zip(IDS, PAIRS, strict=True) if message_spec(p, c).has_reply])
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_reply_roundtrip(profile, command, data):
    spec = message_spec(profile, command)
    parser = ReplyParser(profile)
    if spec.reply_tail == "data":
        payload = data.draw(st.binary(max_size=300))
        raw = build_reply(profile, command, data=payload)
        parser.expect(command, size=len(payload))
        parser.receive_data(raw)
        event = parser.next_event()
        assert bytes(event.data) == payload
        assert build_reply(profile, command, data=event.data) == raw
        return
    body = data.draw(for_schema(spec.reply))
    raw = build_reply(profile, command, body)
    parser.expect(command)
    parser.receive_data(raw)
    event = parser.next_event()
    assert event.body == body
    assert build_reply(profile, command, event.body) == raw


@pytest.mark.parametrize("profile,command", PAIRS, ids=IDS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_fast_codec_matches_construct(profile, command, data):
    """The framing layer parses and builds message heads with codecs derived from the
    schemas (protocol.derive.FlatCodec); they must agree with construct itself."""
    spec = message_spec(profile, command)
    for schema in filter(None, (spec.request, spec.reply)):
        body = data.draw(for_schema(schema))
        raw = schema.build(body)
        assert _codec(schema).build(body) == raw
        assert _codec(schema).parse(raw) == schema.parse(raw)
        assert _codec(schema).parse(memoryview(raw)) == schema.parse(raw)


@pytest.mark.parametrize("profile,command", PAIRS, ids=IDS)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_fast_codec_refuses_what_construct_refuses(profile, command, data):
    """A body construct cannot build (out-of-range integer, wrong-size bytes, short array,
    missing field) is refused by the fast codec too, never silently padded or wrapped."""
    spec = message_spec(profile, command)
    for schema in filter(None, (spec.request, spec.reply)):
        if not schema.subcons:
            continue
        body = data.draw(for_schema(schema))
        field = data.draw(st.sampled_from([sub.name for sub in schema.subcons]))
        value = body[field]
        if isinstance(value, int):
            bad = data.draw(st.sampled_from([-(1 << 63) - 1, 1 << 64]))
        elif isinstance(value, bytes):
            bad = value + b"\0"
        elif isinstance(value, list):
            bad = value[:-1]
        else:  # a nested rpc_tensor: drop one of its fields
            bad = dict(value)
            del bad["name"]
        broken = dict(body, **{field: bad})
        with pytest.raises((ConstructError, KeyError)):
            schema.build(broken)
        with pytest.raises(ValueError):
            _codec(schema).build(broken)
        with pytest.raises(LocalProtocolError, match=command.name):
            build_fixed(schema, broken, command=command.name, what="request")
        del broken[field]
        with pytest.raises(ValueError):
            _codec(schema).build(broken)
