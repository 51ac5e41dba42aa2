"""ggml-rpc-proxy: the recording proxy, or with --bridge the version bridge."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from ggml_rpc_spec.client.rpc import parse_endpoint
from ggml_rpc_spec.protocol.framing import hello_shapes
from ggml_rpc_spec.protocol.trace import encode_trace
from ggml_rpc_spec.protocol.versions import HELLO_PROBES, UnsupportedVersion, profile_for

from .bridge import BridgeServer
from .proxy import RecordingProxy
from .recording import RecordedConnection, decode_record, summary, to_trace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ggml-rpc-proxy",
                                     description="Transparent recording proxy for GGML RPC: forwards every byte "
                                                 "between clients and an upstream server and writes one trace file "
                                                 "per connection (SPEC.md §13).  With --bridge it translates "
                                                 "instead: clients of one protocol version use a server of another.")
    parser.add_argument("--listen", default="127.0.0.1:50053", metavar="HOST:PORT",
                        help="where clients connect (default 127.0.0.1:50053)")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the server to forward to")
    parser.add_argument("--record", default=None, metavar="DIR",
                        help="write one trace per connection into DIR (created if missing); with --bridge, two: "
                             "the client's side and the server's")
    parser.add_argument("--bridge", action="store_true",
                        help="translate between the clients' protocol version and the server's (learned from its "
                             "HELLO): old and new llama.cpp builds use any server")
    parser.add_argument("--client-proto", default=None, metavar="VERSION[,VERSION]",
                        help="with --bridge: the version to answer each HELLO shape with, one per shape (default: "
                             "the newest of each: " + ", ".join(p.name for p in HELLO_PROBES) + ")")
    args = parser.parse_args(argv)
    try:
        listen, upstream = parse_endpoint(args.listen), parse_endpoint(args.upstream)
    except ValueError as exc:
        parser.error(str(exc))
    folder = Path(args.record) if args.record else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    if args.bridge:
        return _run_bridge(args, listen, upstream, folder, parser)

    def closed(record: RecordedConnection) -> None:
        session = decode_record(record)
        line = summary(record, session)
        if folder is not None:
            path = folder / f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(record.started))}-{record.number:04d}.ggmlrpc"
            path.write_bytes(encode_trace(to_trace(record, args.upstream, session)))
            line += f" -> {path}"
        record.chunks.clear()  # written: a long-running proxy keeps no connection's bytes
        print(line, file=sys.stderr, flush=True)

    try:
        proxy = RecordingProxy(upstream, listen, on_close=closed)
    except OSError as exc:
        print(f"error: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return _serve(proxy, f"ggml-rpc-proxy: {proxy.endpoint} -> {args.upstream}"
                  + (f", recording into {folder}" if folder else ""))


def _serve(server, banner: str) -> int:
    """Print `banner`, serve until SIGTERM or Ctrl-C, then shut down (open connections are
    closed and their traces written on the way out)."""
    print(banner, file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.request_stop())
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.shutdown()
    print("ggml-rpc-proxy: stopped", file=sys.stderr)
    return 0


def _run_bridge(args, listen, upstream, folder, parser) -> int:
    try:
        profiles = (tuple(profile_for(v.strip()) for v in args.client_proto.split(","))
                    if args.client_proto else HELLO_PROBES)
        hello_shapes(profiles)
    except (UnsupportedVersion, ValueError) as exc:
        parser.error(f"--client-proto: {exc}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        bridge = BridgeServer(upstream, profiles, listen, record=folder)
    except OSError as exc:
        print(f"error: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return _serve(bridge, f"ggml-rpc-proxy --bridge: {bridge.endpoint} (clients of "
                  f"{' or '.join(p.name for p in profiles)}) -> {args.upstream}"
                  + (f", recording into {folder}" if folder else ""))


if __name__ == "__main__":

    sys.exit(main())
