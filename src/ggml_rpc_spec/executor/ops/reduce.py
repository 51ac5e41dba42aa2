"""Reductions (SUM, SUM_ROWS, MEAN, ARGMAX, COUNT_EQUAL, CUMSUM), sorting and selection
(ARGSORT, TOP_K) and the DeepSeek-V4 hyper-connection mixers (DSV4_HC_COMB, _PRE, _POST).

Several of ggml's CPU kernels read each row of their source as ne0 consecutive elements from
the row's start, whatever nb0 says, and ARGSORT / TOP_K step from row to row by nb1 alone
across all of dims 1..3.  A permuted source therefore gives what those reads give, and the
peers (the CPU backend behind the upstream server) agree with it: `as_ggml_reads` builds the
same view, after checking that it stays inside the tensor's buffer.
"""

from __future__ import annotations

import numpy as np

from ..registry import (ExecContext, Kernels, OP_PARAMS, Step, as_ggml_reads, dense_rows, optional_src, require,
                        same_shape)
from ..tensors import TensorRef

kernels = Kernels()  # this family's kernels (see executor.ops)

HC_COMB_MAX_ITER = 4096  # DSV4_HC_COMB: n_iter above this is refused (each round is a few NumPy calls)


def _types(node: TensorRef, expected: str, *tensors: TensorRef) -> None:
    for tensor in tensors:
        require(tensor.kind.name == expected, node, "{!r} is {}, {} expected", tensor.name, tensor.kind.name, expected)


def _sequential_f32_sum(values: np.ndarray) -> np.ndarray:
    """Sum along the last axis in float32, one element after the other (as a C loop)."""
    if values.shape[-1] == 0:
        return np.zeros(values.shape[:-1], np.float32)
    return np.cumsum(values, axis=-1, dtype=np.float32)[..., -1]


@kernels.kernel("SUM")
def build_sum(node: TensorRef, ctx: ExecContext) -> Step:
    src = node.src(0)
    require(src.kind.name in ("F32", "F16", "BF16") and node.kind.name == src.kind.name, node,
            "SUM takes F32, F16 or BF16 and yields the same type")
    require(node.n_elements == 1, node, "SUM yields one element")
    rows = as_ggml_reads(node, src)
    out = node.view().reshape(1)
    if src.kind.name == "F32":  # ggml_float (double) for rows and total
        return lambda: out.__setitem__(0, np.float32(rows.sum(dtype=np.float64)))

    def run():  # float row sums, added in float row after row
        row_sums = _sequential_f32_sum(rows.astype(np.float32)).reshape(-1)
        out[0] = _sequential_f32_sum(row_sums)

    return run


@kernels.kernel("SUM_ROWS", "MEAN")
def build_sum_rows(node: TensorRef, ctx: ExecContext) -> Step:
    src = node.src(0)
    _types(node, "F32", src, node)
    require(node.ne == (1,) + src.ne[1:], node, "result must be one column of src's rows")
    mean = node.op == "MEAN"
    if mean:
        values = as_ggml_reads(node, src)
    else:
        dense_rows(node, src, node)
        values = src.view()
    count = np.float32(src.ne[0])
    out = node.view()

    def run():
        total = values.sum(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
        out[...] = total / count if mean else total

    return run


def _last_argmax(x: np.ndarray) -> np.ndarray:
    """Per row of x (rows, n), the index ggml's running-maximum loop ends on: the last
    occurrence of the maximum; a NaN makes the running maximum restart after it."""
    rows, n = x.shape
    if n == 0:
        return np.zeros(rows, np.int64)
    nan = np.isnan(x)
    if not nan.any():
        return n - 1 - np.argmax(x[:, ::-1], axis=1)
    pos = np.arange(n)
    valid = ~nan
    last_valid = n - 1 - np.argmax(valid[:, ::-1], axis=1)  # rows all NaN: unused (0 below)
    last_nan = np.maximum.accumulate(np.where(nan, pos, -1), axis=1)
    start = np.take_along_axis(last_nan, last_valid[:, None], axis=1)  # the NaN before that run
    run = (pos > start) & (pos <= last_valid[:, None])
    top = np.where(run, x, -np.inf).max(axis=1, keepdims=True)
    found = n - 1 - np.argmax((run & (x == top))[:, ::-1], axis=1)
    return np.where(valid.any(axis=1), found, 0)


@kernels.kernel("ARGMAX")
def build_argmax(node: TensorRef, ctx: ExecContext) -> Step:
    src = node.src(0)
    _types(node, "F32", src)
    _types(node, "I32", node)
    require(src.ne[2] == src.ne[3] == 1 and node.ne == (src.ne[1], 1, 1, 1), node,
            "ARGMAX takes a matrix and yields one I32 per row")
    rows = as_ggml_reads(node, src)[0, 0]
    out = node.view()[0, 0, 0]
    return lambda: out.__setitem__(Ellipsis, _last_argmax(rows))


@kernels.kernel("COUNT_EQUAL")
def build_count_equal(node: TensorRef, ctx: ExecContext) -> Step:
    a, b = node.src(0), node.src(1)
    _types(node, "I32", a, b)
    _types(node, "I64", node)
    same_shape(node, a, b)
    require(node.n_elements == 1, node, "COUNT_EQUAL yields one element")
    x, y, out = a.view(), b.view(), node.view().reshape(1)
    return lambda: out.__setitem__(0, np.count_nonzero(x == y))


@kernels.kernel("CUMSUM")
def build_cumsum(node: TensorRef, ctx: ExecContext) -> Step:
    src = node.src(0)
    _types(node, "F32", src, node)
    same_shape(node, node, src)
    dense_rows(node, src, node)
    x, out = src.view(), node.view()

    def run():
        out[...] = np.cumsum(x, axis=-1, dtype=np.float32)

    return run


def _sort_rows(node: TensorRef) -> tuple[np.ndarray, np.ndarray]:
    """(source rows, destination rows) of ARGSORT / TOP_K, both as ggml steps through them."""
    src = node.src(0)
    _types(node, "F32", src)
    _types(node, "I32", node)
    require(node.ne[1:] == src.ne[1:], node, "result rows must match the source's")
    require(src.ne[0] <= 2**31 - 1, node, "rows longer than INT32_MAX")
    dense_rows(node, node)
    return as_ggml_reads(node, src, flat=True), as_ggml_reads(node, node, flat=True)


@kernels.kernel("ARGSORT")
def build_argsort(node: TensorRef, ctx: ExecContext) -> Step:
    order = node.params().order
    require(order in (0, 1), node, "sort order {} is neither ASC (0) nor DESC (1)", order, rule=OP_PARAMS)
    require(node.ne[0] == node.src(0).ne[0], node, "result rows must match the source's")
    rows, out = _sort_rows(node)
    descending = order == 1

    def run():
        out[...] = np.argsort(-rows if descending else rows, axis=1, kind="stable")

    return run


@kernels.kernel("TOP_K")
def build_top_k(node: TensorRef, ctx: ExecContext) -> Step | None:
    k, n = node.ne[0], node.src(0).ne[0]
    require(k <= n, node, "k = {} exceeds the row length {}", k, n)
    rows, out = _sort_rows(node)
    if k == 0 or out.shape[0] == 0:
        return None

    def run():
        negated = -rows  # ascending order of -x is descending order of x; equal values by index
        if k < n:
            chosen = np.argpartition(negated, k - 1, axis=1)[:, :k]
            chosen.sort(axis=1)
        else:
            chosen = np.broadcast_to(np.arange(n), rows.shape)
        picked = np.take_along_axis(negated, chosen, axis=1)
        found = np.take_along_axis(chosen, np.argsort(picked, axis=1, kind="stable"), axis=1)
        if k > 1:  # ggml swaps the first two, to make the point that the order is not part of the contract
            found[:, [0, 1]] = found[:, [1, 0]]
        out[...] = found

    return run


# -- DeepSeek-V4 hyper-connections --------------------------------------------------------------

HC = 4  # ggml's CPU kernel of DSV4_HC_COMB is written for 4 streams only


def _sum4(parts, start=None):
    """Sum of the four slices, left to right in float32 (from `start` when given)."""
    total = parts[0] if start is None else start + parts[0]
    for part in parts[1:]:
        total = total + part
    return total


@kernels.kernel("DSV4_HC_COMB")
def build_dsv4_hc_comb(node: TensorRef, ctx: ExecContext) -> Step:
    mixes, scale, base = node.src(0), node.src(1), node.src(2)
    _types(node, "F32", mixes, scale, base, node)
    width, tokens = (2 + HC) * HC, mixes.ne[1]
    require(mixes.ne == (width, tokens, 1, 1), node, "mixes must be [{}, tokens] (4 streams)", width)
    require(scale.ne[0] >= 3 and scale.ne[1:] == (1, 1, 1), node, "scale must be a vector of at least 3")
    require(base.ne == (width, 1, 1, 1), node, "base must be a vector of {}", width)
    require(node.ne == (HC, HC, tokens, 1), node, "result must be [4, 4, tokens]")
    p = node.params()
    eps = np.float32(p.eps)
    require(1 <= p.n_iter <= HC_COMB_MAX_ITER, node, "n_iter {} outside [1, {}]", p.n_iter, HC_COMB_MAX_ITER,
            rule=OP_PARAMS)
    n_iter = p.n_iter
    m, s, b, out = mixes.view()[0, 0], scale.view().reshape(-1), base.view().reshape(-1), node.view()[0]
    one = np.float32(1)

    def run():
        # c[t, src, dst] = logits of mixes entry 2*HC + dst + HC*src
        c = (m[:, 2 * HC:] * s[2] + b[2 * HC:]).reshape(tokens, HC, HC)
        e = np.exp(c - c.max(axis=2, keepdims=True))
        c = e * (one / _sum4([e[:, :, d] for d in range(HC)]))[:, :, None] + eps
        for round in range(n_iter):
            if round:  # over dst for each src, then over src for each dst
                c = c * (one / _sum4([c[:, :, d] for d in range(HC)], eps))[:, :, None]
            c = c * (one / _sum4([c[:, i, :] for i in range(HC)], eps))[:, None, :]
        out[...] = c

    return run


@kernels.kernel("DSV4_HC_PRE")
def build_dsv4_hc_pre(node: TensorRef, ctx: ExecContext) -> Step:
    x, w = node.src(0), node.src(1)
    _types(node, "F32", x, w, node)
    n_embd, hc, tokens = x.ne[0], x.ne[1], x.ne[2]
    p = node.params()
    require(hc > 0 and x.ne[3] == 1, node, "x must be [n_embd, hc, tokens]")
    if p.gated:
        require(w.ne == x.ne, node, "the gate must be shaped as x")
    else:
        require(w.ne == (hc, tokens, 1, 1), node, "weights must be [hc, tokens]")
    require(node.ne == (n_embd, tokens, 1, 1), node, "result must be [n_embd, tokens]")
    scale, gated = np.float32(p.scale), p.gated
    xs, ws, out = x.view()[0], w.view()[0] if gated else w.view()[0, 0], node.view()[0, 0]
    one = np.float32(1)

    def run():
        weights = one / (one + np.exp(-ws)) if gated else ws[:, :, None]  # (tokens, hc, n_embd or 1)
        total = xs[:, 0, :] * weights[:, 0, :]
        for h in range(1, hc):
            total = total + xs[:, h, :] * weights[:, h, :]
        out[...] = scale * total

    return run


@kernels.kernel("DSV4_HC_POST")
def build_dsv4_hc_post(node: TensorRef, ctx: ExecContext) -> Step:
    x, residual, post = node.src(0), node.src(1), node.src(2)
    comb = optional_src(node, 3)
    _types(node, "F32", x, residual, post, node)
    n_embd, tokens, hc = x.ne[0], x.ne[1], residual.ne[1]
    require(hc > 0 and x.ne[2:] == (1, 1), node, "x must be [n_embd, tokens]")
    require(residual.ne == (n_embd, hc, tokens, 1), node, "residual must be [n_embd, hc, tokens]")
    require(post.ne == (hc, tokens, 1, 1), node, "post must be [hc, tokens]")
    require(node.ne == (n_embd, hc, tokens, 1), node, "result must be [n_embd, hc, tokens]")
    if comb is not None:
        _types(node, "F32", comb)
        require(comb.ne == (hc, hc, tokens, 1), node, "comb must be [hc, hc, tokens]")
    xs, rs, ps, out = x.view()[0, 0], residual.view()[0], post.view()[0, 0], node.view()[0]
    cs = comb.view()[0] if comb is not None else None  # (tokens, src, dst)

    def run():
        total = xs[:, None, :] * ps[:, :, None]  # (tokens, dst, n_embd)
        if cs is None:
            out[...] = total + rs
            return
        for src in range(hc):
            total = total + rs[:, src, None, :] * cs[:, src, :, None]
        out[...] = total

    return run
