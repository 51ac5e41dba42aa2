"""ggml-rpc-proxy and ggml-rpc-guard: servers in front of a GGML RPC server.

    ggml-rpc-proxy --upstream HOST:PORT [--record DIR]                 a transparent recording proxy
    ggml-rpc-proxy --bridge --upstream HOST:PORT [--client-proto V]    clients of any version, one server
    ggml-rpc-guard --listen HOST:PORT --upstream HOST:PORT [--bridge]  every request checked first
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ggml_rpc_spec.client.rpc import parse_endpoint
from ggml_rpc_spec.netio import DEFAULT_FRAME_TIMEOUT, DEFAULT_MIN_RATE, FramePace, Networks
from ggml_rpc_spec.protocol.framing import hello_shapes
from ggml_rpc_spec.protocol.trace import encode_trace
from ggml_rpc_spec.protocol.versions import HELLO_PROBES, UnsupportedVersion, profile_for
from ggml_rpc_spec.server.link import LinkPolicy

from .guard import UNENFORCEABLE, GuardSettings, enforced_rules
from .proxy import RecordingProxy
from .recording import RecordedConnection, decode_record, summary, to_trace
from .relay import Relay


def build_parser(prog: str, *, guard: bool) -> argparse.ArgumentParser:
    if guard:
        description = ("A guard in front of an unmodified GGML RPC server (upstream's rpc-server of any version with "
                       "a profile): every request is checked against the rules of SPEC.md before the server sees "
                       "it; a request that breaks one closes that client's connection, is logged with the rule, and "
                       "never reaches the server.  Bulk data is streamed through.")
    else:
        description = ("Transparent recording proxy for GGML RPC: forwards every byte between clients and an "
                       "upstream server and writes one trace file per connection (SPEC.md §13).  With --bridge it "
                       "translates instead: clients of one protocol version use a server of another; with --guard "
                       "it checks every request first (see ggml-rpc-guard).")
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     epilog="Neither GGML RPC nor this relay authenticates anyone: bind to loopback "
                                            "or a trusted network, and name the clients with --allow.")
    parser.add_argument("--listen", default="127.0.0.1:50053", metavar="HOST:PORT",
                        help="where clients connect (default 127.0.0.1:50053)")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the server to forward to")
    parser.add_argument("--record", default=None, metavar="DIR",
                        help="write one trace per connection into DIR (created if missing); with --bridge or "
                             "--guard, two: the client's side and the server's")
    parser.add_argument("--bridge", action="store_true",
                        help="translate between the clients' protocol version and the server's (learned from its "
                             "HELLO): old and new llama.cpp builds use any server")
    parser.add_argument("--client-proto", default=None, metavar="VERSION[,VERSION]",
                        help="with --bridge: the version to answer each HELLO shape with, one per shape (default: "
                             "the newest of each: " + ", ".join(p.name for p in HELLO_PROBES) + ")")
    if not guard:
        parser.add_argument("--guard", action="store_true", help="check every request first (see ggml-rpc-guard)")
    parser.add_argument("--allow", default="", metavar="CIDR[,CIDR]",
                        help="clients admitted, as networks (default: every client)")
    parser.add_argument("--link-allow", default="", metavar="CIDR[,CIDR]",
                        help="8.0.0 tensor parallelism: hosts a server may be told to connect to as rank 1, besides "
                             "127.0.0.1 and ::1 ('any': every host); COMM_INIT naming others is answered ok=0")
    parser.add_argument("--link-listen", action="store_true",
                        help="let clients make the server rank 0 of a pair, on which upstream listens on every "
                             "interface at a port the client chooses (default: declined with ok=0)")
    parser.add_argument("--frame-timeout", type=float, default=DEFAULT_FRAME_TIMEOUT, metavar="SECONDS",
                        help=f"close a client whose started request sends no byte for this long (default: "
                             f"{DEFAULT_FRAME_TIMEOUT:g})")
    parser.add_argument("--min-rate", type=float, default=DEFAULT_MIN_RATE, metavar="BYTES",
                        help="bytes per second a started request must average after its first 30 s (default: "
                             f"{DEFAULT_MIN_RATE})")
    parser.add_argument("--max-connections", type=int, default=64, metavar="N",
                        help="clients at once; when all are open, the one quiet for longest makes room (default: 64)")
    parser.add_argument("--metrics", default=None, metavar="HOST:PORT",
                        help="serve the guard's counters in Prometheus' text format at http://HOST:PORT/metrics "
                             "(they are also printed on SIGUSR1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return _main(argv, prog="ggml-rpc-proxy", guard=False)


def guard_main(argv: list[str] | None = None) -> int:
    return _main(argv, prog="ggml-rpc-guard", guard=True)


def _main(argv, *, prog: str, guard: bool) -> int:
    parser = build_parser(prog, guard=guard)
    args = parser.parse_args(argv)
    guard = guard or args.guard
    try:
        listen, upstream = parse_endpoint(args.listen), parse_endpoint(args.upstream)
        allow = Networks(_list(args.allow)) if args.allow else None
        links = LinkPolicy.for_endpoint(listen[0], _list(args.link_allow))
    except ValueError as exc:
        parser.error(str(exc))
    folder = Path(args.record) if args.record else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if not (args.bridge or guard):
        return _run_proxy(args, listen, upstream, folder)
    profiles = None
    if args.bridge:
        try:
            profiles = (tuple(profile_for(v.strip()) for v in args.client_proto.split(","))
                        if args.client_proto else HELLO_PROBES)
            hello_shapes(profiles)
        except (UnsupportedVersion, ValueError) as exc:
            parser.error(f"--client-proto: {exc}")
    try:
        relay = Relay(upstream, listen, client_profiles=profiles, record=folder, links=links, allow=allow,
                      guard=GuardSettings(links, args.link_listen) if guard else None,
                      max_connections=args.max_connections, pace=FramePace(args.frame_timeout or None, args.min_rate))
    except OSError as exc:
        print(f"error: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    relay.kind = "guard" if guard else "bridge"
    mode = " and ".join(m for m, on in (("bridge", args.bridge), ("guard", guard)) if on)
    banner = f"{prog} ({mode}): {relay.endpoint} -> {args.upstream}"
    if profiles:
        banner += f" (clients of {' or '.join(p.name for p in profiles)})"
    if folder:
        banner += f", recording into {folder}"
    if guard:
        banner += "\n" + _enforcement(links, args.link_listen)
        signal.signal(signal.SIGUSR1, lambda *_: print(relay.stats.summary(), file=sys.stderr, flush=True))
        if args.metrics:
            try:
                _serve_metrics(parse_endpoint(args.metrics), relay)
            except (OSError, ValueError) as exc:
                print(f"error: --metrics {args.metrics}: {exc}", file=sys.stderr)
                return 1
    return _serve(relay, banner, prog)


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _enforcement(links: LinkPolicy, listen: bool) -> str:
    enforced = ", ".join(r.key for r in enforced_rules())
    unenforced = "; ".join(f"{key} ({why})" for key, why in UNENFORCEABLE.items())
    link = ("rank 0 allowed (upstream listens on every interface)" if listen else "rank 0 declined") + \
           f"; rank 1 may connect to {links.admit}"
    return f"  enforced: {enforced}\n  not enforceable at the wire: {unenforced}\n  links: {link}"


def _serve_metrics(address: tuple[str, int], relay: Relay) -> ThreadingHTTPServer:
    """The guard's counters at http://address/metrics, served from a thread of their own."""
    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.rstrip("/") != "/metrics":
                self.send_error(404, "the counters are at /metrics")
                return
            body = relay.stats.prometheus().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(address, Metrics)
    threading.Thread(target=server.serve_forever, name="guard-metrics", daemon=True).start()
    return server


def _run_proxy(args, listen, upstream, folder) -> int:
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
                  + (f", recording into {folder}" if folder else ""), "ggml-rpc-proxy")


def _serve(server, banner: str, prog: str) -> int:
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
    print(f"{prog}: stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
