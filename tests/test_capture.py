"""Packet captures: import reassembles what a capture holds (and says what it lacks), export
writes a trace back, and the generated Wireshark dissector decodes real sessions.  The real
tools (tcpdump, tshark) and the real llama.cpp client judge the last part."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import dpkt
import pytest

from conftest import CI_RELEASES, require_peer, require_tool
from ggml_rpc_spec.protocol.trace import decode_trace
from ggml_rpc_spec.traces.capture import export_capture, import_capture
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


# -- the real tools ------------------------------------------------------------------------------------


class Capture:
    """tcpdump on the loopback interface, writing `path`, started when it says it listens."""

    def __init__(self, path: Path, port: int) -> None:
        self.process = subprocess.Popen([require_tool("tcpdump"), "-i", "lo", "-s", "0", "-U", "-w", str(path),
                                         f"tcp port {port}"], stderr=subprocess.PIPE, text=True)
        for line in self.process.stderr:
            if "listening on" in line:
                return
        raise RuntimeError("tcpdump did not start: " + self.process.stderr.read())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)


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

    tshark = require_tool("tshark")
    peer = require_peer(release)
    server = upstream_server(release)
    recorded = []
    proxy = RecordingProxy(parse_endpoint(server.endpoint), on_close=recorded.append).start()
    capture = Capture(tmp_path / "session.pcap", server.port)
    try:
        run_llama(peer, tiny_models["2"], rpc=proxy.endpoint, text="The quick brown fox", generate=2)
        proxy.shutdown()
        ours = sorted(per_direction(to_trace(r, server.endpoint)) for r in recorded)
        # tcpdump writes each packet as it reads it, but on a busy machine it reads late:
        # wait (bounded) until the capture holds the whole session before stopping it
        deadline = time.monotonic() + 60
        while True:
            results = import_capture(tmp_path / "session.pcap", [server.port], tmp_path / "traces",
                                     log=lambda *a: None)
            theirs = sorted(per_direction(r.trace) for r in results if r.trace is not None)
            if theirs == ours or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # polling a file another process is writing, not a synchronisation by time
    finally:
        proxy.shutdown()
        capture.stop()
    assert len(results) == len(recorded) > 3
    assert theirs == ours
    assert all(r.notes == [] for r in results)
    target = reference_server(peer.protocol, memory=1 << 30)
    for result in results:  # and the imported traces replay green against the reference server
        replayed = replay(result.trace, target.endpoint)
        assert passed(replayed), [r for r in replayed if r.verdict == "differs"]

    fields = subprocess.run([tshark, "-X", f"lua_script:{DISSECTOR}", "-o", f"ggml_rpc.port:{server.port}", "-r",
                             str(tmp_path / "session.pcap"), "-T", "fields", "-e", "ggml_rpc.command",
                             "-e", "ggml_rpc.reply_to", "-E", "occurrence=a", "-Y", "ggml_rpc"],
                            capture_output=True, text=True, env=dict(os.environ, HOME=str(tmp_path)))
    assert fields.returncode == 0, fields.stderr
    seen = [value for line in fields.stdout.splitlines() for column in line.split("\t") for value in column.split(",")
            if value]
    expected = sum(len([r for r in result.trace.records]) for result in results)
    assert len(seen) == expected  # every frame decoded, as a request with its command or a reply to one
    experts = subprocess.run([tshark, "-X", f"lua_script:{DISSECTOR}", "-o", f"ggml_rpc.port:{server.port}", "-r",
                              str(tmp_path / "session.pcap"), "-q", "-z", "expert,note"],
                             capture_output=True, text=True, env=dict(os.environ, HOME=str(tmp_path)))
    assert "GGML RPC" not in experts.stdout and "Malformed" not in experts.stdout, experts.stdout
