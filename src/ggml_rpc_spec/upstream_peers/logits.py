"""The end-to-end bar for two runs of one model through real llama.cpp (`run_llama`):
teacher-forced logits of every position, compared.

ggml's CPU backend rounds activations to 8-bit blocks before quantized products, and a
tensor split rounds its all-reduces to BF16, so two correct backends differ in the last bits:
the bar is the same top-1 token wherever the local top-2 margin exceeds MARGIN logits, and
the largest logit difference within a tolerance of the largest logit.  Near-ties may flip,
so overall top-1 agreement is held to a share, where it is held at all.  The tests
(`assert_within_bounds`) and the SmolLM2 benchmark (bench/smollm2.py) use it.
"""

from __future__ import annotations

import numpy as np

TEXT = "The quick brown fox jumps over the lazy dog. In the end, the dog and the fox are friends."
# the longer prompt on which the numerics modes are compared (python -m bench.numerics and its test)
NUMERICS_TEXT = ("The old town of the river is a place of quiet streets and small shops. In the morning the baker "
                 "opens his door, the children run to the school, and the fishermen bring in the catch of the "
                 "night. In the evening the lights of the harbour shine on the water and the town goes to sleep.")
MARGIN = 0.5
# max |logit error| / max |logit| in the tests: plain float32 math, and with ggml's activation rounding
TOLERANCE = {"float": 0.08, "ggml": 0.03}


def compare(local: dict, remote: dict) -> dict:
    """How `remote`'s logits agree with `local`'s: positions, `agreement` (share of positions
    with the same top-1), `confident` (positions whose local top-2 margin exceeds MARGIN) and
    whether they all agree, `max_error` (largest |difference|), `scale` (largest |local logit|)
    and their ratio `relative_error`."""
    a, b = local["logits"], remote["logits"]
    if a.shape != b.shape:
        raise ValueError(f"logits of shape {b.shape} against {a.shape}")
    top2 = np.sort(a, axis=-1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) > MARGIN
    agree = a.argmax(-1) == b.argmax(-1)
    error, scale = float(np.abs(a - b).max()), float(np.abs(a).max())
    return {"positions": len(agree), "agreement": float(agree.mean()), "confident": int(confident.sum()),
            "confident_agree": bool(agree[confident].all()), "max_error": error, "scale": scale,
            "relative_error": error / scale, "finite": bool(np.isfinite(b).all())}


def meets(result: dict, tolerance: float, agreement: float = 0.0) -> bool:
    """The bar: finite logits, every confident position agrees, top-1 agreement of at least
    `agreement` overall, and the largest error within `tolerance` of the largest logit."""
    return (result["finite"] and result["confident_agree"] and result["agreement"] >= agreement
            and result["max_error"] <= tolerance * result["scale"])


def assert_within_bounds(local: dict, remote: dict, numerics: str) -> dict:
    """The comparison, raising AssertionError (with it) unless it meets the bar at the tests'
    TOLERANCE for the server's `numerics`."""
    result = compare(local, remote)
    if not meets(result, TOLERANCE[numerics]):
        raise AssertionError(result)
    return result
