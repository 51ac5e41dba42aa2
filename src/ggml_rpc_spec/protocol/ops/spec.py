"""The shape of an op catalogue entry: an op's sources, its op_params words, its sub-ops.

The entries themselves are declared one family per module beside this one; the package
joins them into the catalogue.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from ..ggml import MAX_OP_PARAMS
from ..rules import BY_KEY
from ..versions import parse_version

WORDS = MAX_OP_PARAMS // 4  # op_params is 16 int32 words
KINDS = ("i32", "u32", "f32", "bool")  # plus the enum tables below, each an i32 index
ENUMS = ("unary_op", "glu_op", "ggml_type")  # enums whose names come from the release tables


@dataclass(frozen=True)
class Param:
    """One op_params word: its index, name, kind and meaning.  `kind` is "i32", "u32", "f32",
    "bool" (an i32 that is 0 or 1), an enum of the release tables ("unary_op", "glu_op",
    "ggml_type"), or "enum:NAME=0,NAME=1,..." for a small enum of ggml's own (sort order,
    pooling op, scale mode).  `low`/`high` bound the values ggml accepts, where it asserts
    them (None: no bound).  `since` is the first protocol version whose ggml reads the word;
    older ones ignore it, whatever it holds (None: every version reads it); `legacy` is the
    value that asks a newer ggml for what the older ones do (a version bridge writes it when
    the client's ggml left the word unset, and refuses other values towards an older one).
    `inert`: a valid node's result does not depend on the word (a request or promise ggml's
    CPU ignores, or a flag its addresses already state), so no comparison of results can
    tell whether a server read it right."""

    index: int
    name: str
    kind: str
    meaning: str
    low: float | None = None
    high: float | None = None
    since: str | None = None
    legacy: int | None = None
    inert: bool = False

    def __post_init__(self) -> None:
        assert 0 <= self.index < WORDS, self
        assert (self.legacy is None) or (self.since is not None), self
        assert self.kind in KINDS or self.kind in ENUMS or self.kind.startswith("enum:"), self.kind

    @property
    def choices(self) -> dict[str, int]:
        """For "enum:..." kinds, name -> value."""
        if not self.kind.startswith("enum:"):
            return {}
        return {name: int(value) for name, value in (item.split("=") for item in self.kind[5:].split(","))}

    def read_by(self, version: str) -> bool:
        """Whether the ggml of protocol `version` reads this word."""
        return self.since is None or parse_version(version) >= parse_version(self.since)

    def decode(self, word: int) -> int | float | bool:
        if self.kind == "f32":
            return struct.unpack("<f", struct.pack("<i", word))[0]
        if self.kind == "u32":
            return word & 0xFFFFFFFF
        if self.kind == "bool":
            return word != 0
        return word

    def encode(self, value) -> int:
        if self.kind == "f32":
            return struct.unpack("<i", struct.pack("<f", float(value)))[0]
        if isinstance(value, str):
            found = self.choices.get(value)
            if found is None:
                raise ValueError(f"{self.name}: {value!r} is not one of {sorted(self.choices)}")
            return found
        value = int(value)
        return value - (1 << 32) if self.kind == "u32" and value >= 1 << 31 else value


@dataclass(frozen=True)
class Source:
    """One src[] slot: its role, what it holds, and whether a node may leave it empty.
    `index_rule` names the rule that bounds its values where it holds indices into another
    source (rows, expert ids, state ids): values a server sees only when it computes.
    `inert`: the op never reads the slot's values (it names the result's own memory, or a
    tensor whose values are overwritten), so a server that ignores it computes the same."""

    role: str
    meaning: str
    optional: bool = False
    index_rule: str = ""
    inert: bool = False

    def __post_init__(self) -> None:
        assert not self.index_rule or self.index_rule in BY_KEY, f"{self.role}: no rule {self.index_rule!r}"


@dataclass(frozen=True)
class SubOp:
    """A UNARY or GLU sub-op (named by op_params word 0): the extra words it reads and what it computes."""

    name: str
    semantics: str
    params: tuple[Param, ...] = ()


@dataclass(frozen=True)
class Draw:
    """How to draw a valid node of the op, for differential fuzzing: the facts about shapes,
    types and values that the prose of `result` and `types` states, as data a generator reads.

    `vars` is a space-separated list of `NAME=SPEC`, drawn left to right: SPEC is `LO..HI`
    (integers, bounds included), or choices `A|B|C`; each bound or choice is an expression
    over the names drawn before it (`sub` is the sub-op's name, for UNARY and GLU).  A NAME
    that is one of the op's params sets that word (an enum's choices by name); params not
    named are drawn from their kind and range (Param.low/high).  Names whose choices are
    ggml types (`T=F32|F16`) are type variables.

    Each of `sources` is `[e0, e1, e2, e3] TYPES FLAGS`: the shape (expressions), the types
    (`F32|F16`, or a type variable), then flags.  What ggml's CPU asserts about the memory:
    `cont` (ggml_is_contiguous: no view or permutation), `cont1` (ggml_is_contiguous_1: views
    with padded rows only), `rows` (nb0 the element size: views with any padding, no
    permutation).  What the source holds: `ids<EXPR` (I32/I64 values in [0, EXPR)),
    `distinct` (no id twice in a row; a plain leaf), `pos` (positive values), `mask` (finite
    biases and -inf, each row's first 0), `absent` (an optional source left empty).
    `FLAG:EXPR` is FLAG where the expression holds (`absent:not(HM)`, `rows:Q`).

    `result` is `[e0, e1, e2, e3] TYPE`, or `view N` for a result that is source N's memory;
    `inplace` an expression under which the result is source 0's memory (ggml's *_inplace
    constructors, which set a word saying so).  `nmse` is the bound of upstream's op test
    program (max_nmse_err) for the op; `order` False says the order within a result's row is
    not part of the contract (TOP_K): compared sorted."""

    vars: str = ""
    sources: tuple[str, ...] = ()
    result: str = ""
    nmse: float = 1e-7
    order: bool = True
    inplace: str = ""

    def var_specs(self) -> list[tuple[str, str]]:
        return [(name, text) for name, text in (item.split("=", 1) for item in self.vars.split())]


@dataclass(frozen=True, kw_only=True)
class OpSpec:
    """One ggml op."""

    name: str
    sources: tuple[Source, ...]
    params: tuple[Param, ...]
    types: str  # which types the sources and the result may have
    result: str  # the result's shape, in terms of the sources
    semantics: str  # one line
    sub_ops: tuple[SubOp, ...] = ()
    computes: bool = True  # False: a view or no-op; the node's memory is its source's
    draw: Draw | None = None  # how to draw a valid node (differential fuzzing)
    family: str = ""  # the module that declares it, and the executor's module that computes it (set by the catalogue)

    def __post_init__(self) -> None:
        indexes = [p.index for p in self.params]
        assert len(indexes) == len(set(indexes)), f"{self.name}: two params share a word"
        for sub in self.sub_ops:
            clash = set(indexes) & {p.index for p in sub.params}
            assert not clash, f"{self.name}({sub.name}) reuses words {clash}"

    def sub_op(self, name: str) -> SubOp:
        for sub in self.sub_ops:
            if sub.name == name:
                return sub
        raise KeyError(f"{self.name} has no sub-op {name}")

    def layout(self, sub: str | None = None) -> tuple[Param, ...]:
        """The params of the op, with those of sub-op `sub` (UNARY, GLU) added."""
        extra = self.sub_op(sub).params if sub is not None else ()
        return tuple(sorted(self.params + extra, key=lambda p: p.index))

    def param(self, name: str, sub: str | None = None) -> Param:
        param = next((p for p in self.layout(sub) if p.name == name), None)
        if param is None:
            raise KeyError(f"{self.name} has no param {name!r}")
        return param

    def read(self, words: np.ndarray, sub: str | None = None) -> SimpleNamespace:
        """The named values of a node's op_params (16 int32 words)."""
        values = words.tolist() if isinstance(words, np.ndarray) else list(words)
        return SimpleNamespace(**{p.name: p.decode(values[p.index]) for p in self.layout(sub)})

    def column(self, words: np.ndarray, name: str, sub: str | None = None) -> np.ndarray:
        """One named param of many nodes at once (words: int32 array of shape (n, 16)), as
        int32, or float32 for "f32" params (a view, no copy)."""
        param = self.param(name, sub)
        column = words[:, param.index : param.index + 1]
        return (column.view(np.float32) if param.kind == "f32" else column)[:, 0]

    def pack(self, sub: str | None = None, /, **values) -> list[int]:
        """op_params words from named values (unnamed words are 0); the graph builder's side."""
        words = [0] * WORDS
        layout = {p.name: p for p in self.layout(sub)}
        unknown = set(values) - set(layout)
        if unknown:
            raise KeyError(f"{self.name}{f'({sub})' if sub else ''} has no params {sorted(unknown)}")
        for name, value in values.items():
            words[layout[name].index] = layout[name].encode(value)
        return words
