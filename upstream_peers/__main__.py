"""python -m upstream_peers build PEER...   (PEER: llama-cpp-python release or protocol version)"""

import sys

from .build import main as build_main


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["build"]:
        return build_main(args[1:])
    print(__doc__)
    return 0 if args[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main())
