"""A real log shipper for the sink tests: Debian's rsyslogd with a private
configuration, pid file and work directory, in the foreground, never the
system's. It listens on a TCP port on 127.0.0.1 (imtcp) and a unix stream
socket (imptcp) in its directory and writes each line it receives, as received,
to one file."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"

CONFIG = """\
global(workDirectory="{dir}" maxMessageSize="256k")
module(load="imtcp")
module(load="imptcp")
input(type="imtcp" address="127.0.0.1" port="{port}" name="tcp")
input(type="imptcp" path="{dir}/in.sock" unlink="on" name="unix")
template(name="raw" type="string" string="%rawmsg%\\n")
# rsyslogd's own start and stop messages stay out of the file.
if $inputname != "rsyslogd" then {{
  action(type="omfile" file="{dir}/received.log" template="raw")
}}
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Rsyslog:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.socket_path = directory / "in.sock"
        self.output = directory / "received.log"
        self.config = directory / "rsyslog.conf"
        self.config.write_text(CONFIG.format(dir=directory, port=self.port))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.config), "-i", str(self.dir / "rsyslogd.pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.starts += 1
        end = time.monotonic() + timeout
        while not (self._listening() and self.socket_path.exists()):
            if self.proc.poll() is not None:
                assert self.proc.stderr is not None
                raise RuntimeError(f"rsyslogd exited: {self.proc.stderr.read().decode()}")
            if time.monotonic() > end:
                raise RuntimeError("rsyslogd did not start listening")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGTERM: rsyslogd writes out what it has read, then exits.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def lines(self) -> list[bytes]:
        if not self.output.exists():
            return []
        return [line for line in self.output.read_bytes().split(b"\n") if line.strip()]

    def events(self) -> tuple[list[dict[str, Any]], int]:
        """The JSON events received, and how many lines were not whole JSON
        (a line cut short when the shipper went away mid-line)."""
        events, broken = [], 0
        for line in self.lines():
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                broken += 1
        return events, broken
