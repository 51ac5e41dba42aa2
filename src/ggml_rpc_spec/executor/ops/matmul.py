"""Matrix products: MUL_MAT, MUL_MAT_ID, OUT_PROD, SOLVE_TRI.

Products are float32 matmuls of dequantized weights (one dequantization per node and weight
version, through the DequantCache).  ggml's CPU first rounds the activations to the weight
type's dot-product type; the "ggml" numerics mode does that too (numerics.py), the default
"float" mode does not: test-backend-ops allows these products an NMSE of 5e-4, far above
that rounding.  SOLVE_TRI is the exception: forward substitution multiplies rounding errors
along every column, so it follows ggml's float32 operation order exactly.
"""

from __future__ import annotations

import numpy as np

from ..numerics import ROUNDING, WITH_MINS, block_mins, q8_1_sum_correction
from ..registry import EXPERT_IDS, ExecContext, Kernels, Step, dense_rows, float_like, in_range, readable, require
from ..tensors import TensorRef

kernels = Kernels()  # this family's kernels (see executor.ops)


def _activation_rounding(ctx: ExecContext, weights: TensorRef):
    """(rounding of src1 or None, whether the Q8_1 block-sum correction applies)."""
    rounding = ROUNDING.get(weights.kind.name) if ctx.numerics == "ggml" else None
    return rounding, rounding is not None and weights.kind.name in WITH_MINS


def _result(node: TensorRef, shape: tuple[int, int, int, int], what: str) -> None:
    require(node.kind.name == "F32" and node.ne == shape, node, "result must be F32 {} = {}, not {}", shape, what,
            node.ne)


def _broadcast(values: np.ndarray, r3: int, r2: int) -> np.ndarray:
    """(ne3, ne2, x, y) -> (ne3/r3, r3, ne2/r2, r2, x, y): the batches sharing one matrix of the
    smaller operand side by side (a split of axes: never a copy)."""
    n3, n2 = values.shape[0] // r3, values.shape[1] // r2
    return values.reshape(n3, r3, n2, r2, *values.shape[2:])


def _stack(values: np.ndarray) -> np.ndarray:
    """(ne3, ne2, x, y) -> (ne3, 1, ne2, 1, x, y), to broadcast against _broadcast()."""
    return values[:, None, :, None]


def _repeats(node: TensorRef, a: TensorRef, b: TensorRef) -> tuple[int, int]:
    """How many times src1's dimensions 2 and 3 repeat src0's (ggml broadcasts src0 over them)."""
    require(a.ne[2] > 0 and a.ne[3] > 0 and b.ne[2] % a.ne[2] == 0 and b.ne[3] % a.ne[3] == 0, node,
            "src0 {} does not broadcast over src1 {}", a.ne, b.ne)
    return b.ne[2] // a.ne[2], b.ne[3] // a.ne[3]


# -- MUL_MAT --------------------------------------------------------------------------------------


@kernels.kernel("MUL_MAT")
def build_mul_mat(node: TensorRef, ctx: ExecContext) -> Step | None:
    """dst[i3,i2,i1,i0] = sum_k src0[i3/r3, i2/r2, i0, k] * src1[i3, i2, i1, k] (F32 result).

    The op_params (precision requests, the Hadamard hint) ask for at least some precision or
    promise what src0 holds; a float32 product of src0 as it is honours all of them."""
    a, b = node.src(0), node.src(1)
    readable(node, a, b)
    dense_rows(node, b)  # ggml asserts nb10 == the type's size
    require(a.ne[0] == b.ne[0], node, "inner sizes differ ({} vs {})", a.ne[0], b.ne[0])
    r2, r3 = _repeats(node, a, b)
    _result(node, (a.ne[1], b.ne[1], b.ne[2], b.ne[3]), "[src0 rows, src1 rows, src1 ne2, src1 ne3]")
    if node.n_elements == 0:
        return None
    rounding, with_sums = _activation_rounding(ctx, a)
    flat = a.ne[2] == a.ne[3] == b.ne[2] == b.ne[3] == 1

    def product(inputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """inputs (ne13, ne12, M, K) x weights (ne03, ne02, N, K) -> (ne13, ne12, M, N)."""
        if r2 == 1 and r3 == 1:
            return np.matmul(inputs, weights.swapaxes(-1, -2))
        out = np.matmul(_broadcast(inputs, r3, r2), _stack(weights).swapaxes(-1, -2))
        return out.reshape(node.shape)

    def run():
        weights = a.read(ctx.cache)  # (ne03, ne02, N, K)
        raw = b.read(ctx.cache)  # (ne13, ne12, M, K)
        inputs = rounding(raw) if rounding is not None else raw
        target = node.view()
        if flat and target[0, 0].flags.c_contiguous:  # one product, straight into the destination
            np.matmul(inputs[0, 0], weights[0, 0].T, out=target[0, 0])
        else:
            target[...] = product(inputs, weights)
        if with_sums:  # ggml takes these weights' min term from Q8_1's stored block sums
            target += product(q8_1_sum_correction(raw), ctx.cache.get(a, block_mins))

    return run


# -- MUL_MAT_ID -----------------------------------------------------------------------------------


@kernels.kernel("MUL_MAT_ID")
def build_mul_mat_id(node: TensorRef, ctx: ExecContext) -> Step | None:
    """dst[0, t, u, :] = as[0, ids[t, u]] @ b[0, t, u % B, :] for every token t and used slot u.

    The (token, slot) pairs are sorted by expert, so each expert's rows go through one
    matmul; every id is checked against the number of experts before anything is read."""
    experts, b, ids = node.src(0), node.src(1), node.src(2)
    readable(node, experts, b, ids)
    require(ids.kind.name == "I32", node, "expert ids must be I32, not {}", ids.kind.name)
    require(experts.ne[3] == 1 and b.ne[3] == 1 and ids.ne[2] == 1 and ids.ne[3] == 1, node,
            "as and b must be 3-D and ids 2-D (as {}, b {}, ids {})", experts.ne, b.ne, ids.ne)
    require(experts.ne[0] == b.ne[0], node, "inner sizes differ ({} vs {})", experts.ne[0], b.ne[0])
    require(ids.ne[1] == b.ne[2], node, "ids has {} token rows, b {}", ids.ne[1], b.ne[2])
    require(b.ne[1] > 0 and ids.ne[0] % b.ne[1] == 0, node, "b's {} rows per token do not divide the {} used experts",
            b.ne[1], ids.ne[0])
    _result(node, (experts.ne[1], ids.ne[0], b.ne[2], 1), "[as rows, used experts, tokens, 1]")
    if node.n_elements == 0 or experts.ne[0] == 0:
        if node.n_elements:  # K = 0: empty sums
            return lambda: node.view().fill(0)
        return None
    n_experts, n_used, n_tokens, shared = experts.ne[2], ids.ne[0], ids.ne[1], b.ne[1]
    n_rows, k = experts.ne[1], experts.ne[0]
    # the row of b each (token, slot) pair multiplies, pairs in ids order (token-major)
    source = (np.arange(n_tokens)[:, None] * shared + np.arange(n_used)[None, :] % shared).reshape(-1)
    rounding, with_sums = _activation_rounding(ctx, experts)
    matrices: dict[int, TensorRef] = {}  # expert -> its matrix as a tensor of its own, made on first use

    def matrix(e: int) -> TensorRef:
        """Expert e's [K, N] matrix: dequantized (and cached) alone, so only the experts the
        ids pick are ever decoded (1024 experts of which a token uses 10, say)."""
        found = matrices.get(e)
        if found is None:
            found = matrices[e] = experts.part(e * experts.nb[2], (k, n_rows, 1, 1))
        return found

    def run():
        chosen = ids.view()[0, 0]  # (T, U) int32
        in_range(node, chosen, n_experts, "expert id", EXPERT_IDS)
        chosen = chosen.reshape(-1)
        order = np.argsort(chosen, kind="stable")
        counts = np.bincount(chosen, minlength=n_experts)
        ends = np.cumsum(counts)
        raw = b.read(ctx.cache)[0].reshape(n_tokens * shared, k)[source[order]]  # (P, K), grouped by expert
        inputs = rounding(raw) if rounding is not None else raw
        corrections = q8_1_sum_correction(raw) if with_sums else None
        grouped = np.empty((len(order), n_rows), np.float32)
        for e in np.flatnonzero(counts).tolist():
            lo, hi = int(ends[e] - counts[e]), int(ends[e])
            np.matmul(inputs[lo:hi], matrix(e).read(ctx.cache)[0, 0].T, out=grouped[lo:hi])
            if corrections is not None:
                grouped[lo:hi] += corrections[lo:hi] @ ctx.cache.get(matrix(e), block_mins)[0, 0].T
        result = np.empty_like(grouped)
        result[order] = grouped
        node.view()[0] = result.reshape(n_tokens, n_used, n_rows)

    return run


# -- OUT_PROD -------------------------------------------------------------------------------------


@kernels.kernel("OUT_PROD")
def build_out_prod(node: TensorRef, ctx: ExecContext) -> Step | None:
    """dst[i3,i2,i1,i0] = sum_k src0[i3/r3, i2/r2, k, i0] * src1[i3, i2, k, i1]."""
    a, b = node.src(0), node.src(1)
    readable(node, a, b)
    float_like(node, b)
    dense_rows(node, a)
    require(a.kind.name == "F32" or a.ne[2:] == b.ne[2:], node, "a {} src0 repeats over src1's {}: ggml's CPU "
            "repeats only an F32 src0", a.kind.name, b.ne)
    require(a.ne[1] == b.ne[1], node, "inner sizes differ ({} vs {})", a.ne[1], b.ne[1])
    r2, r3 = _repeats(node, a, b)
    _result(node, (a.ne[0], b.ne[0], b.ne[2], b.ne[3]), "[src0 ne0, src1 ne0, src1 ne2, src1 ne3]")
    if node.n_elements == 0:
        return None

    def run():
        left = b.read(ctx.cache).swapaxes(-1, -2)  # (ne13, ne12, N, K)
        right = a.read(ctx.cache)  # (ne03, ne02, K, M)
        if r2 == 1 and r3 == 1:
            node.view()[...] = np.matmul(left, right)
        else:
            node.view()[...] = np.matmul(_broadcast(left, r3, r2), _stack(right)).reshape(node.shape)

    return run


# -- SOLVE_TRI ------------------------------------------------------------------------------------


@kernels.kernel("SOLVE_TRI")
def build_solve_tri(node: TensorRef, ctx: ExecContext) -> Step | None:
    """X with A X = B, A lower triangular: x[i] = (b[i] - sum_{t<i} a[i,t] x[t]) / a[i,i].

    The sum runs in float32 from t = 0 up, as ggml's compiled loop does it: the products of
    the first 4*floor(i/4) terms rounded to float32 and added one by one, the last i mod 4
    terms fused multiply-adds (emulated in float64: the product of two floats is exact
    there).  Solutions grow quickly with n, and so does any difference in rounding."""
    a, b = node.src(0), node.src(1)
    for tensor in (a, b, node):
        require(tensor.kind.name == "F32", node, "SOLVE_TRI is F32 only")
    readable(node, a, b)
    n = a.ne[0]
    require(a.ne[1] == n and b.ne[1] == n, node, "A must be square {} and match B's {} rows", a.ne[:2], b.ne[1])
    require(a.ne[2:] == b.ne[2:], node, "batch sizes differ ({} vs {})", a.ne[2:], b.ne[2:])
    _result(node, b.ne, "B's shape")
    if node.n_elements == 0:
        return None

    def run():
        lower = a.read()  # (B3, B2, n, n): lower[..., i, t] = a[i, t]
        rhs = b.read()  # (B3, B2, n, k)
        x = np.empty(rhs.shape, np.float32)
        for i in range(n):
            whole = i // 4 * 4
            if whole:
                products = lower[..., i, :whole, None] * x[..., :whole, :]
                total = np.add.accumulate(products, axis=-2)[..., -1, :]
            else:
                total = np.zeros(rhs.shape[:2] + rhs.shape[3:], np.float32)
            for t in range(whole, i):
                fused = total.astype(np.float64) + lower[..., i, t, None].astype(np.float64) * x[..., t, :]
                total = fused.astype(np.float32)
            x[..., i, :] = (rhs[..., i, :] - total) / lower[..., i, i, None]
        node.view()[...] = x

    return run
