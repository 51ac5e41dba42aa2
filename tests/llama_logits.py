"""The end-to-end bar for two runs of one model through real llama.cpp: teacher-forced logits
of every position, compared.

ggml's CPU backend rounds activations to 8-bit blocks before quantized products, so two
correct backends differ in the last bits; the bar is the same top-1 token wherever the local
top-2 margin exceeds 0.5 logits, and logits within a stated tolerance of the largest one.
"""

from __future__ import annotations

import numpy as np

TEXT = "The quick brown fox jumps over the lazy dog. In the end, the dog and the fox are friends."
MARGIN = 0.5
# max |logit error| / max |logit|: plain float32 math, and with ggml's activation rounding
TOLERANCE = {"float": 0.08, "ggml": 0.03}


def compare(local: dict, remote: dict) -> dict:
    a, b = local["logits"], remote["logits"]
    assert a.shape == b.shape and np.isfinite(b).all()
    top2 = np.sort(a, axis=-1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) > MARGIN
    agree = a.argmax(-1) == b.argmax(-1)
    return {"max_error": float(np.abs(a - b).max()), "scale": float(np.abs(a).max()),
            "agree": float(agree.mean()), "confident_agree": bool(agree[confident].all()),
            "confident": int(confident.sum()), "positions": len(agree)}


def assert_within_bounds(local: dict, remote: dict, numerics: str) -> dict:
    """The comparison, asserting its bar: confident positions agree, logits within TOLERANCE."""
    result = compare(local, remote)
    assert result["confident_agree"], result
    assert result["max_error"] <= TOLERANCE[numerics] * result["scale"], result
    return result
