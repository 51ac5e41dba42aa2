"""Known deviations of the real upstream servers, by protocol version.

Measured by running the suite (with --level should --destructive --restart-cmd) against the
upstream servers built from llama-cpp-python 0.3.16 (2.0.0), 0.3.20 (3.6.1), 0.3.34 (4.0.2),
0.3.35 (5.0.0) and 0.3.36 (7.0.0), and llama-cpp-py-sync 0.11739 (8.0.0, llama.cpp 0ce8cd11).

They apply only when the run is told the target is upstream's own server (`--upstream`, or
`--known-deviations VERSION`): then these cases still run and are reported as expected
failures naming the entry (never as silent skips), and a server that does better shows up as
"xpassed".  Any other server is judged against SPEC.md alone, whatever version it reports.
The hostile fuzzer's findings are matched one by one, by the rule each breaks, against the
rules of the listed negative cases (`rule_deviations`).
"""

from __future__ import annotations

# Published vulnerabilities that are still open upstream: the server aborts (the whole
# process dies) instead of closing the connection.  All of these cases are destructive.
_ABORTS = {
    "rule.#25299": "llama.cpp #25299: a node id 0 reaches the backend as a null node; the server aborts",
    "rule.#25289": "llama.cpp #25289: CUSTOM/MAP_CUSTOM ops are not rejected; the server aborts",
    "rule.#26825": "llama.cpp #26825: GET_ROWS indices are checked by GGML_ASSERT; the server aborts",
    "rule.#26912": "llama.cpp #26912: SET_ROWS indices are checked by GGML_ASSERT; the server aborts",
    "rule.#25765": "llama.cpp #25765: SSM_SCAN state ids are not checked; the server reads far outside the "
                   "state tensor and crashes",
    "rule.conv-geometry.transpose-stride": "conv geometry: CONV_TRANSPOSE_2D's stride is not checked against its "
                                           "result; the server writes far past it and crashes",
    "rule.moe-ids.add-id": "mixture-of-experts ids: ADD_ID checks expert ids with GGML_ASSERT; the server aborts",
    "rule.moe-ids.mul-mat-id": "mixture-of-experts ids: MUL_MAT_ID checks expert ids with assert() only in debug "
                               "builds; a release server reads outside the weights and crashes",
    "rule.get-rows-back.rows": "llama.cpp #26825: GET_ROWS_BACK row indices are checked by GGML_ASSERT; the server "
                               "aborts",
    "rule.#25764": "llama.cpp #25764: ACC/SET window strides are not validated; the server aborts",
    "rule.upstream-asserts.past-end": "upstream asserts: a tensor past its buffer trips GGML_ASSERT; the server aborts",
    "rule.upstream-asserts.overflow": "upstream asserts: ne/nb overflowing nbytes trip GGML_ASSERT; the server aborts",
    "rule.upstream-asserts.set-past-tensor": "upstream asserts: ggml_backend_tensor_set checks offset + size <= "
                                             "nbytes with GGML_ASSERT; the server aborts",
    "rule.upstream-asserts.get-past-tensor": "upstream asserts: ggml_backend_tensor_get checks offset + size <= "
                                             "nbytes with GGML_ASSERT; the server aborts",
    "rule.upstream-asserts.elements": "upstream asserts: ggml_new_tensor checks the element count with GGML_ASSERT "
                                      "(zero dimensions skipped); the server aborts",
    "rule.graph.elements": "upstream asserts: ggml_new_tensor checks the element count with GGML_ASSERT; the server "
                           "aborts",
    "rule.CVE-2026-137567": "CVE-2026-137567: COPY_TENSOR skips its size check for an empty destination and "
                            "copies below the buffer's base; the server crashes",
    "rule.set_tensor_hash.in-tensor": "upstream asserts: a cached file past the tensor's nbytes trips "
                                      "ggml_backend_tensor_set's GGML_ASSERT; the server aborts",
    "rule.compute-failure.unknown-op": "compute failure: an unknown op aborts the CPU backend",
    "rule.#25288": "llama.cpp #25288: SET_TENSOR of a quantized tensor whose ne[0] is not a multiple of the block "
                   "size is accepted, not rejected",
    "rule.graph.blocks": "llama.cpp #25288: quantized ne[0] not a multiple of the block size; the server aborts",
    "rule.graph.bounds": "upstream asserts: a graph tensor past its buffer trips GGML_ASSERT; the server aborts",
    "rule.exec.unsupported": "compute failure: an unsupported ROPE mode aborts the CPU backend",
    "rule.exec.no-memory": "compute failure: a source with buffer 0 reaches the CPU backend as a NULL data "
                           "pointer; the server crashes (SIGSEGV)",
    "rule.ops.scale-f16": "compute failure: ggml's CPU has no F16 SCALE (GGML_ABORT); the server aborts",
    "rule.ops.rope-odd-dims": "compute failure: ggml's CPU asserts an even ROPE n_dims; the server aborts",
    "rule.ops.mamba1-snapshots": "compute failure: ggml's CPU asserts K = 1 for SSM_SCAN over Mamba-1 states; the "
                                 "server aborts",
    "rule.ops.im2col-f16-image": "compute failure: ggml's CPU asserts an F32 image for an F32 IM2COL result; the "
                                 "server aborts",
    "rule.ops.flash-attn-prec": "compute failure: ggml's CPU aborts on a FLASH_ATTN_EXT precision other than 0 and "
                                "10; the server aborts",
}

# GET_ALLOC_SIZE: a source that fails deserialize_tensor (an invalid type) is left out, not refused.
_ALLOC_SIZE_SOURCES = {
    "rule.alloc-size.bad-source": "upstream drops a GET_ALLOC_SIZE source of an invalid type and answers (SPEC §5.5)",
}

# 7.0.0's CPU backend fuses RMS_NORM with the next MUL on use_count alone (SPEC §4.1, §8.4).
_FUSES = {
    "use_count_changes_nothing": "ggml's CPU fuses an RMS_NORM whose use_count is 1 into the next MUL and never "
                                 "writes the RMS_NORM's result, which its other users then read stale",
}

# SHOULD-level behaviour upstream does not have (only with --level should).
_SHOULDS = {
    "rule.graph.trailing": "upstream ignores bytes after the tensor array (SPEC §8.1)",
    "rule.graph.acyclic": "upstream does not look for cycles in graphs (SPEC §8.2)",
    "concurrent_clients": "upstream serves one connection at a time (sequential accept loop, backlog 1)",
    "handles_survive_others": "upstream serves one connection at a time, so a second connection waits",
    "memory_accounting": "upstream's CPU device reports the host's physical memory, not its allocations",
}

# Requests a vulnerable server answers after corrupting its own memory (it keeps running).
_CORRUPTS = {
    "rule.#25704": "llama.cpp #25704: GATED_DELTA_NET's snapshot count is not checked against its result; the "
                   "server writes the states past it and answers",
}

_RECOMPUTE_AFTER_FREE = {
    "rule.GHSA-2phh-px2f-2qmx": "GHSA-2phh-px2f-2qmx: GRAPH_RECOMPUTE after FREE_BUFFER uses freed memory",
}

# Fixed in 3.x; the 2.0.0 server still has them.
_BEFORE_3 = {
    "rule.division-by-zero.type4": "division by zero (2026-03): 2.0.0 divides by the block size 0 of the removed "
                                   "type 4; the server crashes",
    "rule.division-by-zero.type5": "division by zero (2026-03): 2.0.0 divides by the block size 0 of the removed "
                                   "type 5; the server crashes",
    "rule.CVE-2026-34159": "CVE-2026-34159: 2.0.0 does not reject a graph tensor with buffer 0 and a data address; "
                           "the server uses the address and crashes",
    "rule.graph.buffers": "buffer tracking: 2.0.0 does not check the buffers graph tensors name; the server answers",
    "rule.exec.unsupported": "compute failure: 2.0.0 does not reject ROPE mode 1; the server answers",
}

# 8.0.0 deserializes tensors with a bounds check instead of GGML_ASSERT: these no longer abort.
_BOUNDED_FROM_8 = ("rule.upstream-asserts.past-end", "rule.graph.bounds")

# What 8.0.0 brought: 2-D transfers and the server-to-server link.
_NEW_IN_8 = {
    "rule.2d.set-overlap": "upstream does not check that the copies of a 2-D transfer are apart: SET_TENSOR_2D "
                           "writes copies over one another and answers",
    "rule.2d.stride-zero": "upstream bounds GET_TENSOR_2D's copies by the tensor only through their span, which is "
                           "one copy at stride 0: it allocates size * n_copies bytes for the reply and aborts "
                           "(std::bad_alloc)",
    "rule.comm.f16": "upstream sums any type as raw bytes: COMM_ALLREDUCE of an F16 tensor exchanges its bytes over "
                     "the link, adds in F16 and answers",
    "comm_peers": "unauthenticated peering: upstream's rank 1 connects to whatever host COMM_INIT names (and answers "
                  "ok=1 once the handshake is done)",
    "comm_listen": "unauthenticated peering: upstream's rank 0 listens on 0.0.0.0 whatever address its RPC endpoint "
                   "has, and takes the first connection from anywhere",
    "comm_admit": "unauthenticated peering: upstream's rank 0 links with the first connection it accepts, from "
                  "whatever address",
}

DEVIATIONS: dict[str, dict[str, str]] = {
    "8.0.0": {**{k: v for k, v in _ABORTS.items() if k not in _BOUNDED_FROM_8}, **_CORRUPTS, **_SHOULDS,
              **_NEW_IN_8, **_ALLOC_SIZE_SOURCES, **_FUSES},
    "7.0.0": {**_ABORTS, **_CORRUPTS, **_SHOULDS, **_ALLOC_SIZE_SOURCES, **_FUSES},
    "5.0.0": {**_ABORTS, **_CORRUPTS, **_SHOULDS, **_RECOMPUTE_AFTER_FREE, **_ALLOC_SIZE_SOURCES},
    "4.0.2": {**_ABORTS, **_CORRUPTS, **_SHOULDS, **_RECOMPUTE_AFTER_FREE, **_ALLOC_SIZE_SOURCES},
    "3.6.1": {**_ABORTS, **_SHOULDS, **_RECOMPUTE_AFTER_FREE, **_ALLOC_SIZE_SOURCES},
    "2.0.0": {**_ABORTS, **_SHOULDS, **_BEFORE_3},
}


def deviations_of(version: str) -> dict[str, str]:
    """The measured deviations of upstream's server of `version` (KeyError: none measured)."""
    if version not in DEVIATIONS:
        raise KeyError(f"no measured deviations of upstream's {version} server; known: {', '.join(DEVIATIONS)}")
    return DEVIATIONS[version]


def rule_deviations(deviations: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Rule key -> (entry, reason) for the negative cases among `deviations`: the rules
    upstream breaks, against which the hostile fuzzer's findings are matched."""
    from .cases.hostile import CASES

    by_key = {f"rule.{case.key}": case.rule for case in CASES if case.rule}
    return {by_key[entry]: (entry, reason) for entry, reason in deviations.items() if entry in by_key}
