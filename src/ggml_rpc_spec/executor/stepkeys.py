"""Step keys: which nodes of a new graph do exactly the work of a node of the previous one.

A client sends a new graph of a thousand nodes or more for every token, mostly the nodes of
the last one, and building a step costs microseconds of Python per node.  A node's *step
key* is what decides what its step does: its own fields (type, buffer, shape, strides, op,
op_params, flags, data, name) and, per source slot, whether it is used and the memory
fields of the source (type, buffer, shape, strides, data).  Tensor ids, source ids and view
links are left out: they name tensors, they do not change the work.

The key words are gathered from the rpc_tensor records with NumPy (a node's own words; a
record's memory words, which its consumers share), and each node gets a 64-bit hash of its
key (weighted sums of the words, wrapping), so a whole graph is matched against the
previous one with a sort and a search.  A hash only proposes a match: the words are
compared before it is taken, so a collision costs a rebuild, never a wrong step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from .ops import KEY_FIELDS

# What decides a step: what any kernel reads of a node and of its sources (registry.py), and
# the node's op and flags, which decide which kernel runs it and whether it runs at all.
_NODE_READS, _SOURCE_READS = KEY_FIELDS
NODE_KEY_FIELDS = tuple(sorted(_NODE_READS | {"op", "flags"}))
SOURCE_KEY_FIELDS = tuple(sorted(_SOURCE_READS))


@dataclass(frozen=True)
class KeyLayout:
    """Where the key words are in one rpc_tensor layout, read as unsigned words, and the
    odd uint64 multipliers that hash them."""

    word: np.dtype  # the widest unsigned integer (up to 4 bytes) that tiles every field
    own: tuple[slice, ...]  # word spans of NODE_KEY_FIELDS in a record
    memory: tuple[slice, ...]  # word spans of SOURCE_KEY_FIELDS
    own_weights: np.ndarray  # one per own word
    memory_weights: np.ndarray  # one per memory word
    slot_weights: np.ndarray  # one per source slot


@lru_cache
def key_layout(dtype: np.dtype) -> KeyLayout:
    named, names = dtype.fields, dtype.names
    if named is None or names is None:
        raise TypeError(f"key_layout needs a structured rpc_tensor dtype, not {dtype}")
    fields = [named[name][:2] for name in names]  # (dtype, offset): the fields have no titles
    size = math.gcd(dtype.itemsize, 4, *(offset for _, offset in fields), *(kind.itemsize for kind, _ in fields))

    def spans(names: tuple[str, ...]) -> tuple[slice, ...]:
        merged: list[list[int]] = []
        for start, end in sorted((named[n][1], named[n][1] + named[n][0].itemsize) for n in names):
            if merged and merged[-1][1] == start:
                merged[-1][1] = end
            else:
                merged.append([start, end])
        return tuple(slice(start // size, end // size) for start, end in merged)

    own, memory = spans(NODE_KEY_FIELDS), spans(SOURCE_KEY_FIELDS)
    counts = [sum(span.stop - span.start for span in own), sum(span.stop - span.start for span in memory),
              dtype["src"].shape[0]]
    odd = np.random.default_rng(0x6767_6D6C).integers(0, 2**63, sum(counts), dtype=np.uint64) * np.uint64(2) + 1
    return KeyLayout(np.dtype(f"<u{size}"), own, memory, *np.split(odd, np.cumsum(counts)[:-1]))


class StepKeys:
    """The step keys of a graph's nodes (`rows`): `own` words per node, `memory` words per
    tensor, `sources` (per node, the rows of its src[], -1 unused) and a hash per node."""

    def __init__(self, graph, rows: np.ndarray) -> None:
        tensors = np.ascontiguousarray(graph.tensors)
        layout = key_layout(tensors.dtype)
        records = tensors.view(layout.word).reshape(len(tensors), tensors.dtype.itemsize // layout.word.itemsize)
        nodes = records[rows]
        self.own = np.concatenate([nodes[:, span] for span in layout.own], axis=1)
        self.memory = np.concatenate([records[:, span] for span in layout.memory], axis=1)
        self.sources = graph.link_rows[rows, :-1]
        # uint64 array arithmetic wraps silently; a used slot adds (its source's hash + 1) * its weight
        memory = np.einsum("ij,j->i", self.memory.astype(np.uint64), layout.memory_weights)
        slots = np.where(self.sources >= 0, memory[self.sources] + np.uint64(1), np.uint64(0))
        self.hashes = (np.einsum("ij,j->i", self.own.astype(np.uint64), layout.own_weights)
                       + np.einsum("ij,j->i", slots, layout.slot_weights))

    @cached_property
    def _sorted(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.hashes, kind="stable")
        return order, self.hashes[order]

    def find_in(self, previous: StepKeys) -> np.ndarray:
        """Per node, the index of a node of `previous` with the same key (-1: none)."""
        found = np.full(len(self.hashes), -1, np.intp)
        if not len(previous.hashes) or not len(self.hashes):
            return found
        order, ordered = previous._sorted
        mine, wanted = self._sorted  # sorted needles search several times faster
        at = np.minimum(np.searchsorted(ordered, wanted), len(ordered) - 1)
        met = np.flatnonzero(ordered[at] == wanted)
        if not len(met):  # a graph never seen before
            return found
        candidates, theirs = mine[met], order[at[met]]
        same = self._same_keys(candidates, previous, theirs)
        found[candidates[same]] = theirs[same]
        return found

    def _same_keys(self, at: np.ndarray, previous: StepKeys, theirs: np.ndarray) -> np.ndarray:
        """Per pair (node at[i] here, node theirs[i] of `previous`), whether their keys are
        equal: own words, which source slots are used, and the memory words of each source."""
        same = np.ones(len(at), bool)
        same[_differing(self.own[at], previous.own[theirs])] = False
        mine, other = self.sources[at], previous.sources[theirs]
        used = mine >= 0
        same[_differing(used, other >= 0)] = False
        of_pair = np.nonzero(used)[0]  # a slot used on one side only has failed already
        same[of_pair[_differing(self.memory[mine[used]], previous.memory[other[used]])]] = False
        return same


def _differing(here: np.ndarray, there: np.ndarray) -> np.ndarray:
    """The rows where two arrays differ (one comparison of the whole when none do)."""
    if np.array_equal(here, there):
        return np.empty(0, np.intp)
    return np.flatnonzero((here != there).any(axis=1))
