"""python -m bench.floor --proto V: the least a Python server can do for a small call.

Answers HELLO and then every GET_ALIGNMENT frame on one connection with a reply prepared
in advance: no parsing, no validation, no dispatch.  Its round trip, measured with the
same client as the real servers, is the floor that the socket calls and the interpreter's
wake-ups put under any Python server on the machine, so the benchmark can show how much
of the reference server's small-call time is protocol work and how much is Python itself.
"""

from __future__ import annotations

import argparse
import socket
import sys

from ggml_rpc_spec.protocol import Command, build_reply, build_request, message_spec, profile_for
from ggml_rpc_spec.protocol.messages import CONN_CAPS_SIZE


def serve(profile, listener: socket.socket) -> None:
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    caps = bytes(CONN_CAPS_SIZE)  # both HELLO variants: the bare one ignores what it lacks
    hello = build_reply(profile, Command.HELLO, dict(zip(("major", "minor", "patch"), profile.version),
                                                     padding=0, conn_caps=caps))
    frame = 9 + message_spec(profile, Command.GET_ALIGNMENT).request_size
    hello_frame = len(build_request(profile, Command.HELLO, {"conn_caps": caps}))
    reply = build_reply(profile, Command.GET_ALIGNMENT, {"alignment": 32})
    scratch = bytearray(1 << 16)
    view = memoryview(scratch)
    have = conn.recv_into(scratch)
    while have < hello_frame:
        have += conn.recv_into(view[have:])
    conn.sendall(hello)
    have -= hello_frame
    while True:
        received = conn.recv_into(view[have:])
        if not received:
            return
        have += received
        count, have = divmod(have, frame)
        conn.sendall(reply * count)
        view[:have] = view[count * frame : count * frame + have]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto", default="7.0.0", help="protocol version to answer HELLO with")
    args = parser.parse_args(argv)
    profile = profile_for(args.proto)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        print(f"endpoint: 127.0.0.1:{listener.getsockname()[1]}", flush=True)
        serve(profile, listener)
    return 0


if __name__ == "__main__":
    sys.exit(main())
