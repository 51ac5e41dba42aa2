"""Recurrent and linear-attention state updates (Mamba, RWKV, gated linear / delta attention).

Every op here returns one F32 tensor holding the per-token outputs followed by the new
states, and runs a recurrence over the tokens of each sequence.  The state ids of SSM_SCAN
are read from a tensor: each MUST name one of the states of `s` (exec.state-ids).  The
snapshot count K of SSM_SCAN (from 5.0.0) and GATED_DELTA_NET (from 4.0.2) places the
states in the result: K MUST be at least 1, 1 for SSM_SCAN with Mamba-1 states, and the
result exactly as large as K says (exec.op-params).  Older releases ignore that word and
keep one state.
"""

from .spec import Draw, OpSpec, Param, Source


def _snapshots(since: str) -> Param:
    return Param(
        0,
        "K",
        "i32",
        "state snapshots kept in the result: the last K states, most recent first; with fewer tokens than K "
        "only slots 0 .. n_t - 1 are written, the older ones keep what the result's memory held "
        "(older releases ignore the word and keep one)",
        1,
        since=since,
        legacy=1,
    )


_STATE_OPS = "F32 throughout, result F32"

SPECS = (
    OpSpec(
        name="SSM_CONV",
        sources=(
            Source("sx", "the conv window and tokens [d_conv - 1 + n_t, d_inner, n_s]"),
            Source("c", "the conv1d weights [d_conv, d_inner]"),
        ),
        params=(),
        types="F32",
        result="[d_inner, n_t, n_s]",
        semantics="result[s, t, i] = sum over k < d_conv of sx[s, i, t + k] * c[i, k] (float, k in order)",
    ),
    OpSpec(
        name="SSM_SCAN",
        sources=(
            Source("s", "the states [d_state, head_dim, n_head, n_states]"),
            Source("x", "the inputs [head_dim, n_head, n_t, n_s]"),
            Source("dt", "time steps [n_head, n_t, n_s]"),
            Source("A", "decay [d_state, n_head] (Mamba-1) or [1, n_head] (Mamba-2)"),
            Source("B", "input projection [d_state, n_group, n_t, n_s]"),
            Source("C", "output projection [d_state, n_group, n_t, n_s]"),
            Source("ids", "I32 [n_s]: the state each sequence starts from, each in [0, n_states)", index_rule="exec.state-ids"),
        ),
        params=(_snapshots("5.0.0"),),
        types="F32, ids I32; K > 1 only with Mamba-2's A [1, n_head] (ggml's CPU asserts K = 1 for Mamba-1)",
        result="F32 [n_elements(x) + K * d_state * head_dim * n_head * n_s]",
        semantics="per token, state = state * exp(softplus(dt) * A) + B * x * softplus(dt) and y = state . C; the "
        "result is y [head_dim, n_head, n_t, n_s] then the final state per sequence, then (K > 1) the states "
        "1 .. K-1 tokens back",
    ),
    OpSpec(
        name="RWKV_WKV6",
        sources=(
            Source("k", "keys [S, H, T]"),
            Source("v", "values [S, H, T]"),
            Source("r", "receptance [S, H, T]"),
            Source("tf", "time_first (bonus) [S, H]"),
            Source("td", "time_decay [S, H, T]"),
            Source("state", "the states, S * S * H per sequence [S * S * H, n_seqs]"),
        ),
        params=(),
        types=_STATE_OPS,
        result="[S * H, T + S * n_seqs]",
        semantics="per head, kv = k (x) v; out = r . (tf * kv + state); state = state * td + kv; tokens are n_seqs "
        "runs of T / n_seqs",
    ),
    OpSpec(
        name="GATED_LINEAR_ATTN",
        sources=(
            Source("k", "keys [S, H, T]"),
            Source("v", "values [S, H, T]"),
            Source("q", "queries [S, H, T]"),
            Source("g", "gates [S, H, T]"),
            Source("state", "the states [S * S * H, n_seqs]"),
        ),
        params=(Param(0, "scale", "f32", "factor applied to q"),),
        types=_STATE_OPS,
        result="[S * H, T + S * n_seqs]",
        semantics="per head, state = state * g + k (x) v; out = (q * scale) . state",
    ),
    OpSpec(
        name="RWKV_WKV7",
        sources=(
            Source("r", "receptance [S, H, T]"),
            Source("w", "decay [S, H, T]"),
            Source("k", "keys [S, H, T]"),
            Source("v", "values [S, H, T]"),
            Source("a", "in-context learning rate term [S, H, T]"),
            Source("b", "its key term [S, H, T]"),
            Source("state", "the states [S * S * H, n_seqs]"),
        ),
        params=(),
        types=_STATE_OPS,
        result="[S * H, T + S * n_seqs]",
        semantics="per head, with state[i, j] (i over values, j over keys): sa = state . a; state = state * w + v (x) k "
        "+ sa (x) b; out = state . r",
    ),
    OpSpec(
        name="GATED_DELTA_NET",
        sources=(
            Source("q", "queries [S_k, H_q, T, n_q]: head h of v reads head h % H_q"),
            Source("k", "keys [S_k, H_k, T, n_k]"),
            Source("v", "values [S_v, H, T, n_seqs]"),
            Source("g", "log gates [1 or S_v, H, T, n_seqs]"),
            Source("beta", "write strengths [1, H, T, n_seqs]"),
            Source("state", "the initial states [S_v, S_v, H, n_seqs]"),
        ),
        params=(_snapshots("4.0.2"),),
        types="F32",
        result="[S_v * H, T * n_seqs + K * S_v * n_seqs]",
        semantics="per head, S = S * exp(g) (per row of keys when g has S_v values); delta = (v - S^T k) * beta; "
        "S += k (x) delta; out = S^T q / sqrt(S_v); the result is out [S_v, H, T, n_seqs], then the final "
        "state per head and sequence, then (K > 1) the states 1 .. K-1 tokens back",
    ),
)

_SEQ = "S=1..4 H=1..3 NS=1..2 TS=1..3 T=NS*TS"
_STATE_RESULT = "[S*H, T+S*NS] F32"

# How to draw a valid node of each op (differential fuzzing; see spec.Draw).  SSM_SCAN: Mamba-2
# (A [1, heads]) or Mamba-1 (A [d_state, heads], head_dim 1, one state).  K snapshots at most
# as many as tokens: the slots further back are left as the result's memory held them.
# RWKV_WKV7's head size is a multiple of 64: ggml's SIMD kernel steps through a head in
# GGML_F32_STEP elements (32 or 64) and reads past shorter ones.
DRAWS = {
    "SSM_CONV": Draw("DC=1..4 DI=1..6 NT=1..4 NS=1..2", ("[DC-1+NT, DI, NS] F32 cont", "[DC, DI] F32 cont"),
                     "[DI, NT, NS] F32"),
    "SSM_SCAN": Draw(
        "M2=0|1 DS=1..8 HX=1..3 HD=1+M2*(HX-1) NG=1..2 G=1..2 NH=NG*G NT=1..4 NS=1..2 NST=NS..NS+2 K=1..1+M2*(NT-1)",
        ("[DS, HD, NH, NST] F32 cont", "[HD, NH, NT, NS] F32 cont", "[NH, NT, NS] F32 cont",
         "[1 if M2 else DS, NH] F32 cont", "[DS, NG, NT, NS] F32 cont", "[DS, NG, NT, NS] F32 cont",
         "[NS] I32 cont ids<NST distinct"),
        "[HD*NH*NT*NS+K*DS*HD*NH*NS] F32",
        nmse=2e-7,
    ),
    "RWKV_WKV6": Draw(_SEQ, ("[S, H, T] F32 cont",) * 3 + ("[S, H] F32 cont", "[S, H, T] F32 cont",
                                                            "[S*S*H, NS] F32 cont"), _STATE_RESULT),
    "GATED_LINEAR_ATTN": Draw(_SEQ, ("[S, H, T] F32 cont",) * 4 + ("[S*S*H, NS] F32 cont",), _STATE_RESULT),
    "RWKV_WKV7": Draw(_SEQ.replace("S=1..4", "S=64"), ("[S, H, T] F32 cont",) * 6 + ("[S*S*H, NS] F32 cont",),
                      _STATE_RESULT, nmse=5e-4),
    "GATED_DELTA_NET": Draw(
        "S=1..4 HQ=1..2 G=1..2 H=HQ*G T=1..3 NS=1..2 GS=1|S K=1..T",
        ("[S, HQ, T, NS] F32 cont", "[S, HQ, T, NS] F32 cont", "[S, H, T, NS] F32 cont", "[GS, H, T, NS] F32 cont",
         "[1, H, T, NS] F32 cont", "[S, S, H, NS] F32 cont"),
        "[S*H, T*NS+K*S*NS] F32",
    ),
}
