"""Upstream's own op test program judges our GRAPH_COMPUTE arithmetic, op by op.

`test-backend-ops` of each CI peer (built by `ggml-rpc-peers build`) runs a sample of
every op's cases against the reference server and compares each result with ggml's CPU
backend within the program's own error bounds; every case must pass (no wrong result, no
refusal).  The full sweep is a command (README): `ggml-rpc-peers backend-ops
--target HOST:PORT`.

While the sample runs, every kernel builds and runs on recording tensors, so the same sweep
checks that no kernel reads an rpc_tensor field it did not declare (registry.py): the step
keys that decide plan reuse are derived from those declarations.

The program's perf mode (the op throughput of `python -m bench`) runs through a GraphMeter,
which times each case's graph as the server computes it.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from conftest import CI_RELEASES, require_peer
from ggml_rpc_spec.executor import plan as plan_module
from ggml_rpc_spec.executor.ops import KERNELS
from ggml_rpc_spec.executor.tensors import TensorRef
from ggml_rpc_spec.upstream_peers import peer_for
from ggml_rpc_spec.upstream_peers.backend_ops import Judge, table

pytestmark = pytest.mark.upstream

# the CI peers whose sources give the program (a binary wheel, 8.0.0's, has none)
RELEASES = [release for release in CI_RELEASES if peer_for(release).dist.sdist]
SAMPLE = 3  # cases per op in CI (spread over each op's list); fused-graph cases run whole
# TensorRef attributes -> the rpc_tensor fields they hold (a cached view stands for the memory fields)
MEMORY = frozenset({"type", "buffer", "ne", "nb", "data"})
FIELDS = {"kind": {"type"}, "ne": {"ne"}, "nb": {"nb"}, "data": {"data"}, "buffer": {"buffer"}, "op": {"op"},
          "op_params": {"op_params"}, "raw_name": {"name"}, "_view": MEMORY}


class RecordingRef(TensorRef):
    """A TensorRef that notes which rpc_tensor fields are read from it, under its role."""

    def __getattribute__(self, attribute):
        fields = FIELDS.get(attribute)
        if fields is not None:
            log = object.__getattribute__(self, "__dict__").get("log")  # None in a kernel's own copies
            if log is not None:  # (dataclasses.replace of a source: the fields copied were noted)
                log.update((object.__getattribute__(self, "role"), field) for field in fields)
        return super().__getattribute__(attribute)


def recording(ref: TensorRef, role: str, log: set) -> RecordingRef:
    copy = RecordingRef(**{name: getattr(ref, name) for name in TensorRef.__dataclass_fields__})
    copy.role, copy.log = role, log
    return copy


@pytest.fixture(scope="module")
def recorded_reads():
    """Per op: the (role, field) pairs its kernel read in the sweeps of this module."""
    return defaultdict(set)


@pytest.fixture
def recording_builds(monkeypatch, recorded_reads):
    original = plan_module._build

    def build(node, ctx, profile):
        log = recorded_reads[node.op]
        proxy = recording(node, "node", log)
        proxy.srcs = [recording(src, "source", log) if src is not None else None for src in node.srcs]
        return original(proxy, ctx, profile)

    monkeypatch.setattr(plan_module, "_build", build)


@pytest.mark.parametrize("release", RELEASES)
def test_every_op_passes_upstreams_op_tests(release, reference_server, recording_builds):
    peer = require_peer(release)
    server = reference_server(peer.protocol, memory=4 << 30)
    judge = Judge(peer, server.endpoint, timeout=600)
    results = []
    for op, cases in judge.catalogue().items():
        result = judge.run_op(op, only=_spread(cases) if cases else None)
        if result.cases or result.error:  # a fused-graph name may have no cases in this program
            results.append(result)
    assert len(results) > 100, table(results)  # the sweep reached every op the program has
    assert all(r.ok for r in results), table([r for r in results if not r.ok])


@pytest.mark.parametrize("release", RELEASES)
def test_perf_mode_times_each_case_as_the_server_computes_it(release, reference_server):
    peer = require_peer(release)
    judge = Judge(peer, reference_server(peer.protocol, memory=1 << 30).endpoint, timeout=600)
    first = judge.perf_op("ARGMAX", limit=2, budget=0.2)
    assert not first.error and len(first.cases) == 2 and not first.missing, first
    assert all(case.runs > 1000 and case.us_per_run > 0 for case in first.cases), first  # the op's node repeated
    named = judge.perf_op("ARGMAX", only=[first.cases[0].name, "ARGMAX(type=f32,ne=[1,1,1,1])"], budget=0.2)
    assert [case.name for case in named.cases if case.us_per_run] == [first.cases[0].name], named
    assert [case.detail for case in named.missing] == ["not reported by the program"], named


def _spread(cases: list[str]) -> list[str]:
    from ggml_rpc_spec.upstream_peers.backend_ops import sample

    return sample(cases, SAMPLE)


def test_kernels_read_only_what_they_declare(recorded_reads):
    """After the sweeps: each kernel read nothing beyond its declaration (names only ever
    appear in messages), so step keys cover what decides a step."""
    if not recorded_reads:
        pytest.skip("the sweeps above did not run")
    undeclared = {}
    for op, reads in recorded_reads.items():
        entry = KERNELS[op]
        allowed = {("node", f) for f in entry.reads} | {("source", f) for f in entry.source_reads}
        extra = {pair for pair in reads if pair not in allowed and pair[1] != "name"}
        if extra:
            undeclared[op] = sorted(extra)
    assert len(recorded_reads) >= 50, sorted(recorded_reads)  # the check saw most kernels at work
    assert not undeclared, f"kernels read fields they do not declare: {undeclared}"
