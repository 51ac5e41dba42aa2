"""Attention: SOFT_MAX, DIAG_MASK_INF / DIAG_MASK_ZERO, FLASH_ATTN_EXT, LIGHTNING_INDEXER.

Broadcasting follows ggml's CPU loops: a mask's dims 2 and 3 repeat by index modulo their
size, K/V heads are shared by consecutive query heads (q head h reads kv head h / (heads /
kv_heads)).  Work whose size is the product of two sources' sizes (scores of every query
against every key) is done a block of queries at a time, so a graph of small tensors cannot
make the server allocate their outer product at once.
"""

from __future__ import annotations

import math

import numpy as np

from ..numerics import ROUNDING
from ..registry import (ExecContext, Kernels, OP_PARAMS, Step, contiguous, dense_rows, optional_src, readable, repeat,
                        require, same_shape)
from ..tensors import TensorRef

kernels = Kernels()  # this family's kernels (see executor.ops)

F32 = np.float32
BLOCK_BUDGET = 1 << 23  # scores (float32) computed per block of queries: 32 MiB
ITEM_LIMIT = 1 << 28  # ... and at most this many for a single query: 1 GiB
PREC_DEFAULT, PREC_F32 = 0, 10
FA_TILE_Q = 64  # ggml's CPU computes this many queries of one head at a time, in float32 (its tiled path)


def ggml_path(n_q: int, k_type: str, v_type: str) -> str:
    """Which of ggml's CPU flash attentions computes a node: "tiled" (float32 throughout:
    queries kept as they are, keys and values widened) for at least FA_TILE_Q queries with F32
    or F16 keys and values of one type; else "row" (each query row converted to the keys'
    dot-product type, and the values summed in F16 when they are F16)."""
    same = k_type == v_type and k_type in ("F32", "F16")
    return "tiled" if same and n_q >= FA_TILE_Q else "row"


def online_f16(scores: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's row path with F16 values: keys in order, a running maximum M, the sum S in
    float32 and the weighted values summed in an F16 accumulator (rescaled in F16 when M grows,
    each product added and rounded to F16).  scores (..., n_kv) float32 (-inf: masked, skipped);
    values (..., n_kv, d_v) F16 values as float32.  Returns the accumulator as float32, S and M.

    The running maximum, and with it every key's two factors, are worked out for all keys at
    once; only the roundings of the accumulator and the sum go key by key, as they must."""
    with np.errstate(invalid="ignore", over="ignore"):
        start = np.full(scores.shape[:-1] + (1,), -np.inf, dtype=F32)
        # M before each key and after the last (masked keys and NaN never grow it)
        running = np.fmax.accumulate(np.concatenate([start, scores], axis=-1), axis=-1)
        before = running[..., :-1]
        valid = scores != -np.inf
        grows = valid & (scores > before)
        ms = np.where(grows, np.exp(before - scores), F32(1)).astype(F32)
        vs = np.where(grows, F32(1), np.where(valid, np.exp(scores - before), F32(0))).astype(F32)
        shape = scores.shape[:-1]
        total = np.zeros(shape, dtype=F32)
        acc = np.zeros(shape + (values.shape[-1],), dtype=F32)
        for ic in range(scores.shape[-1]):
            grown = grows[..., ic]
            if grown.any():
                acc = np.where(grown[..., None], (acc * ms[..., ic, None]).astype(np.float16), acc).astype(F32)
            added = (acc + values[..., ic, :] * vs[..., ic, None]).astype(np.float16).astype(F32)
            acc = np.where(valid[..., ic, None], added, acc)
            total = np.where(valid[..., ic], total * ms[..., ic] + vs[..., ic], total).astype(F32)
    return acc, total, running[..., -1]


def _normalized(acc: np.ndarray, total: np.ndarray, top: np.ndarray, sink) -> np.ndarray:
    """The row path's end: the sink joins the running maximum and sum last, then the weighted
    values are divided by the sum (0 where every key was masked)."""
    if sink is not None:
        sink = np.broadcast_to(sink[..., 0], top.shape)
        with np.errstate(invalid="ignore", over="ignore"):
            grows = sink > top
            ms = np.where(grows, np.exp(top - sink), F32(1)).astype(F32)
            vs = np.where(grows, F32(1), np.exp(sink - top)).astype(F32)
        acc = acc * ms[..., None]
        total = total * ms + vs
    with np.errstate(divide="ignore"):
        return acc * np.where(total == 0, F32(0), F32(1) / total)[..., None]


def alibi_slopes(n_head: int, max_bias: float) -> np.ndarray:
    """ALiBi's per-head factor of the mask (1 everywhere when max_bias <= 0), in float32."""
    if not max_bias > 0:
        return np.ones(n_head, dtype=F32)
    n_head_log2 = 1 << int(math.floor(math.log2(n_head)))
    m0: np.float32 = np.power(F32(2), F32(-max_bias) / F32(n_head_log2))
    m1: np.float32 = np.power(F32(2), F32(-(max_bias / F32(2))) / F32(n_head_log2))
    h = np.arange(n_head)
    exponent = np.where(h < n_head_log2, h + 1, 2 * (h - n_head_log2) + 1).astype(F32)
    return np.power(np.where(h < n_head_log2, m0, m1).astype(F32), exponent).astype(F32)


def _blocks(total: int, per_item: int):
    """Slices of range(total) whose items cost `per_item` elements each, within BLOCK_BUDGET."""
    step = max(1, BLOCK_BUDGET // max(1, per_item))
    return [slice(start, min(total, start + step)) for start in range(0, total, step)]


def _bounded(node: TensorRef, per_item: int, what: str) -> None:
    """Refuse what would need more than ITEM_LIMIT float32 intermediates per query (or
    token): the sizes of two sources multiplied, which a hostile graph can make huge."""
    require(per_item <= ITEM_LIMIT, node, "{} would take {} values (limit {})", what, per_item, ITEM_LIMIT,
            rule=OP_PARAMS)


def _whole_blocks(node: TensorRef, *tensors: TensorRef) -> None:
    for tensor in tensors:
        if tensor.quantized:
            require(tensor.ne[0] % tensor.kind.block_size == 0, node, "{} rows of {} are not whole blocks",
                    tensor.kind.name, tensor.ne[0])


# -- SOFT_MAX -------------------------------------------------------------------------------------


@kernels.kernel("SOFT_MAX")
def build_soft_max(node: TensorRef, ctx: ExecContext) -> Step:
    """Per row: softmax(a * scale + slope(head) * mask), a sink logit per head joining the sum."""
    src = node.src(0)
    mask, sinks = optional_src(node, 1), optional_src(node, 2)
    require(src.kind.name == "F32" and node.kind.name == "F32", node, "SOFT_MAX computes F32 rows only")
    same_shape(node, node, src)
    ne0, ne1, ne2, ne3 = src.ne
    if mask is not None:
        require(mask.kind.name in ("F32", "F16"), node, "mask must be F32 or F16")
        require(mask.ne[0] >= ne0 and mask.ne[1] >= ne1, node, "mask {} smaller than the rows {}", mask.ne, src.ne)
        require(mask.ne[2] > 0 and mask.ne[3] > 0 and ne2 % mask.ne[2] == 0 and ne3 % mask.ne[3] == 0, node,
                "mask {} does not broadcast over {}", mask.ne, src.ne)
    if sinks is not None:
        require(sinks.kind.name == "F32" and sinks.ne[0] >= ne2, node, "sinks must be F32 [{}]", ne2)
    p = node.params()
    scale = F32(p.scale)
    slopes = alibi_slopes(ne2, p.max_bias)[None, :, None, None]
    alibi = bool(p.max_bias > 0)

    def run():
        w = src.read(ctx.cache) * scale
        if mask is not None:
            m = mask.read()[:, :, :ne1, :ne0]
            m = repeat(m, (ne3, ne2, ne1, ne0), node)
            w += slopes * m if alibi else m
        top = w.max(axis=-1, keepdims=True)
        if sinks is not None:
            sink = sinks.read()[0, 0, 0, :ne2][None, :, None, None]
            top = np.maximum(top, sink)
        e = np.exp(w - top)
        total = e.sum(axis=-1, keepdims=True, dtype=np.float64)
        if sinks is not None:
            total += np.exp(sink - top)
        node.write(e * (1.0 / total).astype(F32))

    return run


# -- DIAG_MASK_INF / DIAG_MASK_ZERO ----------------------------------------------------------------


@kernels.kernel("DIAG_MASK_INF", "DIAG_MASK_ZERO")
def build_diag_mask(node: TensorRef, ctx: ExecContext) -> Step:
    """Element (i0, i1) of every matrix becomes -inf (or 0) where i0 > n_past + i1."""
    src = node.src(0)
    require(src.kind.name == "F32" and node.kind.name == "F32", node, "{} works on F32 only", node.op)
    contiguous(node, src, node)  # ggml copies src into the result as one block
    dense_rows(node, src, node)  # and asserts nb0 == 4 for both, even where ne0 == 1 (contiguity ignores nb0 then)
    same_shape(node, node, src)
    n_past = node.params().n_past
    require(n_past >= 0, node, "n_past {} < 0", n_past, rule=OP_PARAMS)
    value = F32(-np.inf) if node.op == "DIAG_MASK_INF" else F32(0)
    ne0, ne1 = src.ne[0], src.ne[1]
    hidden = np.arange(ne0)[None, :] > n_past + np.arange(ne1)[:, None]

    def run():
        node.write(np.where(hidden, value, src.read(ctx.cache)))

    return run


# -- FLASH_ATTN_EXT ---------------------------------------------------------------------------------


@kernels.kernel("FLASH_ATTN_EXT")
def build_flash_attn(node: TensorRef, ctx: ExecContext) -> Step:
    """softmax(scale * q.k (softcapped) + slope * mask, sink) . v per query and head."""
    q, k, v = node.src(0), node.src(1), node.src(2)
    mask, sinks = optional_src(node, 3), optional_src(node, 4)
    readable(node, q, k, v)
    _whole_blocks(node, k, v)
    dense_rows(node, q, k, v)  # ggml asserts nbq0, nbk0, nbv0 == the type's size
    require(q.kind.name == "F32", node, "q must be F32, not {}", q.kind.name)
    d_k, d_v, n_q, n_head, ne3 = k.ne[0], v.ne[0], q.ne[1], q.ne[2], q.ne[3]
    n_kv, kv_heads, v_heads = k.ne[1], k.ne[2], v.ne[2]
    require(q.ne[0] == d_k and v.ne[1] >= n_kv, node, "q/k/v sizes disagree: q {} k {} v {}", q.ne, k.ne, v.ne)
    require(min(kv_heads, v_heads, k.ne[3], v.ne[3]) > 0 and n_head % kv_heads == 0 and n_head % v_heads == 0
            and ne3 % k.ne[3] == 0 and ne3 % v.ne[3] == 0, node, "k {} / v {} heads do not divide q's {}",
            k.ne, v.ne, q.ne)
    require(node.kind.name == "F32" and node.ne == (d_v, n_head, n_q, ne3), node,
            "result must be F32 [{}, {}, {}, {}]", d_v, n_head, n_q, ne3)
    if mask is not None:
        require(mask.kind.name == "F16", node, "mask must be F16, not {}", mask.kind.name)
        require(mask.ne[0] >= n_kv and mask.ne[1] >= n_q, node, "mask {} smaller than [{}, {}]", mask.ne, n_kv, n_q)
        require(mask.ne[2] > 0 and mask.ne[3] > 0 and n_head % mask.ne[2] == 0 and ne3 % mask.ne[3] == 0, node,
                "mask {} does not broadcast over {} heads x {}", mask.ne, n_head, ne3)
    if sinks is not None:
        require(sinks.kind.name == "F32" and sinks.ne[0] >= n_head, node, "sinks must be F32 [{}]", n_head)
    p = node.params()
    require(p.prec in (PREC_DEFAULT, PREC_F32), node, "precision {} is neither DEFAULT 0 nor F32 10", p.prec,
            rule=OP_PARAMS)
    softcap = F32(p.logit_softcap)
    scale = F32(p.scale) / softcap if softcap != 0 else F32(p.scale)
    alibi = bool(p.max_bias > 0) and mask is not None
    slopes = alibi_slopes(n_head, p.max_bias)[None, :, None, None]
    # ggml's row path converts each query row to K's dot-product type before q.k (F16 for F16
    # keys, Q8 blocks for quantized ones) and sums F16 values in F16; its tiled path computes in
    # float32.  "ggml" numerics do what the path ggml would take does.
    row_path = ctx.numerics == "ggml" and ggml_path(n_q, k.kind.name, v.kind.name) == "row"
    rounding = ROUNDING.get(k.kind.name) if row_path else None
    f16_sums = row_path and v.kind.name == "F16"
    rk2, rv2, k3, v3 = n_head // kv_heads, n_head // v_heads, k.ne[3], v.ne[3]
    rk3, rv3 = ne3 // k3, ne3 // v3
    _bounded(node, ne3 * n_head * n_kv, "scores of one query")
    blocks = _blocks(n_q, ne3 * n_head * n_kv)

    def run():
        queries = q.read(ctx.cache)  # (ne3, heads, n_q, d_k)
        # q head h of batch i3 reads k head h / rk2 of k batch i3 / rk3: grouping the query
        # heads and batches lets matmul broadcast K and V instead of copying them
        keys_t = k.read(ctx.cache)[:, None, :, :n_kv].swapaxes(-1, -2)  # (k3, 1, kv_heads, d_k, n_kv)
        values = v.read(ctx.cache)[:, None, :, :n_kv]  # (v3, 1, v_heads, n_kv, d_v)
        masks = mask.read()[:, :, :, :n_kv] if mask is not None else None
        sink = sinks.read()[0, 0, 0, :n_head][None, :, None, None] if sinks is not None else None
        out = np.empty((ne3, n_head, n_q, d_v), dtype=F32)
        for rows in blocks:
            n = rows.stop - rows.start
            qb = queries[:, :, rows]
            if rounding is not None:
                qb = rounding(qb)
            qb = qb.reshape(k3, rk3, kv_heads, rk2 * n, d_k)
            s = np.matmul(qb, keys_t).reshape(ne3, n_head, n, n_kv)
            s *= scale
            if softcap != 0:
                s = softcap * np.tanh(s)
            if masks is not None:
                m = repeat(masks[:, :, rows], s.shape, node)
                s += slopes * m if alibi else m
            top = s.max(axis=-1, keepdims=True)
            if sink is not None:
                top = np.maximum(top, sink)
            top[np.isneginf(top)] = 0  # every key masked: weights 0, result 0 (as ggml's S == 0)
            if f16_sums:
                grouped = s.reshape(v3, rv3, v_heads, rv2 * n, n_kv)
                acc, total, top = online_f16(grouped, values[:, :, :, None])  # values per row's head
                out[:, :, rows] = _normalized(acc.reshape(ne3, n_head, n, d_v), total.reshape(ne3, n_head, n),
                                              top.reshape(ne3, n_head, n), sink)
                continue
            s -= top
            weights = np.exp(s, out=s).reshape(v3, rv3, v_heads, rv2 * n, n_kv)
            total = s.sum(axis=-1, keepdims=True)
            if sink is not None:
                total += np.exp(sink - top)
            mixed = np.matmul(weights, values).reshape(ne3, n_head, n, d_v)
            with np.errstate(divide="ignore"):
                out[:, :, rows] = mixed * np.where(total == 0, F32(0), F32(1) / total)
        node.write(out.transpose(0, 2, 1, 3))  # permute(0, 2, 1, 3): dst[i3][query][head]

    return run


# -- LIGHTNING_INDEXER ------------------------------------------------------------------------------


@kernels.kernel("LIGHTNING_INDEXER")
def build_lightning_indexer(node: TensorRef, ctx: ExecContext) -> Step:
    """score[s, t, j] = sum_h relu(q[s, t, h] . k[s, j]) * w[s, t, h] + mask[s % m3, t, j]."""
    q, k, w, mask = node.src(0), node.src(1), node.src(2), node.src(3)
    readable(node, q, k, w, mask)
    _whole_blocks(node, k)
    require(q.kind.name == "F32" and w.kind.name == "F32" and mask.kind.name == "F16", node,
            "q and weights must be F32, mask F16")
    d, n_head, n_tok, n_stream = q.ne
    n_kv = k.ne[2]
    require(k.ne[0] == d and k.ne[1] == 1 and k.ne[3] == n_stream, node, "k {} must be [{}, 1, n_kv, {}]",
            k.ne, d, n_stream)
    require(w.ne[:3] == (n_head, n_tok, 1) and w.ne[3] == n_stream, node, "weights {} must be [{}, {}, 1, {}]",
            w.ne, n_head, n_tok, n_stream)
    require(mask.ne[0] == n_kv and mask.ne[1] == n_tok and mask.ne[2] == 1 and mask.ne[3] > 0
            and n_stream % mask.ne[3] == 0, node, "mask {} must be [{}, {}, 1, a divisor of {}]",
            mask.ne, n_kv, n_tok, n_stream)
    require(node.kind.name == "F32" and node.ne == (n_kv, n_tok, 1, n_stream), node,
            "result must be F32 [{}, {}, 1, {}]", n_kv, n_tok, n_stream)
    _bounded(node, n_stream * n_head * n_kv, "scores of one token")
    blocks = _blocks(n_tok, n_stream * n_head * n_kv)

    def run():
        queries = q.read()  # (streams, tokens, heads, d)
        keys_t = k.read(ctx.cache)[:, :, 0].swapaxes(-1, -2)[:, None]  # (streams, 1, d, n_kv)
        weights = w.read()[:, 0, :, None, :]  # (streams, tokens, 1, heads)
        masks = repeat(mask.read()[:, 0], (n_stream, n_tok, n_kv), node)
        out = np.empty((n_stream, n_tok, n_kv), dtype=F32)
        for rows in blocks:
            qk = np.matmul(queries[:, rows], keys_t)  # (streams, block, heads, n_kv)
            np.maximum(qk, F32(0), out=qk)
            out[:, rows] = np.matmul(weights[:, rows], qk)[:, :, 0] + masks[:, rows]
        node.write(out[:, None])

    return run
