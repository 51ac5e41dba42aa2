"""Attention: SOFT_MAX and FLASH_ATTN_EXT."""

from __future__ import annotations

import math

import numpy as np

from ..registry import ExecContext, Step, float_like, kernel, optional_src, readable, repeat, require, same_shape
from ..tensors import TensorRef


def _alibi_slopes(n_head: int, max_bias: float) -> np.ndarray:
    if max_bias <= 0:
        return np.ones(n_head, dtype=np.float32)
    n_head_log2 = 1 << int(math.floor(math.log2(n_head)))
    m0 = np.float32(2.0 ** (-max_bias / n_head_log2))
    m1 = np.float32(2.0 ** (-(max_bias / 2.0) / n_head_log2))
    h = np.arange(n_head)
    return np.where(h < n_head_log2, m0 ** (h + 1), m1 ** (2 * (h - n_head_log2) + 1)).astype(np.float32)


@kernel("SOFT_MAX")
def build_soft_max(node: TensorRef, ctx: ExecContext) -> Step:
    src = node.src(0)
    mask, sinks = optional_src(node, 1), optional_src(node, 2)
    float_like(node, src, node)
    same_shape(node, node, src)
    p = node.params()
    scale, max_bias = np.float32(p.scale), p.max_bias
    if mask is not None:
        require(mask.kind.name in ("F32", "F16"), node, "mask must be F32 or F16")
        require(mask.ne[0] >= src.ne[0] and mask.ne[1] >= src.ne[1], node, "mask smaller than the rows")
        require(src.ne[2] % mask.ne[2] == 0 and src.ne[3] % mask.ne[3] == 0, node, "mask does not broadcast")
    if sinks is not None:
        require(sinks.kind.name == "F32" and sinks.ne[0] >= src.ne[2], node, "sinks must be F32 [n_head]")
    slopes = _alibi_slopes(src.ne[2], max_bias)[None, :, None, None]

    def run():
        w = src.read(ctx.cache) * scale
        if mask is not None:
            m = mask.read()[:, :, : src.ne[1], : src.ne[0]]
            w = w + slopes * repeat(m, (src.ne[3], src.ne[2], src.ne[1], src.ne[0]), node)
        top = w.max(axis=-1, keepdims=True)
        if sinks is not None:
            sink = sinks.read()[0, 0, 0, : src.ne[2]][None, :, None, None]
            top = np.maximum(top, sink)
        e = np.exp(w - top)
        total = e.astype(np.float64).sum(axis=-1, keepdims=True)
        if sinks is not None:
            total = total + np.exp(sink - top)
        node.write((e * (1.0 / total)).astype(np.float32))

    return run


def _heads_shared(kv: np.ndarray, per_head: int, per_batch: int) -> np.ndarray:
    """K or V spread over the query heads that share it (grouped-query attention); the
    array itself when every query head has its own (a repeat would copy the cache)."""
    if per_head > 1:
        kv = np.repeat(kv, per_head, axis=1)
    return np.repeat(kv, per_batch, axis=0) if per_batch > 1 else kv


@kernel("FLASH_ATTN_EXT")
def build_flash_attn(node: TensorRef, ctx: ExecContext) -> Step:
    q, k, v = node.src(0), node.src(1), node.src(2)
    mask, sinks = optional_src(node, 3), optional_src(node, 4)
    readable(node, q, k, v)
    float_like(node, q)
    d_k, d_v, n_q, n_head = k.ne[0], v.ne[0], q.ne[1], q.ne[2]
    require(q.ne[0] == d_k and k.ne[1] == v.ne[1], node, "q/k/v sizes disagree")
    require(q.ne[2] % k.ne[2] == 0 and q.ne[2] % v.ne[2] == 0 and q.ne[3] % k.ne[3] == 0 and q.ne[3] % v.ne[3] == 0,
            node, "k/v heads do not divide q heads")
    require(node.kind.name == "F32" and node.ne == (d_v, n_head, n_q, q.ne[3]), node, "result shape")
    if mask is not None:
        require(mask.kind.name in ("F16", "F32") and mask.ne[0] >= k.ne[1] and mask.ne[1] >= n_q, node, "mask shape")
        require(n_head % mask.ne[2] == 0 and q.ne[3] % mask.ne[3] == 0, node, "mask does not broadcast")
    p = node.params()
    scale, max_bias, softcap = p.scale, p.max_bias, p.logit_softcap
    if softcap != 0:
        scale /= softcap
    slopes = _alibi_slopes(n_head, max_bias)[None, :, None, None]
    rk2, rk3 = n_head // k.ne[2], q.ne[3] // k.ne[3]
    rv2, rv3 = n_head // v.ne[2], q.ne[3] // v.ne[3]

    def run():
        queries = q.read(ctx.cache)  # (ne3, H, N, D)
        if k.kind.name == "F16":  # ggml converts Q to K's dot type
            queries = queries.astype(np.float16).astype(np.float32)
        keys = _heads_shared(k.read(ctx.cache), rk2, rk3)
        values = _heads_shared(v.read(ctx.cache), rv2, rv3)
        s = np.matmul(queries, keys.swapaxes(-1, -2)) * np.float32(scale)  # (ne3, H, N, n_kv)
        if softcap != 0:
            s = np.float32(softcap) * np.tanh(s)
        if mask is not None:
            m = mask.read()[:, :, :n_q, : k.ne[1]]
            s = s + slopes * repeat(m, s.shape, node)
        top = s.max(axis=-1, keepdims=True)
        if sinks is not None:
            sink = sinks.read()[0, 0, 0, :n_head][None, :, None, None]
            top = np.maximum(top, sink)
        top = np.where(np.isfinite(top), top, 0)
        weights = np.exp(s - top)
        total = weights.sum(axis=-1, keepdims=True)
        if sinks is not None:
            total = total + np.exp(sink - top)
        out = np.matmul(weights, values) / np.where(total == 0, 1, total)
        node.write(out.transpose(0, 2, 1, 3))  # permute(0, 2, 1, 3): dst[i3][query][head]

    return run
