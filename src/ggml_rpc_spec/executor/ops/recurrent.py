"""Recurrent and linear-attention state updates: SSM_CONV, SSM_SCAN, RWKV_WKV6, GATED_LINEAR_ATTN,
RWKV_WKV7, GATED_DELTA_NET.

The recurrences run token by token (each step depends on the last), every step one NumPy
expression over all sequences, heads and state elements at once.  Products and sums are
float32 as in ggml's CPU kernels, in the order they are written there where it matters.
The ops' results are single F32 tensors (outputs, then states) written through a flat view,
so every kernel checks that the result is dense and exactly as large as the layout needs.
"""

from __future__ import annotations

import numpy as np

from ggml_rpc_spec.protocol.ops import spec_for

from ..registry import (ExecContext, Kernels, OP_PARAMS, STATE_IDS, Step, in_range, packed, readable,
                        require)
from ..tensors import TensorRef

kernels = Kernels()  # this family's kernels (see executor.ops)


def _f32(node: TensorRef, **roles: TensorRef) -> None:
    readable(node, *roles.values())
    for role, tensor in roles.items():
        require(tensor.kind.name == "F32", node, "{} is {}, not F32", role, tensor.kind.name)


def _flat_result(node: TensorRef, elements: int) -> np.ndarray:
    """The result (F32, dense, exactly `elements` values) as a flat writable view, in ggml order."""
    require(node.kind.name == "F32", node, "the result must be F32")
    ne, nb = node.ne, node.nb
    dense = (4, 4 * ne[0], 4 * ne[0] * ne[1], 4 * ne[0] * ne[1] * ne[2])
    require(all(n == 1 or s == d for n, s, d in zip(ne, nb, dense)), node, "the result must be contiguous")
    require(node.n_elements == elements, node, "the result holds {} values, the op writes {}",
            node.n_elements, elements)
    flat = node.view().reshape(-1)
    require(elements == 0 or np.may_share_memory(flat, node.view()), node, "the result must be contiguous")
    return flat


def _ggml_order(tensor: TensorRef) -> np.ndarray:
    """A source's values in ggml element order (ne0 fastest), as ggml walks a contiguous tensor."""
    return tensor.view().reshape(-1)


def _snapshot_count(node: TensorRef, ctx: ExecContext) -> int:
    """K of SSM_SCAN / GATED_DELTA_NET; releases older than the word keep one state."""
    if not spec_for(node.op).param("K").read_by(ctx.ggml.release):
        return 1
    k = node.params().K
    require(k >= 1, node, "snapshot count K = {} is not >= 1", k, rule=OP_PARAMS)
    return k


def _softplus(x: np.ndarray) -> np.ndarray:
    """ggml_compute_softplus_f32: x above 20 as is, else log(1 + exp(x))."""
    return np.where(x > 20.0, x, np.log(np.float32(1) + np.exp(np.minimum(x, np.float32(20)))))


# -- Mamba ---------------------------------------------------------------------------------------


@kernels.kernel("SSM_CONV")
def build_ssm_conv(node: TensorRef, ctx: ExecContext) -> Step:
    """result[s, t, i] = sum_k sx[s, i, t + k] * c[i, k], summed in float in tap order."""
    sx, c = node.src(0), node.src(1)
    _f32(node, sx=sx, c=c)
    require(sx.nb[0] == 4 and sx.nb[1] == 4 * sx.ne[0], node, "sx rows must be packed (nb {}): ggml asserts it", sx.nb)
    n_conv, n_inner = c.ne[0], c.ne[1]
    n_tokens, n_seqs = node.ne[1], node.ne[2]
    require(n_conv >= 1 and c.ne[2] == c.ne[3] == 1, node, "c must be a [d_conv, d_inner] matrix")
    require(sx.ne == (n_conv - 1 + n_tokens, n_inner, n_seqs, 1), node,
            "sx {} must be [d_conv - 1 + n_t, d_inner, n_s] for c {} and result {}", sx.ne, c.ne, node.ne)
    require(node.kind.name == "F32" and node.ne == (n_inner, n_tokens, n_seqs, 1), node, "result shape {}", node.ne)

    def run():
        windows = sx.view()[0]  # (n_s, d_inner, d_conv - 1 + n_t)
        weights = c.view()[0, 0]  # (d_inner, d_conv)
        total = windows[:, :, 0:n_tokens] * weights[:, 0:1]
        for tap in range(1, n_conv):
            total += windows[:, :, tap:tap + n_tokens] * weights[:, tap:tap + 1]
        node.view()[0] = total.transpose(0, 2, 1)

    return run


@kernels.kernel("SSM_SCAN")
def build_ssm_scan(node: TensorRef, ctx: ExecContext) -> Step:
    s, x, dt, a, b, c, ids = (node.src(i) for i in range(7))
    _f32(node, s=s, x=x, dt=dt, A=a, B=b, C=c)
    # ggml asserts only nb0 of each, steps by nb over tokens and sequences, and reads within a
    # token's slice as packed memory (writing the result's states at s's nb3): layouts that
    # are not packed there are refused rather than guessed
    for tensor, dims in ((s, 4), (x, 2), (dt, 1), (a, 2), (b, 2), (c, 2)):
        require(packed(tensor, upto=dims), node, "{!r} must be packed in its first {} dimensions (ne {}, nb {}): "
                "ggml reads it so", tensor.name, dims, tensor.ne, tensor.nb)
    readable(node, ids)
    require(ids.kind.name == "I32", node, "ids must be I32")
    d_state, head_dim, n_head, n_states = s.ne
    n_tokens, n_seqs = x.ne[2], x.ne[3]
    n_group = b.ne[1]
    require(x.ne[:2] == (head_dim, n_head), node, "x {} must be [head_dim, n_head, ...] of s {}", x.ne, s.ne)
    require(dt.ne == (n_head, n_tokens, n_seqs, 1), node, "dt {} must be [n_head, n_t, n_s]", dt.ne)
    require(a.ne[0] in (1, d_state) and a.ne[1:] == (n_head, 1, 1), node, "A {} must be [1 or d_state, n_head]", a.ne)
    require(b.ne == c.ne and b.ne[0] == d_state and b.ne[2:] == (n_tokens, n_seqs), node,
            "B {} and C {} must be [d_state, n_group, n_t, n_s]", b.ne, c.ne)
    require(n_group >= 1 and n_head % n_group == 0, node, "{} groups do not divide {} heads", n_group, n_head)
    require(ids.ne == (n_seqs, 1, 1, 1), node, "ids {} must hold one state id per sequence", ids.ne)
    snapshots = _snapshot_count(node, ctx)
    require(a.ne[0] == 1 or snapshots == 1, node, "Mamba-1 (A [d_state, heads]) keeps one state, not K = {} "
            "(ggml asserts it)", snapshots, rule=OP_PARAMS)
    y_size, state_size = x.n_elements, d_state * head_dim * n_head * n_seqs
    require(node.n_elements == y_size + snapshots * state_size, node,
            "K = {} states of {} values after {} outputs do not fit the result of {}",
            snapshots, state_size, y_size, node.n_elements, rule=OP_PARAMS)
    out = _flat_result(node, y_size + snapshots * state_size)
    mamba1 = a.ne[0] != 1
    group_of_head = np.arange(n_head) // (n_head // n_group)
    y = out[:y_size].reshape(n_seqs, n_tokens, n_head, head_dim)
    kept = out[y_size:].reshape(snapshots, n_seqs, n_head, head_dim, d_state)

    def run():
        which = ids.view().reshape(-1).astype(np.int64)
        in_range(node, which, n_states, "state id", STATE_IDS)
        state = s.view()[which]  # (n_s, n_head, head_dim, d_state), a copy
        step = _softplus(dt.view()[0])  # (n_s, n_t, n_head)
        decay_rate = a.view()[0, 0]  # (n_head, 1 or d_state)
        inputs = x.view()  # (n_s, n_t, n_head, head_dim)
        update = np.empty_like(state)  # in place: no fresh pages per token
        for t in range(n_tokens):
            dt_t = step[:, t]  # (n_s, n_head)
            if mamba1:  # a decay per state element
                state *= np.exp(dt_t[:, :, None] * decay_rate)[:, :, None, :]
            else:  # one decay per head
                state *= np.exp(dt_t * decay_rate[:, 0])[:, :, None, None]
            x_dt = inputs[:, t] * dt_t[:, :, None]  # (n_s, n_head, head_dim)
            state += np.multiply(b.view()[:, t][:, group_of_head, None, :], x_dt[:, :, :, None], out=update)
            y[:, t] = np.matmul(state, c.view()[:, t][:, group_of_head, :, None])[..., 0]
            back = n_tokens - 1 - t
            if 0 < back < snapshots:
                kept[back] = state
        if n_tokens:
            kept[0] = state

    return run


# -- RWKV and gated linear attention --------------------------------------------------------------


def _wkv(node: TensorRef, tokens: dict[str, TensorRef], per_head: dict[str, TensorRef], state: TensorRef,
         update) -> Step:
    """RWKV_WKV6/7 and GATED_LINEAR_ATTN: checks, then the token loop.  `tokens` are [S, H, T]
    inputs, `per_head` [S, H] ones; `update(state, inputs, t) -> (state, out)` advances
    sequence-local token t of every sequence at once, state (n_seqs, H, S, S), inputs the
    token inputs as (n_seqs, T / n_seqs, H, S) then the per-head ones as (H, S), in order.
    As ggml, T and H come from src[1], C = S * H from the result, n_seqs from the state."""
    _f32(node, **tokens, **per_head, state=state)
    n_head, n_tokens = node.src(1).ne[1], node.src(1).ne[2]
    channels = node.ne[0]
    require(n_head >= 1 and channels % n_head == 0, node, "{} channels do not split into {} heads", channels, n_head)
    size = channels // n_head
    for role, tensor in tokens.items():
        require(tensor.ne == (size, n_head, n_tokens, 1), node, "{} {} must be [{}, {}, {}]", role, tensor.ne, size,
                n_head, n_tokens)
    for role, tensor in per_head.items():
        require(tensor.ne == (size, n_head, 1, 1), node, "{} {} must be [{}, {}]", role, tensor.ne, size, n_head)
    n_seqs = state.ne[1]
    require(n_seqs >= 1 and n_tokens % n_seqs == 0, node, "{} tokens do not split into {} sequences", n_tokens, n_seqs)
    require(state.n_elements == size * size * n_head * n_seqs, node, "the state holds {} values, not S*S*H*n_seqs = {}",
            state.n_elements, size * size * n_head * n_seqs)
    require(node.ne == (channels, n_tokens + size * n_seqs, 1, 1), node, "result shape {}", node.ne)
    out = _flat_result(node, channels * (n_tokens + size * n_seqs))
    per_seq, out_size = n_tokens // n_seqs, n_tokens * channels
    y = out[:out_size].reshape(n_seqs, per_seq, n_head, size)

    def run():
        inputs = tuple(t.view()[0].reshape(n_seqs, per_seq, n_head, size) for t in tokens.values()) + tuple(
            t.view()[0, 0] for t in per_head.values())
        current = _ggml_order(state).reshape(n_seqs, n_head, size, size)
        for t in range(per_seq):
            current, y[:, t] = update(current, inputs, t)
        if per_seq:
            out[out_size:] = current.reshape(-1)

    return run


@kernels.kernel("RWKV_WKV6")
def build_rwkv_wkv6(node: TensorRef, ctx: ExecContext) -> Step:
    """state[h, i, j] (i over keys, j over values): out[j] = sum_i r[i] (tf[i] k[i] v[j] + state[i, j]);
    state[i, j] = state[i, j] td[i] + k[i] v[j]."""
    k, v, r, tf, td, state = (node.src(i) for i in range(6))

    def update(s, inputs, t):
        keys, values, recept, decay, first = inputs
        kv = keys[:, t, :, :, None] * values[:, t, :, None, :]
        out = np.matmul(recept[:, t, :, None, :], kv * first[:, :, None] + s)[:, :, 0, :]
        return s * decay[:, t, :, :, None] + kv, out

    return _wkv(node, dict(k=k, v=v, r=r, td=td), dict(tf=tf), state, update)


@kernels.kernel("GATED_LINEAR_ATTN")
def build_gla(node: TensorRef, ctx: ExecContext) -> Step:
    """state[h, i, j] (i over keys, j over values): state = state * g[i] + k[i] v[j];
    out[j] = sum_i state[i, j] * (q[i] * scale)."""
    k, v, q, g, state = (node.src(i) for i in range(5))
    scale = np.float32(node.params().scale)

    def update(s, inputs, t):
        keys, values, queries, gates = inputs
        s = s * gates[:, t, :, :, None] + keys[:, t, :, :, None] * values[:, t, :, None, :]
        return s, np.matmul((queries[:, t] * scale)[:, :, None, :], s)[:, :, 0, :]

    return _wkv(node, dict(k=k, v=v, q=q, g=g), {}, state, update)


@kernels.kernel("RWKV_WKV7")
def build_rwkv_wkv7(node: TensorRef, ctx: ExecContext) -> Step:
    """state[h, i, j] (i over values, j over keys): sa[i] = sum_j a[j] state[i, j];
    state[i, j] = state[i, j] w[j] + v[i] k[j] + sa[i] b[j]; out[i] = sum_j state[i, j] r[j]."""
    r, w, k, v, a, b, state = (node.src(i) for i in range(7))

    def update(s, inputs, t):
        recept, decay, keys, values, ai, bi = (x[:, t] for x in inputs)
        sa = np.matmul(s, ai[:, :, :, None])  # (n_seqs, H, S, 1)
        s = s * decay[:, :, None, :] + values[:, :, :, None] * keys[:, :, None, :] + sa * bi[:, :, None, :]
        return s, np.matmul(s, recept[:, :, :, None])[..., 0]

    return _wkv(node, dict(r=r, w=w, k=k, v=v, a=a, b=b), {}, state, update)


# -- gated delta rule -----------------------------------------------------------------------------


@kernels.kernel("GATED_DELTA_NET")
def build_gated_delta_net(node: TensorRef, ctx: ExecContext) -> Step:
    """Per head, the state is kept as M[j, i] = S[i, j] (ggml's layout: row j holds column j
    of S, i over keys, j over values)."""
    q, k, v, g, beta, state = (node.src(i) for i in range(6))
    _f32(node, q=q, k=k, v=v, g=g, beta=beta, state=state)
    size, n_head, n_tokens, n_seqs = v.ne
    for name, t in (("q", q), ("k", k)):
        require(t.ne[0] == size and t.ne[2] == n_tokens, node, "{} {} must be [{}, heads, {}, seqs]", name, t.ne,
                size, n_tokens)
        require(t.ne[1] >= 1 and t.ne[3] >= 1 and n_seqs % t.ne[3] == 0, node,
                "{} {} does not broadcast over v {}", name, t.ne, v.ne)
    require(g.ne in ((1, n_head, n_tokens, n_seqs), (size, n_head, n_tokens, n_seqs)), node,
            "g {} must be [1 or {}, {}, {}, {}]", g.ne, size, n_head, n_tokens, n_seqs)
    require(beta.ne == (1, n_head, n_tokens, n_seqs), node, "beta {} must be [1, {}, {}, {}]", beta.ne, n_head,
            n_tokens, n_seqs)
    state_size = size * size * n_head * n_seqs
    require(state.n_elements == state_size, node, "state holds {} values, not S_v*S_v*H*n_seqs = {}",
            state.n_elements, state_size)
    snapshots = _snapshot_count(node, ctx)
    out_size = size * n_head * n_tokens * n_seqs
    require(node.n_elements == out_size + snapshots * state_size, node,
            "K = {} states of {} values after {} outputs do not fit the result of {}",
            snapshots, state_size, out_size, node.n_elements, rule=OP_PARAMS)
    out = _flat_result(node, out_size + snapshots * state_size)
    per_key = g.ne[0] == size
    scale = np.float32(1) / np.sqrt(np.float32(size))
    heads = np.arange(n_head)
    seqs = np.arange(n_seqs)
    q_at = (seqs // max(n_seqs // q.ne[3], 1))[:, None], (heads % q.ne[1])[None, :]  # as ggml: seqs repeat
    k_at = (seqs // max(n_seqs // k.ne[3], 1))[:, None], (heads % k.ne[1])[None, :]  # in blocks, heads cycle
    attn = out[:out_size].reshape(n_seqs, n_tokens, n_head, size)
    kept = out[out_size:].reshape(snapshots, n_seqs, n_head, size, size)

    def run():
        m = _ggml_order(state).reshape(n_seqs, n_head, size, size).copy()
        update = np.empty_like(m)
        queries = q.view().transpose(0, 2, 1, 3)[q_at]  # (n_seqs, H, T, S)
        keys = k.view().transpose(0, 2, 1, 3)[k_at]
        values = v.view()  # (n_seqs, T, H, S)
        gates = np.exp(g.view())  # (n_seqs, T, H, 1 or S)
        strengths = beta.view()[..., 0]  # (n_seqs, T, H)
        for t in range(n_tokens):
            if per_key:
                m *= gates[:, t, :, None, :]
            else:
                m *= gates[:, t, :, :, None]
            key = keys[:, :, t]  # (n_seqs, H, S)
            seen = np.matmul(m, key[..., None])[..., 0]
            delta = (values[:, t] - seen) * strengths[:, t, :, None]
            m += np.multiply(delta[..., :, None], key[..., None, :], out=update)
            attn[:, t] = np.matmul(m, queries[:, :, t, :, None])[..., 0] * scale
            back = n_tokens - 1 - t
            if snapshots > 1 and back < snapshots:
                kept[back] = m
        if snapshots == 1:
            kept[0] = m

    return run
