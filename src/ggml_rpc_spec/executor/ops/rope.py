"""Rotary position embeddings: ROPE and its inverse ROPE_BACK, in every mode.

A row of D elements has n_dims of them rotated, in pairs; pair j turns by the angle
theta_j = position * theta_scale^j (theta_scale = freq_base^(-2/n_dims)), optionally divided
by a frequency factor and blended by YaRN.  The modes differ in which elements pair up and
which of a token's positions drives a pair:
  NORMAL (0)  elements (offs + 2j, offs + 2j + 1), one position per token;
  NEOX (2)    elements (offs + j, offs + j + n_dims/2);
  MROPE (8)   NEOX pairing, four positions per token (time, height, width, extra): pair j
              uses the one whose section holds j mod (sum of sections);
  IMROPE (40) as MROPE with the sections interleaved (t h w t h w ...);
  VISION (24) the whole row turns, elements (j, j + n_dims) with n_dims = D/2, and each
              section counts its angle ladder from its own start.
ROPE_BACK turns the other way (sin negated).  ggml grows the ladder by repeated float32
multiplication, so the angles are built the same way (a multiplicative accumulate), and it
computes cos/sin per token once for all heads.
"""

from __future__ import annotations

import functools

import numpy as np

from ggml_rpc_spec.protocol.ops import spec_for

from ..registry import ExecContext, Kernels, OP_PARAMS, Step, optional_src, require, same_shape
from ..tensors import TensorRef

kernels = Kernels()  # this family's kernels (see executor.ops)

NORMAL, NEOX, MROPE, VISION, IMROPE = 0, 2, 8, 24, 40
MODES = (NORMAL, NEOX, MROPE, VISION, IMROPE)
F32 = np.float32


def _max(a, b):
    """C's MAX(a, b) macro: a > b ? a : b (so a NaN b wins)."""
    return np.where(a > b, a, b)


def _min(a, b):
    return np.where(a < b, a, b)


def yarn_corr_dims(n_dims: int, n_ctx_orig: int, base: float, beta_fast: float, beta_slow: float) -> tuple:
    """YaRN's first and last corrected pair, in float32 as ggml computes them (an n_ctx_orig
    of 0 gives log(0) = -inf, which ggml carries on with: the range becomes [0, -inf])."""
    with np.errstate(all="ignore"):
        def corr_dim(n_rot: float):
            return (F32(n_dims) * np.log(F32(n_ctx_orig) / (F32(n_rot) * F32(2) * F32(np.pi)))
                    / (F32(2) * np.log(F32(base))))

        start = np.floor(corr_dim(beta_fast))
        end = np.ceil(corr_dim(beta_slow))
        return F32(_max(F32(0), start)), F32(_min(F32(n_dims - 1), end))


def pair_plan(mode: int, pairs: int, sections: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For each rotated pair j: which of the token's positions drives it (0..3) and how many
    theta_scale steps its angle has taken since that position's ladder (re)started."""
    j = np.arange(pairs)
    if not mode & MROPE:
        return np.zeros(pairs, dtype=np.intp), j
    s0, s1, s2, _ = sections
    sect_dims = sum(sections)
    sec_w, sec_e = s0 + s1, s0 + s1 + s2
    sector = j % sect_dims
    if mode == IMROPE:
        which = np.select([(sector % 3 == 1) & (sector < 3 * s1), (sector % 3 == 2) & (sector < 3 * s2),
                           (sector % 3 == 0) & (sector < 3 * s0)], [1, 2, 0], 3)
    else:
        which = np.select([sector < s0, sector < sec_w, sector < sec_w + s2], [0, 1, 2], 3)
    if mode != VISION:
        return which.astype(np.intp), j
    # vision: each section's ladder restarts where the section starts (the first match wins,
    # as in ggml's else-if chain); before its first restart a ladder counts from pair 0
    starts = (0, s0, sec_w, sec_e)
    taken = np.zeros(pairs, dtype=bool)
    restart = np.zeros((4, pairs), dtype=np.int64)
    for index, start in enumerate(starts):
        hit = (sector == start) & ~taken
        taken |= hit
        restart[index] = np.maximum.accumulate(np.where(hit, j, 0))
    return which.astype(np.intp), j - restart[which, j]


def rope_tables(pos: np.ndarray, plan: tuple[np.ndarray, np.ndarray], theta_scale, freq_factors,
                corr: tuple, yarn: dict, forward: bool) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (times the magnitude scale) per token and pair: pos is (4 or 1, tokens)."""
    which, steps = plan
    longest = int(steps.max()) + 1 if len(steps) else 1
    ladder = np.full((pos.shape[0], pos.shape[1], longest), theta_scale, dtype=F32)
    ladder[..., 0] = pos
    ladder = np.multiply.accumulate(ladder, axis=-1, dtype=F32)  # position * scale * scale ..., left to right
    thetas = ladder[which, :, steps].T  # (tokens, pairs)
    if freq_factors is not None:
        thetas = thetas / freq_factors
    freq_scale, ext_factor = F32(yarn["freq_scale"]), F32(yarn["ext_factor"])
    mscale = F32(yarn["attn_factor"])
    interp = freq_scale * thetas
    if ext_factor != 0:
        low, high = corr
        y = (np.arange(len(which), dtype=F32) - low) / _max(F32(0.001), F32(high - low))
        ramp = (F32(1) - _min(F32(1), _max(F32(0), y))).astype(F32) * ext_factor
        thetas = interp * (F32(1) - ramp) + thetas * ramp
        mscale = F32(mscale * (F32(1) + F32(0.1) * np.log(F32(1) / freq_scale)))
    else:
        thetas = interp
    cos = np.cos(thetas.astype(np.float64)).astype(F32) * mscale  # cosf/sinf: correctly rounded
    sin = np.sin(thetas.astype(np.float64)).astype(F32) * mscale
    return cos, (sin if forward else -sin)


@functools.lru_cache(maxsize=256)
def _constants(n_dims: int, freq_base: float, n_ctx_orig: int, beta_fast: float, beta_slow: float, mode: int,
               pairs: int, sections: tuple[int, int, int, int]) -> tuple:
    """theta_scale, YaRN's corrected range and the pair plan: the same for every layer of a
    model, so a graph's ROPE nodes compute them once (the plan's arrays are only read)."""
    with np.errstate(all="ignore"):
        theta_scale = F32(np.power(F32(freq_base), F32(-2.0) / F32(n_dims)))
    plan = pair_plan(mode, pairs, sections)
    for table in plan:
        table.flags.writeable = False  # shared by every node with these parameters
    return theta_scale, yarn_corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow), plan


def _build(node: TensorRef, ctx: ExecContext, forward: bool) -> Step:
    src, positions = node.src(0), node.src(1)
    freq_factors = optional_src(node, 2)
    require(src.kind.name in ("F32", "F16"), node, "rope rows must be F32 or F16, not {}", src.kind.name)
    require(node.kind.name == src.kind.name, node, "result type {} differs from the source's", node.kind.name)
    same_shape(node, node, src)
    p = node.params()
    n_dims, mode = p.n_dims, p.mode
    offs = p.offset if spec_for(node.op).param("offset").read_by(ctx.ggml.release) else 0  # 0.3.20 ignores it
    sections = (p.section0, p.section1, p.section2, p.section3)
    ne0 = src.ne[0]
    require(mode in MODES, node, "rope mode {} is not one of normal 0, neox 2, mrope 8, vision 24, imrope 40",
            mode, rule=OP_PARAMS)
    require(0 < n_dims <= ne0 and n_dims % 2 == 0, node, "n_dims {} must be even and in 1..{}", n_dims, ne0,
            rule=OP_PARAMS)
    require(0 <= offs and offs % 2 == 0 and offs + n_dims <= ne0, node, "offset {} invalid for n_dims {} of {}",
            offs, n_dims, ne0, rule=OP_PARAMS)
    per_token = 4 if mode & MROPE else 1
    require(positions.kind.name == "I32" and positions.ne == (src.ne[2] * per_token, 1, 1, 1), node,
            "positions must be I32 [{}]", src.ne[2] * per_token)
    if mode & MROPE:
        require(all(s >= 0 for s in sections) and 0 < sum(sections) <= ne0, node,
                "M-RoPE sections {} must be >= 0 with a sum in 1..{}", sections, ne0, rule=OP_PARAMS)
    if mode == VISION:
        require(2 * n_dims == ne0 and offs == 0, node, "vision rope turns whole rows: n_dims {} must be {} and no offset",
                n_dims, ne0 // 2, rule=OP_PARAMS)
    pairs = n_dims if mode == VISION else n_dims // 2
    if freq_factors is not None:
        require(freq_factors.kind.name == "F32" and freq_factors.ne[0] >= pairs, node,
                "freq factors must be F32 with at least {} values", pairs)
    yarn = {name: getattr(p, name) for name in ("freq_scale", "ext_factor", "attn_factor")}
    theta_scale, corr, plan = _constants(n_dims, p.freq_base, p.n_ctx_orig, p.beta_fast, p.beta_slow, mode, pairs,
                                         sections)
    memo_key = ("rope", forward, mode, pairs, float(theta_scale), tuple(yarn.values()), corr, sections)
    if mode == NORMAL:
        first, second = slice(offs, offs + n_dims, 2), slice(offs + 1, offs + n_dims, 2)
    elif mode == VISION:
        first, second = slice(0, n_dims), slice(n_dims, 2 * n_dims)
    else:
        first, second = slice(offs, offs + n_dims // 2), slice(offs + n_dims // 2, offs + n_dims)

    def run():
        pos = positions.view()[0, 0, 0]
        factors = freq_factors.read()[0, 0, 0, :pairs] if freq_factors is not None else None
        key = memo_key + (pos.tobytes(), factors.tobytes() if factors is not None else None)
        tables = ctx.memo.get(key)  # every layer turns the same positions
        if tables is None:
            with np.errstate(all="ignore"):
                cos, sin = rope_tables(pos.reshape(per_token, -1).astype(F32), plan, theta_scale, factors, corr,
                                       yarn, forward)
            tables = ctx.memo[key] = (cos[None, :, None, :], sin[None, :, None, :])
        cos, sin = tables
        x = src.read(ctx.cache)  # (ne3, ne2 = tokens, ne1 = heads, ne0)
        x0, x1 = x[..., first], x[..., second]
        out = x.copy()
        out[..., first] = x0 * cos - x1 * sin
        out[..., second] = x0 * sin + x1 * cos
        node.write(out)

    return run


@kernels.kernel("ROPE")
def build_rope(node: TensorRef, ctx: ExecContext) -> Step:
    return _build(node, ctx, forward=True)


@kernels.kernel("ROPE_BACK")
def build_rope_back(node: TensorRef, ctx: ExecContext) -> Step:
    return _build(node, ctx, forward=False)
