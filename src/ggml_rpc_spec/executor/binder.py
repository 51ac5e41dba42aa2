"""A graph's tensors bound to this connection's buffers: columns, views and TensorRefs.

A plan is built for every new graph, and graphs have thousands of tensors, so the fields
are pulled out of the structured array once per graph: as NumPy columns for the kernels
that check a whole batch of nodes at once, as Python lists for the row-by-row work.  Every
view and every TensorRef is made at most once per row, on first use.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from ggml_rpc_spec.protocol.ggml import ELEMENT_DTYPES
from ggml_rpc_spec.protocol.graph import distinct

from .tensors import TensorRef, strided_view


class Binder:
    def __init__(self, graph, buffers: dict, ggml) -> None:
        self.tensors = graph.tensors
        self.ggml = ggml
        # columns, for kernels that take a batch of nodes
        self.types, self.ne, self.handles = graph.tensors["type"], graph.tensors["ne"], graph.tensors["buffer"]
        self.sources = graph.link_rows[:, :-1]  # per row, the rows of src[] (-1: none)
        self._buffers = buffers
        self._lists: dict[str, list] = {}
        self._refs: dict[int, TensorRef] = {}
        self._views: dict[int, np.ndarray] = {}
        self._slices: list = [None] * len(self.tensors)  # per row, its 1-D slice once made
        self._sliced = np.zeros(len(self.tensors), bool)

    # -- columns and views, for kernels that take a batch of nodes --------------------------------

    @cached_property
    def op_params(self) -> np.ndarray:
        return np.ascontiguousarray(self.tensors["op_params"], dtype=np.int32)

    @cached_property
    def packed(self) -> np.ndarray:
        """Per row: its blocks lie back to back in ggml order (nb are the strides of a fresh
        tensor of its ne), and an element type starts at an address aligned to its element,
        so a 1-D slice of the buffer's elements holds exactly the tensor."""
        ne, nb = self.ne, self.tensors["nb"]
        size = self.ggml.type_sizes[self.types]
        blocks = self.ggml.block_sizes[self.types]
        expected = np.empty(nb.shape, np.uint64)  # products may pass 2**32, where nb cannot be
        expected[:, 0] = size
        expected[:, 1] = size * (ne[:, 0] // np.maximum(blocks, 1))
        expected[:, 2] = expected[:, 1] * ne[:, 1]
        expected[:, 3] = expected[:, 2] * ne[:, 2]
        aligned = (blocks > 1) | (self.tensors["data"] % np.maximum(size, 1) == 0)
        return (nb == expected).all(axis=1) & (blocks > 0) & aligned

    def _list(self, field: str) -> list:
        found = self._lists.get(field)
        if found is None:
            found = self._lists[field] = self.tensors[field].tolist()
        return found

    @cached_property
    def _numpy_order(self) -> tuple[list, list]:
        """Per row, shape (ne3, ne2, ne1, ne0) and strides (nb3, nb2, nb1, nb0)."""
        return self.ne[:, ::-1].tolist(), self.tensors["nb"][:, ::-1].tolist()

    def _dtype(self, row: int) -> np.dtype:
        return ELEMENT_DTYPES[self.ggml.types[self._list("type")[row]].name]

    def view(self, row: int) -> np.ndarray:
        """The elements of row `row` (an element type, in a buffer) as a strided view, shape
        (ne3, ne2, ne1, ne0)."""
        found = self._views.get(row)
        if found is None:
            buffer = self._buffers[self._list("buffer")[row]]
            shapes, strides = self._numpy_order
            found = self._views[row] = strided_view(buffer.memory, self._dtype(row),
                                                    self._list("data")[row] - buffer.base, shapes[row], strides[row])
        return found

    def views(self, *columns: np.ndarray) -> list[list[np.ndarray]]:
        """`view` of every row of each column."""
        return [[self.view(row) for row in column.tolist()] for column in columns]

    def flat(self, *columns: np.ndarray) -> list[list[np.ndarray]]:
        """For each column of rows (`packed`, an element type, in a buffer), their elements
        as 1-D slices.  A slice is made once per row for the whole graph and shared wherever
        the row recurs (a node's output is usually the next node's input, of another op)."""
        wanted = distinct(np.concatenate(columns))
        self._slice(wanted[~self._sliced[wanted]])
        pick = self._slices.__getitem__
        return [list(map(pick, column.tolist())) for column in columns]

    def _slice(self, rows: np.ndarray) -> None:
        """Make the 1-D slices of `rows`, worked out for all at once per (type, buffer)."""
        self._sliced[rows] = True
        handles, types, data = self.handles[rows], self.types[rows], self.tensors["data"][rows]
        ne = self.ne[rows].astype(np.uint64)
        counts = ne[:, 0] * ne[:, 1] * ne[:, 2] * ne[:, 3]  # a reduction along rows of 4 costs twice this
        slices = self._slices
        for kind in distinct(types).tolist():
            dtype = ELEMENT_DTYPES[self.ggml.types[kind].name]
            for handle in distinct(handles[types == kind]).tolist():
                at = np.flatnonzero((handles == handle) & (types == kind))
                buffer = self._buffers[handle]
                elements = np.frombuffer(buffer.memory, dtype, len(buffer.memory) // dtype.itemsize)
                starts = (data[at] - np.uint64(buffer.base)) // np.uint64(dtype.itemsize)
                for row, start, end in zip(rows[at].tolist(), starts.tolist(), (starts + counts[at]).tolist()):
                    slices[row] = elements[start:end]

    # -- TensorRefs, for kernels that take one node ----------------------------------------------

    @cached_property
    def _sources(self) -> list[list[int]]:
        """Per row, the rows of its sources up to the last one used (-1: none or unknown)."""
        links = self.tensors["src"]
        widths = np.where(links != 0, np.arange(1, links.shape[1] + 1), 0).max(axis=1)
        return [row[:width] for row, width in zip(self.sources.tolist(), widths.tolist())]

    def ref(self, row: int) -> TensorRef:
        found = self._refs.get(row)
        if found is None:
            handle = self._list("buffer")[row]
            found = self._refs[row] = TensorRef(
                self.ggml.types[self._list("type")[row]], tuple(self._list("ne")[row]), tuple(self._list("nb")[row]),
                self._list("data")[row], self._buffers.get(handle) if handle else None,
                self.ggml.op_name(self._list("op")[row]), self.op_params[row], self._list("name")[row],
                self._views.get(row))
        return found

    def node(self, row: int) -> TensorRef:
        """The ref of row `row` with its sources linked."""
        ref = self.ref(row)
        ref.srcs = [self.ref(s) if s >= 0 else None for s in self._sources[row]]
        return ref
