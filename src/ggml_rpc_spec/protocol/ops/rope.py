"""Rotary position embeddings."""

from .spec import Draw, OpSpec, Param, Source

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
        since="7.0.0",
        legacy=0,
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

# How to draw a valid node of either op (differential fuzzing; see spec.Draw): M-RoPE modes
# (8 and up) take four positions per token and sections; VISION turns whole rows, no offset.
_DRAW = Draw(
    "T=F32|F16 mode=0|2|8|24|40 P=1..4 D=4*P Hh=1..3 Tk=1..4 MR=int(mode>=8) V=int(mode==24) ND=1..D//2 "
    "n_dims=(D//2)*V+2*ND*(1-V) OF=0..(D-n_dims)//2 offset=2*OF*(1-V) "
    "S0=1..P S1=0..P S2=0..P S3=0..P section0=S0*MR section1=S1*MR section2=S2*MR section3=S3*MR "
    "FF=0|1 freq_base=10000|500000|50 freq_scale=1|0.25 ext_factor=0|1 attn_factor=1|0.7 n_ctx_orig=0|4096 "
    "beta_fast=32|8 beta_slow=1|2",
    ("[D, Hh, Tk, 1] T rows", "[Tk*(1+3*MR)] I32 cont ids<4096", "[D, 1, 1, 1] F32 pos absent:not(FF)"),
    "[D, Hh, Tk, 1] T",
    nmse=1e-6,
)
DRAWS = {"ROPE": _DRAW, "ROPE_BACK": _DRAW}
