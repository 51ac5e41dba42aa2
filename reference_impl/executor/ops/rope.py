"""Rotary position embeddings: ROPE."""

from __future__ import annotations

import math

import numpy as np

from ..registry import ExecContext, Step, float_like, kernel, optional_src, require, same_shape
from ..tensors import TensorRef


ROPE_NORMAL, ROPE_NEOX = 0, 2


def rope_cache(positions: np.ndarray, n_dims: int, params: dict, freq_factors: np.ndarray | None) -> tuple:
    """cos and sin (times mscale) per position and rotated pair, in ggml's float32 order of
    operations: theta starts at the position and is multiplied by theta_scale pair by pair
    (a multiplicative accumulate in float32 is exactly that left fold)."""
    f32 = np.float32
    theta_scale = f32(np.power(np.float32(params["freq_base"]), np.float32(-2.0) / np.float32(n_dims)))
    corr = yarn_corr_dims(n_dims, params["n_ctx_orig"], params["freq_base"], params["beta_fast"], params["beta_slow"])
    pairs = n_dims // 2
    ladder = np.full((len(positions), pairs), theta_scale, dtype=np.float32)
    ladder[:, 0] = positions
    thetas = np.multiply.accumulate(ladder, axis=1, dtype=np.float32)
    if freq_factors is not None:
        thetas = thetas / freq_factors[:pairs].astype(np.float32)
    freq_scale, ext_factor = f32(params["freq_scale"]), f32(params["ext_factor"])
    mscale = f32(params["attn_factor"])
    interp = freq_scale * thetas
    if ext_factor != 0:
        i0 = np.arange(pairs) * 2
        y = ((i0 // 2) - f32(corr[0])) / max(f32(0.001), f32(corr[1] - corr[0]))
        ramp = (1 - np.minimum(1, np.maximum(0, y))).astype(np.float32) * ext_factor
        thetas = interp * (1 - ramp) + thetas * ramp
        mscale = f32(mscale * (1.0 + 0.1 * math.log(1.0 / float(freq_scale))))
    else:
        thetas = interp
    return (np.cos(thetas.astype(np.float64)).astype(np.float32) * mscale,
            np.sin(thetas.astype(np.float64)).astype(np.float32) * mscale)


def yarn_corr_dims(n_dims: int, n_ctx_orig: int, base: float, beta_fast: float, beta_slow: float) -> tuple:
    def corr_dim(n_rot: float) -> float:
        return n_dims * math.log(n_ctx_orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    try:
        start = math.floor(corr_dim(beta_fast))
        end = math.ceil(corr_dim(beta_slow))
    except (ValueError, ZeroDivisionError, OverflowError):
        return 0.0, float(n_dims - 1)
    return float(max(0, start)), float(min(n_dims - 1, end))


@kernel("ROPE")
def build_rope(node: TensorRef, ctx: ExecContext) -> Step:
    src, positions = node.src(0), node.src(1)
    freq_factors = optional_src(node, 2)
    float_like(node, src, node)
    same_shape(node, node, src)
    p = node.params()
    n_dims, mode, offset = p.n_dims, p.mode, p.offset
    require(mode in (ROPE_NORMAL, ROPE_NEOX), node, "rope mode {} is not supported (normal 0, neox 2)", mode)
    require(positions.kind.name == "I32" and positions.ne[0] == src.ne[2], node, "positions must be I32 [ne2]")
    require(0 < n_dims <= src.ne[0] and n_dims % 2 == 0, node, "n_dims {} invalid for rows of {}", n_dims, src.ne[0])
    require(0 <= offset and offset % 2 == 0 and offset + n_dims <= src.ne[0], node, "offset {} invalid", offset)
    if freq_factors is not None:
        require(freq_factors.kind.name == "F32" and freq_factors.ne[0] >= n_dims // 2, node, "freq factors")
    params = {name: getattr(p, name) for name in ("n_ctx_orig", "freq_base", "freq_scale", "ext_factor",
                                                  "attn_factor", "beta_fast", "beta_slow")}
    require(params["freq_base"] > 0 and params["freq_scale"] > 0, node, "freq_base and freq_scale must be positive")
    half = n_dims // 2

    memo_key = (n_dims, tuple(sorted(params.items())), freq_factors.data if freq_factors is not None else 0)

    def run():
        x = src.read(ctx.cache)  # (ne3, ne2=positions, ne1=heads, ne0)
        pos = positions.view()[0, 0, 0]
        key = memo_key + (pos.tobytes(),)
        cached = ctx.memo.get(key)  # every layer ropes the same positions
        if cached is None:
            factors = freq_factors.read()[0, 0, 0] if freq_factors is not None else None
            cos, sin = rope_cache(pos, n_dims, params, factors)
            cached = ctx.memo[key] = (cos[None, :, None, :], sin[None, :, None, :])
        cos, sin = cached
        out = x.copy()
        rotated = x[..., offset : offset + n_dims]
        if mode == ROPE_NORMAL:
            x0, x1 = rotated[..., 0::2], rotated[..., 1::2]
            out[..., offset : offset + n_dims : 2] = x0 * cos - x1 * sin
            out[..., offset + 1 : offset + n_dims : 2] = x0 * sin + x1 * cos
        else:
            x0, x1 = rotated[..., :half], rotated[..., half:]
            out[..., offset : offset + half] = x0 * cos - x1 * sin
            out[..., offset + half : offset + n_dims] = x0 * sin + x1 * cos
        node.write(out)

    return run
