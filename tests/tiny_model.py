"""Write tiny llama-architecture GGUF models with random weights, for real llama.cpp runs.

A real client loading one of these sends the same kinds of RPC traffic as for a real model
(weights of several quantized types, KV cache, graphs of RMS_NORM/MUL_MAT/ROPE/SOFT_MAX/GLU
...), in kilobytes.  Graph size grows with the layer count, not the dimensions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter
from gguf.constants import GGMLQuantizationType as Q
from gguf.quants import quantize

# sentencepiece-style vocabulary: specials, byte fallback, then some pieces
SPECIALS = ["<unk>", "<s>", "</s>"]
PIECES = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["\u2581" + chr(c) for c in range(ord("a"), ord("z") + 1)]
PIECES += ["\u2581the", "\u2581of", "\u2581and", "\u2581to", "\u2581in", "er", "in", "on", "an", "re", "th", "he",
           "\u2581", ".", ",", "\u2581The", "ing", "ed", "es"]
PIECES = list(dict.fromkeys(PIECES))  # llama.cpp requires unique token texts
WEIGHT_TYPES = (Q.Q8_0, Q.Q4_1, Q.F16, Q.Q4_0, Q.Q5_1)


def write_tiny_llama(path: Path, *, n_layer: int = 2, n_embd: int = 64, n_head: int = 4, n_head_kv: int = 2,
                     n_ff: int = 128, n_ctx: int = 256, seed: int = 0) -> Path:
    """A llama GGUF with random weights; returns its path.  Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    tokens = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + PIECES
    types = [2, 3, 3] + [6] * 256 + [1] * len(PIECES)  # UNKNOWN, CONTROL, CONTROL, BYTE..., NORMAL...
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(PIECES))]
    n_vocab = len(tokens)
    head_dim = n_embd // n_head

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)

    def weight(name: str, rows: int, cols: int, kind: Q, scale: float) -> None:
        values = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        if kind == Q.F32:
            writer.add_tensor(name, values)
        elif kind == Q.F16:
            writer.add_tensor(name, values.astype(np.float16))
        else:
            writer.add_tensor(name, quantize(values, kind), raw_dtype=kind)

    def norm(name: str) -> None:
        writer.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32))

    weight("token_embd.weight", n_vocab, n_embd, Q.Q8_0, 1.0)
    for i in range(n_layer):
        kind = WEIGHT_TYPES[i % len(WEIGHT_TYPES)]
        norm(f"blk.{i}.attn_norm.weight")
        weight(f"blk.{i}.attn_q.weight", n_embd, n_embd, kind, 0.25)
        weight(f"blk.{i}.attn_k.weight", n_head_kv * head_dim, n_embd, kind, 0.25)
        weight(f"blk.{i}.attn_v.weight", n_head_kv * head_dim, n_embd, kind, 0.25)
        weight(f"blk.{i}.attn_output.weight", n_embd, n_embd, kind, 0.15)
        norm(f"blk.{i}.ffn_norm.weight")
        weight(f"blk.{i}.ffn_gate.weight", n_ff, n_embd, kind, 0.2)
        weight(f"blk.{i}.ffn_up.weight", n_ff, n_embd, kind, 0.2)
        weight(f"blk.{i}.ffn_down.weight", n_embd, n_ff, kind, 0.15)
    norm("output_norm.weight")
    weight("output.weight", n_vocab, n_embd, Q.Q8_0, 0.3)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
