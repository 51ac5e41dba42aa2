"""Rotary position embeddings."""

from . import OpSpec, Param, Source

_F = "f32"

SPECS = (
    OpSpec("ROPE", "rope",
           (Source("a", "the vectors [D, heads, tokens, a3]"), Source("positions", "I32 [tokens] (4 x tokens for M-RoPE)"),
            Source("freq_factors", "F32 [n_dims / 2] dividing each pair's frequency", optional=True)),
           (Param(1, "n_dims", "i32", "leading elements of each vector that rotate", 0),
            Param(2, "mode", "enum:NORMAL=0,NEOX=2,MROPE=8,VISION=24,IMROPE=40", "pairing of the rotated elements"),
            Param(4, "n_ctx_orig", "i32", "YaRN: the trained context length"),
            Param(5, "freq_base", _F, "base of the frequencies"), Param(6, "freq_scale", _F, "position scale"),
            Param(7, "ext_factor", _F, "YaRN extrapolation mix (0: off)"),
            Param(8, "attn_factor", _F, "magnitude scale"), Param(9, "beta_fast", _F, "YaRN ramp start"),
            Param(10, "beta_slow", _F, "YaRN ramp end"),
            *(Param(11 + i, f"section{i}", "i32", f"M-RoPE: dimensions of section {i}") for i in range(4)),
            Param(15, "offset", "i32", "first rotated element of each vector", 0)),
           "F32, F16 (a and result alike)", "as a",
           "each pair of the first n_dims elements rotated by position * freq_base^(-2i/n_dims)"),
)
