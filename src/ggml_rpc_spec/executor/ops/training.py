"""Gradients, losses and optimizer steps: SILU_BACK, RMS_NORM_BACK, SOFT_MAX_BACK,
CROSS_ENTROPY_LOSS(_BACK), OPT_STEP_ADAMW, OPT_STEP_SGD, FLASH_ATTN_BACK.

Row sums that ggml accumulates in double (ggml_float) are summed in float64 here (without a
float64 copy: sum(dtype=...)); dot products ggml takes with ggml_vec_dot_f32 are float.  The
optimizer steps update their parameter tensors (and AdamW its moments) in place, as ggml's
CPU does: the node is a view of the parameters.
"""

from __future__ import annotations

import numpy as np

from ggml_rpc_spec.protocol.versions import parse_version

from ..registry import ExecContext, Kernels, OP_PARAMS, Step, contiguous, map_rows, readable, require, same_shape
from ..tensors import TensorRef

kernels = Kernels()  # this family's kernels (see executor.ops)

F32 = np.float32


def _types(node: TensorRef, allowed: tuple[str, ...] = ("F32",), **roles: TensorRef) -> None:
    readable(node, *roles.values())
    for role, tensor in roles.items():
        require(tensor.kind.name in allowed, node, "{} is {}, not {}", role, tensor.kind.name, " or ".join(allowed))


def _alike(node: TensorRef, *tensors: TensorRef) -> None:
    for tensor in tensors:
        same_shape(node, node, tensor)


@kernels.kernel("SILU_BACK")
def build_silu_back(node: TensorRef, ctx: ExecContext) -> Step:
    dy, x = node.src(0), node.src(1)
    _types(node, ("F32", "F16"), dy=dy, x=x, result=node)
    require(dy.kind == x.kind == node.kind, node, "dy, x and the result must share one type")
    _alike(node, dy, x)

    def silu_back(grad, xs):
        s = F32(1) / (F32(1) + np.exp(-xs))
        return grad * s * (F32(1) + xs * (F32(1) - s))

    return map_rows(node, silu_back, dy, x)  # ggml steps from row to row by nb1 alone


FUSED_RMS_NORM_BACK = (7, 0, 0)  # 0.3.36's ggml computes dx in one expression, 0.3.20's in vector calls


@kernels.kernel("RMS_NORM_BACK")
def build_rms_norm_back(node: TensorRef, ctx: ExecContext) -> Step:
    """dx = (dz + x * (-sum(x dz) / (sum(x x) + eps n))) / sqrt(sum(x x) / n + eps), per row."""
    dz, x = node.src(0), node.src(1)
    _types(node, dz=dz, x=x, result=node)
    _alike(node, dz, x)
    eps = F32(node.params().eps)
    n = F32(x.ne[0])
    fused = parse_version(ctx.ggml.release) >= FUSED_RMS_NORM_BACK

    def run():
        xs, grads = x.read(), dz.read()
        sum_xx = (xs * xs).sum(axis=-1, keepdims=True, dtype=np.float64).astype(F32)
        sum_xdz = (xs * grads).sum(axis=-1, keepdims=True, dtype=np.float64)
        rrms = F32(1) / np.sqrt(sum_xx / n + eps)
        scale_x = (-sum_xdz).astype(F32) / (sum_xx + eps * n)
        if fused:  # one expression, which the compiler contracts to fma(x, scale_x, dz)
            node.write((xs.astype(np.float64) * scale_x + grads).astype(F32) * rrms)
        else:  # vector calls, each rounding: x * scale_x, + dz, * rrms
            node.write((xs * scale_x + grads) * rrms)

    return run


@kernels.kernel("SOFT_MAX_BACK")
def build_soft_max_back(node: TensorRef, ctx: ExecContext) -> Step:
    """dx = scale * y * (dy - y . dy), per row."""
    dy, y = node.src(0), node.src(1)
    _types(node, dy=dy, y=y, result=node)
    contiguous(node, dy, y)
    _alike(node, dy, y)
    p = node.params()
    require(p.max_bias == 0, node, "max_bias {} is not 0 (ggml's CPU takes no ALiBi here)", p.max_bias,
            rule=OP_PARAMS)
    scale = F32(p.scale)

    def run():
        grads, probs = dy.read(), y.read()
        dot = np.einsum("...i,...i->...", probs, grads)[..., None]  # float, as ggml_vec_dot_f32
        node.write((grads - dot) * probs * scale)

    return run


def _softmax_rows(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits - row max, sum of their exp in float64), per row."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted, np.exp(shifted).sum(axis=-1, keepdims=True, dtype=np.float64)


@kernels.kernel("CROSS_ENTROPY_LOSS")
def build_cross_entropy_loss(node: TensorRef, ctx: ExecContext) -> Step:
    """-(1/rows) sum over rows of labels . (logits - max - log(sum exp(logits - max)))."""
    logits, labels = node.src(0), node.src(1)
    _types(node, logits=logits, labels=labels, result=node)
    same_shape(node, logits, labels)
    require(node.n_elements == 1, node, "the loss is one value")
    rows = logits.n_elements // max(logits.ne[0], 1)
    factor = F32(-1) / F32(rows) if rows else F32(0)

    def run():
        shifted, total = _softmax_rows(logits.read())
        log_probs = shifted - np.log(total.astype(F32))
        per_row = (log_probs * labels.read()).sum(axis=-1, dtype=np.float64).astype(F32)
        node.write(F32(per_row.sum(dtype=np.float64)) * factor)

    return run


@kernels.kernel("CROSS_ENTROPY_LOSS_BACK")
def build_cross_entropy_loss_back(node: TensorRef, ctx: ExecContext) -> Step:
    """(softmax(logits) - labels) * grad / rows, per row."""
    grad, logits, labels = node.src(0), node.src(1), node.src(2)
    _types(node, grad=grad, logits=logits, labels=labels, result=node)
    _alike(node, logits, labels)
    require(grad.n_elements >= 1, node, "grad must hold the loss gradient")
    rows = F32(logits.n_elements // max(logits.ne[0], 1))

    def run():
        shifted, total = _softmax_rows(logits.read())
        probs = np.exp(shifted) * (1.0 / total).astype(F32)
        node.write((probs - labels.read()) * (grad.view().reshape(-1)[0] / rows))

    return run


def _optimizer_params(node: TensorRef, params: TensorRef, count: int) -> None:
    _types(node, params=params)
    require(params.n_elements == count, node, "the optimizer takes {} parameters, not {}", count, params.n_elements)


@kernels.kernel("OPT_STEP_ADAMW")
def build_opt_step_adamw(node: TensorRef, ctx: ExecContext) -> Step:
    a, grad, m, v, params = (node.src(i) for i in range(5))
    _types(node, a=a, grad=grad, m=m, v=v)
    for tensor in (grad, m, v):
        same_shape(node, a, tensor)
    _optimizer_params(node, params, 7)

    def run():
        alpha, beta1, beta2, eps, wd, beta1h, beta2h = params.view().reshape(-1).tolist()
        alpha, beta1, beta2, eps, beta1h, beta2h = map(F32, (alpha, beta1, beta2, eps, beta1h, beta2h))
        keep = F32(1) - alpha * F32(wd)
        g = grad.read()
        moment1 = m.view() * beta1 + g * (F32(1) - beta1)
        moment2 = v.view() * beta2 + g * g * (F32(1) - beta2)
        step = alpha * (moment1 * beta1h) / (np.sqrt(moment2 * beta2h) + eps)
        weights = a.view() * keep - step
        m.view()[...] = moment1
        v.view()[...] = moment2
        a.view()[...] = weights

    return run


@kernels.kernel("OPT_STEP_SGD")
def build_opt_step_sgd(node: TensorRef, ctx: ExecContext) -> Step:
    a, grad, params = node.src(0), node.src(1), node.src(2)
    _types(node, a=a, grad=grad)
    same_shape(node, a, grad)
    _optimizer_params(node, params, 2)

    def run():
        alpha, wd = map(F32, params.view().reshape(-1).tolist())
        weights = a.view() * (F32(1) - alpha * wd) - alpha * grad.read()
        a.view()[...] = weights

    return run


SCORES_LIMIT = 1 << 25  # FLASH_ATTN_BACK: most score values (a3 * heads * N * M) held at once, per array
ALIGN = 16  # GGML_MEM_ALIGN: each gradient of FLASH_ATTN_BACK starts on it


@kernels.kernel("FLASH_ATTN_BACK")
def build_flash_attn_back(node: TensorRef, ctx: ExecContext) -> Step:
    """ggml's CPU kernel, as whole-tensor products: S = mask(q.k^T / sqrt(D)), P = softmax(S),
    dS = P * (d.v - rowdot(P, d.v)) / sqrt(D); grad q = dS.k, grad k = sum over the query heads
    sharing a kv head of dS^T.q, grad v = sum of d^T.P.  The result is zeroed first."""
    q, k, v, d = (node.src(i) for i in range(4))
    _types(node, q=q, k=k, v=v, d=d, result=node)
    masked = node.params().masked
    require(masked in (0, 1), node, "masked = {} is neither 0 nor 1", masked, rule=OP_PARAMS)
    dim, n_q, n_head, batch = q.ne
    n_kv, n_kv_head = k.ne[1], k.ne[2]
    past = n_kv - n_q
    require(past >= 0 and k.ne == (dim, n_kv, n_kv_head, batch), node, "k {} must be [{}, M >= {}, kv heads, {}]",
            k.ne, dim, n_q, batch)
    require(v.ne == (n_kv, dim, n_kv_head, batch), node, "v {} must be [{}, {}, {}, {}]", v.ne, n_kv, dim, n_kv_head,
            batch)
    require(d.ne == q.ne, node, "d {} must be shaped as q {}", d.ne, q.ne)
    require(n_kv_head >= 1 and n_head % n_kv_head == 0, node, "{} kv heads do not divide {} heads", n_kv_head, n_head)
    require(batch == 1 or n_head == n_kv_head, node, "with a3 > 1 ggml lays grad k and grad v out with {} heads "
            "each, over each other: not computed", n_head)
    require(batch * n_head * n_q * n_kv <= SCORES_LIMIT, node, "{} x {} x {} x {} scores exceed this server's "
            "limit of {}", batch, n_head, n_q, n_kv, SCORES_LIMIT, rule=OP_PARAMS)
    ne, nb = node.ne, node.nb
    require(nb == (4, 4 * ne[0], 4 * ne[0] * ne[1], 4 * ne[0] * ne[1] * ne[2]), node, "the result must be contiguous")
    pad = lambda n: -(-4 * n // ALIGN) * ALIGN // 4  # noqa: E731
    at_k = pad(q.n_elements)
    at_v = at_k + pad(k.n_elements)
    require(node.n_elements >= at_v + v.n_elements, node, "the result holds {} values, the gradients need {}",
            node.n_elements, at_v + v.n_elements)
    out = node.view().reshape(-1)
    grad_q = out[:q.n_elements].reshape(batch, n_head // n_kv_head, n_kv_head, n_q, dim)
    grad_k = out[at_k:at_k + k.n_elements].reshape(batch, n_kv_head, n_kv, dim)
    grad_v = out[at_v:at_v + v.n_elements].reshape(batch, n_kv_head, dim, n_kv)
    scale = F32(1) / np.sqrt(F32(dim))
    hidden = np.arange(n_kv)[None, :] > past + np.arange(n_q)[:, None] if masked else None  # (N, M)
    reps = (batch, n_head // n_kv_head, n_kv_head)  # query head h = rep * kv_heads + kv head

    def run():
        queries = q.view().reshape(*reps, n_q, dim)
        grads = d.view().reshape(*reps, n_q, dim)
        keys = k.view()[:, None]  # (a3, 1, kv heads, M, D)
        values = v.view()[:, None]  # (a3, 1, kv heads, D, M)
        scores = np.matmul(queries, keys.swapaxes(-1, -2)) * scale
        if hidden is not None:
            scores[..., hidden] = -np.inf
        exp = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = exp * (1.0 / exp.sum(axis=-1, keepdims=True, dtype=np.float64)).astype(F32)
        d_probs = np.matmul(grads, values)
        dot = np.einsum("...i,...i->...", probs, d_probs)[..., None]  # float, as ggml_vec_dot_f32
        d_scores = (d_probs - dot) * probs * scale
        out[...] = 0
        grad_q[...] = np.matmul(d_scores, keys)
        grad_k[...] = np.matmul(d_scores.swapaxes(-1, -2), queries).sum(axis=1)
        grad_v[...] = np.matmul(grads.swapaxes(-1, -2), probs).sum(axis=1)

    return run
