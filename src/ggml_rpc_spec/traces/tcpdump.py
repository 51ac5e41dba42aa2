"""tcpdump on the loopback interface, writing a capture while a session runs.

What the recording proxy cannot record is captured this way: a server-to-server link (the
client tells rank 1 where rank 0 listens, so no proxy can stand between them).  tcpdump
writes each packet as it reads it (-U) but may read late on a busy machine, so `stop`
first waits, bounded, until the capture holds what the caller needs.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

POLL = 0.2  # seconds between looks at the capture file while tcpdump catches up


class Tcpdump:
    """tcpdump capturing TCP `ports` on `interface` into `path`, started once it listens."""

    def __init__(self, path: Path, ports: list[int], *, interface: str = "lo") -> None:
        program = shutil.which("tcpdump")
        if program is None:
            raise RuntimeError("tcpdump is not installed (Debian: apt-get install tcpdump)")
        self.path = path
        expression = " or ".join(f"tcp port {port}" for port in ports)
        self.process = subprocess.Popen([program, "-i", interface, "-s", "0", "-U", "-w", str(path), expression],
                                        stderr=subprocess.PIPE, text=True)
        if self.process.stderr is None:  # stderr=PIPE always gives one
            raise RuntimeError("tcpdump's stderr is not a pipe")
        self.stderr = self.process.stderr
        for line in self.stderr:
            if "listening on" in line:
                return
        self.process.wait()
        raise RuntimeError("tcpdump did not start: " + self.stderr.read())

    def stop(self, until: Callable[[], bool] = lambda: True, *, patience: float = 60.0) -> bool:
        """Stop capturing once `until()` holds or `patience` seconds have passed; whether it held."""
        deadline = time.monotonic() + patience
        held = until()
        while not held and time.monotonic() < deadline:
            time.sleep(POLL)  # polling a file another process is writing, not a synchronisation by time
            held = until()
        self.close()
        return held

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=30)
        self.stderr.close()

    def __enter__(self) -> "Tcpdump":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
