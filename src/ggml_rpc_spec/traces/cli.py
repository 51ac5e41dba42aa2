"""ggml-rpc-trace: decode and replay GGML RPC trace files.

    ggml-rpc-trace show FILE [--json] [--graphs]       decode every frame with the protocol schemas
    ggml-rpc-trace replay FILE... --target HOST:PORT   replay the client side, relocated, and judge
                                                       the replies (exit 1 if any differ); a connection
                                                       that set up a server-to-server link replays with
                                                       the link trace among FILEs, the replayer the
                                                       other rank
    ggml-rpc-trace import CAPTURE --out DIR [--port P[,Q]] one trace per connection of a pcap/pcapng capture,
                                                       one link trace per server-to-server link
    ggml-rpc-trace export TRACE... --pcap OUT          traces as a capture (for Wireshark)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ggml_rpc_spec.protocol.errors import ProtocolError
from ggml_rpc_spec.protocol.trace import LINK, Trace, TraceError, decode_trace

from ggml_rpc_spec.client.rpc import ServerClosed
from .replay import DIFFERS, TOLERANCE, link_of, passed, replay
from .show import as_json, render


def load(path: str) -> Trace:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"error: cannot read {path}: {exc.strerror}")
    try:
        return decode_trace(raw)
    except TraceError as exc:
        raise SystemExit(f"error: {path}: {exc}")


def expand(paths: list[str]) -> list[str]:
    """Files as given; a directory stands for the traces in it."""
    out = []
    for path in paths:
        folder = Path(path)
        out += sorted(str(p) for p in folder.glob("*.ggmlrpc")) if folder.is_dir() else [path]
    return out


def show(args) -> int:
    for path in expand(args.files):
        trace = load(path)
        if args.json:
            print(json.dumps(as_json(trace, path), indent=1))
        else:
            print(f"== {path}")
            print(render(trace, graphs=args.graphs))
    return 0


def replay_command(args) -> int:
    failures = 0
    traces = {path: load(path) for path in expand(args.files)}
    for path, trace in traces.items():
        if trace.kind == LINK:
            continue  # replayed with the connection that set the link up
        try:
            tolerance = None if args.tolerance is None else dict.fromkeys(TOLERANCE, args.tolerance)
            results = replay(trace, args.target, timeout=args.timeout, tolerance=tolerance,
                             link=link_of(trace, list(traces.values())))
        except (ProtocolError, ServerClosed, OSError, TimeoutError) as exc:
            print(f"{path}: cannot replay: {exc}")
            failures += 1
            continue
        ok = passed(results)
        failures += not ok
        counts: dict[str, int] = {}
        for result in results:
            counts[result.verdict] = counts.get(result.verdict, 0) + 1
            if args.verbose or result.verdict == DIFFERS:
                print(f"  #{result.index:<5d} {result.command:17s} {result.verdict}: {result.detail}")
        summary = ", ".join(f"{n} {verdict}" for verdict, n in counts.items())
        print(f"{path}: {'PASS' if ok else 'FAIL'} ({summary})")
    return 1 if failures else 0


def import_command(args) -> int:
    from .capture import import_capture

    try:
        results = import_capture(Path(args.capture), args.port, Path(args.out), log=print)
    except (OSError, ValueError) as exc:
        print(f"error: {args.capture}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 1
    written = sum(r.trace is not None for r in results)
    links = sum(r.trace is not None and r.trace.kind == LINK for r in results)
    print(f"{written} of {len(results)} connection(s) written to {args.out}, {links} of them server-to-server links")
    return 0 if written else 1


def export_command(args) -> int:
    from .capture import export_capture

    traces = [load(path) for path in expand(args.traces)]
    try:
        count = export_capture(traces, Path(args.pcap))
    except OSError as exc:
        print(f"error: cannot write {args.pcap}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"{args.pcap}: {count} packets")
    return 0


def ports(text: str) -> list[int]:
    """`--port` values: one port or several separated by commas."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port or a comma-separated list of ports: {text!r}") from None
    if not all(0 < value < 65536 for value in values):
        raise argparse.ArgumentTypeError(f"ports are 1-65535: {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ggml-rpc-trace", description="Decode and replay GGML RPC trace files.",
                                     epilog="Trace files are written by ggml-rpc-proxy --record and by the conformance "
                                            "suite; their format is SPEC.md §13.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show_parser = commands.add_parser("show", help="decode every frame (command, fields, tensors, sizes)")
    show_parser.add_argument("files", nargs="+", metavar="FILE", help="trace files or directories of them")
    show_parser.add_argument("--json", action="store_true", help="machine-readable output")
    show_parser.add_argument("--graphs", action="store_true", help="list every tensor of every graph")
    show_parser.set_defaults(run=show)
    replay_parser = commands.add_parser("replay", help="replay the client side against a server and compare")
    replay_parser.add_argument("files", nargs="+", metavar="FILE",
                               help="trace files or directories of them; a connection that set up a server-to-server "
                                    "link (COMM_INIT) needs the link's trace among them: the replayer is then the "
                                    "other rank, sending that rank's recorded partials")
    replay_parser.add_argument("--target", required=True, metavar="HOST:PORT", help="server to replay against")
    replay_parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each reply")
    replay_parser.add_argument("--tolerance", type=float, default=None,
                               help="largest NMSE (normalised mean squared error, as upstream's op test program "
                                    "measures) of data a graph computed, for every type (default per type: "
                                    + ", ".join(f"{k} {v:g}" for k, v in TOLERANCE.items())
                                    + "); other data must be identical")
    replay_parser.add_argument("-v", "--verbose", action="store_true", help="print every frame, not only differences")
    replay_parser.set_defaults(run=replay_command)
    import_parser = commands.add_parser("import", help="one trace per connection of a pcap/pcapng capture (tcpdump, "
                                                       "Wireshark)")
    import_parser.add_argument("capture", metavar="CAPTURE", help="a .pcap or .pcapng file")
    import_parser.add_argument("--port", type=ports, action="extend", metavar="P[,Q...]",
                               help="the RPC servers' ports (repeat the option or separate with commas); default: "
                                    "every port a captured connection opens with HELLO (which needs the connections' "
                                    "starts in the capture).  The server-to-server links of a tensor-parallel session "
                                    "(protocol 8.0.0) are found on the ports the clients' COMM_INIT requests name "
                                    "(upstream: rank 0's RPC port + 1000) and by their shape, and written as link "
                                    "traces; capture them too (e.g. tcpdump 'tcp port P or tcp port Q or tcp port "
                                    "P+1000')")
    import_parser.add_argument("--out", required=True, metavar="DIR", help="folder for the trace files")
    import_parser.set_defaults(run=import_command)
    export_parser = commands.add_parser("export", help="write traces as a pcap capture, one TCP connection each")
    export_parser.add_argument("traces", nargs="+", metavar="TRACE",
                               help="trace files or directories of them (e.g. a tensor-parallel session's client "
                                    "connections and its link)")
    export_parser.add_argument("--pcap", required=True, metavar="OUT", help="the capture to write")
    export_parser.set_defaults(run=export_command)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
