"""Recurrent and linear-attention state updates (Mamba, RWKV, gated linear / delta attention)."""
