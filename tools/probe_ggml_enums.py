"""The ggml enums of a built peer's libggml-base, read through ggml's own functions, as JSON.

Run by tools/extract_ggml_enums.py in the peer's python (through `python_command`: the
library may need another C library than this interpreter's), for releases whose ggml.h is
published nowhere this project can read it (a binary wheel).  Imports only the standard
library.

    <peer python> tools/probe_ggml_enums.py LIBGGML_BASE SIZES_JSON

SIZES_JSON gives the sizes in bytes of ggml's static arrays with one entry per enum member
(SIZED below), which the caller reads from the library's symbol table: they say how many
members each enum has (the functions below index those arrays without a bounds check; a
type_traits entry is as long as the distance between two of ggml_get_type_traits' answers).
Member names come from ggml_op_name,
ggml_unary_op_name and ggml_glu_op_name; per type, ggml_type_name, ggml_blck_size and
ggml_type_size.  The tensor flags are found by their effect: each of ggml_set_input,
ggml_set_output, ggml_set_param, ggml_set_loss, and building a graph (COMPUTE, on an op's
result), sets one bit of one word in the tensor it is given.
"""

from __future__ import annotations

import ctypes
import json
import sys
from ctypes import c_bool, c_char_p, c_int, c_int64, c_size_t, c_void_p

GGML_TYPE_F32 = 0
# the arrays whose sizes count the members: array -> the key of its enum in the output
SIZED = {"GGML_OP_NAME": "ops", "GGML_UNARY_OP_NAME": "unary_ops", "GGML_GLU_OP_NAME": "glu_ops",
         "type_traits": "types"}


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", c_size_t), ("mem_buffer", c_void_p), ("no_alloc", c_bool)]


def bind(path: str) -> ctypes.CDLL:
    ggml = ctypes.CDLL(path)
    signatures = {
        "ggml_op_name": (c_char_p, [c_int]), "ggml_unary_op_name": (c_char_p, [c_int]),
        "ggml_glu_op_name": (c_char_p, [c_int]), "ggml_type_name": (c_char_p, [c_int]),
        "ggml_blck_size": (c_int64, [c_int]), "ggml_type_size": (c_size_t, [c_int]),
        "ggml_get_type_traits": (c_void_p, [c_int]),
        "ggml_init": (c_void_p, [_InitParams]), "ggml_tensor_overhead": (c_size_t, []),
        "ggml_new_tensor_1d": (c_void_p, [c_void_p, c_int, c_int64]), "ggml_add": (c_void_p, [c_void_p] * 3),
        "ggml_set_name": (c_void_p, [c_void_p, c_char_p]), "ggml_new_graph": (c_void_p, [c_void_p]), "ggml_build_forward_expand": (None, [c_void_p, c_void_p]),
        "ggml_set_input": (None, [c_void_p]), "ggml_set_output": (None, [c_void_p]),
        "ggml_set_param": (None, [c_void_p]), "ggml_set_loss": (None, [c_void_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(ggml, name)
        function.restype, function.argtypes = restype, argtypes
    return ggml


def counts(ggml: ctypes.CDLL, sizes: dict[str, int]) -> dict[str, int]:
    """Members per enum, from the sizes of the arrays in SIZED."""
    entry = {name: ctypes.sizeof(c_char_p) for name in SIZED}
    entry["type_traits"] = ggml.ggml_get_type_traits(1) - ggml.ggml_get_type_traits(0)
    return {SIZED[name]: sizes[name] // entry[name] for name in SIZED}


def names(function, count: int) -> list[str]:
    return [function(value).decode() for value in range(count)]


def types(ggml: ctypes.CDLL, count: int) -> list[list]:
    """[name, block size, type size] per type number (block size 0: a removed type)."""
    return [[ggml.ggml_type_name(t).decode(), ggml.ggml_blck_size(t), ggml.ggml_type_size(t)] for t in range(count)]


def flag_set(ggml: ctypes.CDLL, tensor: int, action) -> tuple[int, int]:
    """(word offset, bit) of the one flag `action` sets in `tensor`'s header."""
    size = ggml.ggml_tensor_overhead()  # at least the tensor's header
    before = ctypes.string_at(tensor, size)
    action()
    after = ctypes.string_at(tensor, size)
    changed = [(offset, int.from_bytes(before[offset:offset + 4], "little"),
                int.from_bytes(after[offset:offset + 4], "little")) for offset in range(0, size, 4)
               if before[offset:offset + 4] != after[offset:offset + 4]]
    if len(changed) != 1 or changed[0][1] & ~changed[0][2] or bin(changed[0][2] ^ changed[0][1]).count("1") != 1:
        raise SystemExit(f"{getattr(action, '__name__', action)} did not set exactly one bit of one word: {changed}")
    offset, old, new = changed[0]
    return offset, new ^ old


def tensor_flags(ggml: ctypes.CDLL) -> dict[str, int]:
    ctx = ggml.ggml_init(_InitParams(1 << 20, None, True))
    graph = ggml.ggml_new_graph(ctx)  # before the tensors, so that building it changes none of their neighbours
    leaf = ggml.ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 1)
    result = ggml.ggml_add(ctx, leaf, ggml.ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 1))
    ggml.ggml_set_name(result, b"result")  # (building a graph names the nodes that have no name)
    found = {name: flag_set(ggml, leaf, lambda setter=setter: setter(leaf))
             for name, setter in (("INPUT", ggml.ggml_set_input), ("OUTPUT", ggml.ggml_set_output),
                                  ("PARAM", ggml.ggml_set_param), ("LOSS", ggml.ggml_set_loss))}
    found["COMPUTE"] = flag_set(ggml, result, lambda: ggml.ggml_build_forward_expand(graph, result))
    if len({offset for offset, _ in found.values()}) != 1:
        raise SystemExit(f"the flags were set in different words: {found}")
    return {name: bit for name, (_, bit) in sorted(found.items(), key=lambda item: item[1][1])}


def main(argv: list[str]) -> None:
    ggml = bind(argv[0])
    count = counts(ggml, json.loads(argv[1]))
    print(json.dumps({"ops": names(ggml.ggml_op_name, count["ops"]),
                      "unary_ops": names(ggml.ggml_unary_op_name, count["unary_ops"]),
                      "glu_ops": names(ggml.ggml_glu_op_name, count["glu_ops"]),
                      "types": types(ggml, count["types"]),
                      "tensor_flags": tensor_flags(ggml)}))


if __name__ == "__main__":
    main(sys.argv[1:])
