"""Trace files: the format, the recording proxy, the decoder and the relocating replayer."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import CI_RELEASES, require_peer
from ggml_rpc_spec.protocol.exchanges import decode_connection
from ggml_rpc_spec.protocol import Command, profile_for
from ggml_rpc_spec.protocol.trace import CLIENT, SERVER, Record, Trace, TraceError, decode_trace, encode_trace, frame_records
from ggml_rpc_spec.client.rpc import RPCClient
from ggml_rpc_spec.traces.replay import link_of, passed, replay
from ggml_rpc_spec.traces.show import decode, decode_link

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_DIR = ROOT / "src" / "ggml_rpc_spec" / "fixtures"  # shipped as package data
FIXTURES = sorted(FIXTURE_DIR.glob("*/*.ggmlrpc"))

records = st.lists(st.builds(Record, st.sampled_from([CLIENT, SERVER]), st.integers(0, 2**64 - 1),
                             st.binary(max_size=200)), max_size=20)


@settings(max_examples=50, deadline=None)
@given(records=records, note=st.text(max_size=20))
def test_encode_decode_roundtrip(records, note):
    trace = Trace({"protocol": "7.0.0", "note": note}, records)
    again = decode_trace(encode_trace(trace))
    assert again.header == trace.header and again.records == records


def sample() -> bytes:
    return encode_trace(Trace({"protocol": "3.6.1"}, [Record(CLIENT, 5, bytes(range(40))), Record(SERVER, 9, b"x")]))


def _records_start(raw: bytes) -> int:
    """Where the record stream starts: after magic (8), format (2), header length (4), header."""
    return 14 + int.from_bytes(raw[10:14], "little")


@pytest.mark.parametrize("damage,message,where", [
    (lambda raw: raw[:10], "too short", lambda raw: 0),
    (lambda raw: b"NOTATRACE" + raw[9:], "not a GGML RPC trace", lambda raw: 0),
    (lambda raw: raw[:8] + b"\x09\x00" + raw[10:], "format version 9", lambda raw: 8),
    (lambda raw: raw[:10] + (10**9).to_bytes(4, "little") + raw[14:], "runs past the end", lambda raw: 10),
    (lambda raw: raw[:14] + b"{not json" + raw[23:], "header is not JSON", lambda raw: 14),
    (lambda raw: raw.replace(b'"protocol": "3.6.1"', b'"protocol": 3006001'), "protocol must be a version string",
     lambda raw: 14),
    (lambda raw: raw[:-4], "truncated", len),
    (lambda raw: raw[:-12] + bytes(12), "damaged", _records_start),
])
def test_damaged_traces_report_where(damage, message, where):
    damaged = damage(sample())
    with pytest.raises(TraceError, match=message) as info:
        decode_trace(damaged)
    assert info.value.offset == where(damaged)


def test_record_length_lies_are_caught():
    import zlib

    body = zlib.compress((0).to_bytes(1, "little") + (0).to_bytes(8, "little") + (1000).to_bytes(4, "little") + b"x")
    header = b'{"protocol": "7.0.0"}'
    raw = b"GGMLRPCT" + (1).to_bytes(2, "little") + len(header).to_bytes(4, "little") + header + body
    with pytest.raises(TraceError, match="announces 1000 bytes, 1 remain"):
        decode_trace(raw)


def test_show_cli_errors_without_traceback(tmp_path):
    broken = tmp_path / "broken.ggmlrpc"
    broken.write_bytes(sample()[:-5])
    out = subprocess.run([sys.executable, "-m", "ggml_rpc_spec.traces.cli", "show", str(broken)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert re.search(r"error: .*broken\.ggmlrpc: record stream is truncated .*at byte \d+", out.stderr)


def test_fixtures_are_small_and_cover_every_version_with_a_real_peer():
    assert sum(p.stat().st_size for p in (FIXTURE_DIR).rglob("*") if p.is_file()) < 10_000_000
    traces = [decode_trace(p.read_bytes()) for p in FIXTURES]
    assert {"2.0.0", "3.6.1", "4.0.2", "5.0.0", "7.0.0", "8.0.0"} <= {t.protocol for t in traces}
    assert any(t.kind == "link" for t in traces)  # a tensor-parallel session's server-to-server link


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: str(p.relative_to(FIXTURE_DIR)))
def test_show_decodes_every_fixture(path):
    trace = decode_trace(path.read_bytes())
    if trace.kind == "link":  # split exactly into the all-reduces its rank's client asked for
        link, rows = decode_link(trace)
        assert link.problems == [] and rows and len(rows) == len(trace.header["elements"])
        json.dumps(rows)
        return
    session, rows = decode(trace)
    assert session.error is None and rows
    assert decode_connection(trace.stream(CLIENT), trace.stream(SERVER)).profile.name == trace.protocol  # by HELLO
    json.dumps(rows)  # --json output is plain JSON


def test_show_cli_prints_tensors_and_graphs():
    llama = max((p for p in FIXTURES if "llama-7.0.0" in str(p)), key=lambda p: p.stat().st_size)
    out = subprocess.run([sys.executable, "-m", "ggml_rpc_spec.traces.cli", "show", "--graphs", str(llama)],
                         capture_output=True, text=True, check=True).stdout
    assert "GRAPH_COMPUTE" in out and "MUL_MAT" in out and "blk.0.attn_q.weight" in out and "Q8_0" in out
    assert re.search(r"SET_TENSOR .*@base\+0x", out)


def replay_fixtures(endpoint: str, proto: str) -> int:
    """Replay every fixture of version `proto` against `endpoint`, each green, a connection
    that set up a link with its folder's link trace (the replayer the other rank); how many."""
    replayed = 0
    traces = {path: decode_trace(path.read_bytes()) for path in FIXTURES}
    for path, trace in traces.items():
        if trace.protocol == proto and trace.kind != "link":
            link = link_of(trace, [t for p, t in traces.items() if p.parent == path.parent])
            results = replay(trace, endpoint, link=link)
            assert passed(results), (path, [r for r in results if r.verdict == "differs"])
            assert (link is None) == all(r.command != "(link)" for r in results)
            replayed += 1
    return replayed


@pytest.mark.parametrize("proto", ["2.0.0", "3.6.1", "4.0.2", "5.0.0", "7.0.0", "8.0.0"])
def test_fixtures_replay_green_against_the_reference_server(reference_server, proto):
    server = reference_server(proto, memory=1 << 30)
    assert replay_fixtures(server.endpoint, proto) >= 10  # every fixture of this version: llama, graphs, ...


@pytest.mark.upstream
@pytest.mark.parametrize("release", [*CI_RELEASES, "0.11739"])
def test_fixtures_replay_green_against_the_real_server(release, upstream_server):
    proto = require_peer(release).protocol
    server = upstream_server(release)
    assert replay_fixtures(server.endpoint, proto) >= 10


def start_proxy(upstream: str, folder: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "ggml_rpc_spec.relay.cli", "--listen", "127.0.0.1:0", "--upstream",
                             upstream, "--record", str(folder)], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stderr.readline()
    match = re.search(r"ggml-rpc-proxy: (\S+) ->", line)
    assert match, line
    return proc, match.group(1)


@pytest.mark.upstream
def test_proxy_records_and_a_trace_replays_against_another_server(tmp_path, reference_server, upstream_server):
    """Recorded through the proxy CLI against our server, replayed against the real one."""
    require_peer("0.3.36")
    ours = reference_server("7.0.0")
    proc, endpoint = start_proxy(ours.endpoint, tmp_path)
    try:
        with RPCClient(endpoint) as rpc:
            buf = rpc.alloc_buffer(4096)
            values = np.arange(32, dtype=np.float32)
            tensor = rpc.tensor_for(buf, 128, values, name="values")
            rpc.set_tensor(tensor, values)
            assert np.array_equal(rpc.read_array(tensor), values)
            rpc.buffer_clear(buf, 3)
            rpc.read_array(tensor)
    finally:
        proc.send_signal(signal.SIGINT)
        summary = proc.communicate(timeout=30)[1]
    assert proc.returncode == 0
    assert re.search(r"protocol 7\.0\.0: 7 requests \(GET_TENSOR 2, .*\); .* up, .* down in .* -> ", summary), summary
    traces = sorted(tmp_path.glob("*.ggmlrpc"))
    main = max(traces, key=lambda p: p.stat().st_size)
    trace = decode_trace(main.read_bytes())
    assert trace.header["recorder"] == "ggml-rpc-proxy" and trace.protocol == "7.0.0"
    results = replay(trace, upstream_server("0.3.36").endpoint)
    assert passed(results) and any(r.command == "GET_TENSOR" and r.verdict == "ok" for r in results)


def test_replay_compares_exactly_what_no_graph_computed(reference_server):
    """After a graph ran, the data it wrote may differ within a tolerance; data it did not
    write (an uploaded input) must still come back exactly."""
    from ggml_rpc_spec.client.graphs import GraphBuilder

    server = reference_server("7.0.0")
    chunks = []
    with RPCClient(server.endpoint, tap=lambda d, data: chunks.append((CLIENT if d == "sent" else SERVER,
                                                                        len(chunks) * 1e-3, bytes(data)))) as rpc:
        g = GraphBuilder(rpc.profile, rpc.alloc_buffer(1 << 12))
        x = g.input(np.linspace(1, 2, 64, dtype=np.float32), name="x")
        y = g.scale(x, 3.0, name="y")
        g.run(rpc, [x, y])
    trace = Trace({"protocol": "7.0.0"}, frame_records(chunks))
    replies = [r for r in trace.records if r.direction == SERVER and len(r.data) == 8 + 256]
    assert len(replies) == 2  # the reads of x, then y

    def replay_with(which: int) -> list:
        copy = Trace(trace.header, [Record(r.direction, r.time_us, r.data) for r in trace.records])
        target = next(r for r in copy.records if r.data == replies[which].data)
        values = np.frombuffer(target.data, np.float32, offset=8).copy()
        values[5] *= np.float32(1.001)  # 0.1% off in one value
        target.data = target.data[:8] + values.tobytes()
        return replay(copy, server.endpoint)

    assert any(r.verdict == "differs" and r.command == "GET_TENSOR" for r in replay_with(0))  # x: exact
    assert passed(replay_with(1))  # y: computed, within tolerance


@pytest.mark.parametrize("factor,verdict", [(1.01, "differs"), (1.0001, "within tolerance")])
def test_a_one_percent_drift_in_a_computed_tensor_fails_the_replay(reference_server, factor, verdict):
    """The real 7.0.0 session of the tiny llama, its logits (the last computed read) recorded
    `factor` times larger: a systematic 1% drift (NMSE 1e-4) differs, 0.01% is rounding."""
    path = next(p for p in FIXTURES if "llama-7.0.0" in str(p) and p.stat().st_size > 10000)
    trace = decode_trace(path.read_bytes())
    session = trace.decoded()
    last = max(i for i, e in enumerate(session.exchanges) if e.request.command is Command.GET_TENSOR)
    logits = session.exchanges[last].reply.data
    record = next(r for r in trace.records if r.direction == SERVER and r.data[8:] == bytes(logits))
    record.data = record.data[:8] + (np.frombuffer(logits, np.float32) * np.float32(factor)).tobytes()
    results = replay(trace, reference_server("7.0.0", memory=1 << 30).endpoint)
    judged = results[last]
    assert (judged.command, judged.verdict) == ("GET_TENSOR", verdict), judged
    assert "NMSE" in judged.detail


def test_replay_reports_a_server_that_died(tmp_path):
    """A trace whose last request killed a server: its replay ends by saying the server died."""
    from ggml_rpc_spec.server.service import ReferenceServer
    from ggml_rpc_spec.server.session import Session

    class Dies(Session):
        def graph_compute(self, request):
            server.request_stop()
            server.shutdown()  # the process "dies" while computing
            raise OSError("gone")

    traces = [decode_trace(p.read_bytes()) for p in FIXTURES if "graph-7.0.0" in str(p)]
    trace = next(t for t in traces if any(e.request.command.name == "GRAPH_COMPUTE" for e in t.decoded().exchanges))
    server = ReferenceServer(profile=profile_for("7.0.0"), memory=1 << 26)
    server.session_class = Dies
    server.start()
    results = replay(trace, server.endpoint, timeout=5)
    assert results[-1].command == "(server)" and results[-1].verdict == "differs" and "died" in results[-1].detail


def test_replay_reports_a_server_that_answers_differently(reference_server, tmp_path):
    """Replaying a trace of one server against a server with different data fails."""
    path = next(p for p in FIXTURES if "tensors-7.0.0" in str(p) and p.stat().st_size > 1000)
    trace = decode_trace(path.read_bytes())
    for record in trace.records:  # tamper with the recorded GET_TENSOR replies
        if record.direction == SERVER and len(record.data) > 64:
            record.data = record.data[:8] + bytes(len(record.data) - 8)
    server = reference_server("7.0.0")
    results = replay(trace, server.endpoint)
    assert not passed(results) and any(r.verdict == "differs" and r.command == "GET_TENSOR" for r in results)


# -- link traces (a server-to-server link of 8.0.0, SPEC §10) ---------------------------------------


def link_trace(partials: list[tuple[np.ndarray, np.ndarray]], *, elements="counts", caps: bytes = bytes(24),
               extra: bytes = b"") -> Trace:
    """A link trace of these all-reduces ((rank 0's, rank 1's) partials), framed as recorded."""
    from ggml_rpc_spec.protocol.comm import encode_partial
    from ggml_rpc_spec.protocol.trace import link_records

    counts = [a.size for a, _ in partials]
    chunks = [(CLIENT, 0.0, caps), (SERVER, 0.001, bytes(24))]
    for i, (rank0, rank1) in enumerate(partials):
        chunks += [(SERVER, 0.01 * (i + 1), encode_partial(rank0).tobytes()),
                   (CLIENT, 0.01 * (i + 1) + 0.005, encode_partial(rank1).tobytes())]
    chunks.append((CLIENT, 1.0, extra))
    header = {"kind": "link", "protocol": "8.0.0", "peer": "127.0.0.1:19603", "client": "127.0.0.1:40000"}
    if elements == "counts":
        header.update(elements=counts, tensors=[f"attn_out-{i}" for i in range(len(counts))])
    return decode_trace(encode_trace(Trace(header, link_records(chunks, header.get("elements")))))


SMALL = (np.linspace(-1, 1, 64, dtype=np.float32), np.linspace(2, 3, 64, dtype=np.float32))
LARGE = (np.full(32768, 1.5, dtype=np.float32), np.full(32768, 0.25, dtype=np.float32))


def test_a_trace_without_a_kind_is_a_client_connection_and_an_unknown_kind_is_refused():
    assert decode_trace(sample()).kind == "connection"
    raw = encode_trace(Trace({"protocol": "8.0.0", "kind": "telepathy"}, []))
    with pytest.raises(TraceError, match="kind is 'telepathy'"):
        decode_trace(raw)
    with pytest.raises(TraceError, match="elements must be a list"):
        decode_trace(encode_trace(Trace({"kind": "link", "elements": [64, -1]}, [])))


def test_a_link_trace_splits_into_the_handshake_and_each_all_reduce():
    """F32 below 32768 elements, BF16 from there; each partial is one record, rank 0's first."""
    trace = link_trace([SMALL, LARGE])
    assert [len(r.data) for r in trace.records] == [24, 24, 256, 256, 65536, 65536]
    assert [r.direction for r in trace.records[2:]] == [SERVER, CLIENT, SERVER, CLIENT]  # rank 0 (1) first
    link = trace.link()
    assert link.problems == [] and link.unsplit == {CLIENT: 0, SERVER: 0}
    small, large = link.exchanges
    assert (small.elements, small.bf16, small.wire_size) == (64, False, 256)
    assert (large.elements, large.bf16, large.wire_size) == (32768, True, 65536)
    assert small.values(SERVER) == SMALL[0][:4].tolist() and large.values(CLIENT) == [0.25] * 4


@pytest.mark.parametrize("change,problem", [
    (dict(elements=None), "names no all-reduce sizes"),
    (dict(extra=b"\1" * 10), "rank 1 sent 10 bytes more than the 2 all-reduces"),
    (dict(caps=b"\1" + bytes(23)), "rank 1's conn_caps are not all zero"),
])
def test_a_link_trace_says_what_it_cannot_split(change, problem):
    trace = link_trace([SMALL, SMALL], **change)
    link = trace.link()
    assert any(problem in p for p in link.problems), link.problems
    if change.get("elements", "counts") is None:
        assert link.exchanges == [] and link.unsplit == {CLIENT: 512, SERVER: 512}


def test_a_link_trace_with_sizes_that_are_not_its_own_stops_where_they_fail():
    trace = link_trace([SMALL, SMALL])
    trace.header["elements"] = [64, 100]
    link = trace.link()
    assert len(link.exchanges) == 1 and link.unsplit == {CLIENT: 256, SERVER: 256}
    assert "all-reduce #2 of 100 elements needs 400 bytes each way; rank 0 has 256 left" in link.problems[0]


def test_show_decodes_a_link_trace(tmp_path):
    path = tmp_path / "link.ggmlrpc"
    path.write_bytes(encode_trace(link_trace([SMALL, LARGE])))
    cli = [sys.executable, "-m", "ggml_rpc_spec.traces.cli", "show"]
    text = subprocess.run(cli + [str(path)], capture_output=True, text=True, check=True).stdout
    assert "server-to-server link" in text and "all zero (plain TCP)" in text
    assert re.search(r"#1 .*'attn_out-0' 64 elements, F32, 256 bytes each way", text)
    assert re.search(r"#2 .*'attn_out-1' 32768 elements, BF16, 65536 bytes each way", text)
    assert re.search(r"rank 1 .*\[0\.25, 0\.25, 0\.25, 0\.25, \.\.\.\]", text)
    shown = json.loads(subprocess.run(cli + ["--json", str(path)], capture_output=True, text=True, check=True).stdout)
    assert shown["kind"] == "link" and shown["problems"] == [] and shown["handshake"]["rank0"] == "00" * 24
    assert [(e["elements"], e["format"], e["tensor"]) for e in shown["exchanges"]] == [
        (64, "F32", "attn_out-0"), (32768, "BF16", "attn_out-1")]
    assert shown["exchanges"][1]["rank0"]["values"] == [1.5] * 4


TENSOR_SPLIT = FIXTURE_DIR / "llama-tensor-8.0.0"


def test_a_connection_that_set_up_a_link_replays_only_with_the_link(reference_server):
    """Without its link trace there is no other rank to send the partials: refused before a
    byte goes out.  With it (the CLI finds it among the files) the replayer is the other
    rank, and the target's partials are judged against the recorded ones."""
    from ggml_rpc_spec.protocol.errors import ProtocolError

    server = reference_server("8.0.0", memory=1 << 30)
    ranks = [t for t in (decode_trace(p.read_bytes()) for p in sorted(TENSOR_SPLIT.glob("conn-*.ggmlrpc")))
             if any(e.request.command.name == "COMM_INIT" for e in t.decoded().exchanges)]
    assert len(ranks) == 2
    with pytest.raises(ProtocolError, match="replay it with its link trace"):
        replay(ranks[0], server.endpoint)
    with pytest.raises(ProtocolError, match="a link trace is replayed with the client connection"):
        replay(decode_trace((TENSOR_SPLIT / "link-001.ggmlrpc").read_bytes()), server.endpoint)
    out = subprocess.run([sys.executable, "-m", "ggml_rpc_spec.traces.cli", "replay", str(TENSOR_SPLIT), "--target",
                          server.endpoint, "-v"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
    assert len(re.findall(r"\(link\) +ok: 10 partials of rank [01] as recorded", out.stdout)) == 2, out.stdout[-3000:]
    assert "link-001.ggmlrpc" not in out.stdout


def test_replay_compares_the_data_of_2d_reads(reference_server):
    """GET_TENSOR_2D's reply is tensor data like GET_TENSOR's: a recording whose copies
    differ from what the server holds fails the replay."""
    server = reference_server("8.0.0")
    chunks = []
    with RPCClient(server.endpoint, tap=lambda d, data: chunks.append((CLIENT if d == "sent" else SERVER,
                                                                        len(chunks) * 1e-3, bytes(data)))) as rpc:
        buf = rpc.alloc_buffer(4096)
        values = np.arange(64, dtype=np.float32)
        tensor = rpc.tensor_for(buf, 0, values, name="rows")
        rpc.set_tensor_2d(tensor, values[:32].tobytes(), n_copies=4, stride=64)
        rpc.get_tensor_2d(tensor, size=32, n_copies=4, stride=64)
    trace = Trace({"protocol": "8.0.0"}, frame_records(chunks))
    assert passed(replay(trace, server.endpoint))
    read = next(r for r in trace.records if r.direction == SERVER and len(r.data) == 8 + 128)
    read.data = read.data[:-1] + b"\xff"
    results = replay(trace, server.endpoint)
    assert any(r.verdict == "differs" and r.command == "GET_TENSOR_2D" for r in results)
