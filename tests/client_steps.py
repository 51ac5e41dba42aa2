"""One scripted session of the real upstream client (upstream_peers.client), shared by the
tests that parse its bytes and the tests that compare servers' answers to it."""

from __future__ import annotations

import numpy as np

from ggml_rpc_spec.protocol import Command

X = np.arange(32, dtype=np.float32)  # x: F32 [8, 4] at offset 0
Y = X[::-1].copy()  # y: F32 [8, 4] at offset 256
Q = bytes(range(108))  # q: Q4_0 [96, 2] at offset 1024 (2 rows of 3 blocks of 18 bytes)


def session_steps(profile, *, graph: bool = True) -> list[dict]:
    """Steps with a "label" where a test looks at the result."""
    steps = [
        {"op": "device_count", "label": "device_count"},
        {"op": "memory", "label": "memory"},
        {"op": "buffer_type", "label": "buffer_type"},
        {"op": "alloc", "name": "buf", "size": 16384, "label": "alloc"},
        {"op": "clear", "buffer": "buf", "value": 0},
        {"op": "tensor", "name": "x", "buffer": "buf", "type": "F32", "ne": [8, 4], "offset": 0, "label": "x"},
        {"op": "tensor", "name": "y", "buffer": "buf", "type": "F32", "ne": [8, 4], "offset": 256},
        {"op": "tensor", "name": "q", "buffer": "buf", "type": "Q4_0", "ne": [96, 2], "offset": 1024},
        {"op": "set", "tensor": "x", "hex": X.tobytes().hex()},
        {"op": "set", "tensor": "y", "hex": Y[8:].tobytes().hex(), "offset": 32},
        {"op": "set", "tensor": "y", "hex": Y[:8].tobytes().hex(), "offset": 0},
        {"op": "set", "tensor": "q", "hex": Q.hex()},
        {"op": "get", "tensor": "x", "offset": 0, "size": 128, "label": "get x"},
        {"op": "get", "tensor": "x", "offset": 20, "size": 16, "label": "get x[5:9]"},
        {"op": "get", "tensor": "q", "offset": 0, "size": 108, "label": "get q"},
        {"op": "alloc_size", "tensor": "q", "label": "alloc_size q"},
        {"op": "view", "name": "row1", "of": "x", "ne": [8], "nb": [32], "offset": 32},
        {"op": "get", "tensor": "row1", "offset": 0, "size": 32, "label": "get row1"},
    ]
    if graph:
        steps += [
            {"op": "add", "name": "sum", "a": "x", "b": "y", "buffer": "buf", "offset": 512},
            {"op": "compute", "output": "sum"},
            {"op": "get", "tensor": "sum", "offset": 0, "size": 128, "label": "get sum"},
        ]
    steps += [
        {"op": "copy", "src": "x", "dst": "y"},
        {"op": "get", "tensor": "y", "offset": 0, "size": 128, "label": "get y after copy"},
        {"op": "clear", "buffer": "buf", "value": 7},
        {"op": "get", "tensor": "y", "offset": 0, "size": 8, "label": "get y after clear"},
    ]
    if Command.MEMSET_TENSOR in profile.commands:
        steps += [{"op": "memset", "tensor": "y", "value": 1, "offset": 4, "size": 4},
                  {"op": "get", "tensor": "y", "offset": 0, "size": 12, "label": "get y after memset"}]
    return steps + [{"op": "free", "buffer": "buf"}]


def labelled(steps: list[dict], results: list) -> dict:
    return {step["label"]: result for step, result in zip(steps, results, strict=True) if "label" in step}
