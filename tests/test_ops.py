"""The graph executor, op by op: against a NumPy oracle (our server), and differentially
against the REAL upstream server (ggml's CPU backend) with the same graph and inputs."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.op_cases import CASES
from conftest import CI_RELEASES, require_peer
from protocol import profile_for
from reference_impl.client import RPCClient
from reference_impl.graphs import GraphBuilder

IDS = [f"{c.op}-{c.key}" for c in CASES]


def run_case(case, endpoint, profile, seed=0):
    """Build the case on a fresh connection and buffer; (results, expected)."""
    with RPCClient(endpoint, proto=profile) as rpc:
        buf = rpc.alloc_buffer(1 << 20)
        g = GraphBuilder(rpc.profile, buf)
        outputs, oracle = case.build(g, np.random.default_rng(seed))
        results = g.run(rpc, outputs)
    return [r.astype(np.float64) for r in results], [np.asarray(e, dtype=np.float64) for e in oracle()]


@pytest.mark.parametrize("proto", ["3.6.1", "7.0.0"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_op_against_oracle(reference_server, proto, case):
    server = reference_server(proto)
    results, expected = run_case(case, server.endpoint, server.profile)
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got, want.reshape(got.shape), rtol=case.rtol, atol=case.atol)


@pytest.mark.upstream
@pytest.mark.parametrize("release", CI_RELEASES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_op_matches_upstream(release, case, reference_server, upstream_server):
    profile = profile_for(require_peer(release).protocol)
    ours = reference_server(profile.name, numerics="ggml")
    theirs = upstream_server(release)
    mine, expected = run_case(case, ours.endpoint, profile)
    real, _ = run_case(case, theirs.endpoint, profile)
    for got, reference, want in zip(mine, real, expected):
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(reference, want.reshape(reference.shape), rtol=case.rtol, atol=case.atol * scale,
                                   err_msg="the real server disagrees with the oracle")
        np.testing.assert_allclose(got, reference, rtol=case.rtol, atol=case.atol * scale,
                                   err_msg="our server disagrees with the real one")
