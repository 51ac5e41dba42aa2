"""Regenerate protocol/ggml_tables.json from the ggml.h headers of upstream releases.

The ggml enums (`ggml_type`, `ggml_op`, `ggml_unary_op`, `ggml_glu_op`) change between
releases, and an rpc_tensor carries raw enum values, so the protocol needs one table per
release.  The headers come from the llama-cpp-python sdists on PyPI (they vendor ggml);
this script only reads enum member names from them.

    python tools/extract_ggml_enums.py 3.6.1=/path/to/ggml.h 7.0.0=/path/to/ggml.h ...
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent.parent / "protocol" / "ggml_tables.json"

ENUMS = {"ggml_op": "GGML_OP_", "ggml_unary_op": "GGML_UNARY_OP_", "ggml_glu_op": "GGML_GLU_OP_"}


def enum_body(header: str, enum: str) -> str:
    match = re.search(r"enum\s+%s\s*\{(.*?)\};" % enum, header, re.S)
    if not match:
        raise SystemExit(f"enum {enum} not found")
    return re.sub(r"//[^\n]*", "", match.group(1))


def members(header: str, enum: str, prefix: str) -> list[str]:
    """Names in declaration order; every member of these enums is implicitly numbered."""
    names = []
    for item in enum_body(header, enum).split(","):
        item = item.strip()
        if not item:
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        if value.strip() and int(value.strip(), 0) != len(names):
            raise SystemExit(f"{enum}: {name} has an explicit value out of sequence")
        if name.endswith("_COUNT"):
            break
        names.append(name.removeprefix(prefix))
    return names


def tensor_flags(header: str) -> dict[str, int]:
    """enum ggml_tensor_flag: name -> bit (COMPUTE marks nodes the CPU backend must run)."""
    body = enum_body(header, "ggml_tensor_flag")
    return {name.removeprefix("GGML_TENSOR_FLAG_"): int(value)
            for name, value in re.findall(r"(GGML_TENSOR_FLAG_\w+)\s*=\s*(\d+)", body)}


def type_count(header: str) -> int:
    match = re.search(r"GGML_TYPE_COUNT\s*=\s*(\d+)", enum_body(header, "ggml_type"))
    if not match:
        raise SystemExit("GGML_TYPE_COUNT not found")
    return int(match.group(1))


def render(tables: dict[str, dict]) -> str:
    document = {"generated_by": "tools/extract_ggml_enums.py from each release's vendored ggml.h; do not edit",
                "releases": tables}
    return json.dumps(document, indent=1) + "\n"


def main(argv: list[str]) -> None:
    if not argv or any("=" not in arg for arg in argv):
        raise SystemExit(__doc__)
    tables = {}
    for arg in argv:
        version, path = arg.split("=", 1)
        header = Path(path).read_text()
        tables[version] = {
            "type_count": type_count(header),
            "ops": members(header, "ggml_op", ENUMS["ggml_op"]),
            "unary_ops": members(header, "ggml_unary_op", ENUMS["ggml_unary_op"]),
            "glu_ops": members(header, "ggml_glu_op", ENUMS["ggml_glu_op"]),
            "tensor_flags": tensor_flags(header),
        }
    OUTPUT.write_text(render(tables))
    print(f"wrote {OUTPUT} ({', '.join(tables)})")


if __name__ == "__main__":
    main(sys.argv[1:])
