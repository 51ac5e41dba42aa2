"""Rotary position embeddings."""

from .spec import OpSpec, Param, Source

_F = "f32"

_SOURCES = (
    Source("a", "the vectors [D, heads, tokens, a3]"),
    Source(
        "positions",
        "I32 [tokens]; M-RoPE and vision: I32 [4 * tokens], the time positions of all tokens, "
        "then height, width, extra",
    ),
    Source("freq_factors", "F32 [n_dims / 2] (vision: [n_dims]) dividing each pair's angle", optional=True),
)

_PARAMS = (
    Param(1, "n_dims", "i32", "elements of each vector that rotate (vision: half the vector, which all turns); "
          "even and at most ne0 (ggml's CPU asserts both)", 0),
    Param(
        2,
        "mode",
        "enum:NORMAL=0,NEOX=2,MROPE=8,VISION=24,IMROPE=40",
        "pairing of the rotated elements: NORMAL (2j, 2j+1); NEOX, MROPE, IMROPE (j, j + n_dims/2); "
        "VISION (j, j + n_dims)",
    ),
    Param(4, "n_ctx_orig", "i32", "YaRN: the trained context length"),
    Param(5, "freq_base", _F, "base of the frequencies"),
    Param(6, "freq_scale", _F, "position scale"),
    Param(7, "ext_factor", _F, "YaRN extrapolation mix (0: off)"),
    Param(8, "attn_factor", _F, "magnitude scale"),
    Param(9, "beta_fast", _F, "YaRN ramp start"),
    Param(10, "beta_slow", _F, "YaRN ramp end"),
    *(
        Param(
            11 + i,
            f"section{i}",
            "i32",
            f"M-RoPE / vision: rotated pairs of section {i} (time, height, width, extra); 0 elsewhere",
            0,
        )
        for i in range(4)
    ),
    Param(
        15,
        "offset",
        "i32",
        "first rotated element of each vector (set by ggml_rope_set_offset, 0.3.36 on; "
        "earlier releases leave the word 0 and ignore it); even, with offset + n_dims <= ne0 (ggml's CPU "
        "asserts both); not for VISION",
        0,
    ),
)

_SEMANTICS = (
    "pair j of the rotated elements turns by theta_j = p * freq_base^(-2j/n_dims) (float32 ladder), "
    "divided by freq_factors[j], YaRN-blended, cos/sin scaled by attn_factor; p is the token's position, "
    "for MROPE/IMROPE the one of the section holding j, for VISION per section with its own ladder"
)

SPECS = (
    OpSpec(
        name="ROPE",
        sources=_SOURCES,
        params=_PARAMS,
        types="F32, F16 (a and result alike)",
        result="as a",
        semantics=_SEMANTICS,
    ),
    OpSpec(
        name="ROPE_BACK",
        sources=_SOURCES,
        params=_PARAMS,
        types="F32, F16 (a and result alike)",
        result="as a",
        semantics="the inverse rotation of ROPE (sin negated): the gradient of ROPE's input from its output's",
    ),
)
