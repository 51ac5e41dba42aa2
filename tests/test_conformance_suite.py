"""The conformance suite itself: it passes against correct servers (ours in every version,
the real upstream ones with their documented deviations) and catches broken ones."""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from conftest import CI_RELEASES, require_peer, require_tool
from ggml_rpc_spec.conformance.cases.diff_fuzz import Coverage, differential_run
from ggml_rpc_spec.conformance.core import Context
from ggml_rpc_spec.protocol import PROFILES, Command, Graph, profile_for
from ggml_rpc_spec.protocol.columns import GRAPH_CACHE_LIMIT
from ggml_rpc_spec.protocol.comm import decode_partial, partial_first, reduce, wire_size
from ggml_rpc_spec.conformance.deviations import deviations_of, rule_deviations
from ggml_rpc_spec.protocol.ops import CATALOGUE
from ggml_rpc_spec.protocol.rules import BY_KEY, as_error
from ggml_rpc_spec.netio import send_all, take_turn
from ggml_rpc_spec.server.graphs import GraphStore
from ggml_rpc_spec.server.link import Link
from ggml_rpc_spec.server.service import ReferenceServer
from ggml_rpc_spec.server.session import Session
from ggml_rpc_spec.upstream_peers.server import _listening_ports

ROOT = Path(__file__).resolve().parent.parent


def run_suite(tmp_path: Path, *args: str) -> dict:
    """Run the installed suite (`pytest --pyargs ggml_rpc_spec.conformance ARGS`) in a child
    process, from a folder outside the checkout; outcome per case id and the output."""
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "ggml_rpc_spec.conformance", "-q",
                           "-p", "no:cacheprovider", f"--junitxml={junit}", f"--trace-dir={tmp_path / 'traces'}",
                           *args], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    outcomes = {}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = case.get("name")
            case_id = name[name.index("[") + 1:-1] if "[" in name else name
            kinds = {child.tag for child in case}
            outcomes[case_id] = ("failed" if "failure" in kinds or "error" in kinds
                                 else "skipped" if "skipped" in kinds else "passed")
    return {"code": proc.returncode, "outcomes": outcomes, "output": proc.stdout + proc.stderr}


def failing(result: dict) -> list[str]:
    return sorted(case for case, outcome in result["outcomes"].items() if outcome == "failed")


def test_an_unreachable_target_is_a_usage_error(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        result = run_suite(tmp_path, "--target", f"127.0.0.1:{port}")
    assert result["code"] == 4, result["output"][-2000:]  # pytest's usage-error status
    assert f"cannot connect to the target 127.0.0.1:{port}" in result["output"]
    assert "INTERNALERROR" not in result["output"]


@pytest.mark.parametrize("proto", [p.name for p in PROFILES])
def test_reference_server_passes_every_case(tmp_path, proto):
    result = run_suite(tmp_path, "--proto", proto, "--level", "should", "--destructive", "--fuzz-examples", "5")
    assert result["code"] == 0 and not failing(result), result["output"][-3000:]
    assert sum(o == "passed" for o in result["outcomes"].values()) > 150
    assert "conformance summary per SPEC.md section" in result["output"]
    assert f"(reference server started by the suite): reports protocol {proto}, spoken {proto}\n" in result["output"]


@pytest.mark.upstream
@pytest.mark.parametrize("release", CI_RELEASES)
def test_real_upstream_passes_but_for_documented_deviations(tmp_path, release, upstream_server):
    require_peer(release)
    server = upstream_server(release)
    result = run_suite(tmp_path, "--target", server.endpoint, "--level", "should", "--fuzz-examples", "10",
                       "--upstream")
    assert result["code"] == 0 and not failing(result), result["output"][-3000:]
    output = result["output"]  # the deviations are reported, not hidden, and none is out of date
    assert f"known deviations of upstream's {server.peer.protocol} server forgiven (--upstream)" in output
    assert re.search(r"\b\d+ xfailed\b", output) and not re.search(r"\b\d+ xpassed\b", output), output[-3000:]


@contextlib.contextmanager
def restartable_upstream(release: str):
    """A real server on a free port, and the shell command that starts it again after a case
    killed it: (endpoint, command).  Every server it started is stopped afterwards."""
    peer = require_peer(release)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = f"{sys.executable} -m ggml_rpc_spec.upstream_peers.server --peer {peer.release} --port {port}"
    server = subprocess.Popen(command.split(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while port not in _listening_ports(server.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the LISTEN socket
        yield f"127.0.0.1:{port}", command
    finally:
        server.kill()
        subprocess.run(["pkill", "-f", f"upstream_peers.server --peer {peer.release} --port {port}"])


@pytest.mark.upstream
@pytest.mark.parametrize("release", CI_RELEASES)
def test_destructive_run_against_upstream_restarts_and_lists_killers(tmp_path, release):
    with restartable_upstream(release) as (endpoint, command):
        result = run_suite(tmp_path, "--target", endpoint, "--destructive", "--restart-cmd", command,
                           "--fuzz-examples", "0", "--upstream")
    assert result["code"] == 0 and not failing(result), result["output"][-3000:]
    assert "cases that killed the server:" in result["output"]
    assert "[llama.cpp #25299]" in result["output"].split("cases that killed the server:")[1]


# -- deliberately faulty servers ----------------------------------------------------------------------


class WrongVersion(Session):
    def hello(self, request):
        return {**super().hello(request), "minor": 9}  # 7.9.0: no such version


class NoBoundsCheck(Session):
    """Reads past the buffer are answered (zero-filled) instead of refused."""

    def check(self, command, body, graph=None):
        if command is not Command.GET_TENSOR:
            super().check(command, body, graph)

    def get_tensor(self, request):
        buf = self.buffers.get(request.body.tensor.buffer)
        start = request.body.tensor.data + request.body.offset - buf.base
        inside = bytes(buf.memory[max(0, start):start + request.body.size])
        return inside.ljust(request.body.size, b"\0")


class EchoesCaps(Session):
    """Answers the client's conn_caps back (an RDMA client would start a handshake on TCP)."""

    def hello(self, request):
        reply = super().hello(request)
        if "conn_caps" in request.body:
            reply["conn_caps"] = bytes(request.body.conn_caps)
        return reply


class KeepsGraphAfterFree(Session):
    """FREE_BUFFER leaves the stored graph, so GRAPH_RECOMPUTE runs on freed memory."""

    def free_buffer(self, request):
        kept = {device: dict(slot.kept) for device, slot in self.graphs.devices.items()}
        result = super().free_buffer(request)
        for device, graphs in kept.items():
            self.graphs.devices[device].kept.update(graphs)
        return result


class NoBounds2D(Session):
    """GET_TENSOR_2D copies outside the tensor or its buffer are answered (zero-filled past the
    buffer) instead of refused."""

    IGNORED = ("tensor_2d.region", "tensor_2d.in-tensor")

    def check(self, command, body, graph=None):
        for rule, violation in self._checks[command].violations(self, body, graph):
            if command is not Command.GET_TENSOR_2D or rule.key not in self.IGNORED:
                raise as_error(command, (rule, violation))

    def get_tensor_2d(self, request):
        body = request.body
        buf = self.buffers[body.tensor.buffer]
        starts = (body.tensor.data + body.offset + i * body.stride - buf.base for i in range(body.n_copies))
        return b"".join(bytes(buf.memory[start:start + body.size]).ljust(body.size, b"\0") for start in starts)


class EarlyGraphStore(GraphStore):
    def keep(self, device, uid, stored):
        slot = self._device(device)
        if uid and len(slot.kept) >= GRAPH_CACHE_LIMIT - 24:
            slot.kept.clear()
        super().keep(device, uid, stored)


class ForgetsGraphsEarly(Session):
    """Clears a device's graph cache at 1000 graphs, before the 1024 its clients count on."""

    def use_profile(self, profile):
        super().use_profile(profile)
        self.graphs = EarlyGraphStore(profile.graphs)


class F32Link(Link):
    def all_reduce(self, values):
        ours = np.ascontiguousarray(values, np.float32).view(np.uint8)  # F32 at any size: BF16 is due from 32768
        theirs = take_turn(self.sock, partial_first(self.rank), ours, wire_size(values.size))
        return reduce(values, decode_partial(theirs, values.size))


class LinkSendsF32(Session):
    """Its link sends partials as F32 however many elements they have."""

    def comm_init(self, request):
        reply = super().comm_init(request)
        link = self.links.get(request.body.device)
        if link is not None:
            self.links[request.body.device] = F32Link(link.rank, link.sock, link.peer)
        return reply


class CorruptData(Session):
    def get_tensor(self, request):
        data = bytearray(super().get_tensor(request))
        if data:
            data[0] ^= 0x01
        return memoryview(data)


class WrongReplySize(ReferenceServer):
    def send_reply(self, sock, spec, result):
        if spec.command is Command.GET_ALIGNMENT:
            send_all(sock, [(4).to_bytes(8, "little"), (32).to_bytes(4, "little")])  # 4 bytes instead of 8
        else:
            super().send_reply(sock, spec, result)


class ReplyToOneWay(ReferenceServer):
    def _converse(self, sock, session):
        original = session.handle

        def handle(request):
            result = original(request)
            if request.command is Command.SET_TENSOR:
                send_all(sock, [bytes(8)])  # an empty reply, as if SET_TENSOR had one
            return result

        session.handle = handle
        super()._converse(sock, session)


def serve_faulty(server_class=ReferenceServer, session_class=Session, proto: str = "7.0.0") -> ReferenceServer:
    server_class = type(f"Faulty{server_class.__name__}", (server_class,), {"session_class": session_class})
    return server_class(profile=profile_for(proto), memory=1 << 30).start()


@pytest.mark.parametrize("server_class,session_class,section,proto", [
    (ReferenceServer, WrongVersion, "§3.2", "7.0.0"),
    (ReferenceServer, NoBoundsCheck, "§7.2", "7.0.0"),
    (ReferenceServer, CorruptData, "§7.2", "7.0.0"),
    (WrongReplySize, Session, "§5.2", "7.0.0"),
    (ReplyToOneWay, Session, "§7.1", "7.0.0"),
    (ReferenceServer, EchoesCaps, "§3.1", "7.0.0"),
    (ReferenceServer, KeepsGraphAfterFree, "§8.3", "7.0.0"),
    (ReferenceServer, NoBounds2D, "§7.7", "8.0.0"),
    (ReferenceServer, ForgetsGraphsEarly, "§8.3", "8.0.0"),
    (ReferenceServer, LinkSendsF32, "§10.2", "8.0.0"),
], ids=["wrong-version", "missing-bounds-check", "data-corruption", "wrong-reply-size", "reply-to-one-way",
        "echoes-caps", "recompute-after-free", "missing-2d-bounds", "graph-cache-too-small", "link-f32-for-bf16"])
def test_the_suite_catches_a_broken_server(tmp_path, server_class, session_class, section, proto):
    server = serve_faulty(server_class, session_class, proto)
    try:
        result = run_suite(tmp_path, "--target", server.endpoint, "--fuzz-examples", "0")
    finally:
        server.shutdown()
    failed = failing(result)
    assert result["code"] == 1 and any(case.startswith(section + " ") for case in failed), (failed, result["output"][-2000:])
    traces = list((tmp_path / "traces").glob("*.ggmlrpc"))
    assert traces, "the failing exchanges are saved as trace files"


def test_reports_show_a_broken_servers_failing_case_in_a_browser(tmp_path):
    """The JSON report names the failing case with its traces; the HTML report, rendered by a
    real browser, shows that case opened, with its requirement and the decoded exchange."""
    chromium = require_tool("chromium")
    server = serve_faulty(ReferenceServer, NoBoundsCheck)
    try:
        result = run_suite(tmp_path, "--target", server.endpoint, "--fuzz-examples", "0",
                           "--conformance-json", "report.json", "--conformance-html", "report.html")
    finally:
        server.shutdown()
    assert result["code"] == 1, result["output"][-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    failed = [case for case in report["cases"] if case["verdict"] == "failed"]
    assert failed and all(case["id"] in failing(result) for case in failed)
    bounds = next(case for case in failed if case["id"].startswith("§7.2 GET_TENSOR reading past the buffer"))
    assert bounds["traces"] and all((tmp_path / trace).exists() for trace in bounds["traces"])
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (tmp_path / "report.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    shown = re.search(r'<details class="case failed" id="([^"]*)" open="">(.*?)</details>', dom, re.S)
    assert shown, dom[:2000]
    rendered = html.unescape(shown[2])
    assert html.unescape(shown[1]) == failed[0]["id"]
    assert "Requirement:" in rendered and "the server closes the connection" in rendered
    rows = dict(re.findall(r"<tr><td>(§\d+)[^<]*</td>((?:<td[^>]*>\d+</td>)+)</tr>", dom))
    assert re.findall(r">(\d+)<", rows["§7"])[1] != "0", rows  # the matrix counts §7's failures
    block = re.search(r'<details class="case failed" id="' + re.escape(html.escape(bounds["id"])) + r'".*?</details>',
                      dom, re.S)
    assert block, "every failing case has its own block"
    shown = html.unescape(block[0])  # the failure and the decoded request that was answered
    assert "actual:   the server answered" in shown and "GET_TENSOR" in shown and "offset=4088 size=64" in shown


def test_the_command_runs_selected_cases_from_any_directory(tmp_path, reference_server):
    """`ggml-rpc-conformance -k EXPR HOST:PORT --section S --json F`: -k's expression is pytest's,
    not the target; --section keeps one SPEC section's cases."""
    from ggml_rpc_spec.conformance.cli import split_pytest_options

    assert split_pytest_options(["h:1", "-k", "x", "--level", "should", "-m", "y"]) == (
        ["h:1", "--level", "should"], ["-k", "x", "-m", "y"])
    server = reference_server("7.0.0")
    proc = subprocess.run([sys.executable, "-m", "ggml_rpc_spec.conformance.cli", "-k", "not version", server.endpoint,
                           "--section", "3", "--json", "report.json", "--fuzz-examples", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cases = json.loads((tmp_path / "report.json").read_text())["cases"]
    ids = [case["id"] for case in cases]
    assert len(ids) >= 3 and all(i.startswith("§3") and "version" not in i for i in ids), ids
    assert f"target {server.endpoint} (external): reports protocol 7.0.0" in proc.stdout


def hostile_run(tmp_path, server_class, session_class, examples: int) -> tuple[dict, list]:
    """The suite's hostile fuzzing alone (--destructive) against a faulty server: the run and
    the fuzz findings of its JSON report."""
    server = serve_faulty(server_class, session_class)
    try:
        result = run_suite(tmp_path, "--target", server.endpoint, "-k", "structure-aware", "--destructive",
                           "--fuzz-examples", str(examples), "--conformance-json", "report.json")
    finally:
        server.shutdown()
    return result, json.loads((tmp_path / "report.json").read_text())["fuzz_findings"]


def test_the_hostile_fuzzer_alone_finds_a_missing_bounds_check(tmp_path):
    """A server reporting 7.0.0 that breaks a MUST rule fails the run: no version number buys
    forgiveness (only --upstream does, and only for the deviations listed for that version)."""
    result, findings = hostile_run(tmp_path, ReferenceServer, NoBoundsCheck, 2000)
    assert result["code"] == 1 and "every case judged against SPEC.md" in result["output"], result["output"][-2000:]
    regions = [f for f in findings if f["kind"] == "served a request breaking a MUST rule"
               and f["rule"] in ("get_tensor.region", "get_tensor.in-tensor", "tensor.bounds")]
    assert regions, (findings, result["output"][-2000:])
    assert all(Path(trace).exists() for f in regions for trace in f["trace"].split(", "))
    assert f"served a request breaking a MUST rule [{regions[0]['rule']}]" in result["output"]


def test_the_reference_server_survives_the_hostile_fuzzer(tmp_path):
    result = run_suite(tmp_path, "-k", "structure-aware", "--fuzz-seconds", "30", "--conformance-json", "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    assert result["code"] == 0 and report["fuzz_findings"] == [], result["output"][-3000:]
    assert re.search(r"hostile fuzzing: \d{3,} examples, 0 distinct finding", result["output"]), result["output"][-800:]


@pytest.mark.upstream
def test_the_hostile_fuzzer_alone_kills_the_real_server_four_ways(tmp_path):
    """Within a minute, with no named §12 case selected, the fuzzer kills the real 7.0.0
    server in four distinct ways, each saved as a trace and matched to a rule; shrinking and
    restarts run against the live target."""
    with restartable_upstream("0.3.36") as (endpoint, command):
        result = run_suite(tmp_path, "--target", endpoint, "-k", "structure-aware", "--destructive",
                           "--restart-cmd", command, "--fuzz-seconds", "60", "--conformance-json", "report.json",
                           "--upstream")
    findings = json.loads((tmp_path / "report.json").read_text())["fuzz_findings"]
    kills = {f["rule"]: f for f in findings if f["kind"] == "killed the server" and f["rule"] in BY_KEY}
    assert len(kills) >= 4, (findings, result["output"][-3000:])
    assert all(Path(trace).exists() for f in kills.values() for trace in f["trace"].split(", "))
    # each finding is forgiven only by a listed deviation of 7.0.0 with its rule: one that none lists fails
    listed = rule_deviations(deviations_of("7.0.0"))
    unlisted = sorted({f["rule"] for f in findings} - set(listed))
    verdict = json.loads((tmp_path / "report.json").read_text())["cases"][0]
    assert verdict["verdict"] == ("failed" if unlisted else "xfailed"), (unlisted, verdict["reason"][-2000:])


def test_every_rule_has_a_case():
    from ggml_rpc_spec.conformance.cases import all_checks
    from ggml_rpc_spec.conformance.cases.hostile import CASES
    from ggml_rpc_spec.protocol.rules import RULES

    checks = all_checks()
    assert len(checks) > 100  # the check modules registered their cases
    covered = {case.rule for case in CASES} | {c.rule for c in checks}
    assert [r.key for r in RULES if r.key not in covered] == []
    ids = [c.case_id for c in checks]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    headings = set(re.findall(r"^#{2,4} (\d+(?:\.\d+)*) ", (ROOT / "SPEC.md").read_text(), re.M))
    cited = {c.section for c in checks}
    assert "7.2" in cited and "8.4" in cited
    assert sorted(cited - headings) == [], "case ids must cite existing SPEC.md sections"


def test_security_cases_cover_every_advisory():
    from ggml_rpc_spec.conformance.cases import all_checks
    from ggml_rpc_spec.conformance.cases.hostile import CASES, SURVIVAL_CASES

    advisories = " ".join([c.advisory for c in CASES + SURVIVAL_CASES] + [c.advisory for c in all_checks()])
    for advisory in ("buffer tracking", "CVE-2024-42477", "CVE-2024-42478", "CVE-2024-42479", "graph context overflow",
                     "PR 1103", "input validation", "null buffer", "division by zero", "CVE-2026-34159",
                     "MEMSET_TENSOR bounds", "GHSA-2phh-px2f-2qmx", "#25299", "#25289", "#26825", "#26912",
                     "#25764", "upstream asserts", "compute failure", "#25288", "#25765", "#25704",
                     "CVE-2026-137567", "CVE-2026-118375"):
        assert advisory in advisories, advisory


class SilentHalfway:
    """A target that serves its first `served` connections through a reference server, then
    accepts every connection and never answers (a server that died behind a proxy)."""

    def __init__(self, served: int) -> None:
        self.upstream = ReferenceServer(profile=profile_for("7.0.0"), memory=256 << 20).start()
        self.left = served
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return "127.0.0.1:%d" % self.listener.getsockname()[1]

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.left <= 0:
                self.held.append(client)  # accepted, never answered
                continue
            self.left -= 1
            server = socket.create_connection(self.upstream.address)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self.listener.close()
        for sock in self.held:
            sock.close()
        self.upstream.shutdown()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def test_a_target_that_goes_silent_halfway_ends_the_run(tmp_path):
    """Every case and its liveness check are bounded by --case-timeout: once the target stops
    answering, the case that saw it says so, the rest fail at once, and the run finishes."""
    target = SilentHalfway(served=40)
    started = time.monotonic()
    try:
        result = run_suite(tmp_path, "--target", target.endpoint, "--case-timeout", "1", "--fuzz-examples", "3")
    finally:
        target.close()
    output = result["output"]
    assert result["code"] == 1 and time.monotonic() - started < 300, output[-2000:]
    assert "the server stopped serving during this case" in output, output[-3000:]
    assert "not run: the target stopped answering during" in output, output[-3000:]


class CorruptsOtherBuffers(Session):
    """Every write also flips the first byte of the connection's other buffers (an out-of-bounds
    write landing in a neighbour)."""

    def set_tensor(self, request):
        result = super().set_tensor(request)
        for buf in self.buffers.values():
            if buf.handle != request.body.tensor.buffer and buf.size:
                buf.memory[0] ^= 0xFF
        return result


class GetTensorOneByteLong(ReferenceServer):
    """GET_TENSOR replies carry one byte more than asked for."""

    def send_reply(self, sock, spec, result):
        if spec.command is Command.GET_TENSOR:
            send_all(sock, [(len(result) + 1).to_bytes(8, "little"), result, b"\0"])
        else:
            super().send_reply(sock, spec, result)


@pytest.mark.parametrize("server_class,session_class,kind", [
    (ReferenceServer, CorruptsOtherBuffers, "canary changed"),
    (GetTensorOneByteLong, Session, "answered malformed bytes"),
], ids=["canary", "malformed"])
def test_the_hostile_fuzzer_reports_a_corrupted_canary_and_malformed_replies(tmp_path, server_class, session_class,
                                                                              kind):
    result, findings = hostile_run(tmp_path, server_class, session_class, 30)
    assert result["code"] == 1 and kind in {f["kind"] for f in findings}, (findings, result["output"][-2000:])
# -- servers that misread one op_params word, or ignore one source ------------------------------------

class Misreads(Session):
    """Computes every node of `op` with op_params word `word` zeroed, or with source `source`
    dropped: a server that misreads one word or ignores one source of one op."""

    op, word, source = "", None, None

    def graph_compute(self, request):
        tensors = request.graph.tensors.copy()
        hit = tensors["op"] == self.profile.ggml.op_value(self.op)
        if self.word is not None:
            tensors["op_params"][hit, self.word] = 0
        else:
            tensors["src"][hit, self.source] = 0
        return super().graph_compute(dataclasses.replace(request, graph=Graph(request.graph.nodes, tensors)))


def misreadable_words() -> list[tuple[str, str, int]]:
    """(op, word name, index) of every op_params word whose misreading a result can show:
    not the inert ones, nor those whose only valid value is 0 (zeroing them changes nothing)."""
    found = []
    for op, spec in CATALOGUE.items():
        words = {p.index: p for p in spec.params} | {p.index: p for sub in spec.sub_ops for p in sub.params}
        found += [(op, p.name, p.index) for p in words.values()
                  if spec.computes and not p.inert and not (p.low == p.high == 0)]
    return found


def droppable_sources() -> list[tuple[str, str, int]]:
    """(op, role, index) of every source whose values the op reads (not the inert ones)."""
    return [(op, source.role, index) for op, spec in CATALOGUE.items() if spec.computes
            for index, source in enumerate(spec.sources) if not source.inert]


# CI runs every SAMPLE-th of each list; GGML_RPC_FULL_SWEEP=1 runs them all (README).
SAMPLE = 1 if os.environ.get("GGML_RPC_FULL_SWEEP") == "1" else 4
# examples of the op (the fuzzer stops at the first mismatch): a sub-op's word needs its sub-op
# drawn among UNARY's 22, and XIELU's eps a negative value
MISREAD_EXAMPLES = 600


@pytest.fixture
def derandomized():
    """Hypothesis draws the same examples on every run (the fuzzer's own settings inherit it)."""
    settings.register_profile("misreads", derandomize=True)
    previous = settings._current_profile
    settings.load_profile("misreads")
    yield
    settings.load_profile(previous)


def differential_against(session_class, op: str) -> list[str]:
    """Differential fuzzing of `op` alone, a server of `session_class` against a correct one."""
    target, oracle = serve_faulty(ReferenceServer, session_class, "8.0.0"), ReferenceServer(memory=1 << 30).start()
    try:
        ctx = Context(target.endpoint, profile_for("8.0.0"), timeout=30)
        coverage = Coverage(target.endpoint, oracle.endpoint)
        return differential_run(ctx, oracle.endpoint, [op], MISREAD_EXAMPLES, coverage)
    finally:
        target.shutdown()
        oracle.shutdown()


@pytest.mark.parametrize("op,name,word", misreadable_words()[::SAMPLE],
                         ids=[f"{op}.{name}" for op, name, _ in misreadable_words()[::SAMPLE]])
def test_differential_fuzzing_fails_a_server_that_misreads_a_word(op, name, word, derandomized):
    mismatched = differential_against(type("Misread", (Misreads,), {"op": op, "word": word}), op)
    assert mismatched, f"a server reading {op}'s word {word} ({name}) as 0 passed"


@pytest.mark.parametrize("op,role,index", droppable_sources()[::SAMPLE],
                         ids=[f"{op}.{role}" for op, role, _ in droppable_sources()[::SAMPLE]])
def test_differential_fuzzing_fails_a_server_that_ignores_a_source(op, role, index, derandomized):
    mismatched = differential_against(type("Drops", (Misreads,), {"op": op, "source": index}), op)
    assert mismatched, f"a server ignoring {op}'s source {index} ({role}) passed"


def test_the_suite_fails_a_server_that_misreads_one_word(tmp_path):
    """End to end: the suite's differential case, the broken server as the target and a correct
    one as the oracle, fails; its report has a coverage line per op.  The word (POOL_2D's window
    width) is never 0 in a valid node, so any of the op's 4 examples shows it read wrong."""
    broken = serve_faulty(ReferenceServer, type("Misread", (Misreads,), {"op": "POOL_2D", "word": 1}), "8.0.0")
    oracle = ReferenceServer(memory=1 << 30).start()
    try:
        result = run_suite(tmp_path, "--target", broken.endpoint, "--oracle", oracle.endpoint, "-k", "oracle",
                           "--fuzz-examples", "400", "--conformance-json", "report.json")
    finally:
        broken.shutdown()
        oracle.shutdown()
    assert result["code"] == 1, result["output"][-3000:]
    assert re.search(r"POOL_2D +\d+ examples +\d+ graphs +[1-9]", result["output"]), result["output"][-3000:]
    coverage = json.loads((tmp_path / "report.json").read_text())["differential"]["ops"]
    assert set(coverage) == set(CATALOGUE) and all(tally["examples"] for tally in coverage.values())


def test_comparing_the_reference_server_with_itself_is_refused(tmp_path):
    alone = run_suite(tmp_path, "-k", "oracle", "--fuzz-examples", "5", "-rs")  # -rs: skip reasons shown
    assert "refused: the target is the suite's own reference server" in alone["output"], alone["output"][-2000:]
    server = ReferenceServer(memory=1 << 30).start()
    try:
        same = run_suite(tmp_path, "--target", server.endpoint, "--oracle", server.endpoint, "-k", "oracle",
                         "--fuzz-examples", "5")
    finally:
        server.shutdown()
    assert same["code"] == 1 and "is the target" in same["output"], same["output"][-2000:]
