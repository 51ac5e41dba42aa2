"""The op families, one module each; this is the one place that lists them and joins their
kernels into the table the planner reads."""

from __future__ import annotations

from typing import Callable

from ..registry import Kernel, Taken, key_fields
from . import (attention, conv, copy, elementwise, layout, matmul, norm, recurrent, reduce, rope, rows, training,
               unary, views)

FAMILIES = (views, copy, layout, elementwise, unary, reduce, norm, matmul, rows, attention, rope, conv, recurrent,
            training)


def _join() -> tuple[dict[str, Kernel], dict[str, Callable[..., Taken]]]:
    kernels: dict[str, Kernel] = {}
    batched: dict[str, Callable[..., Taken]] = {}
    for family in FAMILIES:
        for op, entry in family.kernels.kernels.items():
            assert op not in kernels, f"two kernels for {op} ({family.__name__})"
            kernels[op] = entry
        batched.update(family.kernels.batched)
    assert set(batched) <= set(kernels), f"batch kernels without a per-node kernel: {set(batched) - set(kernels)}"
    return kernels, batched


KERNELS, BATCHED = _join()
KEY_FIELDS = key_fields(KERNELS)  # what a step key covers: (node fields, source fields)
