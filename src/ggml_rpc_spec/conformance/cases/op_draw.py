"""Random valid nodes of any op, drawn from the op catalogue's declarations alone.

Each op's `Draw` (protocol/ops) says which dimensions to draw, how every source's shape and
type follow from them, which values a source holds, and the result's shape and type; its
`Param`s give every op_params word's kind and valid range.  This module reads nothing else
about an op: it draws the variables (hypothesis), then for every source a memory layout
ggml accepts for it (a leaf; a VIEW into a larger tensor at an offset; a PERMUTE or
TRANSPOSE of a leaf stored in another order; a RESHAPE of a leaf of another shape) and its
values (seeded), and builds the node with GraphBuilder.  A view op of the catalogue (NONE,
VIEW, PERMUTE, TRANSPOSE, RESHAPE) computes nothing: drawing it means drawing a DUP whose
source has that layout, so that something reads through it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
from hypothesis import strategies as st

from ggml_rpc_spec.client.graphs import GraphBuilder
from ggml_rpc_spec.protocol.ggml import TYPE_BY_NAME
from ggml_rpc_spec.protocol.ops import CATALOGUE, Draw, OpSpec, Param

SOURCE = re.compile(r"^(?P<shape>\[.*\])\s+(?P<types>\S+)\s*(?P<flags>.*)$")
RESULT_VIEW = re.compile(r"^view (?P<index>\d+)$")
# functions an expression of a Draw may call
FUNCTIONS = {"min": min, "max": max, "ceil": math.ceil, "floor": math.floor, "abs": abs, "int": int}
# f32 words with no declared range: values that keep results finite yet move every formula
F32_VALUES = (-1.5, -0.25, 0.0, 0.5, 1.0, 2.0)
F32_POSITIVE = (1e-6, 1e-5, 1e-3, 0.1, 0.5)
LAYOUTS = ("NONE", "VIEW", "PERMUTE", "TRANSPOSE", "RESHAPE")  # how a source's memory can be laid out
ROW_LAYOUTS = ("NONE", "VIEW")  # rows contiguous: leaves and views with padded rows
FLOAT_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}
INT_DTYPES = {"I32": np.int32, "I64": np.int64, "I16": np.int16, "I8": np.int8}


class DrawError(ValueError):
    """A Draw that cannot be read: names the op and the text."""


@dataclass
class DrawnSource:
    ne: list[int]
    type: str
    layout: str  # one of LAYOUTS
    values: str  # "normal", "pos", "mask", "ids", "ints"
    bound: int = 0  # ids: values in [0, bound)
    distinct: bool = False  # ids: no value twice in a row
    seed: int = 0
    axes: tuple[int, ...] = (0, 1, 2, 3)  # PERMUTE: the leaf's dimension i becomes dimension axes[i]
    pads: tuple[int, ...] = (0, 0, 0, 0)  # VIEW: extra elements per dimension of the viewed leaf
    starts: tuple[int, ...] = (0, 0, 0, 0)  # VIEW: where the window starts in each dimension


@dataclass
class Drawn:
    """One drawn node: everything needed to build it on any server, the same way."""

    op: str
    sub: str | None
    names: dict  # every drawn variable, params included
    words: list[int]  # op_params
    sources: list[DrawnSource | None]
    result: tuple[list[int], str] | int  # (ne, type), or the index of the source whose memory it is
    nmse: float
    order: bool = True
    ops: set[str] = field(default_factory=set)  # every op the built graph holds (filled by build)

    @property
    def label(self) -> str:
        return f"{self.op}({self.sub})" if self.sub else self.op


def drawable(profile) -> list[str]:
    """The catalogue's ops that the profile's ggml has, in catalogue order."""
    return [op for op in CATALOGUE if op in profile.ggml.ops]


# -- drawing ------------------------------------------------------------------------------------------


def draw_node(draw, op: str, profile) -> Drawn:
    """A valid node of `op` for `profile` (draw: hypothesis' data.draw)."""
    spec = CATALOGUE[op]
    if not spec.computes:  # drawn as the layout of a DUP's source (see the module's docstring)
        drawn = draw_node(draw, "DUP", profile)
        source = drawn.sources[0]
        if source is None:
            raise DrawError("DUP: drawn without a source")
        _lay_out(draw, source, op)
        return drawn
    if spec.draw is None:
        raise DrawError(f"{op}: the catalogue declares no Draw for it")
    sub = draw(st.sampled_from(_sub_ops(spec, profile)), label=f"{op} sub-op") if spec.sub_ops else None
    names = _variables(draw, spec, sub, profile)
    sources = [_source(draw, spec, text, names) for text in spec.draw.sources]
    while sources and sources[-1] is None:
        sources.pop()
    words = spec.pack(sub, **{p.name: names[p.name] for p in spec.layout(sub)})
    in_place = bool(spec.draw.inplace) and bool(_eval(spec, spec.draw.inplace, names))
    return Drawn(op, sub, names, words, sources, 0 if in_place else _result(spec, names), spec.draw.nmse,
                 spec.draw.order)


def _sub_ops(spec: OpSpec, profile) -> list[str]:
    """UNARY's or GLU's sub-ops that both the catalogue and the profile's ggml have."""
    have = {"UNARY": profile.ggml.unary_ops, "GLU": profile.ggml.glu_ops}[spec.name]
    return [sub.name for sub in spec.sub_ops if sub.name in have]


def _variables(draw, spec: OpSpec, sub: str | None, profile) -> dict:
    """The Draw's variables and every op_params word's value, in the namespace expressions
    see; a word the profile's ggml does not read holds its legacy value (or 0)."""
    params = {p.name: p for p in spec.layout(sub)}
    variables = _draw_of(spec).var_specs()
    declared = dict(variables)
    names: dict = {"sub": sub} if sub is not None else {}
    for param in params.values():
        if param.name not in declared:
            names[param.name] = _default(draw, spec, param, sub, profile)
    for name, text in variables:
        word = params.get(name)
        if word is not None and not word.read_by(profile.name):
            names[name] = _unread_value(word)
        else:
            names[name] = _pick(draw, spec, name, text, names, word)
    return names


def _draw_of(spec: OpSpec) -> Draw:
    if spec.draw is None:
        raise DrawError(f"{spec.name}: the catalogue declares no Draw for it")
    return spec.draw


def _unread_value(param: Param) -> int:
    """What a word the profile's ggml does not read holds: its legacy value, else 0."""
    return param.legacy or 0


def _default(draw, spec: OpSpec, param: Param, sub: str | None, profile):
    """A word's value drawn from its kind and declared range."""
    label = f"{spec.name}.{param.name}"
    if not param.read_by(profile.name):
        return _unread_value(param)
    if param.kind in ("unary_op", "glu_op"):
        return getattr(profile.ggml, f"{param.kind}s").index(sub)
    if param.kind == "bool":
        return draw(st.integers(0, 1), label=label)
    if param.choices:
        return draw(st.sampled_from(list(param.choices.values())), label=label)
    if param.kind == "f32":
        pool = F32_POSITIVE if param.low is not None and param.low >= 0 else F32_VALUES
        fits: list[float | None] = [v for v in pool if (param.low is None or v >= param.low)
                                    and (param.high is None or v <= param.high)]
        return draw(st.sampled_from(fits or [param.low]), label=label)
    low = int(param.low) if param.low is not None else 0
    high = int(param.high) if param.high is not None else low + 3
    return draw(st.integers(low, min(high, low + 3)), label=label)


def _pick(draw, spec: OpSpec, name: str, text: str, names: dict, param: Param | None):
    """One variable: `LO..HI` or `A|B|C` (see Draw)."""
    scope = dict(param.choices) if param is not None else {}
    if ".." in text and "|" not in text:
        low, high = (int(_eval(spec, part, names, scope)) for part in text.split("..", 1))
        if low > high:
            raise DrawError(f"{spec.name}: {name}={text} is empty here ({low} > {high}) with {names}")
        return draw(st.integers(low, high), label=f"{spec.name}.{name}")
    choices = [item if item in TYPE_BY_NAME else _eval(spec, item, names, scope) for item in text.split("|")]
    return draw(st.sampled_from(choices), label=f"{spec.name}.{name}")


def _eval(spec: OpSpec, text: str, names: dict, scope: dict | None = None):
    """An expression of the op's Draw over the variables drawn so far (and an enum's names)."""
    try:
        return eval(text, {"__builtins__": {}, **FUNCTIONS}, {**(scope or {}), **names})  # the catalogue's own text
    except Exception as exc:
        raise DrawError(f"{spec.name}: cannot evaluate {text!r} with {names}: {exc}") from None


def _source(draw, spec: OpSpec, text: str, names: dict) -> DrawnSource | None:
    """One source of the Draw: its shape, type, values and a layout its flags allow; None
    where it is an optional source left empty."""
    match = SOURCE.match(text)
    if match is None:
        raise DrawError(f"{spec.name}: source {text!r} is not '[shape] TYPES flags'")
    flags = [_flag(spec, flag, names) for flag in match["flags"].split()]
    if "absent" in flags:
        return None
    ne = [int(n) for n in _eval(spec, match["shape"], names)]
    ne += [1] * (4 - len(ne))
    choices = [names.get(t, t) for t in match["types"].split("|")]
    kind = draw(st.sampled_from(choices), label=f"{spec.name} source type")
    values = next((v for v in ("mask", "pos") if v in flags), "normal")
    bound = 0
    for flag in flags:
        if flag.startswith("ids<"):
            values, bound = "ids", int(_eval(spec, flag[4:], names))
    if values == "normal" and kind in INT_DTYPES:
        values = "ints"
    source = DrawnSource(ne, kind, "NONE", values, bound, "distinct" in flags,
                         seed=draw(st.integers(0, 2**32 - 1), label="seed"))
    quantized = TYPE_BY_NAME[kind].block_size > 1
    allowed = (("NONE",) if "cont" in flags or source.distinct else
               ROW_LAYOUTS if {"cont1", "rows", "mask"} & set(flags) or values == "mask" or quantized else LAYOUTS)
    # ggml_is_contiguous_1 lets only the rows be padded, and only where dimension 1 is not 1
    padded = (1 if ne[1] > 1 else 0) if "cont1" in flags else 4
    return _lay_out(draw, source, draw(st.sampled_from(allowed), label="layout"), padded)


def _flag(spec: OpSpec, flag: str, names: dict) -> str:
    """A source's flag; `FLAG:EXPR` is FLAG where EXPR holds, else nothing ("")."""
    name, colon, condition = flag.partition(":")
    return name if not colon or _eval(spec, condition, names) else ""


def _lay_out(draw, source: DrawnSource, layout: str, padded: int = 4) -> DrawnSource:
    """The layout's own draws: the permutation, or the padding (of the first `padded`
    dimensions) and offset of the view."""
    source.layout = layout
    if layout == "PERMUTE":
        source.axes = tuple(draw(st.permutations(range(4)), label="axes"))
    elif layout == "VIEW":
        row_pad = 0 if TYPE_BY_NAME[source.type].block_size > 1 else 3
        source.pads = tuple(draw(st.integers(0, (row_pad if d == 0 else 2) if d < padded else 0), label="pad")
                            for d in range(4))
        source.starts = tuple(draw(st.integers(0, pad), label="start") for pad in source.pads)
    return source


def _result(spec: OpSpec, names: dict) -> tuple[list[int], str] | int:
    """The node's (ne, type), or the index of the source whose memory the node is."""
    text = _draw_of(spec).result
    view = RESULT_VIEW.match(text)
    if view:
        return int(view["index"])
    match = SOURCE.match(text)
    if match is None:
        raise DrawError(f"{spec.name}: result {text!r} is not '[shape] TYPE' or 'view N'")
    ne = [int(n) for n in _eval(spec, match["shape"], names)]
    types: str = match["types"]  # a type name, or a variable holding one
    return ne + [1] * (4 - len(ne)), names.get(types, types)


# -- building -----------------------------------------------------------------------------------------


def build(g: GraphBuilder, drawn: Drawn):
    """The drawn node built on `g` (its sources laid out as drawn); the node."""
    sources = [_build_source(g, s) if s is not None else None for s in drawn.sources]
    if isinstance(drawn.result, int):
        target = sources[drawn.result]
        if target is None:
            raise DrawError(f"{drawn.op}: the result is a view of source {drawn.result}, which was not drawn")
        node = g.new(g.type_of(target), target.ne, op=drawn.op, srcs=sources, nb=target.nb, data=target.data,
                     view_src=target, op_params=drawn.words)
    else:
        ne, kind = drawn.result
        node = g.new(kind, ne, op=drawn.op, srcs=sources, op_params=drawn.words)
    drawn.ops = {name for t in g.tensors if (name := g.profile.ggml.op_name(t.op)) is not None}  # all known
    return node


def _build_source(g: GraphBuilder, source: DrawnSource):
    """The source's tensor, laid out as drawn over a leaf that holds its values."""
    ne = source.ne
    if source.layout == "PERMUTE":  # the leaf's dimension i holds the result's dimension axes[i]
        leaf = _leaf(g, source, [ne[axis] for axis in source.axes])
        return g.permute(leaf, *source.axes)
    if source.layout == "TRANSPOSE":
        return g.transpose(_leaf(g, source, [ne[1], ne[0], ne[2], ne[3]]))
    if source.layout == "RESHAPE":
        return g.reshape(_leaf(g, source, [ne[0] * ne[1], ne[2] * ne[3]]), ne)
    if source.layout == "VIEW":
        leaf = _leaf(g, source, [n + pad for n, pad in zip(ne, source.pads, strict=True)])
        offset = sum(start * stride for start, stride in zip(source.starts, leaf.nb, strict=True))
        return g.view(leaf, ne, list(leaf.nb[1:]), offset)
    return _leaf(g, source, ne)


def _leaf(g: GraphBuilder, source: DrawnSource, ne: list[int]):
    """A leaf of shape `ne` holding the source's kind of values."""
    rng = np.random.default_rng(source.seed)
    shape = tuple(reversed(ne))
    kind = source.type
    if TYPE_BY_NAME[kind].block_size > 1:
        from .op_cases import quantized_weights

        raw, _ = quantized_weights(rng, kind, ne[1] * ne[2] * ne[3], ne[0])
        return g.input_raw(kind, ne, raw)
    if source.values == "ids" and source.distinct:
        rows = int(np.prod(shape[:-1]))
        values = np.array([rng.permutation(source.bound)[: shape[-1]] for _ in range(rows)]).reshape(shape)
    elif source.values == "ids":
        values = rng.integers(0, source.bound, shape)
    elif source.values == "ints":
        values = rng.integers(0, 4, shape)
    elif source.values == "mask":  # finite biases (ALiBi scales them) and -inf
        values = np.where(rng.random(shape) < 0.25, -np.inf, rng.standard_normal(shape))
        values[..., 0] = 0.0  # every row keeps a finite column
    else:
        values = rng.standard_normal(shape)
        if source.values == "pos":
            values = np.abs(values) + 0.1
    dtype = FLOAT_DTYPES.get(kind) or INT_DTYPES[kind]
    return g.input(np.asarray(values).astype(dtype), type=kind)
