"""The op families, one module each; importing them fills the kernel registry."""

from . import (attention, conv, copy, elementwise, matmul, norm, recurrent, reduce, rope, rows,  # noqa: F401
               training, unary, views)
