"""Graph cases, one or more per op: a small graph plus a plain NumPy oracle for its result.

Each case builds its graph with client.graphs.GraphBuilder on a fresh buffer and
returns the tensors to read back and a function computing their expected values from the
same inputs.  The conformance suite compares a target server against the oracle; the
project's tests also send every case to the real upstream server and to ours and compare
the two.  Tolerances cover what a correct backend may round differently (ggml's CPU
backend rounds activations to 8-bit blocks before quantized matrix products).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, TypedDict

import ml_dtypes
import numpy as np
from gguf import quants
from gguf.constants import GGMLQuantizationType

from ggml_rpc_spec.client.graphs import ROPE_NEOX, ROPE_NORMAL, GraphBuilder

F32 = np.float32


@dataclass(frozen=True)
class OpCase:
    key: str
    op: str  # the ggml op the case exercises (the profile must have it)
    build: Callable
    rtol: float = 1e-5
    atol: float = 1e-5
    section: str = "8.4"
    since: str | None = None  # the first protocol version whose ggml computes the case

    def run(self, rpc, device: int = 0, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Build the case on a fresh buffer of `rpc`, compute it and read the outputs back:
        (results, expected), both float64 and shaped alike."""
        g = GraphBuilder(rpc.profile, rpc.alloc_buffer(1 << 20, device))
        outputs, oracle = self.build(g, np.random.default_rng(seed))
        results = [r.astype(np.float64) for r in g.run(rpc, outputs, device=device)]
        return results, [np.asarray(want, np.float64).reshape(got.shape) for got, want in zip(results, oracle(), strict=True)]


def as4d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def randn(rng, *shape, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(F32)


# -- quantized weights ----------------------------------------------------------------------------

_K_SCALES = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def quantized_weights(rng, type_name: str, rows: int, cols: int) -> tuple[bytes, np.ndarray]:
    """(raw blocks, their float values) for a [cols, rows] weight of `type_name`."""
    kind = GGMLQuantizationType[type_name]
    if type_name in _K_SCALES:  # gguf has no K-quant quantizer: random blocks with sane scales
        block_bytes = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}[type_name]
        blocks = rng.integers(0, 256, (rows, cols // 256, block_bytes), dtype=np.uint8)
        for offset in _K_SCALES[type_name]:
            scale = (rng.uniform(0.001, 0.01, (rows, cols // 256))).astype(np.float16)
            blocks[:, :, offset:offset + 2] = scale.view(np.uint8).reshape(rows, cols // 256, 2)
        raw = blocks.reshape(rows, -1)
    elif type_name in ("F16", "F32", "BF16"):
        values = randn(rng, rows, cols, scale=0.3)
        dtype = {"F16": np.float16, "F32": np.float32, "BF16": None}[type_name]
        if dtype is None:
            import ml_dtypes

            dtype = ml_dtypes.bfloat16
        cast = values.astype(dtype)
        return cast.tobytes(), cast.astype(F32)
    else:
        raw = quants.quantize(randn(rng, rows, cols, scale=0.3), kind)
    return raw.tobytes(), quants.dequantize(raw, kind).astype(F32)


# -- case builders --------------------------------------------------------------------------------


def binary(op: str, a_shape, b_shape, *, strided_a: bool = False):
    """a op b, b repeated over a; `strided_a`: a is a view of the first columns of a wider
    matrix (rows stay contiguous, as ggml's binary kernels require)."""
    functions = {"ADD": np.add, "SUB": np.subtract, "MUL": np.multiply, "DIV": np.divide}

    def build(g: GraphBuilder, rng):
        wide = randn(rng, *a_shape[:-1], a_shape[-1] + 3)
        a = wide[..., : a_shape[-1]] if strided_a else randn(rng, *a_shape)
        b = randn(rng, *b_shape) + (3.0 if op == "DIV" else 0.0)
        if strided_a:
            ta = g.view(g.input(wide), list(reversed(a_shape)), [wide.shape[-1] * 4])
        else:
            ta = g.input(a)
        out = g.binary(op, ta, g.input(b))
        a_values = as4d(a)
        reps = [x // y for x, y in zip(a_values.shape, as4d(b).shape, strict=True)]
        return [out], lambda: [functions[op](a_values, np.tile(as4d(b), reps))]

    return build


def elementwise_chain(g: GraphBuilder, rng):
    """SUB -> MUL -> DIV (src1 a broadcast row) -> SCALE, and an ADD that writes over its
    own src0 (ggml_add_inplace): each node reads what the one before it wrote."""
    x, y = randn(rng, 4, 6), randn(rng, 4, 6)
    row = (rng.uniform(0.5, 2.0, (1, 6)) * rng.choice([-1, 1], (1, 6))).astype(F32)
    a, b, r = g.input(x), g.input(y), g.input(row)
    diff = g.sub(a, b)
    product = g.mul(diff, b)
    chained = g.div(product, r)
    scaled = g.scale(chained, -0.5)
    summed = g.add(a, b)
    in_place = g.new("F32", [6, 4], op="ADD", srcs=[summed, r], data=summed.data)
    outputs = [diff, product, chained, scaled, summed, in_place]  # summed reads back as in_place overwrote it
    return outputs, lambda: [as4d(v) for v in ((x - y), (x - y) * y, (x - y) * y / row, (x - y) * y / row * -0.5,
                                               x + y + row, x + y + row)]


UNARY_ORACLES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "ABS": np.abs, "NEG": np.negative, "RELU": lambda x: np.maximum(x, 0), "TANH": np.tanh,
    "SIGMOID": lambda x: 1 / (1 + np.exp(-x)), "EXP": np.exp, "SILU": lambda x: x / (1 + np.exp(-x)),
    "GELU": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
    "GELU_QUICK": lambda x: x / (1 + np.exp(-1.702 * x)), "SGN": np.sign, "STEP": lambda x: (x > 0) * 1.0,
    "ELU": lambda x: np.where(x > 0, x, np.expm1(x)),
    "HARDSIGMOID": lambda x: np.clip((x + 3) / 6, 0, 1), "HARDSWISH": lambda x: x * np.clip((x + 3) / 6, 0, 1),
}
GLU_ACTIVATIONS = {"SWIGLU": "SILU", "REGLU": "RELU", "GEGLU": "GELU"}  # the unary op gating each GLU


def unary(kind: str):
    def build(g: GraphBuilder, rng):
        x = randn(rng, 3, 37, scale=2.0)
        return [g.unary(g.input(x), kind)], lambda: [as4d(UNARY_ORACLES[kind](x.astype(np.float64)))]

    return build


def glu(kind: str, *, split: bool, swapped: bool = False):
    activation = UNARY_ORACLES[GLU_ACTIVATIONS[kind]]

    def build(g: GraphBuilder, rng):
        if split:
            a, b = randn(rng, 4, 24), randn(rng, 4, 24)
            out = g.glu(g.input(a), kind, g.input(b))
            return [out], lambda: [as4d(activation(a.astype(np.float64)) * b)]
        a = randn(rng, 4, 48)
        out = g.glu(g.input(a), kind, swapped=swapped)
        x, gate = (a[:, 24:], a[:, :24]) if swapped else (a[:, :24], a[:, 24:])
        return [out], lambda: [as4d(activation(x.astype(np.float64)) * gate)]

    return build


def norm(op: str, *, transposed: bool = False):
    def build(g: GraphBuilder, rng):
        x = randn(rng, 2, 6, 40, scale=3.0) + 1.0
        t = g.input(x)
        if transposed:
            t = g.permute(t, 0, 2, 1, 3)  # rows stay contiguous, dims 1 and 2 swap
        out = g.rms_norm(t, 1e-5) if op == "RMS_NORM" else g.norm(t, 1e-5)
        values = as4d(x).swapaxes(1, 2) if transposed else as4d(x)
        values = values.astype(np.float64)
        if op == "RMS_NORM":
            expected = values / np.sqrt((values ** 2).mean(-1, keepdims=True) + 1e-5)
        else:
            centered = values - values.mean(-1, keepdims=True)
            expected = centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-5)
        return [out], lambda: [expected]

    return build


def mul_mat(weight_type: str, *, rows: int = 24, cols: int = 256, tokens: int = 5, heads=(1, 1),
            permuted_input: bool = False):
    def build(g: GraphBuilder, rng):
        raw, w = quantized_weights(rng, weight_type, rows * heads[0], cols)
        wt = g.input_raw(weight_type, [cols, rows, heads[0]], raw)
        x = randn(rng, heads[1], tokens, cols)
        if permuted_input:
            xt = g.permute(g.input(np.ascontiguousarray(x.transpose(1, 0, 2))), 0, 2, 1, 3)
        else:
            xt = g.input(x)
        out = g.mul_mat(wt, xt)
        weights = w.reshape(heads[0], rows, cols).astype(np.float64)
        repeat = heads[1] // heads[0]
        expected = np.stack([x[h] @ weights[h // repeat].T for h in range(heads[1])])
        return [out], lambda: [as4d(expected)]

    return build


def get_rows(source_type: str):
    def build(g: GraphBuilder, rng):
        raw, table = quantized_weights(rng, source_type, 10, 256 if source_type.endswith("_K") else 64)
        t = g.input_raw(source_type, [table.shape[1], 10], raw)
        index = np.array([3, 0, 9, 3, 7], dtype=np.int32)
        out = g.get_rows(t, g.input(index))
        return [out], lambda: [as4d(table[index])]

    return build


def set_rows(dst_type: str, index_type):
    def build(g: GraphBuilder, rng):
        dst = g.input(np.zeros((6, 16), dtype={"F16": np.float16, "F32": np.float32}[dst_type]))
        src = randn(rng, 3, 16)
        index = np.array([4, 0, 2], dtype=index_type)
        out = g.set_rows(dst, g.input(src), g.input(index))
        expected = np.zeros((6, 16), dtype=F32)
        expected[index] = src.astype(np.float16 if dst_type == "F16" else F32)
        return [out], lambda: [as4d(expected)]

    return build


def set_rows_transposed_cache():
    """The V cache: stored transposed, filled one element per row through a view of
    single-element rows (I64 indices), as llama.cpp does."""
    def build(g: GraphBuilder, rng):
        dims, slots, tokens = 8, 16, 3
        cache = g.input(np.zeros((dims, slots), dtype=np.float16))  # cache[dim][slot]
        rows = g.view(cache, [1, dims * slots], [2])  # every element is a row
        values = randn(rng, tokens, dims)
        slot = np.array([5, 1, 12], dtype=np.int64)
        index = (np.arange(dims)[None, :] * slots + slot[:, None]).reshape(-1)  # token-major, like values
        out = g.set_rows(rows, g.input(values.reshape(-1, 1)), g.input(index))
        expected = np.zeros((dims, slots), dtype=F32)
        expected[:, slot] = values.T.astype(np.float16)
        return [out], lambda: [as4d(expected.reshape(-1, 1))]

    return build


def soft_max(*, mask: str | None = None, scale: float = 1.0, max_bias: float = 0.0):
    def build(g: GraphBuilder, rng):
        x = randn(rng, 4, 5, 12, scale=2.0)  # heads, rows, cols
        m = np.triu(np.full((8, 12), -np.inf, dtype=F32), k=8) if mask else None
        mt = None
        if m is not None:  # (a mask was asked for)
            m[:, 3] = -1.5
            mt = g.input(m.astype(np.float16) if mask == "F16" else m)
        out = g.soft_max(g.input(x), mt, scale=scale, max_bias=max_bias)

        def oracle():
            w = x.astype(np.float64) * scale
            if m is not None:
                n_log2 = 1 << int(math.floor(math.log2(4)))
                m0, m1 = 2 ** (-max_bias / n_log2), 2 ** (-(max_bias / 2) / n_log2)
                slopes = np.array([(m0 ** (h + 1) if h < n_log2 else m1 ** (2 * (h - n_log2) + 1))
                                   if max_bias > 0 else 1.0 for h in range(4)])
                w = w + slopes[:, None, None] * m[:5].astype(np.float64)
            e = np.exp(w - w.max(-1, keepdims=True))
            return [as4d(e / e.sum(-1, keepdims=True))]

        return [out], oracle

    return build


class RopeKnobs(TypedDict):
    """GraphBuilder.rope's frequency keywords, as a case sets them."""

    freq_base: float
    freq_scale: float
    ext_factor: float
    attn_factor: float
    n_ctx_orig: int


def rope(mode: int, *, n_dims: int = 16, yarn: bool = False, f16: bool = False):
    def build(g: GraphBuilder, rng):
        x = randn(rng, 3, 4, 16)  # positions, heads, dims
        positions = np.array([0, 7, 130], dtype=np.int32)
        knobs = RopeKnobs(freq_base=10000.0, freq_scale=1.0, ext_factor=0.0, attn_factor=1.0, n_ctx_orig=0)
        if yarn:
            knobs.update({"freq_scale": 0.25, "ext_factor": 1.0, "n_ctx_orig": 64})
        source = g.input(x.astype(np.float16) if f16 else x)
        out = g.rope(source, g.input(positions), n_dims, mode, **knobs)

        def oracle():
            values = (x.astype(np.float16) if f16 else x).astype(np.float64)
            result = values.copy()
            half = n_dims // 2
            i = np.arange(half)
            theta = positions[:, None] * knobs["freq_base"] ** (-2 * i / n_dims)
            mscale = knobs["attn_factor"]
            interp = knobs["freq_scale"] * theta
            if yarn:
                def corr(n_rot):
                    return n_dims * math.log(knobs["n_ctx_orig"] / (n_rot * 2 * math.pi)) / (2 * math.log(10000.0))
                low, high = max(0, math.floor(corr(32.0))), min(n_dims - 1, math.ceil(corr(1.0)))
                ramp = (1 - np.clip((i - low) / max(0.001, high - low), 0, 1)) * knobs["ext_factor"]
                theta = interp * (1 - ramp) + theta * ramp
                mscale *= 1 + 0.1 * math.log(1 / knobs["freq_scale"])
            else:
                theta = interp
            cos, sin = (np.cos(theta) * mscale)[:, None, :], (np.sin(theta) * mscale)[:, None, :]
            if mode == ROPE_NORMAL:
                x0, x1 = values[..., 0:n_dims:2], values[..., 1:n_dims:2]
                result[..., 0:n_dims:2], result[..., 1:n_dims:2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
            else:
                x0, x1 = values[..., :half], values[..., half:n_dims]
                result[..., :half], result[..., half:n_dims] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
            return [as4d(result)]

        return [out], oracle

    return build


def copy(src_type, dst_type, *, transpose: bool = False):
    def build(g: GraphBuilder, rng):
        x = (randn(rng, 6, 10) * 100).astype(src_type)
        t = g.input(x)
        if transpose:
            t = g.transpose(t)
        target = g.input(np.zeros((10, 6) if transpose else (6, 10), dtype=dst_type))
        out = g.cpy(t, target)
        values = x.T if transpose else x
        return [out], lambda: [as4d(values.astype(dst_type).astype(np.float64))]

    return build


def cont_permuted():
    def build(g: GraphBuilder, rng):
        x = randn(rng, 2, 3, 4, 5)
        out = g.cont(g.permute(g.input(x), 2, 0, 3, 1))
        # source dim i becomes dim axes[i]; in NumPy's reversed order that is transpose(1, 3, 0, 2)
        return [out], lambda: [as4d(x).transpose(1, 3, 0, 2)]

    return build


def flash_attn(*, gqa: int = 1, masked: bool = True):
    def build(g: GraphBuilder, rng):
        d, n_q, n_kv, heads = 16, 3, 8, 4
        q = randn(rng, heads, n_q, d)
        k = randn(rng, heads // gqa, n_kv, d).astype(np.float16)
        v = randn(rng, heads // gqa, n_kv, d).astype(np.float16)
        mask = np.zeros((n_q, n_kv), dtype=np.float16)
        mask[:, 6:] = -np.inf
        qt = g.input(q)
        mt = g.input(mask) if masked else None
        out = g.flash_attn_ext(qt, g.input(k), g.input(v), mt, scale=0.25)

        def oracle():
            kk = np.repeat(k.astype(np.float64), gqa, axis=0)
            vv = np.repeat(v.astype(np.float64), gqa, axis=0)
            s = q.astype(np.float64) @ kk.transpose(0, 2, 1) * 0.25
            if masked:
                s = s + mask.astype(np.float64)
            p = np.exp(s - s.max(-1, keepdims=True))
            o = (p / p.sum(-1, keepdims=True)) @ vv  # (heads, n_q, d)
            return [as4d(o.transpose(1, 0, 2))]  # dst[query][head]

        return [out], oracle

    return build


def reductions(op: str):
    def build(g: GraphBuilder, rng):
        x = randn(rng, 3, 7, 33)
        t = g.input(x)
        if op == "ARGMAX":
            x2 = x[0]
            out = g.argmax(g.input(x2))
            return [out], lambda: [as4d(np.argmax(x2, -1))]
        out = g.sum_rows(t) if op == "SUM_ROWS" else g.mean(t)
        reduce = np.sum if op == "SUM_ROWS" else np.mean
        return [out], lambda: [as4d(reduce(x.astype(np.float64), -1, keepdims=True))]

    return build


def scale_case():
    def build(g: GraphBuilder, rng):
        x = randn(rng, 4, 9)
        return [g.scale(g.input(x), 0.125, 0.5)], lambda: [as4d(x * 0.125 + 0.5)]

    return build


def elementwise(op: str):
    def build(g: GraphBuilder, rng):
        x = np.abs(randn(rng, 4, 9)) + 0.1
        out = g.sqr(g.input(x)) if op == "SQR" else g.sqrt(g.input(x))
        return [out], lambda: [as4d(np.square(x) if op == "SQR" else np.sqrt(x))]

    return build


def acc_case():
    def build(g: GraphBuilder, rng):
        a, b = randn(rng, 4, 8), randn(rng, 2, 3)
        out = g.acc(g.input(a), g.input(b), 32, 64, 64, 4 * 9)  # rows of a, starting at (1, 1)
        expected = a.copy()
        expected[1:3, 1:4] += b
        return [out], lambda: [as4d(expected)]

    return build


QUANT_MATMUL_RTOL = 3e-2  # activations rounded to 8-bit blocks by ggml's CPU backend
CASES: tuple[OpCase, ...] = (
    OpCase("same-shape", "ADD", binary("ADD", (3, 17), (3, 17))),
    OpCase("broadcast-row", "ADD", binary("ADD", (2, 4, 16), (1, 1, 16))),
    OpCase("repeat-tiles", "ADD", binary("ADD", (6, 8), (3, 8))),
    OpCase("strided-src0", "ADD", binary("ADD", (5, 7), (1, 7), strided_a=True)),
    OpCase("chain-in-place", "ADD", elementwise_chain),
    OpCase("broadcast", "SUB", binary("SUB", (4, 6), (1, 6))),
    OpCase("broadcast-heads", "MUL", binary("MUL", (3, 4, 8), (1, 4, 8))),
    OpCase("same-shape", "DIV", binary("DIV", (4, 10), (4, 10))),
    OpCase("scale-and-bias", "SCALE", scale_case()),
    OpCase("square", "SQR", elementwise("SQR")),
    OpCase("root", "SQRT", elementwise("SQRT")),
    *(OpCase(kind.lower(), "UNARY", unary(kind), rtol=2e-3 if kind.startswith("GELU") else 1e-5,
             atol=2e-3 if kind.startswith("GELU") else 1e-5)
      for kind in ("SILU", "GELU", "GELU_QUICK", "RELU", "TANH", "SIGMOID", "EXP", "NEG", "ABS", "SGN", "STEP", "ELU",
                   "HARDSIGMOID", "HARDSWISH")),
    OpCase("swiglu-fused", "GLU", glu("SWIGLU", split=False)),
    OpCase("swiglu-fused-swapped", "GLU", glu("SWIGLU", split=False, swapped=True)),
    OpCase("swiglu-split", "GLU", glu("SWIGLU", split=True)),
    OpCase("geglu-split", "GLU", glu("GEGLU", split=True), rtol=2e-3, atol=2e-3),
    OpCase("reglu-fused", "GLU", glu("REGLU", split=False)),
    OpCase("rows", "NORM", norm("NORM"), rtol=1e-4, atol=1e-4),
    OpCase("rows", "RMS_NORM", norm("RMS_NORM"), rtol=1e-4, atol=1e-4),
    OpCase("permuted", "RMS_NORM", norm("RMS_NORM", transposed=True), rtol=1e-4, atol=1e-4),
    OpCase("rows", "SUM_ROWS", reductions("SUM_ROWS"), rtol=1e-4, atol=1e-4),
    OpCase("rows", "MEAN", reductions("MEAN"), rtol=1e-4, atol=1e-4),
    OpCase("rows", "ARGMAX", reductions("ARGMAX"), rtol=0, atol=0),
    OpCase("f32-to-f16", "CPY", copy(np.float32, np.float16), rtol=1e-3, atol=1e-3),
    OpCase("f16-to-f32", "CPY", copy(np.float16, np.float32)),
    OpCase("transposed-f32", "CPY", copy(np.float32, np.float32, transpose=True)),
    OpCase("f32-to-bf16", "CPY", copy(np.float32, ml_dtypes.bfloat16), rtol=1e-2, atol=1e-2),
    OpCase("i32-transposed", "CPY", copy(np.int32, np.int32, transpose=True), rtol=0, atol=0),
    OpCase("permuted", "CONT", cont_permuted()),
    OpCase("f32", "MUL_MAT", mul_mat("F32"), rtol=1e-4, atol=1e-4),
    OpCase("f16", "MUL_MAT", mul_mat("F16"), rtol=5e-3, atol=5e-3),
    *(OpCase(t.lower(), "MUL_MAT", mul_mat(t), rtol=QUANT_MATMUL_RTOL, atol=QUANT_MATMUL_RTOL)
      for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")),
    OpCase("broadcast-heads", "MUL_MAT", mul_mat("F32", rows=6, cols=32, heads=(2, 6)), rtol=1e-4, atol=1e-4),
    OpCase("permuted-src1", "MUL_MAT", mul_mat("F32", rows=6, cols=32, heads=(3, 3), permuted_input=True),
           rtol=1e-4, atol=1e-4),
    *(OpCase(t.lower(), "GET_ROWS", get_rows(t), rtol=1e-3, atol=1e-3) for t in ("F32", "F16", "Q8_0", "Q4_1", "Q4_K")),
    OpCase("f32-i64", "SET_ROWS", set_rows("F32", np.int64)),
    OpCase("f16-i32", "SET_ROWS", set_rows("F16", np.int32), rtol=1e-3, atol=1e-3, since="3.6.0"),  # I32 rows
    OpCase("transposed-v-cache", "SET_ROWS", set_rows_transposed_cache(), rtol=1e-3, atol=1e-3),
    OpCase("plain", "SOFT_MAX", soft_max(), rtol=1e-5, atol=1e-6),
    OpCase("f32-mask-scale", "SOFT_MAX", soft_max(mask="F32", scale=0.3), rtol=1e-5, atol=1e-6),
    OpCase("f16-mask-alibi", "SOFT_MAX", soft_max(mask="F16", max_bias=8.0), rtol=1e-4, atol=1e-5),
    OpCase("normal", "ROPE", rope(ROPE_NORMAL), rtol=1e-4, atol=1e-4),
    OpCase("neox", "ROPE", rope(ROPE_NEOX), rtol=1e-4, atol=1e-4),
    OpCase("neox-partial", "ROPE", rope(ROPE_NEOX, n_dims=8), rtol=1e-4, atol=1e-4),
    OpCase("normal-yarn", "ROPE", rope(ROPE_NORMAL, yarn=True), rtol=1e-4, atol=1e-4),
    OpCase("neox-f16", "ROPE", rope(ROPE_NEOX, f16=True), rtol=3e-3, atol=3e-3),
    OpCase("masked", "FLASH_ATTN_EXT", flash_attn(), rtol=2e-2, atol=2e-2),
    OpCase("gqa", "FLASH_ATTN_EXT", flash_attn(gqa=2, masked=False), rtol=2e-2, atol=2e-2),
    OpCase("window", "ACC", acc_case()),
)
