"""Packet captures: import reassembles what a capture holds (and says what it lacks), export
writes a trace back, and the generated Wireshark dissector decodes real sessions.  The real
tools (tcpdump, tshark) and the real llama.cpp client judge the last part."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from conftest import CI_RELEASES, require_peer, require_tool
from ggml_rpc_spec.protocol.trace import decode_trace
from ggml_rpc_spec.traces.capture import export_capture, import_capture, imported_traces
from ggml_rpc_spec.traces.tcpdump import Tcpdump
from ggml_rpc_spec.traces.replay import passed, replay

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_DIR = ROOT / "src" / "ggml_rpc_spec" / "fixtures"  # shipped as package data
FIXTURES = sorted(FIXTURE_DIR.glob("*/*.ggmlrpc"))
DISSECTOR = ROOT / "wireshark" / "ggml_rpc.lua"


def frames(trace) -> list[tuple[int, bytes]]:
    return [(r.direction, bytes(r.data)) for r in trace.records]


def per_direction(trace) -> tuple[list[bytes], list[bytes]]:
    """Each direction's frames in order (how the two interleave depends on whose clock)."""
    return tuple([bytes(r.data) for r in trace.records if r.direction == d] for d in (0, 1))


def rewrite(pcap: Path, out: Path, change, snaplen: int = 262144) -> None:
    """A capture with its packet list changed by `change(list) -> list`."""
    with open(pcap, "rb") as handle:
        packets = list(dpkt.pcap.Reader(handle))
    with open(out, "wb") as handle:
        writer = dpkt.pcap.Writer(handle, snaplen=snaplen, linktype=dpkt.pcap.DLT_EN10MB)
        for when, frame in change(packets):
            writer.writepkt(frame, ts=when)


def imported(path: Path, tmp_path: Path, port: int = 50052):
    results = import_capture(path, [port], tmp_path / "traces", log=lambda *a: None)
    assert len(results) == 1
    return results[0]


def test_the_dissector_is_generated_from_the_protocol_package():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "generate_dissector.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("fixture", [FIXTURES[0], FIXTURES[-1]], ids=lambda p: p.parent.name)
def test_export_then_import_gives_the_trace_back(fixture, tmp_path):
    trace = decode_trace(fixture.read_bytes())
    export_capture([trace], tmp_path / "one.pcap")
    back = imported(tmp_path / "one.pcap", tmp_path)
    assert back.notes == [] and frames(back.trace) == frames(trace)
    assert back.trace.header["protocol"] == trace.header["protocol"]


def test_out_of_order_and_retransmitted_segments_are_reassembled(tmp_path):
    trace = decode_trace(FIXTURES[-1].read_bytes())
    export_capture([trace], tmp_path / "one.pcap")

    def shuffle(packets):
        rng = random.Random(7)
        handshake, data = packets[:3], packets[3:]
        doubled = data + rng.sample(data, len(data) // 3)  # retransmissions
        rng.shuffle(doubled)
        return handshake + doubled

    rewrite(tmp_path / "one.pcap", tmp_path / "shuffled.pcap", shuffle)
    back = imported(tmp_path / "shuffled.pcap", tmp_path)
    assert frames(back.trace) == frames(trace)


def test_a_capture_that_starts_mid_connection_is_cut_to_its_hello(tmp_path):
    trace = decode_trace(FIXTURES[-1].read_bytes())
    export_capture([trace], tmp_path / "one.pcap")
    rewrite(tmp_path / "one.pcap", tmp_path / "late.pcap", lambda packets: packets[3:])  # no handshake
    back = imported(tmp_path / "late.pcap", tmp_path)
    assert frames(back.trace) == frames(trace) and "mid-connection" in back.notes[0]
    rewrite(tmp_path / "one.pcap", tmp_path / "later.pcap", lambda packets: packets[5:])  # nor the HELLO
    assert imported(tmp_path / "later.pcap", tmp_path).trace is None


def test_bytes_the_capture_did_not_keep_are_named_by_frame(tmp_path):
    trace = decode_trace((FIXTURE_DIR / "llama-7.0.0" / "conn-016.ggmlrpc").read_bytes())  # 22 KB SET_TENSORs
    export_capture([trace], tmp_path / "one.pcap")
    rewrite(tmp_path / "one.pcap", tmp_path / "short.pcap", lambda packets: [
        (when, frame[:2000]) for when, frame in packets], snaplen=2000)
    back = imported(tmp_path / "short.pcap", tmp_path)
    assert any("not captured" in note and "SET_TENSOR" in note for note in back.notes), back.notes
    assert [d for d, _ in frames(back.trace)] == [d for d, _ in frames(trace)]  # every frame still framed


def test_import_errors_are_one_line(tmp_path):
    (tmp_path / "junk.pcap").write_bytes(b"not a capture at all")
    result = subprocess.run([sys.executable, "-m", "ggml_rpc_spec.traces.cli", "import", str(tmp_path / "junk.pcap"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "junk.pcap" in result.stderr


# -- a tensor split: client connections and the server-to-server link ------------------------------------

TENSOR_SPLIT = FIXTURE_DIR / "llama-tensor-8.0.0"


def split_fixtures() -> tuple[list, object]:
    """The tensor-split fixture's client connections and its link trace."""
    traces = [decode_trace(p.read_bytes()) for p in sorted(TENSOR_SPLIT.glob("*.ggmlrpc"))]
    return [t for t in traces if t.kind != "link"], next(t for t in traces if t.kind == "link")


def server_ports(traces) -> list[int]:
    return sorted({int(t.header["peer"].rsplit(":", 1)[1]) for t in traces})


def test_a_tensor_split_captured_imports_its_connections_and_its_link(tmp_path):
    """Exported as one capture, the session imports again with the servers found by their
    HELLOs, or with one server's port given: the link is the connection to the port rank
    0's COMM_INIT named, split by the sizes of its COMM_ALLREDUCE requests."""
    connections, link = split_fixtures()
    export_capture(connections + [link], tmp_path / "split.pcap")
    for ports in (None, server_ports(connections)[:1]):
        found = imported_traces(tmp_path / "split.pcap", ports)
        assert all(r.notes == [] for r in found)
        links = [r.trace for r in found if r.trace.kind == "link"]
        assert len(links) == 1 and links[0].header["elements"] == link.header["elements"]
        assert per_direction(links[0]) == per_direction(link) and links[0].link().problems == []
        clients = [r.trace for r in found if r.trace.kind != "link"]
        recorded = [per_direction(t) for t in connections]
        assert all(per_direction(t) in recorded for t in clients)
    assert len(clients) < len(connections)  # one server's connections: half of them


def test_a_link_captured_from_its_middle_gives_no_trace(tmp_path):
    """Nothing on a link says where a partial begins: without its start (its SYN, handshake
    and first bytes) the link cannot be placed, and the import says so."""
    connections, link = split_fixtures()
    export_capture(connections + [link], tmp_path / "split.pcap")
    port = int(link.header["peer"].rsplit(":", 1)[1])

    def mid_link(packets):
        segments = (dpkt.ethernet.Ethernet(frame).data.data for _, frame in packets)
        on_link = [i for i, tcp in enumerate(segments) if port in (tcp.sport, tcp.dport)]
        dropped = set(on_link[:4])  # SYN, SYN-ACK, ACK and rank 1's handshake
        return [packet for i, packet in enumerate(packets) if i not in dropped]

    rewrite(tmp_path / "split.pcap", tmp_path / "late.pcap", mid_link)
    (late,) = [r for r in imported_traces(tmp_path / "late.pcap", None) if r.connection.server[1] == port]
    assert late.trace is None and "the capture starts mid-link" in late.notes[0]


def test_a_link_without_its_client_connections_stays_unsplit(tmp_path):
    _, link = split_fixtures()
    export_capture([link], tmp_path / "link.pcap")
    (result,) = imported_traces(tmp_path / "link.pcap", None)  # recognised by its shape: handshake, no HELLO
    assert result.trace.kind == "link" and "elements" not in result.trace.header
    assert "the all-reduce sizes are unknown, the payload cannot be split" in result.notes[0]
    decoded = result.trace.link()
    assert decoded.exchanges == [] and decoded.handshake == link.link().handshake
    assert decoded.unsplit == {d: len(link.stream(d)) - 24 for d in (0, 1)}


def test_the_dissector_decodes_a_tensor_split_and_its_link(tmp_path):
    """Both servers' ports set, the link on the default one (rank 0's port + 1000)."""
    connections, link = split_fixtures()
    export_capture(connections + [link], tmp_path / "split.pcap")
    assert_dissected(tmp_path / "split.pcap", server_ports(connections), connections, link)


# -- the real tools ------------------------------------------------------------------------------------


def tshark(tmp_path: Path, pcap: Path, ports: list[int], *options: str) -> str:
    """tshark's output for `pcap` with the generated dissector on the RPC `ports`."""
    result = subprocess.run([require_tool("tshark"), "-X", f"lua_script:{DISSECTOR}", "-o",
                             f"ggml_rpc.port:{','.join(map(str, ports))}", "-r", str(pcap), *options],
                            capture_output=True, text=True, env=dict(os.environ, HOME=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_dissected(pcap: Path, ports: list[int], connections: list, link=None) -> None:
    """Every frame of the client `connections` decoded as a request with its command or a
    reply to one, every all-reduce of the `link` in both directions, and no expert info of
    the dissector (no rule broken, no size unknown)."""
    fields = tshark(pcap.parent, pcap, ports, "-T", "fields", "-e", "ggml_rpc.command", "-e", "ggml_rpc.reply_to",
                    "-E", "occurrence=a", "-Y", "ggml_rpc")
    seen = [value for line in fields.splitlines() for column in line.split("\t") for value in column.split(",")
            if value]
    assert len(seen) == sum(len(trace.records) for trace in connections)
    if link is not None:
        pieces = tshark(pcap.parent, pcap, ports, "-T", "fields", "-e", "ggml_rpc_link.direction", "-e",
                        "ggml_rpc_link.allreduce", "-E", "occurrence=a", "-Y", "ggml_rpc_link")
        shown = {tuple(line.split("\t")) for line in pieces.splitlines()}
        count = len(link.header["elements"])
        assert {(d, str(i)) for d in ("rank 0 -> rank 1", "rank 1 -> rank 0") for i in range(1, count + 1)} <= shown
    experts = tshark(pcap.parent, pcap, ports, "-q", "-z", "expert,note")
    assert "GGML RPC" not in experts and "Malformed" not in experts, experts



@pytest.mark.upstream
@pytest.mark.parametrize("release", CI_RELEASES)
def test_a_real_session_captured_imports_as_the_proxy_recorded_it(release, tmp_path, tiny_models, upstream_server,
                                                                   reference_server):
    """The real client runs the tiny model through the recording proxy to the real server
    while tcpdump captures the proxy's side: the imported capture equals the proxy's traces,
    replays green against the reference server, and tshark with the generated dissector
    decodes every frame with its command and no error."""
    from ggml_rpc_spec.client.rpc import parse_endpoint
    from ggml_rpc_spec.relay.proxy import RecordingProxy
    from ggml_rpc_spec.relay.recording import to_trace
    from ggml_rpc_spec.upstream_peers.llama_run import run_llama

    require_tool("tshark")
    require_tool("tcpdump")
    peer = require_peer(release)
    server = upstream_server(release)
    recorded = []
    proxy = RecordingProxy(parse_endpoint(server.endpoint), on_close=recorded.append).start()
    pcap = tmp_path / "session.pcap"

    def imports_as_recorded() -> bool:
        nonlocal results, theirs
        results = imported_traces(pcap, [server.port])
        theirs = sorted(per_direction(r.trace) for r in results if r.trace is not None)
        return theirs == ours

    results, theirs = [], []
    try:
        with Tcpdump(pcap, [server.port]) as capture:
            run_llama(peer, tiny_models["2"], rpc=proxy.endpoint, text="The quick brown fox", generate=2)
            proxy.shutdown()
            ours = sorted(per_direction(to_trace(r, server.endpoint)) for r in recorded)
            capture.stop(until=imports_as_recorded)
    finally:
        proxy.shutdown()
    assert len(results) == len(recorded) > 3
    assert theirs == ours
    assert all(r.notes == [] for r in results)
    target = reference_server(peer.protocol, memory=1 << 30)
    for result in results:  # and the imported traces replay green against the reference server
        replayed = replay(result.trace, target.endpoint)
        assert passed(replayed), [r for r in replayed if r.verdict == "differs"]

    assert_dissected(tmp_path / "session.pcap", [server.port], [r.trace for r in results])


@pytest.mark.upstream
def test_a_real_tensor_split_captured_imports_replays_and_dissects(tmp_path, tiny_models, reference_server):
    """The real 8.0.0 client splits the tiny model by tensors across two real 8.0.0 servers
    while tcpdump captures both servers' ports and the link's: the import finds the link and
    splits it exactly, each rank's connection replays green against the reference server
    with the replayer as the other rank, and tshark decodes all of it, the link on its
    default port."""
    from ggml_rpc_spec.protocol.comm import PORT_OFFSET
    from ggml_rpc_spec.traces.capture import holds_closed_link
    from ggml_rpc_spec.traces.replay import link_of
    from ggml_rpc_spec.upstream_peers.llama_run import run_llama
    from ggml_rpc_spec.upstream_peers.server import UpstreamServer, comm_safe_port

    require_tool("tcpdump")
    peer = require_peer("0.11739")
    pcap = tmp_path / "split.pcap"
    with UpstreamServer(peer, port=comm_safe_port()) as rank0, UpstreamServer(peer) as rank1:
        ports = [rank0.port, rank1.port]
        with Tcpdump(pcap, ports + [rank0.port + PORT_OFFSET]) as capture:
            run_llama(peer, tiny_models["2"], rpc=f"{rank0.endpoint},{rank1.endpoint}", split_mode="tensor",
                      flash_attn_type=1, text="The quick brown fox", generate=2)
            assert capture.stop(until=lambda: holds_closed_link(pcap))
    found = [r for r in imported_traces(pcap, None) if r.trace is not None]  # a refused try of rank 1 has none
    assert all(r.notes == [] for r in found), [r.notes for r in found]
    traces = [r.trace for r in found]
    (link,) = [t for t in traces if t.kind == "link"]
    decoded = link.link()
    assert decoded.problems == [] and len(decoded.exchanges) == len(link.header["elements"]) > 0
    target = reference_server("8.0.0", memory=1 << 30)
    ranks = [t for t in traces if link_of(t, [link]) is not None]
    assert len(ranks) == 2
    for trace in ranks:
        replayed = replay(trace, target.endpoint, link=link)
        assert passed(replayed), [r for r in replayed if r.verdict == "differs"]
    assert_dissected(pcap, ports, [t for t in traces if t.kind != "link"], link)
