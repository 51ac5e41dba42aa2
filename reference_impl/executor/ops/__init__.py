"""The op families, one module each; importing them fills the kernel registry."""

from . import (attention, conv, copy, elementwise, layout, matmul, norm, recurrent, reduce, rope,  # noqa: F401
               rows, training, unary, views)
