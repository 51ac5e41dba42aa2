"""ggml-rpc-client: talk to any GGML RPC server from the command line.

    ggml-rpc-client info HOST:PORT        protocol version, devices, memory, alignment, max size
"""

from __future__ import annotations

import argparse
import sys

from ggml_rpc_spec.protocol.errors import ProtocolError

from .rpc import RPCClient, ServerClosed


def human(size: int) -> str:
    if size >= 2**64 - 1:
        return "unlimited (2^64-1)"
    scaled: float = size
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if scaled < 1024 or unit == "TiB":
            return f"{scaled:.1f} {unit}" if unit != "B" else f"{scaled} B"
        scaled /= 1024
    return str(scaled)


def info(args) -> int:
    with RPCClient(args.endpoint, proto=args.proto, timeout=args.timeout) as rpc:
        reported = "%d.%d.%d" % rpc.server_version
        note = "" if reported == rpc.profile.name else f" (speaking {rpc.profile.name})"
        print(f"server     {rpc.endpoint}")
        print(f"protocol   {reported}{note}")
        count = rpc.device_count()
        print(f"devices    {count}")
        for device in range(count):
            free, total = rpc.device_memory(device)
            print(f"device {device}   memory {human(free)} free of {human(total)}; "
                  f"alignment {rpc.alignment(device)}; max buffer {human(rpc.max_size(device))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ggml-rpc-client", description="Talk to a GGML RPC server.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = commands.add_parser("info", help="print protocol version, devices, memory, alignment and max size")
    show.add_argument("endpoint", metavar="HOST:PORT")
    show.add_argument("--proto", default=None, metavar="VERSION",
                      help="speak this protocol version instead of negotiating it from HELLO")
    show.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply (default: 10)")
    show.set_defaults(run=info)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ServerClosed, TimeoutError, ProtocolError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot reach {args.endpoint}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
