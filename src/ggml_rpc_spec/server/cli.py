"""ggml-rpc-server: the reference server's command line (flags and defaults as upstream's
ggml-rpc-server where they overlap).

    ggml-rpc-server --host 127.0.0.1 --port 50052 --proto 3.6 --devices 1 --mem 8G
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import signal
import sys
from pathlib import Path

from ggml_rpc_spec.netio import DEFAULT_POLL
from ggml_rpc_spec.protocol import NEWEST, PROFILES, profile_for
from ggml_rpc_spec.protocol.errors import UnsupportedVersion
from ggml_rpc_spec.protocol.framing import hello_shapes
from ggml_rpc_spec.protocol.versions import Profile

from ggml_rpc_spec.executor.numerics import DEFAULT_NUMERICS, NUMERICS

from ggml_rpc_spec.netio import DEFAULT_FRAME_TIMEOUT, DEFAULT_MIN_RATE

from .service import DEFAULT_LINK_TIMEOUT, ReferenceServer

# -- command line ------------------------------------------------------------------------------

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'8G', '512MiB', '1.5g', '4096' -> bytes (powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4096, 512M, 8G)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def default_cache_dir() -> Path:
    """Where upstream's `rpc-server -c` keeps its cache: $LLAMA_CACHE, else
    $XDG_CACHE_HOME/llama.cpp, else ~/.cache/llama.cpp; plus rpc/."""
    explicit = os.environ.get("LLAMA_CACHE")
    if explicit:
        return Path(explicit) / "rpc"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llama.cpp" / "rpc"


def exposure_warning(host: str) -> str | None:
    """The warning printed when binding anything but loopback (as upstream does)."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return None
    return (f"\nWARNING: host {host!r} is not a loopback address.\n"
            "         Never expose the RPC server to an open network: the protocol has no authentication,\n"
            "         and every client can read, write and compute with the server's memory.\n")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {text!r}")
    return int(text)


def _microseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1e6:
        raise argparse.ArgumentTypeError(f"not a time in microseconds (0 to 1000000): {text!r}")
    return value


def _proto(text: str) -> tuple[Profile, ...]:
    try:
        profiles = tuple(profile_for(name.strip()) for name in text.split(","))
        hello_shapes(profiles)
    except (UnsupportedVersion, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return profiles


def build_parser() -> argparse.ArgumentParser:
    versions = ", ".join(p.name for p in PROFILES)
    parser = argparse.ArgumentParser(
        prog="ggml-rpc-server",
        description="Reference GGML RPC server: NumPy CPU devices speaking any supported protocol version. "
                    "Same flags and defaults as upstream's ggml-rpc-server where they overlap.",
        epilog="The protocol has no authentication: anyone who can connect can use the server's memory and CPU. "
               "Bind to 127.0.0.1 (the default) unless the network is trusted.")
    parser.add_argument("-H", "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("-p", "--port", type=_port, default=50052, help="port to bind, 0 for any (default: 50052)")
    parser.add_argument("--proto", type=_proto, default=(NEWEST,), metavar="VERSION[,VERSION]",
                        help=f"protocol version to speak: {versions}; major.minor picks the newest patch "
                             f"(default: {NEWEST.name}).  Two versions of different HELLO shapes, e.g. "
                             "3.6.1,7.0.0, serve both on one port: the client's HELLO picks (old and new "
                             "llama.cpp builds share the server)")
    parser.add_argument("--devices", type=int, default=1, metavar="N", help="number of devices (default: 1)")
    parser.add_argument("--mem", type=parse_size, default=None, metavar="SIZE",
                        help="memory per device, e.g. 8G (default: the machine's physical memory)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                       help="hash cache directory (SET_TENSOR_HASH); files named by FNV-1a 64, as upstream")
    cache.add_argument("-c", "--cache", action="store_true",
                       help=f"use upstream's default cache directory ({default_cache_dir()})")
    parser.add_argument("--max-payload", type=parse_size, default=None, metavar="SIZE",
                        help="largest SET_TENSOR / GRAPH_COMPUTE payload accepted (default: the memory of a "
                             "device; clients send each weight tensor in one SET_TENSOR)")
    parser.add_argument("--max-connections", type=int, default=64, metavar="N",
                        help="connections served at once; when all are open, a new connection takes the place of "
                             "the one quiet for longest (a stalled request first), or is closed if all are busy "
                             "(default: 64)")
    parser.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                        help="accepted for compatibility with upstream; NumPy chooses its own threads")
    parser.add_argument("--poll-us", type=_microseconds, default=DEFAULT_POLL * 1e6, metavar="US",
                        help="when a connection has no bytes waiting, poll it this many microseconds before "
                             "sleeping: faster small calls where waking a thread is slow (virtual machines), "
                             "at most that much CPU per request; 0 turns it off (default: "
                             f"{DEFAULT_POLL * 1e6:g})")
    parser.add_argument("--frame-timeout", type=float, default=DEFAULT_FRAME_TIMEOUT, metavar="SECONDS",
                        help="close a connection whose started request sends no byte for this long; idle "
                             "connections between requests are not timed out (default: "
                             f"{DEFAULT_FRAME_TIMEOUT:g}; 0: never)")
    parser.add_argument("--min-rate", type=parse_size, default=DEFAULT_MIN_RATE, metavar="BYTES",
                        help="bytes per second a started request must average after its first 30 s, so that a peer "
                             "trickling bytes cannot hold a connection (default: 1K; 0: no minimum)")
    parser.add_argument("--link-allow", default="", metavar="CIDR[,CIDR]",
                        help="protocol 8.0.0 tensor parallelism: networks whose servers may pair with this one over a "
                             "server-to-server link, besides 127.0.0.1, ::1 and the address bound with --host ('any': "
                             "every address).  As rank 0 the link listens on the --host address only")
    parser.add_argument("--link-timeout", type=float, default=DEFAULT_LINK_TIMEOUT, metavar="SECONDS",
                        help=f"how long a link waits for its peer to connect or to send (default: "
                             f"{DEFAULT_LINK_TIMEOUT:g})")
    parser.add_argument("--numerics", choices=NUMERICS, default=DEFAULT_NUMERICS,
                        help="how matrix products round their activations: 'ggml' as ggml's CPU backend does (to "
                             "the weights' dot-product type: Q8 blocks, F16), so that results match what the client's "
                             "own CPU computes; 'float' plain float32 (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log one line per command (also: GGML_RPC_DEBUG=1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = args.verbose or bool(os.environ.get("GGML_RPC_DEBUG"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.devices < 1:
        print("error: --devices must be at least 1", file=sys.stderr)
        return 2
    warning = exposure_warning(args.host)
    if warning:
        print(warning, file=sys.stderr)
    cache_dir = default_cache_dir() if args.cache else args.cache_dir
    try:
        server = ReferenceServer(profile=args.proto, host=args.host, port=args.port, devices=args.devices,
                                 memory=args.mem, cache_dir=cache_dir, max_payload=args.max_payload,
                                 max_connections=args.max_connections, verbose=verbose,
                                 poll=args.poll_us / 1e6, frame_timeout=args.frame_timeout, min_rate=args.min_rate,
                                 link_allow=tuple(n.strip() for n in args.link_allow.split(",") if n.strip()),
                                 link_timeout=args.link_timeout, numerics=args.numerics)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a --link-allow entry that is no network
        print(f"error: --link-allow: {exc}", file=sys.stderr)
        return 2
    device = server.state.devices[0]
    print(f"ggml-rpc-server (reference) speaking protocol {' and '.join(p.name for p in server.profiles)}\n"
          f"  endpoint    : {server.endpoint}\n"
          f"  devices     : {len(server.state.devices)} x NumPy CPU, {device.total // (1 << 20)} MiB each\n"
          f"  local cache : {cache_dir or 'n/a'}", flush=True)
    gc.freeze()  # what start-up made lives as long as the server: keep it out of every collection
    # A graph plan makes a few objects per node (thousands per graph); collecting the young
    # generation every 700 of them cost ~0.3 ms per new 2000-node graph.
    gc.set_threshold(5000, 10, 10)
    signal.signal(signal.SIGTERM, lambda *_: server.request_stop())
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even if the parent ignored SIGINT
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    print("shutting down", file=sys.stderr)
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
